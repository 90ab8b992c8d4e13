"""The audit trail: one line on the ``dicomweb_wsgi.audit`` logger for every store and delete.

Sites must be able to say who stored or deleted which instance, and when, years later; the line
carries an explicit UTC timestamp so it stands on its own whatever the logging format. Who acts is
set per request by the app (the authenticated user and client address) and per run by the CLI,
through a context variable, so the archive can write the line without knowing about HTTP.
"""
from __future__ import annotations

import logging
import re
import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

audit_log = logging.getLogger("dicomweb_wsgi.audit")

# Holds a string or an object whose str() names the actor once it is known (the app's request).
_actor: ContextVar[object] = ContextVar("dicomweb_actor", default="-")


def current_actor() -> str:
    """Who the current request or command acts as (``user@address``, ``cli:name`` or ``-``)."""
    return str(_actor.get())


@contextmanager
def acting_as(actor: object) -> Iterator[None]:
    """Attribute every audit line written inside the block to ``actor`` (its ``str()`` at write time)."""
    token = _actor.set(actor)
    try:
        yield
    finally:
        _actor.reset(token)


_NEEDS_QUOTES = re.compile(r'[ "=\n\r\t]')


def _quote(value: object) -> str:
    text = str(value)
    if not text or _NEEDS_QUOTES.search(text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ").replace("\r", " ") + '"'
    return text


# (second, "YYYY-MM-DDTHH:MM:SS") of the last line: a store writes many lines a second, and
# formatting the date part once per second is most of the cost of the timestamp.
_last_second: tuple[int, str] = (-1, "")


def utc_timestamp(now: float) -> str:
    """``now`` (seconds since the epoch) as ISO 8601 UTC with milliseconds: ``2024-01-02T10:15:00.123Z``."""
    global _last_second
    second, millis = divmod(int(now * 1000), 1000)
    cached = _last_second
    if cached[0] != second:
        cached = _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{millis:03d}Z"


def audit(action: str, **what: object) -> None:
    """Write one audit line: ``<time> <action> by=<actor> key=value ...`` (None values left out)."""
    if not audit_log.isEnabledFor(logging.INFO):
        return
    fields = " ".join([f"{k}={_quote(v)}" for k, v in what.items() if v is not None])
    audit_log.info("%s %s by=%s %s", utc_timestamp(time.time()), action, _quote(current_actor()), fields)
