"""In-process cost of the byte-serving requests (issue 10): the app's own time, no sockets (prints a table).

Drives ``make_app`` directly with the environ waitress would build (no webtest, no lint) for the four
byte-serving workloads of ``compare.py`` (WADO-RS instance and frame 1 with ``transfer-syntax=*``,
WADO-URI ``application/dicom``, WADO-RS series), and beside them the "ceiling" app of
``compare.py`` (``wsgi.file_wrapper`` over a file with the same bytes). Each request is then drained
the way waitress sends a file wrapper (``prepare``, then ``get``/``skip`` in pieces of the socket's send
buffer size, the whole body at once on a loopback socket here),
so the table shows the app call alone and the app call plus the drain, in CPU microseconds per request.
The access log goes through the shipped ini's formatter to /dev/null, as ``serve`` writes it.

    python benchmarks/bench_bytes_inproc.py [--requests 3000] [--profile "WADO-RS instance"] [--sort tottime]

``--profile NAME`` runs that workload under cProfile and prints its top functions. Timings are noisy
on a shared machine: compare rows of one run.
"""
from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import socket
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

from waitress.buffers import ReadOnlyFileBasedBuffer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from corpus import Corpus, stored_app  # noqa: E402


DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAMES_ANY = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def send_piece() -> int:
    """What waitress reads from a file wrapper at a time: the accepted socket's SO_SNDBUF (loopback)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.create_connection(listener.getsockname()):
            accepted, _ = listener.accept()
            with accepted:
                return accepted.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)


SEND_PIECE = send_piece()


def environ(path: str, query: str = "", accept: str | None = None) -> dict[str, Any]:
    """What waitress puts in the environ for a plain keep-alive GET (the fields the app may read)."""
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query, "SCRIPT_NAME": "",
           "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8042", "SERVER_PROTOCOL": "HTTP/1.1",
           "REMOTE_ADDR": "127.0.0.1", "REMOTE_HOST": "127.0.0.1", "REMOTE_PORT": "50000",
           "HTTP_HOST": "127.0.0.1:8042", "HTTP_CONNECTION": "keep-alive", "HTTP_USER_AGENT": "bench",
           "wsgi.url_scheme": "http", "wsgi.file_wrapper": ReadOnlyFileBasedBuffer, "wsgi.multithread": True,
           "wsgi.multiprocess": False, "wsgi.run_once": False, "wsgi.input_terminated": True}
    if accept is not None:
        env["HTTP_ACCEPT"] = accept
    return env


def drain(body: Any) -> int:
    """Send ``body`` the way waitress does (file wrapper: prepare, get + skip per piece), then close it."""
    sent = 0
    try:
        if isinstance(body, ReadOnlyFileBasedBuffer):
            left = body.prepare(None)
            while left > 0:
                chunk = body.get(SEND_PIECE)
                body.skip(len(chunk), True)
                left -= len(chunk)
                sent += len(chunk)
        else:
            for chunk in body:
                sent += len(chunk)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return sent


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
    if not status.startswith("200"):
        raise RuntimeError(f"unexpected status {status}")
    return lambda data: None


def ceiling_app(files: dict[str, tuple[str, str]]) -> Callable[..., Any]:
    """compare.py's ceiling: the path+query's file through ``wsgi.file_wrapper``, nothing else."""
    def app(env: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        key = env["PATH_INFO"] + ("?" + env["QUERY_STRING"] if env.get("QUERY_STRING") else "")
        content_type, path = files[key]
        fh = open(path, "rb")
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(os.fstat(fh.fileno()).st_size))])
        return env["wsgi.file_wrapper"](fh, 1 << 20)
    return app


def measure(app: Callable[..., Any], envs: list[dict[str, Any]], requests: int, with_drain: bool) -> float:
    """Median over 5 rounds of the CPU microseconds per request of this thread (environs copied, as each
    request is new); CPU time, not wall time, so that other processes on a shared machine count less."""
    rounds = []
    per_round = max(1, requests // 5)
    for _ in range(5):
        started = time.thread_time()
        for n in range(per_round):
            body = app(dict(envs[n % len(envs)]), _start_response)
            if with_drain:
                drain(body)
            else:
                close = getattr(body, "close", None)
                if close is not None:
                    close()
        rounds.append((time.thread_time() - started) / per_round * 1e6)
    return statistics.median(rounds)


def build(folder: str, instances: int) -> tuple[Any, dict[str, list[dict[str, Any]]], dict[str, tuple[str, str]]]:
    """A data folder with ``instances`` large CT instances in one series; the app, the workloads and the
    ceiling's files (each response's bytes, fetched once from the app)."""
    corpus = Corpus(1, "large", 1, 1, instances, tag="inproc")
    app = stored_app(corpus, folder)
    refs = list(corpus.refs())
    first = refs[0]
    series = f"/studies/{first.study_uid}/series/{first.series_uid}"
    workloads = {
        "WADO-RS instance": [environ(f"{series}/instances/{r.sop_uid}", accept=DICOM_ANY) for r in refs],
        "WADO-RS frame 1": [environ(f"{series}/instances/{r.sop_uid}/frames/1", accept=FRAMES_ANY) for r in refs],
        "WADO-URI": [environ("/wado", f"requestType=WADO&studyUID={r.study_uid}&seriesUID={r.series_uid}"
                                      f"&objectUID={r.sop_uid}&contentType=application/dicom") for r in refs],
        "WADO-RS series": [environ(series, accept=DICOM_ANY)],
    }
    files: dict[str, tuple[str, str]] = {}
    for name, envs in workloads.items():
        for k, env in enumerate(envs):
            captured: dict[str, str] = {}

            def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                captured.update(headers)
                return lambda data: None
            body = app(dict(env), start)
            out = os.path.join(folder, f"ceiling-{name.replace(' ', '_')}-{k}")
            with open(out, "wb") as fh:
                if isinstance(body, ReadOnlyFileBasedBuffer):
                    body.prepare(None)
                    fh.write(body.get(-1))
                else:
                    for chunk in body:
                        fh.write(chunk)
            body.close()
            files[env["PATH_INFO"] + ("?" + env["QUERY_STRING"] if env["QUERY_STRING"] else "")] = \
                (captured["Content-Type"], out)
    return app, workloads, files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per measurement (series: /40)")
    parser.add_argument("--instances", type=int, default=20, help="0.5 MB instances in the one series")
    parser.add_argument("--profile", metavar="NAME", help="cProfile the workload whose name contains NAME (its app calls, no drain)")
    parser.add_argument("--sort", default="tottime", help="pstats sort key for --profile")
    parser.add_argument("--only", nargs="*", default=None, help="workloads whose name contains a word")
    args = parser.parse_args(argv)

    handler = logging.StreamHandler(open(os.devnull, "w"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
    root = logging.getLogger("dicomweb_wsgi")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False

    with tempfile.TemporaryDirectory() as folder:
        app, workloads, files = build(folder, args.instances)
        ceiling = ceiling_app(files)
        try:
            if args.profile:
                envs = next(envs for name, envs in workloads.items() if args.profile in name)
                measure(app, envs, 200, False)
                profiler = cProfile.Profile()
                profiler.enable()
                measure(app, envs, args.requests, False)
                profiler.disable()
                pstats.Stats(profiler).sort_stats(args.sort).print_stats(35)
                return 0
            print(f"{'workload':<18} {'app µs':>8} {'ceiling':>8} {'app+drain':>10} {'ceil+drain':>11} {'fraction':>9}")
            for name, envs in workloads.items():
                if args.only and not any(word in name for word in args.only):
                    continue
                n = args.requests // 40 if name == "WADO-RS series" else args.requests
                measure(app, envs, max(10, n // 10), True)  # warm the caches and the page cache
                ours = measure(app, envs, n, False)
                ceil = measure(ceiling, envs, n, False)
                ours_d = measure(app, envs, n, True)
                ceil_d = measure(ceiling, envs, n, True)
                print(f"{name:<18} {ours:8.1f} {ceil:8.1f} {ours_d:10.1f} {ceil_d:11.1f} {ceil_d / ours_d:9.2f}")
        finally:
            app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
