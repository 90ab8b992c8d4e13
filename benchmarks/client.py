"""Benchmark client: drives any DICOMweb base URL over N concurrent keep-alive connections.

A small HTTP/1.1 client on raw sockets (no ``requests``, no header objects): request bytes are
built before timing starts, response bodies are read into one scratch buffer and thrown away
(``Content-Length`` or chunked), so the client costs a few tens of microseconds of CPU per
request and the servers, not the client, set the pace. Every run reports the client's own CPU
seconds next to the server's (read from ``/proc/<pid>/stat``, summed over the server's process tree:
``serve --workers N`` is a parent and N workers), which is the proof: a client that uses a fraction
of the CPU the server uses is not what limits the numbers.

    python benchmarks/client.py http://127.0.0.1:8042/dicom-web /studies --requests 200 --connections 4
"""
from __future__ import annotations

import argparse
import itertools
import os
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence
from urllib.parse import urlsplit

SCRATCH = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Call:
    """One prepared request: method, path (with query), extra header lines, body, and its unit count.

    ``units`` is what throughput counts (instances stored, or 1 per request); ``expect`` the
    status that counts as success.
    """

    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    units: int = 1
    expect: tuple[int, ...] = (200,)


class HttpError(RuntimeError):
    """A response with a status the workload did not expect (the run is invalid)."""


