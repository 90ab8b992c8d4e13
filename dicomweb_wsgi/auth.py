"""Built-in access control for appliances without a proxy: HTTP Basic, bearer tokens, roles.

Three ways to name a user, checked in this order:

1. a header set by a reverse proxy that already authenticated the user (``auth_user_header``),
   honoured only when the TCP peer is one of ``auth_trusted_proxies`` (anyone else's is ignored);
2. ``Authorization: Basic`` against ``auth_users_file``: ``name:roles:hash`` lines, hashes salted and
   slow (scrypt, or PBKDF2-SHA256) so a stolen file does not give the passwords away;
3. ``Authorization: Bearer`` against ``auth_tokens_file``: ``name:roles:sha256$hex`` lines (tokens
   are long random strings, so a plain digest suffices and only the digest is kept).

Roles: ``read`` (GET, HEAD, OPTIONS), ``write`` (POST, PUT, PATCH, and DELETE outside ``/studies``:
a UPS unsubscribe is not a deletion of data), ``delete`` (DELETE of studies, series, instances). Missing or
wrong credentials are a 401 with ``WWW-Authenticate``; a known user without the role is a 403. Both
files are re-read when they change, so users can be added without a restart.
"""
from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import tempfile
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .config import ROLES, ConfigError, Settings
from .errors import Forbidden, Unauthorized

log = logging.getLogger("dicomweb_wsgi.auth")

METHOD_ROLES = {"GET": "read", "HEAD": "read", "OPTIONS": "read", "POST": "write", "PUT": "write",
                "PATCH": "write", "DELETE": "delete"}
PEER_KEY = "dicomweb.peer_addr"

# scrypt at N=2**15, r=8 costs ~32 MiB and ~0.1 s: slow for a guesser, and verified passwords are
# cached in memory so a viewer's hundreds of requests pay it once.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 15, 8, 1
PBKDF2_ITERATIONS = 600_000
_CACHE_LIMIT = 1024


@dataclass(frozen=True)
class Principal:
    """An authenticated (or anonymous) caller."""

    name: str
    roles: frozenset[str]
    how: str  # "basic", "bearer", "proxy", "anonymous", "open"


# -- secrets ---------------------------------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, n: int = SCRYPT_N) -> str:
    """A salted scrypt hash ``scrypt$N$r$p$salt$hash`` (PBKDF2 where OpenSSL lacks scrypt)."""
    salt = secrets.token_bytes(16)
    if hasattr(hashlib, "scrypt"):
        digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P,
                                maxmem=256 * n * SCRYPT_R, dklen=32)
        return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, PBKDF2_ITERATIONS)
    return f"pbkdf2_sha256${PBKDF2_ITERATIONS}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches a hash made by ``hash_password`` (constant-time comparison)."""
    parts = encoded.split("$")
    try:
        if parts[0] == "scrypt" and len(parts) == 6:
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            salt, expected = base64.b64decode(parts[4]), base64.b64decode(parts[5])
            got = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r + (1 << 20),
                                 dklen=len(expected))
        elif parts[0] == "pbkdf2_sha256" and len(parts) == 4:
            salt, expected = base64.b64decode(parts[2]), base64.b64decode(parts[3])
            got = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, int(parts[1]), len(expected))
        else:
            return False
    except (ValueError, OverflowError, binascii.Error):
        return False
    return hmac.compare_digest(got, expected)


def new_token() -> str:
    """A fresh bearer token (256 random bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The form a tokens file keeps (``sha256$hex``): enough for 256 random bits, and fast per request."""
    return "sha256$" + hashlib.sha256(token.encode("utf-8")).hexdigest()


# -- the files -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    name: str
    roles: frozenset[str]
    secret: str


def parse_credentials(text: str, source: str) -> dict[str, Entry]:
    """``name:roles:secret`` lines (``#`` comments, blank lines ignored); ConfigError on a bad line."""
    entries: dict[str, Entry] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) != 3 or not fields[0] or not fields[2]:
            raise ConfigError(f"{source}:{number}: expected 'name:roles:secret'")
        roles = frozenset(r.strip().lower() for r in fields[1].split(",") if r.strip())
        unknown = sorted(roles - set(ROLES))
        if unknown:
            raise ConfigError(f"{source}:{number}: unknown role {', '.join(unknown)} (roles: {', '.join(ROLES)})")
        entries[fields[0]] = Entry(fields[0], roles, fields[2])
    return entries


