"""The audit trail: one line on the ``dicomweb_wsgi.audit`` logger for every store and delete.

Sites must be able to say who stored or deleted which instance, and when, years later; the line
carries an explicit UTC timestamp so it stands on its own whatever the logging format. Who acts is
set per request by the app (the authenticated user and client address) and per run by the CLI,
through a context variable, so the archive can write the line without knowing about HTTP.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
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


def _quote(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n\r\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ").replace("\r", " ") + '"'
    return text


def audit(action: str, **what: object) -> None:
    """Write one audit line: ``<time> <action> by=<actor> key=value ...`` (None values left out)."""
    when = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    fields = " ".join(f"{k}={_quote(v)}" for k, v in what.items() if v is not None)
    audit_log.info("%s %s by=%s %s", when, action, _quote(current_actor()), fields)
