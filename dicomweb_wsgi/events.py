"""The UPS-RS event channel (PS3.18 §8.10): a WebSocket server that delivers queued event reports.

WSGI cannot upgrade a connection, so the channel is its own small server on the ``websockets``
library, run as a thread of ``dicomweb-wsgi serve`` (setting ``events_listen``) or on its own
(``dicomweb-wsgi events``). A subscriber opens ``ws://HOST:PORT/subscribers/{aetitle}`` (Open
Notification Connection, §8.10.4; any path prefix before ``/subscribers/`` is accepted, so a proxy
can mount the channel anywhere) and receives its event reports as DICOM JSON text frames (Send
Event Report, §8.10.5).

Delivery reads the event outbox of the WorkitemStore, where each change queued its events in the
same transaction as the change. Events go out in the order they were queued; after each batch the
server sends a WebSocket ping and forgets the batch only when the pong arrives, which proves the
client has read every frame before it. A connection lost earlier gets the batch again on reconnect
(at-least-once; the Message ID (0000,0110) repeats, so duplicates can be recognised; it is 16 bits,
taken from the outbox sequence shared by all subscribers, so it tells apart the reports of one batch
unless more than 65,535 others were queued in between). Undelivered
events wait in the outbox for ``events_retention_hours`` (at most ``events_max_pending`` per
subscriber). One connection per AE title: a new one replaces the old.

A commit in this process wakes the channel at once; the channel also reads the outbox every
``poll_interval`` seconds, which is what delivers changes made by other processes: the server beside
``dicomweb-wsgi events``, or the other workers of ``serve --workers N`` (the channel runs in worker 0
only). Both poll every ``CROSS_PROCESS_POLL_S``.

A subscriber authenticates as an HTTP client of the server does (same settings: Basic, bearer, or
a trusted proxy's user header), on the WebSocket handshake, and needs the ``read`` role: event
reports carry workitem attributes. Without credentials the handshake is answered 401 with the
same challenge, a caller without the role 403.

At start the channel queues an SCP Status Change (RESTARTED, WARM START: subscriptions and workitems
are kept) for every subscriber (PS3.4 CC.2.4.3).
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from http import HTTPStatus
from urllib.parse import unquote

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as WsRequest
from websockets.http11 import Response as WsResponse

from . import workflow
from .auth import PEER_KEY, Authenticator
from .config import ConfigError, Settings
from .errors import BadRequest, DicomWebError
from .router import CONVERTERS
from .storage.base import OutboxEvent, WorkitemStore
from .storage.sqlite_workitems import open_workitem_store

log = logging.getLogger("dicomweb_wsgi.events")

_PATH = re.compile(r"^(?:/[^?]*)?/subscribers/([^/?]+)/?(?:\?.*)?$")
BATCH = 100
PURGE_EVERY_S = 60.0
CROSS_PROCESS_POLL_S = 0.25  # with workers, most changes are committed by another process


def render(event: OutboxEvent) -> str:
    """The text frame of one queued event."""
    report = workflow.event_report(event.workitem_uid, event.event_type, json.loads(event.attrs_json), event.seq)
    return json.dumps(report, ensure_ascii=False, separators=(",", ":"))


def aetitle_of(path: str) -> str | None:
    """The subscriber's AE title in ``…/subscribers/{aetitle}``, or None if the path is not one."""
    m = _PATH.match(path)
    if m is None:
        return None
    try:
        return CONVERTERS["aetitle"][1](unquote(m.group(1)))
    except BadRequest:
        return None


