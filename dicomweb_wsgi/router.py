"""A small hand-written router: URL templates compiled once, dispatched on path then method.

Templates look like ``/studies/{study_uid:uid}/series``; the placeholder names are the handler's
keyword arguments and the converter validates the segment. A segment that does not pass its
converter is a 400 (never a 404), so no request value can reach storage unvalidated.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .errors import BadRequest, MethodNotAllowed, NotFound
from .http import Request, Response
from .model import NPI_RESOURCES, is_valid_uid

Handler = Callable[..., Response]


def _uid(value: str) -> str:
    if not is_valid_uid(value):
        raise BadRequest(f"invalid UID in path: {value[:80]!r} (1-64 characters, digits and dots)")
    return value


def _frames(value: str) -> list[int]:
    numbers: list[int] = []
    for item in value.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1 or len(item) > 9:
            raise BadRequest(f"invalid frame list {value[:80]!r}: 1-based frame numbers separated by commas")
        numbers.append(int(item))
    return numbers


def _npi(value: str) -> str:
    if value not in NPI_RESOURCES:
        raise NotFound(f"unknown resource {value[:80]!r}")
    return value


_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def _aetitle(value: str) -> str:
    if not _AE_RE.match(value) or not value.strip():
        raise BadRequest(f"invalid AE title {value[:80]!r}")
    return value.strip()


_BULK_RE = re.compile(r"^[0-9A-Fa-f]{8}(/\d{1,6}/[0-9A-Fa-f]{8})*$")


def _bulkpath(value: str) -> str:
    if not _BULK_RE.match(value):
        raise BadRequest(f"invalid bulk data path {value[:80]!r}")
    return value.upper()


CONVERTERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "uid": (r"[^/]+", _uid),
    "frames": (r"[^/]+", _frames),
    "npi": (r"[^/]+", _npi),
    "aetitle": (r"[^/]+", _aetitle),
    "bulkpath": (r".+", _bulkpath),
}


@dataclass(frozen=True)
class Route:
    """One row of the route table: HTTP method, URL template, handler."""

    method: str
    template: str
    handler: Handler


@dataclass
class _PathEntry:
    template: str
    regex: re.Pattern[str]
    converters: dict[str, Callable[[str], Any]]
    methods: dict[str, Handler] = field(default_factory=dict)


_UNSAFE_PATH = re.compile(r"(^|/)\.\.?(/|$)|[\x00\\]")
_PLACEHOLDER = re.compile(r"\{(\w+)(?::(\w+))?\}")


def compile_template(template: str) -> tuple[re.Pattern[str], dict[str, Callable[[str], Any]]]:
    """Turn ``/studies/{study_uid:uid}`` into a regex and a converter per placeholder."""
    pattern, converters, pos = "^", {}, 0
    for m in _PLACEHOLDER.finditer(template):
        pattern += re.escape(template[pos:m.start()])
        name, conv = m.group(1), m.group(2) or "uid"
        regex, func = CONVERTERS[conv]
        pattern += f"(?P<{name}>{regex})"
        converters[name] = func
        pos = m.end()
    pattern += re.escape(template[pos:]) + "$"
    return re.compile(pattern), converters


def _first_segment(path: str) -> str:
    return path[1:].split("/", 1)[0]


def _fits(entry: _PathEntry, slashes: int) -> bool:
    """Whether a path with this many slashes can match the entry's template (see Router.__init__)."""
    own = entry.template.count("/")
    if any(CONVERTERS[conv or "uid"][0] == ".+" for _, conv in _PLACEHOLDER.findall(entry.template)):
        return slashes >= own
    return slashes == own


class Router:
    """Dispatches a request to the handler of the first template matching its path."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.entries: list[_PathEntry] = []
        by_template: dict[str, _PathEntry] = {}
        for route in routes:
            entry = by_template.get(route.template)
            if entry is None:
                regex, converters = compile_template(route.template)
                entry = _PathEntry(route.template, regex, converters)
                by_template[route.template] = entry
                self.entries.append(entry)
            if route.method in entry.methods:
                raise ValueError(f"duplicate route {route.method} {route.template}")
            entry.methods[route.method] = route.handler
        # Candidates by first path segment and number of slashes, so a request tries a pattern or
        # two, not a few dozen (a failed regex costs about half a microsecond, and a QIDO series
        # search sat 24th among the /studies templates). A placeholder never matches a slash except
        # a spanning one (bulkpath), which matches any number at or above its template's. Templates
        # starting with a placeholder are candidates for every first segment. Table order is kept,
        # since the first match wins.
        order = {id(entry): n for n, entry in enumerate(self.entries)}
        any_first = [e for e in self.entries if "{" in _first_segment(e.template)]
        by_first: dict[str, list[_PathEntry]] = {}
        for entry in self.entries:
            first = _first_segment(entry.template)
            if "{" not in first:
                by_first.setdefault(first, []).append(entry)
        # Paths with _slash_cap or more slashes can only match spanning templates, all of which apply.
        self._slash_cap = 1 + max((e.template.count("/") for e in self.entries), default=0)
        self._by_shape: dict[tuple[str | None, int], list[_PathEntry]] = {}
        for first, entries in [*by_first.items(), (None, [])]:
            candidates = sorted(entries + any_first, key=lambda e: order[id(e)])
            for slashes in range(self._slash_cap + 1):
                self._by_shape[(first, slashes)] = [e for e in candidates if _fits(e, slashes)]

    @staticmethod
    def allowed(entry: _PathEntry) -> list[str]:
        methods = set(entry.methods)
        if "GET" in methods:
            methods.add("HEAD")
        methods.add("OPTIONS")
        return sorted(methods)

    def match(self, path: str) -> tuple[_PathEntry, dict[str, str]] | None:
        """The entry whose template matches ``path`` (a trailing slash is ignored) and the raw values."""
        if len(path) > 1 and path.endswith("/"):
            path = path.rstrip("/") or "/"
        slashes = min(path.count("/"), self._slash_cap)
        candidates = self._by_shape.get((_first_segment(path), slashes))
        if candidates is None:
            candidates = self._by_shape[(None, slashes)]
        for entry in candidates:
            m = entry.regex.match(path)
            if m:
                return entry, m.groupdict()
        return None

    def resolve(self, req: Request) -> tuple[Handler, dict[str, Any]]:
        """The handler and its converted keyword arguments; raises 404, 405 (with Allow) or 400."""
        found = self.match(req.path)
        if found is None:
            if _UNSAFE_PATH.search(req.path):
                raise BadRequest("invalid path: '.' and '..' segments, NUL and backslashes are not allowed")
            raise NotFound(f"no resource at {req.path[:200]}")
        entry, raw = found
        method = "GET" if req.method == "HEAD" else req.method
        handler = entry.methods.get(method)
        if handler is None:
            raise MethodNotAllowed(self.allowed(entry))
        kwargs = {name: entry.converters[name](value) for name, value in raw.items()}
        return handler, kwargs