Stamp = tuple[int, int, int, int]


def _stamp(st: os.stat_result) -> Stamp:
    """What tells one version of a file from another: an atomic rewrite (``update_credentials``) always
    makes a new inode, even when the size and the timestamp (one clock tick) stay the same."""
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class CredentialFile:
    """A users or tokens file, re-read when it is replaced or its size or modification time changes.

    A version that cannot be read or parsed while the server runs leaves the last good one in force
    and is reported once, not on every request; a deleted file accepts nobody until it is back.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: Stamp | None = None
        self._failed: Stamp | str | None = None  # the bad version (or stat error) last reported
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()
        self.changed = 0  # bumped on every reload, so caches know to forget
        self.entries()  # a missing or malformed file stops the start-up

    def entries(self) -> dict[str, Entry]:
        """The current entries, re-read first if the file changed."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            if self._stamp is None:
                raise ConfigError(f"cannot read {self.path}: {exc.strerror}") from exc
            if isinstance(exc, FileNotFoundError):
                # Deleting the file revokes everyone in it; keeping the old entries would not.
                self._report("deleted", f"{self.path} was deleted: nobody in it is accepted until it is back")
                return {}
            self._report(str(exc.strerror), f"cannot read {self.path} ({exc.strerror})")
            return self._entries
        stamp = _stamp(st)
        if isinstance(self._failed, str):
            self._failed = None
        if stamp != self._stamp and stamp != self._failed:
            with self._lock:
                if stamp != self._stamp and stamp != self._failed:
                    self._reload(stamp)
        return self._entries

    def _reload(self, stamp: Stamp) -> None:
        try:
            with open(self.path, encoding="utf-8") as fh:
                entries = parse_credentials(fh.read(), self.path)
        except (OSError, ConfigError, UnicodeDecodeError) as exc:
            if self._stamp is None:
                raise ConfigError(f"cannot read {self.path}: {exc}") from exc
            self._report(stamp, str(exc))
            return
        self._entries, self._stamp, self._failed = entries, stamp, None
        self.changed += 1

    def _report(self, failure: Stamp | str, message: str) -> None:
        """Log a bad version once (every request would otherwise log it again)."""
        if failure != self._failed:
            self._failed = failure
            log.error("%s; keeping the last good version", message)