class EventChannel:
    """The WebSocket server, on a thread with its own asyncio loop; ``start()`` returns when it listens."""

    def __init__(self, store: WorkitemStore, host: str = "127.0.0.1", port: int = 0, *,
                 poll_interval: float = 1.0, ack_timeout: float = 30.0,
                 authenticator: Authenticator | None = None) -> None:
        self.store = store
        self.authenticator = authenticator
        self.host = host
        self.port = port
        self.poll_interval = poll_interval
        self.ack_timeout = ack_timeout
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._by_ae: dict[str, ServerConnection] = {}
        self._wakers: set[asyncio.Event] = set()

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> EventChannel:
        """Listen (port 0 picks one, see ``port``), announce the restart, and serve in the background."""
        self.store.broadcast(workflow.scp_status_event("RESTARTED"))
        self.store.add_listener(self._notify)
        self._thread = threading.Thread(target=self._run, name="dicomweb-events", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the event channel did not start")
        if self._failure is not None:
            raise self._failure
        return self

    def stop(self, timeout: float = 10.0) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> EventChannel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the loop thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start(), or logged once running
            if not self._ready.is_set():
                self._failure = exc
                self._ready.set()
            else:
                log.exception("event channel stopped")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        async with serve(self._handle, self.host, self.port, process_request=self._check_path,
                         ping_interval=20, ping_timeout=self.ack_timeout, max_size=1 << 16) as server:
            sockname = next(iter(server.sockets)).getsockname()
            self.host, self.port = sockname[0], sockname[1]
            self._ready.set()
            purger = asyncio.ensure_future(self._purge_periodically())
            try:
                await self._stopping.wait()
            finally:
                purger.cancel()

    def _notify(self) -> None:
        """Called by the store after a commit that queued events (any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._wake_all)
        except RuntimeError:
            pass

    def _wake_all(self) -> None:
        for waker in list(self._wakers):
            waker.set()

    async def _purge_periodically(self) -> None:
        while True:
            await asyncio.sleep(PURGE_EVERY_S)
            try:
                await asyncio.to_thread(self.store.purge)
            except Exception:
                log.exception("purging the event outbox failed")

    def _check_path(self, connection: ServerConnection, request: WsRequest) -> WsResponse | None:
        """Refuse a handshake for another path (404), or from a caller the server would refuse (401/403)."""
        if aetitle_of(request.path) is None:
            return connection.respond(HTTPStatus.NOT_FOUND, "open ws://HOST:PORT/subscribers/{aetitle}\n")
        if self.authenticator is None or not self.authenticator.enabled:
            return None
        environ = {"HTTP_" + name.upper().replace("-", "_"): value for name, value in request.headers.raw_items()}
        peer = connection.remote_address[0] if connection.remote_address else ""
        environ["REMOTE_ADDR"] = environ[PEER_KEY] = peer
        try:
            principal = self.authenticator.identify(environ)
            self.authenticator.authorize(principal, "GET", request.path)
        except DicomWebError as exc:
            log.warning("event channel refused %s from %s: %s", aetitle_of(request.path), peer, exc.reason)
            response = connection.respond(HTTPStatus(exc.status), exc.reason + "\n")
            for name, value in exc.headers.items():
                response.headers[name] = value
            return response
        log.info("subscriber %s authenticated as %s", aetitle_of(request.path), principal.name)
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        ae = aetitle_of(ws.request.path) if ws.request is not None else None
        if ae is None:
            return
        previous = self._by_ae.get(ae)
        self._by_ae[ae] = ws
        if previous is not None:
            await previous.close(4000, "replaced by a newer connection for this AE title")
        waker = asyncio.Event()
        self._wakers.add(waker)
        log.info("subscriber %s connected from %s", ae, ws.remote_address)
        discarding = asyncio.ensure_future(self._discard_incoming(ws))
        try:
            await self._deliver(ws, ae, waker)
        except (ConnectionClosed, asyncio.TimeoutError):
            pass
        finally:
            discarding.cancel()
            self._wakers.discard(waker)
            if self._by_ae.get(ae) is ws:
                del self._by_ae[ae]
            log.info("subscriber %s disconnected", ae)

    @staticmethod
    async def _discard_incoming(ws: ServerConnection) -> None:
        """Read and drop whatever the client sends: left unread, its messages would stop the library
        reading the socket once its queue is full, and the pongs that acknowledge delivery with them."""
        try:
            async for _ in ws:
                pass
        except ConnectionClosed:
            pass

    async def _deliver(self, ws: ServerConnection, ae: str, waker: asyncio.Event) -> None:
        closed = asyncio.ensure_future(ws.wait_closed())
        try:
            while not closed.done():
                waker.clear()
                events = await asyncio.to_thread(self.store.pending_events, ae, BATCH)
                if events:
                    for event in events:
                        await ws.send(render(event))
                    # The pong comes after the client has read every frame sent before the ping.
                    pong = await ws.ping()
                    await asyncio.wait_for(pong, self.ack_timeout)
                    await asyncio.to_thread(self.store.ack_events, ae, events[-1].seq)
                    continue
                woken = asyncio.ensure_future(waker.wait())
                await asyncio.wait({woken, closed}, timeout=self.poll_interval,
                                   return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
        finally:
            closed.cancel()


# -- running it ----------------------------------------------------------------------------------------

DEFAULT_LISTEN = "127.0.0.1:8043"


def _listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"the event channel address must be HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def start_event_channel(settings: Settings, store: WorkitemStore, listen: str | None = None, *,
                        poll_interval: float = 1.0) -> EventChannel | None:
    """Start the channel on ``listen`` or the ``events_listen`` setting (None when neither is set); print its URL."""
    address = listen or settings.events_listen
    if not address:
        return None
    host, port = _listen(address)
    try:
        channel = EventChannel(store, host, port, poll_interval=poll_interval,
                               authenticator=Authenticator(settings)).start()
    except OSError as exc:
        raise ConfigError(f"cannot run the event channel on {address}: {exc.strerror or exc}") from exc
    print(f"dicomweb_wsgi events on {channel.url}/subscribers/{{aetitle}}", flush=True)
    return channel


def run_event_channel(settings: Settings, listen: str | None, max_seconds: float = 0) -> int:
    """``dicomweb-wsgi events``: the channel alone, on the data folder's outbox, until interrupted."""
    store = open_workitem_store(settings)
    channel = start_event_channel(settings, store, listen or settings.events_listen or DEFAULT_LISTEN,
                                  poll_interval=CROSS_PROCESS_POLL_S)
    try:
        threading.Event().wait(max_seconds or None)
    except KeyboardInterrupt:
        pass
    finally:
        if channel is not None:
            channel.stop()
        store.close()
    return 0
