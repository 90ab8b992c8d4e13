"""How close to the ceiling a hand-written path could get (issue 10; prints a table; not a test).

``compare.py`` measures byte serving against a do-nothing app (the ceiling) and finds ours under 0.7x
of it for single instances, and QIDO series of a study under 5x Orthanc at one connection. This asks
whether a separate hand-tuned path for such a route would fix that: four WSGI apps, each in its own
process under waitress with the shipped settings (one process, 8 threads), answer the same requests:

* ``ours``: ``make_app`` (router, admission, negotiation, the transaction, the access line);
* ``floor``: only what any answer must do. WADO-URI (``--workload wado-uri``, the default): split the
  query, look the instance up through the same index, open and ``fstat`` its file, write the access
  line, hand the file to ``wsgi.file_wrapper``. QIDO series of a study (``--workload qido-series``):
  run the same index search and join the stored series documents into a JSON array as they are (no
  derived attributes, no URLs: less than a correct answer), then the access line;
* ``floor-nolog``: the same without the access line;
* ``ceiling``: the bytes ours answered, from a table built beforehand (files through
  ``wsgi.file_wrapper``, JSON from memory).

``--orthanc`` adds Orthanc (``orthanc.py``) holding the same corpus, and a column comparing each app
with it. The access line of ``ours`` and ``floor`` goes through the shipped ini's formatter to
/dev/null. Runs are interleaved (every server once per repetition), at least ``--seconds`` long, over
1 and 4 keep-alive connections of ``client.py``; medians of requests/s, p50 latency, the fraction of
the ceiling's rate, and the server's CPU per request are printed.

    python benchmarks/bench_floor.py [--workload wado-uri|qido-series] [--orthanc] [--reps 5] [--seconds 2]
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
from corpus import Corpus, stored_app, stow_bodies  # noqa: E402

APPS = ("ours", "floor", "floor-nolog", "ceiling")
JSON = "application/dicom+json"


def _log_like_serve() -> None:
    """The shipped ini's logging: the access line formatted by the generic formatter, here to /dev/null."""
    handler = logging.StreamHandler(open(os.devnull, "w"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("dicomweb_wsgi").setLevel(logging.INFO)


def _ceiling(manifest: dict[str, list[str]]) -> Callable[..., Any]:
    """Answers each request target with what ours answered: ``[content type, file]`` from the manifest."""
    answers = {}
    for target, (content_type, path) in manifest.items():
        with open(path, "rb") as fh:
            answers[target] = (content_type, fh.read(), path)

    def ceiling(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        target = environ["PATH_INFO"] + "?" + environ["QUERY_STRING"]
        content_type, body, path = answers[target]
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        if content_type == "application/dicom":
            return environ["wsgi.file_wrapper"](open(path, "rb"), 1 << 20)
        return [body]
    return ceiling


def _app(kind: str, workload: str, data_dir: str, manifest_path: str) -> Callable[..., Any]:
    from dicomweb_wsgi.app import make_app
    from dicomweb_wsgi.query import parse_search

    ours = make_app({"dicomweb.data_dir": data_dir, "dicomweb.min_free_space": "0"})
    if kind == "ours":
        return ours
    if kind == "ceiling":
        with open(manifest_path, encoding="utf-8") as fh:
            return _ceiling(json.load(fh))

    archive = ours.archive
    access = logging.getLogger("dicomweb_wsgi.access")
    if kind == "floor-nolog":
        access.setLevel(logging.WARNING)

    def log(environ: dict[str, Any], size: int, started: float) -> None:
        access.info("%s %s %s %s %d %d %.1fms", environ.get("REMOTE_ADDR", "-"), "-", "GET", environ["PATH_INFO"],
                    200, size, (time.perf_counter() - started) * 1000)

    def wado_uri(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        started = time.perf_counter()
        query = dict(piece.split("=", 1) for piece in environ["QUERY_STRING"].split("&"))
        inst = archive.instances(query["studyUID"], query["seriesUID"], query["objectUID"])[0]
        fh = open(archive.path(inst), "rb")
        size = os.fstat(fh.fileno()).st_size
        start_response("200 OK", [("Content-Type", "application/dicom"), ("Content-Length", str(size))])
        log(environ, size, started)
        return environ["wsgi.file_wrapper"](fh, 1 << 20)

    def qido_series(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        started = time.perf_counter()
        study_uid = environ["PATH_INFO"].split("/")[2]
        rows = archive.index.search(parse_search({}, "series", study_uid=study_uid)).rows
        body = ("[" + ",".join(row.series_json or "{}" for row in rows) + "]").encode("utf-8")
        start_response("200 OK", [("Content-Type", JSON), ("Content-Length", str(len(body)))])
        log(environ, len(body), started)
        return [body]
    return wado_uri if workload == "wado-uri" else qido_series


def serve(kind: str, workload: str, data_dir: str, manifest_path: str) -> None:
    """One app under waitress with the shipped settings; prints its URL, serves until terminated."""
    import waitress

    from dicomweb_wsgi.__main__ import WAITRESS_DEFAULTS

    _log_like_serve()
    server = waitress.create_server(_app(kind, workload, data_dir, manifest_path), host="127.0.0.1", port=0,
                                    **WAITRESS_DEFAULTS)
    print(f"http://127.0.0.1:{server.effective_port}", flush=True)
    server.run()


def load(folder: str, workload: str, count: int) -> tuple[Corpus, str, str, list[Call]]:
    """Store the corpus; returns it, the data folder, the ceiling's manifest and the requests.

    WADO-URI: ``count`` 0.5 MB instances of one series. QIDO: ``count`` studies of two series of
    five 10 KB instances."""
    from webtest import TestApp

    if workload == "wado-uri":
        corpus = Corpus(1, "large", 1, 1, count, tag="floor")
        targets = [("/wado", f"requestType=WADO&studyUID={r.study_uid}&seriesUID={r.series_uid}"
                             f"&objectUID={r.sop_uid}&contentType=application/dicom") for r in corpus.refs()]
        headers: tuple[tuple[str, str], ...] = ()
    else:
        corpus = Corpus(1, "small", count, 2, 5, tag="floor")
        targets = [(f"/studies/{r.study_uid}/series", "") for r in list(corpus.refs())[:: 2 * 5]]
        headers = (("Accept", JSON),)
    app = TestApp(stored_app(corpus, folder))
    manifest, calls = {}, []
    for n, (path, query) in enumerate(targets):
        resp = app.get(path + "?" + query if query else path, headers=dict(headers))
        answer = os.path.join(folder, f"answer{n}")
        with open(answer, "wb") as fh:
            fh.write(resp.body)
        manifest[path + "?" + query] = [resp.content_type, answer]
        calls.append(Call("GET", path + "?" + query if query else path, headers))
    manifest_path = os.path.join(folder, "manifest.json")
    with open(manifest_path, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh)
    return corpus, os.path.join(folder, "data"), manifest_path, calls


def start_orthanc(corpus: Corpus, workload: str) -> tuple[Any, str] | None:
    """Orthanc holding ``corpus`` and the base URL the requests go to; None where it is not installed."""
    from orthanc import OrthancProcess, OrthancUnavailable

    try:
        orthanc = OrthancProcess()
    except OrthancUnavailable as exc:
        print(f"Orthanc left out: {exc}", file=sys.stderr)
        return None
    stores = [Call("POST", "/studies", (("Content-Type", ct), ("Accept", JSON)), body, units)
              for ct, body, units in stow_bodies(corpus.files(), 50)]
    run(orthanc.url, stores, len(stores))
    return orthanc, orthanc.root if workload == "wado-uri" else orthanc.url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=("wado-uri", "qido-series"), default="wado-uri")
    parser.add_argument("--count", type=int, default=None,
                        help="instances (WADO-URI, default 100) or studies (QIDO, default 10)")
    parser.add_argument("--orthanc", action="store_true", help="also measure Orthanc holding the same corpus")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum length of each run")
    parser.add_argument("--serve", nargs=4, metavar=("APP", "WORKLOAD", "DATA", "MANIFEST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    count = args.count or (100 if args.workload == "wado-uri" else 10)
    folder = tempfile.mkdtemp(prefix="bench_floor")
    servers: dict[str, tuple[int, str]] = {}
    procs: list[subprocess.Popen[str]] = []
    orthanc = None
    try:
        corpus, data_dir, manifest_path, calls = load(folder, args.workload, count)
        for kind in APPS:
            proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", kind, args.workload,
                                     data_dir, manifest_path], stdout=subprocess.PIPE, text=True)
            procs.append(proc)
            assert proc.stdout is not None
            servers[kind] = (proc.pid, proc.stdout.readline().strip())
        if args.orthanc:
            started = start_orthanc(corpus, args.workload)
            if started is not None:
                orthanc = started[0]
                servers["Orthanc"] = (orthanc.pid, started[1])
        results: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
        for connections in (1, 4):
            for _ in range(args.reps):
                for kind, (pid, url) in servers.items():
                    result = run(url, calls, len(calls), connections=connections, server_pid=pid,
                                 warmup=len(calls), min_seconds=args.seconds)
                    cpu_us = (result.server_cpu or 0.0) / result.requests * 1e6
                    results.setdefault((kind, connections), []).append((result.per_second, result.p50_ms, cpu_us))
        print_table(results, list(servers), orthanc is not None)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
        if orthanc is not None:
            orthanc.stop()
        shutil.rmtree(folder, ignore_errors=True)


def print_table(results: dict[tuple[str, int], list[tuple[float, float, float]]], names: list[str],
                with_orthanc: bool) -> None:
    """Medians per server and connection count; ratios to the ceiling's rate and to Orthanc's p50."""
    header = f"{'conn':>4}  {'server':<12} {'req/s':>8}  {'p50 ms':>7}  {'of ceiling':>10}"
    print(header + (f"  {'Orthanc p50 / p50':>17}" if with_orthanc else "") + f"  {'server CPU us/request':>21}")
    for connections in (1, 4):
        median = {name: [statistics.median(column) for column in zip(*results[(name, connections)])]
                  for name in names}
        for name in names:
            rate, p50, cpu = median[name]
            line = f"{connections:>4}  {name:<12} {rate:>8,.0f}  {p50:>7.2f}  {rate / median['ceiling'][0]:>9.2f}x"
            if with_orthanc:
                line += f"  {median['Orthanc'][1] / p50:>16.2f}x"
            print(line + f"  {cpu:>21,.0f}")


if __name__ == "__main__":
    main()