def update_credentials(path: str, name: str, roles: Iterable[str], secret: str) -> None:
    """Add or replace ``name``'s line in a users or tokens file (written atomically, mode 0600).

    A file or folder the OS refuses (missing folder, no permission) is a ConfigError naming the file,
    which the CLI prints on one line. So is a name the file could not give back as written: one with a
    colon, surrounding spaces, a leading ``#`` (a comment line) or any character ``str.isprintable``
    refuses, which covers every line break ``str.splitlines`` splits at (``\x85``, ``\u2028``, ``\v``...).
    """
    if not name or ":" in name or not name.isprintable() or name != name.strip() or name.startswith("#"):
        raise ConfigError(f"invalid name {name!r}: no colons, control characters or line breaks, "
                          "surrounding spaces or leading '#'")
    role_list = [r.lower() for r in roles]
    unknown = sorted(set(role_list) - set(ROLES))
    if unknown:
        raise ConfigError(f"unknown role {', '.join(unknown)} (roles: {', '.join(ROLES)})")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        lock = os.open(os.path.join(folder, "." + os.path.basename(path) + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        # Two add-user runs at once would each rewrite the file from what they read: one would be lost.
        fcntl.flock(lock, fcntl.LOCK_EX)
        _update_locked(path, folder, name, role_list, secret)
    finally:
        os.close(lock)


def _update_locked(path: str, folder: str, name: str, role_list: list[str], secret: str) -> None:
    lines = ["# name:roles:secret  (roles: read, write, delete; written by dicomweb-wsgi)"]
    try:
        existing = os.stat(path) if os.path.exists(path) else None
        if existing is not None:
            with open(path, encoding="utf-8") as fh:
                lines = [ln for ln in fh.read().splitlines() if ln.split(":", 1)[0] != name]
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    lines.append(f"{name}:{','.join(role_list)}:{secret}")
    try:
        _write_atomically(path, folder, "\n".join(lines) + "\n", existing)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _write_atomically(path: str, folder: str, text: str, existing: os.stat_result | None) -> None:
    """Replace ``path`` by ``text`` through a temporary file in its folder, keeping an existing file's mode."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".credentials-")  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())  # a power cut must leave the old file or the new one, never an empty one
        if existing is not None:  # keep the mode and owner a site gave the file (e.g. root:dicomweb 0640)
            os.chmod(tmp, existing.st_mode & 0o777)
            if os.geteuid() == 0:
                os.chown(tmp, existing.st_uid, existing.st_gid)
        os.replace(tmp, path)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# -- the check -------------------------------------------------------------------------------------
class Authenticator:
    """Decides who a request comes from and whether that caller may use its method."""

    def __init__(self, settings: Settings) -> None:
        self.realm = _quoted(settings.auth_realm)
        self.users = CredentialFile(settings.auth_users_file) if settings.auth_users_file else None
        self.tokens = CredentialFile(settings.auth_tokens_file) if settings.auth_tokens_file else None
        self.user_header = settings.auth_user_header.strip()
        self.proxies = [ipaddress.ip_network(n) for n in settings.auth_trusted_proxies]
        if self.user_header and not self.proxies:
            raise ConfigError("auth_user_header needs auth_trusted_proxies (the proxies allowed to set it)")
        self.proxy_roles = frozenset(settings.auth_proxy_roles)
        self.anonymous = Principal("-", frozenset(settings.anonymous_roles), "anonymous")
        self._verified: dict[bytes, int] = {}
        self._cache_key = secrets.token_bytes(32)
        self._decoy_hash: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether any authentication is configured (if not, everyone may do everything)."""
        return bool(self.users or self.tokens or self.user_header)

    def check(self, method: str, path: str, environ: dict[str, Any]) -> Principal:
        """The caller, if allowed to use ``method`` on ``path``; raises Unauthorized (401) or Forbidden (403)."""
        principal = self.identify(environ)
        self.authorize(principal, method, path)
        return principal

    def authorize(self, principal: Principal, method: str, path: str) -> None:
        """Raise Unauthorized (401, anonymous) or Forbidden (403, known caller) unless ``principal`` may
        use ``method`` on ``path``. Apart from ``identify`` so a refused caller can still be logged by name."""
        needed = METHOD_ROLES.get(method, "write")
        if needed == "delete" and not path.startswith("/studies"):
            needed = "write"
        if needed in principal.roles:
            return
        if principal.how == "anonymous":
            raise self.challenge(f"authentication required ({needed} access)")
        raise Forbidden(f"user {principal.name!r} lacks the {needed!r} role")

    def identify(self, environ: dict[str, Any]) -> Principal:
        """Who sent the request; raises Unauthorized for credentials that do not check out.

        The 401 for an unknown scheme does not repeat it: a client that sends a bare token or password
        has put its secret where the scheme goes.
        """
        if not self.enabled:
            return Principal("-", frozenset(ROLES), "open")
        if self.user_header:
            value = environ.get("HTTP_" + self.user_header.upper().replace("-", "_"), "").strip()
            if value:
                if self._from_trusted_proxy(environ):
                    return self._proxy_user(value)
                log.warning("ignoring %s from untrusted peer %s", self.user_header, _peer(environ))
        authorization = environ.get("HTTP_AUTHORIZATION", "").strip()
        if not authorization:
            return self.anonymous
        scheme, _, credentials = authorization.partition(" ")
        scheme = scheme.lower()
        if scheme == "basic" and self.users is not None:
            return self._basic(credentials.strip(), environ)
        if scheme == "bearer" and self.tokens is not None:
            return self._bearer(credentials.strip())
        raise self.challenge("unsupported authorization scheme")

    def challenge(self, reason: str, bearer_error: str = "") -> Unauthorized:
        """A 401 naming every configured scheme (RFC 7617 Basic, RFC 6750 Bearer; ``bearer_error``:
        the RFC 6750 §3.1 error code when a bearer token was sent and refused)."""
        schemes = []
        if self.users is not None or not self.tokens:
            schemes.append(f'Basic realm={self.realm}, charset="UTF-8"')
        if self.tokens is not None:
            schemes.append(f'Bearer realm={self.realm}' + (f', error="{bearer_error}"' if bearer_error else ""))
        return Unauthorized(reason, headers={"WWW-Authenticate": ", ".join(schemes)})

    def _from_trusted_proxy(self, environ: dict[str, Any]) -> bool:
        try:
            peer = ipaddress.ip_address(_peer(environ))
        except ValueError:
            return False
        return any(peer in net for net in self.proxies)

    def _proxy_user(self, name: str) -> Principal:
        if not name.isprintable() or len(name) > 256:
            # Whatever the proxy passes on lands in logs and audit lines as a name.
            raise self.challenge("unusable user name from the proxy")
        entry = self.users.entries().get(name) if self.users is not None else None
        return Principal(name, entry.roles if entry else self.proxy_roles, "proxy")

    def _basic(self, credentials: str, environ: dict[str, Any]) -> Principal:
        assert self.users is not None
        try:
            decoded = base64.b64decode(credentials, validate=True)
        except (binascii.Error, ValueError):
            raise self.challenge("malformed Basic credentials") from None
        try:
            text = decoded.decode("utf-8")
        except UnicodeDecodeError:
            text = decoded.decode("latin-1")
        name, sep, password = text.partition(":")
        entry = self.users.entries().get(name) if sep else None
        if entry is None:
            # As slow as a known user's check, so timing does not tell which names exist.
            verify_password(password, self._decoy())
        if not sep:
            # RFC 7617 §2: user-id ":" password. Without the colon the whole value may be a secret: not logged.
            log.warning("malformed Basic credentials (no colon) from %s", _peer(environ) or "-")
            raise self.challenge("malformed Basic credentials")
        if entry is None or not self._password_ok(entry, password):
            log.warning("failed Basic login for %r from %s", name[:64], _peer(environ) or "-")
            raise self.challenge("wrong user name or password")
        return Principal(name, entry.roles, "basic")

    def _decoy(self) -> str:
        if self._decoy_hash is None:
            self._decoy_hash = hash_password(secrets.token_hex(8))
        return self._decoy_hash

    def _password_ok(self, entry: Entry, password: str) -> bool:
        assert self.users is not None
        key = hmac.new(self._cache_key, "\0".join((entry.name, password, entry.secret)).encode("utf-8"),
                       hashlib.sha256).digest()
        if self._verified.get(key) == self.users.changed:
            return True
        if not verify_password(password, entry.secret):
            return False
        if len(self._verified) >= _CACHE_LIMIT:
            self._verified.clear()
        self._verified[key] = self.users.changed
        return True

    def _bearer(self, token: str) -> Principal:
        """The token's entry, compared as bytes: ``compare_digest`` raises on a str with non-ASCII
        characters, which one mistyped line of the file would turn into a 500 for every unknown token."""
        assert self.tokens is not None
        digest = hash_token(token).encode("ascii")
        for entry in self.tokens.entries().values():
            if hmac.compare_digest(entry.secret.encode("utf-8"), digest):
                return Principal(entry.name, entry.roles, "bearer")
        raise self.challenge("unknown bearer token", bearer_error="invalid_token")


def _quoted(value: str) -> str:
    """``value`` as an RFC 9110 §5.6.4 quoted-string; ConfigError for characters a header cannot carry."""
    if any(ord(c) < 0x20 and c != "\t" or ord(c) == 0x7F or ord(c) > 0xFF for c in value):
        raise ConfigError(f"auth_realm {value!r} holds control characters or characters beyond Latin-1")
    # RFC 9110 §5.6.4: inside a quoted-string, '"' and '\\' must be sent as quoted-pairs.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _peer(environ: dict[str, Any]) -> str:
    return str(environ.get(PEER_KEY) or environ.get("REMOTE_ADDR") or "")


def keep_peer_address(app: Callable[..., Any]) -> Callable[..., Any]:
    """WSGI middleware that records the TCP peer before proxy-header handling rewrites REMOTE_ADDR.

    waitress replaces REMOTE_ADDR with the forwarded client address when the peer is its trusted
    proxy, which would hide who set ``auth_user_header``; ``serve`` puts this outside that step.
    """
    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        environ.setdefault(PEER_KEY, environ.get("REMOTE_ADDR", ""))
        return app(environ, start_response)
    return wrapped


def is_loopback(host: str) -> bool:
    """Whether a listen host only accepts local connections."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
