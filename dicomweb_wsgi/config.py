"""Settings: one schema table (key, converter, default, help); unknown keys are rejected at start-up.

Keys are written ``dicomweb.<key>`` in ``conf/dicomweb.ini``'s ``[app:main]`` section; ``make_app``
also accepts them without the prefix. The README's configuration table is this table.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

from .storage.base import DuplicatePolicy


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _size(value: Any) -> int:
    """Bytes, with an optional K/M/G suffix (binary units)."""
    if isinstance(value, int):
        return value
    text = str(value).strip().upper().removesuffix("B")
    factor = 1
    for suffix, mult in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)):
        if text.endswith(suffix):
            text, factor = text[:-1], mult
            break
    amount = float(text) * factor
    if not math.isfinite(amount):  # int() of inf is an OverflowError, of nan a ValueError: say it plainly
        raise ValueError("must be a finite number of bytes")
    number = int(amount)
    if number < 0:
        raise ValueError("must not be negative")
    return number


def _words(value: Any) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    return tuple(w for w in str(value).replace(",", " ").split() if w)


def _choice(*choices: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text
    return convert


ROLES = ("read", "write", "delete")


def _roles(value: Any) -> tuple[str, ...]:
    roles = tuple(w.lower() for w in _words(value))
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise ValueError(f"unknown role {', '.join(unknown)}; roles are {', '.join(ROLES)}")
    return roles


def _networks(value: Any) -> tuple[str, ...]:
    """IP addresses or networks (CIDR), normalised; a host name is refused (it would need DNS per request)."""
    import ipaddress

    return tuple(str(ipaddress.ip_network(w, strict=False)) for w in _words(value))


def _int(value: Any) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


def _positive_int(value: Any) -> int:
    number = _int(value)
    if number == 0:
        raise ValueError("must be at least 1")
    return number


@dataclass(frozen=True)
class Option:
    key: str
    convert: Callable[[Any], Any]
    default: Any
    help: str


SCHEMA: tuple[Option, ...] = (
    Option("data_dir", str, "./dicomweb-data",
           "Folder holding the index (index.sqlite3) and the blobs; created if missing."),
    Option("public_url", str, "",
           "Public base URL of the service root (e.g. https://pacs.example.org/dicomweb) used in RetrieveURL "
           "and BulkDataURI; empty: derived from the request (waitress url_prefix and trusted proxy headers)."),
    Option("duplicate_policy", _choice("ignore", "replace", "reject"), "ignore",
           "Storing an existing SOP Instance UID: ignore (keep the stored one, report success), replace, or "
           "reject (FailureReason 0x0111)."),
    Option("cors_origins", _words, (),
           "Origins allowed to call from a browser (space or comma list); * allows any; empty disables CORS."),
    Option("max_request_body", _size, "4G", "Largest request body accepted (413 beyond, before reading it)."),
    Option("max_part_size", _size, "2G", "Largest single part of a multipart request."),
    Option("max_parts", _positive_int, 10000, "Most parts in one multipart request."),
    Option("bulk_threshold", _int, 1024,
           "Binary values longer than this many bytes are given as BulkDataURI in metadata (PixelData always)."),
    Option("sqlite_synchronous", _choice("full", "normal", "extra"), "full",
           "SQLite synchronous mode; FULL makes each acknowledged store survive a power cut."),
    Option("fsync", _bool, True, "fsync each blob and its folder before acknowledging a store."),
    Option("qido_default_limit", _int, 1000, "Results per QIDO page when the request gives no limit."),
    Option("qido_max_limit", _int, 10000, "Largest QIDO limit a request may ask for (larger is capped)."),
    Option("qido_max_matches", _int, 0,
           "A QIDO search matching more than this many results is refused with 413 (narrow the query); "
           "0: no limit (results are paged)."),
    Option("read_only", _bool, False, "Refuse every write (405)."),
    Option("allow_delete", _bool, False, "Enable the non-standard DELETE of studies, series and instances."),
    Option("min_free_space", _size, "1G",
           "Stores (POST, PUT) are refused with 503 (0xA700) while the data folder's free space, less the "
           "request's Content-Length, is below this; reads and DELETE keep working. 0 disables the guard."),
    Option("auth_users_file", str, "",
           "HTTP Basic users, one 'name:roles:hash' a line (dicomweb-wsgi add-user writes it); empty: no Basic."),
    Option("auth_tokens_file", str, "",
           "Bearer tokens, one 'name:roles:sha256$hex' a line (dicomweb-wsgi add-token writes it); empty: none."),
    Option("auth_user_header", str, "",
           "Header naming a user authenticated by a reverse proxy (e.g. X-Remote-User); honoured only from "
           "auth_trusted_proxies; empty: not used."),
    Option("auth_trusted_proxies", _networks, (),
           "Addresses or networks (space or comma list) whose auth_user_header is trusted."),
    Option("auth_proxy_roles", _roles, ("read",),
           "Roles of a proxy-authenticated user not listed in auth_users_file (read, write, delete)."),
    Option("anonymous_roles", _roles, (),
           "Roles of a request without credentials when authentication is configured (e.g. read)."),
    Option("auth_realm", str, "dicomweb", "The realm named in WWW-Authenticate challenges."),
    Option("allow_unauthenticated_remote", _bool, False,
           "Let 'serve' listen on a non-loopback address with no authentication configured (refused otherwise)."),
    Option("wado_uri_path", str, "/wado", "Path of the WADO-URI service."),
    Option("events_listen", str, "",
           "HOST:PORT where `serve` also runs the UPS-RS event channel (WebSocket); empty: not started "
           "(run `dicomweb-wsgi events` instead)."),
    Option("events_retention_hours", _int, 168,
           "Undelivered UPS event reports are dropped after this many hours (0: kept until delivered)."),
    Option("events_max_pending", _int, 10000,
           "Most undelivered UPS event reports kept per subscriber; the oldest go first (0: no limit)."),
    Option("ups_retention_hours", _int, 168,
           "COMPLETED and CANCELED workitems without a deletion lock are deleted after this many hours (0: kept)."),
)
_BY_KEY = {opt.key: opt for opt in SCHEMA}
PREFIX = "dicomweb."


@dataclass(frozen=True)
class Settings:
    data_dir: str = "./dicomweb-data"
    public_url: str = ""
    duplicate_policy: str = "ignore"
    cors_origins: tuple[str, ...] = ()
    max_request_body: int = 4 << 30
    max_part_size: int = 2 << 30
    max_parts: int = 10000
    bulk_threshold: int = 1024
    sqlite_synchronous: str = "full"
    fsync: bool = True
    qido_default_limit: int = 1000
    qido_max_limit: int = 10000
    qido_max_matches: int = 0
    read_only: bool = False
    allow_delete: bool = False
    min_free_space: int = 1 << 30
    auth_users_file: str = ""
    auth_tokens_file: str = ""
    auth_user_header: str = ""
    auth_trusted_proxies: tuple[str, ...] = ()
    auth_proxy_roles: tuple[str, ...] = ("read",)
    anonymous_roles: tuple[str, ...] = ()
    auth_realm: str = "dicomweb"
    allow_unauthenticated_remote: bool = False
    wado_uri_path: str = "/wado"
    events_listen: str = ""
    events_retention_hours: int = 168
    events_max_pending: int = 10000
    ups_retention_hours: int = 168

    @property
    def policy(self) -> DuplicatePolicy:
        return DuplicatePolicy(self.duplicate_policy)


class ConfigError(ValueError):
    """A setting is unknown or its value is invalid."""


def load_settings(values: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from a mapping (keys with or without ``dicomweb.``), checking every key.

    ``DICOMWEB_DATA_DIR`` in the environment overrides ``data_dir``.
    """
    converted: dict[str, Any] = {}
    for raw_key, raw_value in (values or {}).items():
        key = raw_key[len(PREFIX):] if raw_key.startswith(PREFIX) else raw_key
        opt = _BY_KEY.get(key)
        if opt is None:
            raise ConfigError(f"unknown setting {raw_key!r}; known settings: {', '.join(sorted(_BY_KEY))}")
        try:
            converted[key] = opt.convert(raw_value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ConfigError(f"invalid value {raw_value!r} for setting {raw_key!r}: {exc}") from exc
    env = os.environ if environ is None else environ
    if env.get("DICOMWEB_DATA_DIR"):
        converted["data_dir"] = env["DICOMWEB_DATA_DIR"]
    for opt in SCHEMA:
        converted.setdefault(opt.key, opt.convert(opt.default))
    names = {f.name for f in fields(Settings)}
    assert names == set(_BY_KEY), "Settings and SCHEMA must list the same keys"
    return Settings(**converted)
