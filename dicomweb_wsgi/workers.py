"""``serve --workers N``: one listening socket, N server processes, a parent that only supervises.

One Python process is bound by its GIL; several processes on one data folder use every core (SQLite
WAL lets them share the index; blobs are written under random keys). The parent binds the listening
socket(s) once (``bind_listeners``) and forks the workers (worker 0 first, alone until it serves, so
it creates a new data folder's databases without a race; then the others). Each worker builds its
own app after the fork, so no SQLite connection, thread pool or lock crosses a fork, and runs
waitress on the inherited socket; a new connection goes to a worker holding the fewest
(``accept_balance.py``: the parent maps the shared counts, ``on_exit`` clears a dead worker's).

The parent (``Supervisor``) holds no app, no thread and no database: it restarts a worker that dies
(after a backoff that grows while a worker keeps dying young, logged each time), stops every worker
gracefully on SIGTERM or SIGINT (or after ``max_seconds``) and exits 0. A worker that cannot start
(a configuration or storage error, exit status 2) makes the whole server exit with its status; so
does a replacement that fails to start ``MAX_FAILED_STARTS`` times in a row (a damaged index, a port
taken), so that the service manager sees the failure instead of a server that accepts connections
nobody answers. A serving worker sends a heartbeat every ``HEARTBEAT_SECONDS`` from its event loop;
one silent for ``LIVENESS_SECONDS`` (stuck in a C call holding the GIL, a read from a failing disk) is
killed and replaced. A failed ``fork`` is retried after the backoff. SIGHUP reopens the log files of
every process (for logrotate without ``copytruncate``). Each
worker dies with its parent: Linux sends it SIGTERM when the parent dies (``PR_SET_PDEATHSIG``;
elsewhere a thread watches the parent pid), so a killed parent never leaves workers holding the port.

A worker stopping (``serve_until_stopped``) closes its copy of the listening socket first, finishes
the requests it has already read (for up to ``DRAIN_SECONDS``), closes idle keep-alive connections,
and returns.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

log = logging.getLogger("dicomweb_wsgi.workers")

MAX_WORKERS = 64
STARTUP_SECONDS = 120.0   # every worker must have built its app and be serving by then
DRAIN_SECONDS = 10.0      # a stopping worker finishes the requests it has read for at most this long
STOP_SECONDS = 20.0       # then the parent kills what is left (systemd's TimeoutStopSec is 30 s)
BACKOFF_FIRST = 0.5       # restart delay after a worker that had run for a while
BACKOFF_MAX = 30.0        # the delay doubles for each worker in a row that dies within STABLE_SECONDS
STABLE_SECONDS = 30.0
MAX_FAILED_STARTS = 5     # a worker that cannot start this many times in a row ends the server
HEARTBEAT_SECONDS = 5.0   # a serving worker tells the parent it is alive this often...
LIVENESS_SECONDS = 60.0   # ...and one silent for this long is taken for hung, killed and replaced
PR_SET_PDEATHSIG = 1      # <linux/prctl.h>

# (worker index, ready callback) -> exit status; runs in the forked child.
WorkerTarget = Callable[[int, Callable[[], None]], int]


def bind_listeners(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening TCP sockets for ``host:port`` as waitress would bind them (one per address family).

    Port 0 takes a free port for the first address and the same port for the others.
    """
    infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, socket.IPPROTO_TCP,
                               socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[tuple[int, Any]] = set()
    try:
        for family, socktype, proto, _, sockaddr in infos:
            if (family, sockaddr) in seen:
                continue
            seen.add((family, sockaddr))
            sock = socket.socket(family, socktype, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                sockaddr = (sockaddr[0], sockets[0].getsockname()[1], *sockaddr[2:])
            sock.bind(sockaddr)
            sock.listen(backlog)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def exit_with_parent(parent_pid: int, signum: int = signal.SIGTERM) -> None:
    """Have ``signum`` sent to this process when its parent dies.

    Linux: ``prctl(PR_SET_PDEATHSIG)``; elsewhere (or if that fails) a daemon thread polls the parent pid.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0:
                if os.getppid() != parent_pid:  # the parent died before the request took effect
                    os.kill(os.getpid(), signum)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os.kill(os.getpid(), signum)
    threading.Thread(target=watch, name="dicomweb-parent-watch", daemon=True).start()


def listening_dispatchers(server: Any) -> list[Any]:
    """The listening dispatchers (one per socket) of a waitress server from ``create_server``."""
    from waitress.server import BaseWSGIServer

    socket_map = server.map if hasattr(server, "map") else server._map
    return [obj for obj in socket_map.values() if isinstance(obj, BaseWSGIServer)]


def serve_until_stopped(server: Any, drain_seconds: float = DRAIN_SECONDS,
                        on_listeners_closed: Callable[[], None] = lambda: None,
                        on_tick: Callable[[], None] = lambda: None) -> None:
    """Run a waitress server (from ``create_server``) until SIGTERM or SIGINT, then stop gracefully.

    ``on_tick`` is called from the event loop at most every ``HEARTBEAT_SECONDS`` (a worker's
    heartbeat: it stops when the loop does). SIGHUP reopens the log files.
    Stopping: close this process's listening sockets (the port is free once every worker has), keep
    the loop running while connections still have a request being read, run or answered (at most
    ``drain_seconds``), close idle keep-alive connections, then wait for the request threads.
    """
    from waitress import wasyncore
    from waitress.channel import HTTPChannel

    stop: list[int] = []
    reopen: list[int] = []

    def request_stop(signum: int, frame: Any) -> None:
        stop.append(signum)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGHUP, lambda signum, frame: reopen.append(signum))
    socket_map = server.map if hasattr(server, "map") else server._map
    adj = server.adj
    next_tick = 0.0
    while not stop and socket_map:
        wasyncore.loop(timeout=min(adj.asyncore_loop_timeout, HEARTBEAT_SECONDS), map=socket_map,
                       use_poll=adj.asyncore_use_poll, count=1)
        if reopen:
            reopen.clear()
            reopen_log_files()
        now = time.monotonic()
        if now >= next_tick:
            next_tick = now + HEARTBEAT_SECONDS
            on_tick()
    for obj in listening_dispatchers(server):
        # The dispatcher's own close, not the server's: the server's would also close the trigger
        # that request threads use to wake this loop.
        wasyncore.dispatcher.close(obj)
    on_listeners_closed()
    deadline = time.monotonic() + drain_seconds
    while time.monotonic() < deadline:
        # Read what has arrived first, so a request already sent counts as one being read.
        wasyncore.loop(timeout=0.05, map=socket_map, use_poll=adj.asyncore_use_poll, count=1)
        channels = [obj for obj in socket_map.values() if isinstance(obj, HTTPChannel)]
        if not channels:
            break
        for channel in channels:
            if not (channel.requests or channel.request is not None or channel.total_outbufs_len
                    or _input_waiting(channel.socket)):
                channel.will_close = True  # idle keep-alive: closed on the next loop pass
    server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
    wasyncore.close_all(socket_map)


def reopen_log_files() -> None:
    """Reopen every log file this process writes (after logrotate moved it away)."""
    handlers = set(logging.getLogger().handlers)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            handlers.update(logger.handlers)
    for handler in handlers:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                if handler.stream is not None:
                    handler.stream.close()
                handler.stream = handler._open()
            finally:
                handler.release()


def _input_waiting(sock: socket.socket) -> bool:
    """Whether bytes (or the peer's close) wait unread on a connection: a request sent before the
    stop that the loop has not read yet must not be taken for an idle keep-alive connection."""
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):  # closed meanwhile
        return False


@dataclass
class _Slot:
    """One worker position: its current process (None while waiting for a restart)."""

    index: int
    pid: int | None = None
    started: float = 0.0
    ready: bool = False
    quick_deaths: int = 0
    failed_starts: int = 0
    restart_at: float | None = None
    last_beat: float = 0.0


class Supervisor:
    """Fork ``count`` workers running ``target`` and keep them running until told to stop."""

    def __init__(self, count: int, target: WorkerTarget, sockets: Sequence[socket.socket], *,
                 max_seconds: float = 0.0, stop_seconds: float = STOP_SECONDS,
                 on_exit: Callable[[int], None] = lambda index: None) -> None:
        if not 1 <= count <= MAX_WORKERS:
            raise ValueError(f"workers must be between 1 and {MAX_WORKERS}")
        self.target = target
        self.sockets = list(sockets)
        self.max_seconds = max_seconds
        self.stop_seconds = stop_seconds
        self.on_exit = on_exit  # called in the parent with the index of each worker that ended
        self.slots = [_Slot(i) for i in range(count)]
        self._stopping = False
        self._reopen = False
        self._pid = os.getpid()
        self._wake_r = self._wake_w = self._ready_r = self._ready_w = -1
        self._saved: dict[int, Any] = {}

    # -- the parent ----------------------------------------------------------------------------------
    def run(self, on_ready: Callable[[], None] = lambda: None) -> int:
        """Start the workers, call ``on_ready`` once all serve, supervise; the exit status."""
        self._install()
        try:
            deadline = time.monotonic() + self.max_seconds if self.max_seconds else None
            # Worker 0 first: it creates and migrates the databases of a new data folder, which two
            # processes cannot do at once (SQLite's switch to WAL mode needs the file to itself).
            for group in (self.slots[:1], self.slots[1:]):
                for slot in group:
                    self._spawn(slot)
                failed = self._start_up(group, deadline)
                if failed is not None:
                    return failed
                if self._stopping or (deadline is not None and time.monotonic() >= deadline):
                    return 0
            on_ready()
            return self._supervise(deadline)
        finally:
            self._stop_all()
            self._uninstall()

    def _install(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        self._ready_r, self._ready_w = os.pipe()
        for fd in (self._wake_r, self._wake_w, self._ready_r):
            os.set_blocking(fd, False)
        self._saved[-1] = signal.set_wakeup_fd(self._wake_w)

        def request_stop(signum: int, frame: Any) -> None:
            self._stopping = True

        def request_reopen(signum: int, frame: Any) -> None:
            self._reopen = True
        for signum, handler in ((signal.SIGTERM, request_stop), (signal.SIGINT, request_stop),
                                (signal.SIGHUP, request_reopen), (signal.SIGCHLD, lambda signum, frame: None)):
            self._saved[signum] = signal.signal(signum, handler)

    def _uninstall(self) -> None:
        signal.set_wakeup_fd(self._saved.pop(-1, -1))
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        self._saved.clear()
        for fd in (self._wake_r, self._wake_w, self._ready_r, self._ready_w):
            os.close(fd)
        for sock in self.sockets:
            sock.close()

    def _spawn(self, slot: _Slot) -> None:
        pid = os.fork()
        if pid == 0:
            self._run_child(slot.index)  # never returns
        slot.pid, slot.started, slot.ready, slot.restart_at = pid, time.monotonic(), False, None
        slot.last_beat = slot.started
        log.info("worker %d started (pid %d)", slot.index, pid)

    def _start_up(self, slots: Sequence[_Slot], deadline: float | None) -> int | None:
        """Wait until these workers serve; the exit status to end with if one of them could not start."""
        limit = time.monotonic() + STARTUP_SECONDS
        while not all(slot.ready for slot in slots):
            if self._stopping or (deadline is not None and time.monotonic() >= deadline):
                return None
            if time.monotonic() >= limit:
                log.error("the workers did not start within %.0f s", STARTUP_SECONDS)
                return 1
            self._wait(1.0)
            for slot, status in self._reap():
                if slot.ready:  # started, then died: restarted once all serve
                    self._schedule_restart(slot, status)
                    continue
                code = os.waitstatus_to_exitcode(status)
                log.error("worker %d could not start (%s)", slot.index, _describe(status))
                slot.pid = None
                return code if code > 0 else 1
        return None

    def _supervise(self, deadline: float | None) -> int:
        """Keep the workers running until told to stop; the exit status (not 0 when one cannot start)."""
        while not self._stopping:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                log.info("--max-seconds reached: stopping")
                return 0
            due = [slot.restart_at for slot in self.slots if slot.restart_at is not None]
            timeout = min([1.0] + [t - now for t in due] + ([deadline - now] if deadline is not None else []))
            self._wait(max(0.0, timeout))
            if self._reopen:
                self._reopen = False
                reopen_log_files()
                for slot in self.slots:
                    if slot.pid is not None:
                        _kill(slot.pid, signal.SIGHUP)
            for slot, status in self._reap():
                if not slot.ready:
                    slot.failed_starts += 1
                    if slot.failed_starts >= MAX_FAILED_STARTS:
                        log.error("worker %d could not start %d times in a row (last: %s): stopping the server",
                                  slot.index, slot.failed_starts, _describe(status))
                        slot.pid = None
                        code = os.waitstatus_to_exitcode(status)
                        return code if code > 0 else 1
                self._schedule_restart(slot, status)
            self._kill_hung()
            now = time.monotonic()
            for slot in self.slots:
                if slot.restart_at is not None and slot.restart_at <= now and not self._stopping:
                    try:
                        self._spawn(slot)
                    except OSError as exc:  # ENOMEM, EAGAIN: right after an OOM kill, say
                        slot.started = now
                        self._schedule_restart(slot, 0, f"could not be forked ({exc.strerror})")
        return 0

    def _kill_hung(self) -> None:
        """SIGKILL a worker silent too long: one serving that stopped its heartbeat, or one starting
        for longer than ``STARTUP_SECONDS``; it is then reaped and replaced like any dead worker."""
        now = time.monotonic()
        for slot in self.slots:
            if slot.pid is None:
                continue
            if slot.ready and now - slot.last_beat > LIVENESS_SECONDS:
                log.error("worker %d (pid %d) has sent no heartbeat for %.0f s: killing it",
                          slot.index, slot.pid, now - slot.last_beat)
            elif not slot.ready and now - slot.started > STARTUP_SECONDS:
                log.error("worker %d (pid %d) did not start within %.0f s: killing it",
                          slot.index, slot.pid, STARTUP_SECONDS)
            else:
                continue
            _kill(slot.pid, signal.SIGKILL)
            slot.last_beat = now  # once

    def _schedule_restart(self, slot: _Slot, status: int, what: str = "") -> None:
        lived = time.monotonic() - slot.started
        slot.quick_deaths = slot.quick_deaths + 1 if lived < STABLE_SECONDS else 0
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** slot.quick_deaths)
        slot.restart_at = time.monotonic() + delay
        log.warning("worker %d (pid %s) %s after %.1f s; restarting it in %.1f s",
                    slot.index, slot.pid, what or _describe(status), lived, delay)
        slot.pid = None

    def _wait(self, timeout: float) -> None:
        """Sleep until a signal, a worker's ready message or ``timeout``; note which workers are ready."""
        try:
            readable, _, _ = select.select([self._wake_r, self._ready_r], [], [], timeout)
        except InterruptedError:
            return
        if self._wake_r in readable:
            _drain(self._wake_r)
        if self._ready_r in readable:
            now = time.monotonic()
            for index in _drain(self._ready_r):
                slot = self.slots[index] if index < len(self.slots) else None
                if slot is None or slot.pid is None:
                    continue
                slot.last_beat = now  # the first message says ready, the next ones alive
                if not slot.ready:
                    slot.ready, slot.failed_starts = True, 0
                    log.info("worker %d (pid %d) serving", index, slot.pid)

    def _reap(self) -> list[tuple[_Slot, int]]:
        """The workers that ended since the last call, with their wait status."""
        ended = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            for slot in self.slots:
                if slot.pid == pid:
                    ended.append((slot, status))
                    self.on_exit(slot.index)
        return ended

    def _stop_all(self) -> None:
        """SIGTERM (and SIGCONT, should one be stopped) to every worker; SIGKILL what is left after ``stop_seconds``."""
        for sock in self.sockets:
            sock.close()  # the port is free as soon as every worker has closed its copy too
        running = [slot for slot in self.slots if slot.pid is not None]
        for slot in running:
            for signum in (signal.SIGTERM, signal.SIGCONT):
                _kill(slot.pid, signum)
        deadline = time.monotonic() + self.stop_seconds
        while any(slot.pid is not None for slot in self.slots) and time.monotonic() < deadline:
            self._wait(0.2)
            for slot, status in self._reap():
                if os.waitstatus_to_exitcode(status) != 0:
                    log.warning("worker %d (pid %d) %s while stopping", slot.index, slot.pid, _describe(status))
                slot.pid = None
        for slot in self.slots:
            if slot.pid is not None:
                log.warning("worker %d (pid %d) did not stop within %.0f s: killing it",
                            slot.index, slot.pid, self.stop_seconds)
                _kill(slot.pid, signal.SIGKILL)
                try:
                    os.waitpid(slot.pid, 0)
                except ChildProcessError:
                    pass
                slot.pid = None

    # -- the child -----------------------------------------------------------------------------------
    def _run_child(self, index: int) -> None:
        """In the forked worker: drop the parent's signal plumbing, then run the target and exit."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            for fd in (self._wake_r, self._wake_w, self._ready_r):
                os.close(fd)
            exit_with_parent(self._pid)
            ready_w = self._ready_w
            os.set_blocking(ready_w, False)  # a heartbeat never blocks a worker on a parent not reading

            def ready() -> None:
                """Called once serving, then as a heartbeat (``serve_until_stopped``'s ``on_tick``)."""
                try:
                    os.write(ready_w, bytes([index]))
                except BlockingIOError:  # the parent is not reading: it will see the next one
                    pass
            code = int(self.target(index, ready) or 0)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.exception("worker %d failed", index)
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(code)


def _drain(fd: int) -> bytes:
    data = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"
