"""How close to the ceiling a hand-written WADO-URI path could get (issue 10; prints a table; not a test).

``compare.py`` measures byte serving against a do-nothing app (the ceiling) and finds ours under 0.7x
of it for single instances. This asks whether a separate hand-tuned path for that route would fix
that: four WSGI apps, each in its own process under waitress with the shipped settings (one process,
8 threads), answer the same WADO-URI requests for ``--instances`` 0.5 MB CT instances:

* ``ours``: ``make_app`` (router, admission, negotiation, the WADO-URI handler, the access line);
* ``floor``: only what any WADO-URI answer must do: split the query, look the instance up through
  the same index, open and ``fstat`` its file, write the access line, hand the file to
  ``wsgi.file_wrapper``;
* ``floor-nolog``: the same without the access line;
* ``ceiling``: the query string's file from a table built beforehand, through ``wsgi.file_wrapper``.

The access line of ``ours`` and ``floor`` goes through the shipped ini's formatter to /dev/null.
Runs are interleaved (every app once per repetition), at least ``--seconds`` long, over 1 and 4
keep-alive connections of ``client.py``; medians of requests/s, the fraction of the ceiling, and the
server's CPU per request are printed.

    python benchmarks/bench_floor.py [--instances 100] [--reps 5] [--seconds 2]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from client import Call, run  # noqa: E402
from corpus import Corpus, stored_app  # noqa: E402

APPS = ("ours", "floor", "floor-nolog", "ceiling")


def _log_like_serve() -> None:
    """The shipped ini's logging: the access line formatted by the generic formatter, here to /dev/null."""
    handler = logging.StreamHandler(open(os.devnull, "w"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("dicomweb_wsgi").setLevel(logging.INFO)


def _app(kind: str, data_dir: str, manifest_path: str) -> Callable[..., Any]:
    from dicomweb_wsgi.app import make_app

    ours = make_app({"dicomweb.data_dir": data_dir, "dicomweb.min_free_space": "0"})
    if kind == "ours":
        return ours
    if kind == "ceiling":
        with open(manifest_path, encoding="utf-8") as fh:
            manifest: dict[str, str] = json.load(fh)

        def ceiling(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            fh = open(manifest[environ["QUERY_STRING"]], "rb")
            start_response("200 OK", [("Content-Type", "application/dicom"),
                                      ("Content-Length", str(os.fstat(fh.fileno()).st_size))])
            return environ["wsgi.file_wrapper"](fh, 1 << 20)
        return ceiling

    archive = ours.archive
    access = logging.getLogger("dicomweb_wsgi.access")
    if kind == "floor-nolog":
        access.setLevel(logging.WARNING)

    def floor(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        started = time.perf_counter()
        query = dict(piece.split("=", 1) for piece in environ["QUERY_STRING"].split("&"))
        inst = archive.instances(query["studyUID"], query["seriesUID"], query["objectUID"])[0]
        fh = open(archive.path(inst), "rb")
        size = os.fstat(fh.fileno()).st_size
        start_response("200 OK", [("Content-Type", "application/dicom"), ("Content-Length", str(size))])
        access.info("%s %s %s %s %d %d %.1fms", environ.get("REMOTE_ADDR", "-"), "-", "GET", environ["PATH_INFO"],
                    200, size, (time.perf_counter() - started) * 1000)
        return environ["wsgi.file_wrapper"](fh, 1 << 20)
    return floor


def serve(kind: str, data_dir: str, manifest_path: str) -> None:
    """One app under waitress with the shipped settings; prints its URL, serves until terminated."""
    import waitress

    from dicomweb_wsgi.__main__ import WAITRESS_DEFAULTS

    _log_like_serve()
    server = waitress.create_server(_app(kind, data_dir, manifest_path), host="127.0.0.1", port=0,
                                    **WAITRESS_DEFAULTS)
    print(f"http://127.0.0.1:{server.effective_port}", flush=True)
    server.run()


def load(folder: str, instances: int) -> tuple[str, str, list[Call]]:
    """Store the corpus; returns the data folder, the ceiling's manifest and the requests."""
    corpus = Corpus(1, "large", 1, 1, instances, tag="floor")
    app = stored_app(corpus, folder)
    manifest, calls = {}, []
    for ref in corpus.refs():
        query = (f"requestType=WADO&studyUID={ref.study_uid}&seriesUID={ref.series_uid}"
                 f"&objectUID={ref.sop_uid}&contentType=application/dicom")
        manifest[query] = app.archive.path(app.archive.instances(ref.study_uid, ref.series_uid, ref.sop_uid)[0])
        calls.append(Call("GET", "/wado?" + query))
    manifest_path = os.path.join(folder, "manifest.json")
    with open(manifest_path, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh)
    return os.path.join(folder, "data"), manifest_path, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum length of each run")
    parser.add_argument("--serve", nargs=3, metavar=("APP", "DATA", "MANIFEST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    folder = tempfile.mkdtemp(prefix="bench_floor")
    servers: dict[str, tuple[subprocess.Popen[str], str]] = {}
    try:
        data_dir, manifest_path, calls = load(folder, args.instances)
        for kind in APPS:
            proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", kind, data_dir,
                                     manifest_path], stdout=subprocess.PIPE, text=True)
            assert proc.stdout is not None
            servers[kind] = (proc, proc.stdout.readline().strip())
        results: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for connections in (1, 4):
            for _ in range(args.reps):
                for kind, (proc, url) in servers.items():
                    result = run(url, calls, len(calls), connections=connections, server_pid=proc.pid,
                                 warmup=len(calls), min_seconds=args.seconds)
                    cpu_us = (result.server_cpu or 0.0) / result.requests * 1e6
                    results.setdefault((kind, connections), []).append((result.per_second, cpu_us))
        print(f"{'conn':>4}  {'app':<12} {'req/s':>8}  {'of ceiling':>10}  {'server CPU us/request':>21}")
        for connections in (1, 4):
            ceiling = statistics.median(r for r, _ in results[("ceiling", connections)])
            for kind in APPS:
                rate = statistics.median(r for r, _ in results[(kind, connections)])
                cpu = statistics.median(c for _, c in results[(kind, connections)])
                print(f"{connections:>4}  {kind:<12} {rate:>8,.0f}  {rate / ceiling:>9.2f}x  {cpu:>21,.0f}")
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