class Connection:
    """One keep-alive HTTP/1.1 connection to ``host:port``."""

    def __init__(self, host: str, port: int, timeout: float = 600.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.sock: socket.socket | None = None
        self.buf = bytearray()
        self.scratch = memoryview(bytearray(SCRATCH))

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.buf = sock, bytearray()
        return sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def send(self, head: bytes, body: bytes) -> tuple[int, int, bytes | None]:
        """Send one request (``head`` ends with the blank line); return (status, body bytes, kept body).

        The body is kept only when it is small (under 1 MiB, for checks); large ones are counted.
        A connection the server closed between requests is reopened once.
        """
        for attempt in (0, 1):
            sock = self.sock or self._connect()
            try:
                if len(body) < 65536:
                    sock.sendall(head + body)
                else:
                    sock.sendall(head)
                    sock.sendall(body)
                return self._response()
            except (ConnectionError, _Closed):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _recv(self) -> None:
        assert self.sock is not None
        data = self.sock.recv(65536)
        if not data:
            raise _Closed()
        self.buf += data

    def _line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            self._recv()

    def _response(self) -> tuple[int, int, bytes | None]:
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            self._recv()
        head = bytes(self.buf[:end]).decode("latin-1")
        del self.buf[:end + 4]
        lines = head.split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length: int | None = None
        chunked = close = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding":
                chunked = "chunked" in value.lower()
            elif name == "connection":
                close = "close" in value.lower()
        kept = bytearray()
        if status in (204, 304) or 100 <= status < 200:
            total = 0
        elif chunked:
            total = 0
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():  # trailers
                        pass
                    break
                self._body(size, kept, total)
                total += size
                self._line()
        elif length is not None:
            total = length
            self._body(length, kept, 0)
        else:  # read to close
            total = 0
            while True:
                try:
                    self._recv()
                except _Closed:
                    break
            total = len(self.buf)
            kept += self.buf[:SCRATCH]
            self.buf = bytearray()
            close = True
        if close:
            self.close()
        return status, total, bytes(kept) if total <= SCRATCH else None

    def _body(self, n: int, kept: bytearray, already: int) -> None:
        """Consume ``n`` body bytes, keeping them while the whole body is under 1 MiB."""
        take = min(n, len(self.buf))
        if take:
            if already + take <= SCRATCH:
                kept += self.buf[:take]
            del self.buf[:take]
            n -= take
            already += take
        assert self.sock is not None
        while n > 0:
            got = self.sock.recv_into(self.scratch, min(n, SCRATCH))
            if not got:
                raise _Closed()
            if already + got <= SCRATCH:
                kept += self.scratch[:got]
            n -= got
            already += got


class _Closed(ConnectionError):
    pass


def request_head(call: Call, host: str, prefix: str) -> bytes:
    lines = [f"{call.method} {prefix}{call.path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in call.headers]
    if call.body or call.method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(call.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``serve --workers N``: the parent and its workers), from /proc."""
    tree, index = [pid], 0
    while index < len(tree):
        try:
            tasks = os.listdir(f"/proc/{tree[index]}/task")
        except OSError:
            tasks = []
        for task in tasks:
            try:
                with open(f"/proc/{tree[index]}/task/{task}/children", "rb") as fh:
                    tree += [int(child) for child in fh.read().split()]
            except OSError:
                pass
        index += 1
    return tree


def _stat_fields(pid: int) -> list[bytes]:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        return fh.read().rsplit(b")", 1)[1].split()


def process_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` and its descendants, counting the
    children it has already reaped (a restarted worker); None: this process."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = _stat_fields(pid)
    total = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    for child in process_tree(pid)[1:]:
        try:
            total += sum(int(f) for f in _stat_fields(child)[11:13])
        except OSError:  # ended meanwhile
            pass
    return total / CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` now."""
    with open(f"/proc/{pid}/status", "rb") as fh:
        for line in fh:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def pss_bytes(pid: int) -> int:
    """Proportional set size of ``pid`` now: its private pages plus its share of pages it shares with
    other processes (the copy-on-write modules of ``serve --workers``), so sums over processes count
    every page once."""
    with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
        for line in fh:
            if line.startswith(b"Pss:"):
                return int(line.split()[1]) * 1024
    return 0


class RssSampler:
    """Samples the RSS of a process tree every ``interval`` seconds in a thread.

    ``peak`` is the largest sum over the process and its descendants (parent + workers) seen,
    ``peak_single`` the largest single process, ``peak_pss`` the largest sum of proportional set sizes
    (what the tree takes from the machine: shared pages counted once). The tree is looked up again every ``REFRESH`` samples
    (a restarted worker joins it), so sampling stays cheap next to the server.
    """

    REFRESH = 50

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid, self.interval = pid, interval
        self._pids = process_tree(pid)
        self.peak = self.peak_single = self.peak_pss = 0
        self._sample()
        self.start_rss, self.start_single = self.peak, self.peak_single
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        sizes, pss = [], 0
        for pid in self._pids:
            try:
                sizes.append(rss_bytes(pid))
                pss += pss_bytes(pid)
            except OSError:
                if pid == self.pid:
                    raise
        self.peak = max(self.peak, sum(sizes))
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_single = max([self.peak_single] + sizes)

    def _run(self) -> None:
        samples = 0
        while not self._stop.wait(self.interval):
            samples += 1
            try:
                if samples % self.REFRESH == 0:
                    self._pids = process_tree(self.pid)
                self._sample()
            except OSError:
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


@dataclass
class RunResult:
    """One run of one workload against one server."""

    requests: int
    units: int
    seconds: float
    latencies: list[float]
    bytes_in: int
    bytes_out: int
    client_cpu: float
    server_cpu: float | None
    samples: list[bytes] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.units / self.seconds if self.seconds else 0.0

    @property
    def mb_per_second(self) -> float:
        return self.bytes_in / 1e6 / self.seconds if self.seconds else 0.0

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies) * 1000 if self.latencies else 0.0


def run(base_url: str, calls: Sequence[Call] | Callable[[int], Call], count: int, connections: int = 1,
        server_pid: int | None = None, warmup: int = 0, max_seconds: float = 120.0,
        min_seconds: float = 0.0) -> RunResult:
    """Send ``count`` requests (``calls[i % len]`` or ``calls(i)``) over ``connections`` keep-alive connections.

    Request bytes are built before the clock starts. With ``min_seconds``, the requests are sent
    again from the first until that much time has passed (for idempotent requests: a run long
    enough for stable medians and CPU accounting, whose clock ticks are 10 ms). Stops early (fewer
    requests) after ``max_seconds``. Raises ``HttpError`` on an unexpected status.
    """
    parts = urlsplit(base_url)
    host, port, prefix = parts.hostname or "127.0.0.1", parts.port or 80, parts.path.rstrip("/")
    host_header = f"{host}:{port}"
    if callable(calls):
        prepared_calls = [calls(i) for i in range(count + warmup)]
    else:
        prepared_calls = [calls[i % len(calls)] for i in range(count + warmup)]
    heads = [request_head(c, host_header, prefix) for c in prepared_calls]
    conns = [Connection(host, port) for _ in range(connections)]
    try:
        for i in range(warmup):
            status, _, body = conns[i % connections].send(heads[i], prepared_calls[i].body)
            _check(status, prepared_calls[i], body)
        todo = itertools.count(warmup)
        end = count + warmup
        latencies: list[float] = []
        totals = [0, 0, 0]  # bytes in, bytes out, units
        samples: list[bytes] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def worker(conn: Connection) -> None:
            mine: list[float] = []
            got = sent = units = 0
            try:
                while True:
                    i = next(todo)
                    now = time.perf_counter()
                    if now > deadline or errors or (i >= end and now >= long_enough):
                        break
                    if i >= end:
                        i = warmup + (i - warmup) % count
                    call = prepared_calls[i]
                    started = time.perf_counter()
                    status, size, body = conn.send(heads[i], call.body)
                    mine.append(time.perf_counter() - started)
                    _check(status, call, body)
                    got += size
                    sent += len(heads[i]) + len(call.body)
                    units += call.units
                    if len(samples) < 2 and body is not None:
                        samples.append(body)
            except BaseException as exc:  # noqa: BLE001 - reported by the caller
                errors.append(exc)
            with lock:
                latencies.extend(mine)
                totals[0] += got
                totals[1] += sent
                totals[2] += units

        cpu0, server0 = process_cpu(None), process_cpu(server_pid) if server_pid else None
        started = time.perf_counter()
        deadline, long_enough = started + max_seconds, started + min_seconds
        threads = [threading.Thread(target=worker, args=(c,)) for c in conns]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - started
        client_cpu = process_cpu(None) - cpu0
        server_cpu = process_cpu(server_pid) - server0 if server_pid and server0 is not None else None
        if errors:
            raise errors[0]
        return RunResult(len(latencies), totals[2], seconds, latencies, totals[0], totals[1], client_cpu, server_cpu,
                         samples)
    finally:
        for c in conns:
            c.close()


def _check(status: int, call: Call, body: bytes | None) -> None:
    if status not in call.expect:
        detail = (body or b"")[:300].decode("utf-8", "replace")
        raise HttpError(f"{call.method} {call.path[:120]} -> {status} (expected {call.expect}): {detail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base_url")
    parser.add_argument("path", help="path under the base URL, with its query string")
    parser.add_argument("--accept", default="application/dicom+json")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--pid", type=int, help="server PID, to report its CPU next to ours")
    args = parser.parse_args()
    result = run(args.base_url, [Call("GET", args.path, (("Accept", args.accept),))], args.requests,
                 args.connections, server_pid=args.pid, warmup=1)
    server = f", server CPU {result.server_cpu:.2f} s" if result.server_cpu is not None else ""
    print(f"{result.requests} requests in {result.seconds:.2f} s: {result.per_second:.1f}/s, "
          f"p50 {result.p50_ms:.2f} ms, {result.mb_per_second:.1f} MB/s; client CPU {result.client_cpu:.2f} s{server}")


if __name__ == "__main__":
    main()
