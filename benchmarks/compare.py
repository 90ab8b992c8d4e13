"""Side-by-side benchmark: dicomweb_wsgi against a reference Orthanc, on one machine, one command.

    python benchmarks/compare.py                       # defaults: see --help; a few minutes
    python benchmarks/compare.py --studies 20 --reps 5 --markdown /tmp/table.md

What it does, all on 127.0.0.1:

1. starts our server as shipped (``dicomweb-wsgi serve --config conf/dicomweb.ini``: fsync on,
   SQLite synchronous=FULL, its waitress settings and its ``workers`` processes) in a subprocess,
   a reference Orthanc + DICOMweb plugin (``orthanc.py``; when it is not installed the run goes
   on with ours alone and says so) and the *ceiling*: a do-nothing WSGI app under the same
   waitress settings, in as many processes, that answers every GET workload's requests with the
   bytes our server sent, read from a file through ``wsgi.file_wrapper`` (what waitress itself
   can do; the target of >= 0.7x of it applies to the byte-serving workloads);
2. loads the same deterministic corpus (``corpus.py``) into both servers by STOW-RS;
3. runs every workload at 1 and 4 keep-alive connections (``client.py``), interleaving servers
   and workloads, ``--reps`` times, alternating which server goes first;
4. prints medians with the ratio to Orthanc and to the ceiling, the client's and the servers'
   CPU (the client's must stay well below the server's for the numbers to mean anything), and
   the peak RSS of each server while storing and then retrieving a ``--big-mb`` study: the sum
   over its processes (parent + workers) and the largest single process.

``--variant NAME:WORKERS=2`` adds a column for ours with ``--workers 2`` (``CONFIG=FILE`` serves
with another ini file; any other KEY=VALUE is put in the server's environment).

The machine is shared and noisy: compare the ratios of one run, not absolute numbers across runs.
``--qido-scaling`` also runs ``bench_qido`` (in-process QIDO at 1,000 and 100,000 instances).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

from client import Call, RssSampler, RunResult, process_tree, run  # noqa: E402
from corpus import Corpus, InstanceRef, stow_bodies  # noqa: E402
from orthanc import OrthancProcess, OrthancUnavailable  # noqa: E402

DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAMES_ANY = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
JSON = "application/dicom+json"
OURS, ORTHANC, CEILING = "dicomweb_wsgi", "Orthanc", "ceiling"
SHIPPED_INI = os.path.join(os.path.dirname(HERE), "conf", "dicomweb.ini")


# -- the servers -----------------------------------------------------------------------------------
@dataclass
class Target:
    """One server under test: DICOMweb base URL, server root (for WADO-URI), PID, stop function."""

    name: str
    url: str
    root: str
    pid: int
    stop: Callable[[], None]


def start_ours(data_dir: str, max_seconds: float, name: str = OURS, env: dict[str, str] | None = None) -> Target:
    """``dicomweb-wsgi serve --config conf/dicomweb.ini`` as shipped (tests/serverproc.py), optionally varied.

    Two keys of ``env`` are not environment variables: ``CONFIG``, the ``--config`` ini file to
    serve with instead, and ``WORKERS``, passed as ``--workers``. The PID is the parent's; the
    CPU and RSS figures cover its workers too.
    """
    from tests.serverproc import ServerProcess

    env = dict(env or {})
    config = env.pop("CONFIG", SHIPPED_INI)
    workers = env.pop("WORKERS", None)
    server = ServerProcess(data_dir, config=config, max_seconds=max_seconds, env=env,
                           extra=("--workers", workers) if workers else ())
    return Target(name, server.url, server.url, server.proc.pid, server.stop)


def shipped_workers() -> int:
    """``[server:main] workers`` of the shipped ini (1 when absent)."""
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    parser.read(SHIPPED_INI)
    return parser.getint("server:main", "workers", fallback=1)


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """``NAME:KEY=VALUE,KEY=VALUE`` -> (name, environment)."""
    name, _, rest = text.partition(":")
    env = dict(item.split("=", 1) for item in rest.split(",") if "=" in item)
    if not name or not env:
        raise SystemExit(f"--variant {text!r}: expected NAME:KEY=VALUE[,KEY=VALUE...]")
    return name, env


def start_orthanc() -> tuple[Target, str]:
    orthanc = OrthancProcess()
    version = orthanc.version
    try:
        with urllib.request.urlopen(orthanc.root + "/plugins/dicom-web", timeout=10) as resp:
            version += " + DICOMweb " + json.load(resp).get("Version", "?")
    except OSError:
        pass
    return Target(ORTHANC, orthanc.url, orthanc.root, orthanc.pid, orthanc.stop), version


def start_ceiling(manifest: str, workers: int) -> Target:
    """The do-nothing WSGI app (``--serve-ceiling``) in its own process (and ``workers`` worker processes)."""
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve-ceiling", manifest,
                             "--ceiling-workers", str(workers)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline().strip()
    except BaseException:  # SIGTERM (SystemExit) while it starts: not left running
        proc.kill()
        raise
    if not line.startswith("http://"):
        proc.kill()
        raise RuntimeError(f"ceiling server did not start: {line}")

    def stop() -> None:
        proc.terminate()
        proc.wait(timeout=10)
    return Target(CEILING, line, line, proc.pid, stop)


def serve_ceiling(manifest_path: str, workers: int = 1) -> None:
    """Answer each known path+query with its file, through ``wsgi.file_wrapper``; nothing else.

    With ``workers`` > 1, in that many processes on one socket, as ``serve --workers`` runs ours.
    """
    import waitress

    from dicomweb_wsgi.__main__ import WAITRESS_DEFAULTS

    with open(manifest_path, encoding="utf-8") as fh:
        manifest: dict[str, list[str]] = json.load(fh)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        key = environ["PATH_INFO"] + ("?" + environ["QUERY_STRING"] if environ.get("QUERY_STRING") else "")
        entry = manifest.get(key)
        if entry is None:
            start_response("404 Not Found", [("Content-Length", "0")])
            return []
        content_type, path = entry
        fh = open(path, "rb")
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(os.fstat(fh.fileno()).st_size))])
        return environ["wsgi.file_wrapper"](fh, 1 << 20)

    if workers > 1:
        from dicomweb_wsgi.workers import Supervisor, bind_listeners, serve_until_stopped

        sockets = bind_listeners("127.0.0.1", 0, 1024)
        port = sockets[0].getsockname()[1]

        def worker(index: int, ready: Callable[[], None]) -> int:
            server = waitress.create_server(app, sockets=sockets, **WAITRESS_DEFAULTS)
            ready()
            serve_until_stopped(server)
            return 0
        Supervisor(workers, worker, sockets).run(on_ready=lambda: print(f"http://127.0.0.1:{port}", flush=True))
        return
    server = waitress.create_server(app, host="127.0.0.1", port=0, **WAITRESS_DEFAULTS)
    print(f"http://127.0.0.1:{server.effective_port}", flush=True)
    server.run()


# -- workloads -------------------------------------------------------------------------------------
@dataclass
class Workload:
    """A named set of requests, how many to send per run, and how its result is summarised."""

    name: str
    calls: Callable[[Target, int], list[Call]]  # (target, repetition) -> requests
    count: int
    metric: str  # "per_second" | "mb_per_second" | "p50_ms"
    unit: str
    target: float | None
    group: str
    byte_serving: bool = False
    wado_uri: bool = False
    stow: Corpus | None = None
    per_request: int = 1


@dataclass
class Loaded:
    """What is in both archives after loading: the large and small corpora."""

    large: Corpus
    small: Corpus

    def large_refs(self) -> list[InstanceRef]:
        return list(self.large.refs())

    def series_refs(self) -> list[InstanceRef]:
        refs = self.large_refs()
        return refs[:: self.large.instances]

    def study_refs(self) -> list[InstanceRef]:
        refs = self.large_refs()
        return refs[:: self.large.instances * self.large.series]

    def small_series_refs(self) -> list[InstanceRef]:
        return list(self.small.refs())[:: self.small.instances]


def _inst(r: InstanceRef) -> str:
    return f"/studies/{r.study_uid}/series/{r.series_uid}/instances/{r.sop_uid}"


def build_workloads(loaded: Loaded, args: argparse.Namespace) -> list[Workload]:
    instances = loaded.large_refs()[: args.distinct]
    series = loaded.series_refs()
    studies = loaded.study_refs()
    small_series = loaded.small_series_refs()
    n = args.requests
    dicom = (("Accept", DICOM_ANY),)
    js = (("Accept", JSON),)

    def cycle(refs: list[InstanceRef], path: Callable[[InstanceRef], str], headers: tuple[tuple[str, str], ...]
              ) -> Callable[[Target, int], list[Call]]:
        return lambda target, rep: [Call("GET", path(r), headers) for r in refs]

    out = [
        Workload("QIDO studies PatientName=J*", cycle([studies[0]], lambda r: "/studies?PatientName=J*", js),
                 n, "p50_ms", "ms p50", 5.0, "QIDO"),
        Workload("QIDO series of a study", cycle(studies, lambda r: f"/studies/{r.study_uid}/series", js),
                 n, "p50_ms", "ms p50", 5.0, "QIDO"),
        Workload("QIDO instances of a series",
                 cycle(series + small_series, lambda r: f"/studies/{r.study_uid}/series/{r.series_uid}/instances", js),
                 max(10, n // 4), "p50_ms", "ms p50", 5.0, "QIDO"),
        Workload("WADO-RS instance (transfer-syntax=*)", cycle(instances, _inst, dicom),
                 n, "per_second", "req/s", 1.5, "WADO", byte_serving=True),
        Workload("WADO-RS series (transfer-syntax=*)",
                 cycle(series, lambda r: f"/studies/{r.study_uid}/series/{r.series_uid}", dicom),
                 max(4, n // 40), "mb_per_second", "MB/s", 1.0, "WADO", byte_serving=True),
        Workload("WADO-RS frame 1 (transfer-syntax=*)", cycle(instances, lambda r: _inst(r) + "/frames/1",
                                                               (("Accept", FRAMES_ANY),)),
                 n, "per_second", "req/s", 1.5, "WADO", byte_serving=True),
        Workload("study metadata", cycle(studies, lambda r: f"/studies/{r.study_uid}/metadata", js),
                 max(10, n // 10), "p50_ms", "ms p50", 20.0, "metadata"),
        Workload("WADO-URI (application/dicom)",
                 cycle(instances, lambda r: f"/wado?requestType=WADO&studyUID={r.study_uid}&seriesUID="
                       f"{r.series_uid}&objectUID={r.sop_uid}&contentType=application/dicom", ()),
                 n, "per_second", "req/s", 1.5, "WADO-URI", byte_serving=True, wado_uri=True),
    ]
    for kind, per_request, count in (("large", 1, args.stow_large), ("large", 50, args.stow_large * 4),
                                     ("small", 1, args.stow_small), ("small", 50, args.stow_small * 4)):
        label = "0.5 MB" if kind == "large" else "10 KB"
        instances_per_run = max(per_request, count)
        corpus = Corpus(args.seed, kind, 1, 1, instances_per_run, tag="stow")
        out.append(Workload(f"STOW {per_request} x {label} per request", _stow_calls(corpus, per_request),
                            instances_per_run // per_request, "per_second", "inst/s", 1.5, "STOW",
                            stow=corpus, per_request=per_request))
    return out


def _stow_calls(template: Corpus, per_request: int) -> Callable[[Target, int], list[Call]]:
    """Fresh instances for every run (the tag names the run), the same for every server."""
    cache: dict[str, list[Call]] = {}

    def calls(target: Target, run_id: int) -> list[Call]:
        tag = f"stow-{template.kind}-{per_request}-{run_id}"
        if tag not in cache:
            cache.clear()  # one run's bodies at a time in memory
            corpus = Corpus(template.seed, template.kind, 1, 1, template.instances, tag=tag)
            cache[tag] = [Call("POST", "/studies", (("Content-Type", ct), ("Accept", JSON)), body, units)
                          for ct, body, units in stow_bodies(corpus.files(), per_request)]
        return cache[tag]
    return calls


# -- running ---------------------------------------------------------------------------------------
@dataclass
class Cell:
    """Results of one (workload, connections, server) over the repetitions."""

    runs: list[RunResult] = field(default_factory=list)

    def value(self, metric: str) -> float:
        return statistics.median(getattr(r, metric) for r in self.runs)

    def cpu_share(self, attr: str) -> float:
        """Median CPU use in % of one core over the run's wall time."""
        values = [getattr(r, attr) / r.seconds * 100 for r in self.runs if getattr(r, attr) is not None and r.seconds]
        return statistics.median(values) if values else float("nan")


def load_corpus(target: Target, loaded: Loaded) -> float:
    """Store both corpora (50 instances per request); returns seconds taken."""
    started = time.perf_counter()
    for corpus in (loaded.large, loaded.small):
        for study in range(corpus.studies):
            files = (corpus.instance_bytes(study, se, i) for se in range(corpus.series) for i in range(corpus.instances))
            calls = [Call("POST", "/studies", (("Content-Type", ct), ("Accept", JSON)), body, units)
                     for ct, body, units in stow_bodies(files, 50)]
            run(target.url, calls, len(calls))
    return time.perf_counter() - started


def build_manifest(ours: Target, workloads: list[Workload], folder: str) -> str:
    """Fetch each byte-serving response once from our server; the ceiling serves these bytes."""
    manifest: dict[str, list[str]] = {}
    for workload in workloads:
        if workload.stow:
            continue
        for number, call in enumerate(workload.calls(ours, 0)):
            if call.path in manifest:
                continue
            request = urllib.request.Request(ours.root + call.path, headers=dict(call.headers))
            with urllib.request.urlopen(request, timeout=600) as resp:
                path = os.path.join(folder, f"{len(manifest)}.bin")
                with open(path, "wb") as out:
                    shutil.copyfileobj(resp, out, 1 << 20)
                manifest[call.path] = [resp.headers.get("Content-Type", "application/octet-stream"), path]
    path = os.path.join(folder, "manifest.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh)
    return path


def run_all(targets: list[Target], ceiling: Target | None, workloads: list[Workload], args: argparse.Namespace,
            notes: list[str]) -> dict[tuple[str, int, str], Cell]:
    cells: dict[tuple[str, int, str], Cell] = {}
    answers: dict[str, dict[str, tuple[str, int]]] = {}
    run_id = 0
    for rep in range(args.reps):
        order = targets if rep % 2 == 0 else targets[::-1]
        for workload in workloads:
            for connections in args.connections:
                run_id += 1
                who = list(order)
                if ceiling is not None and not workload.stow:
                    who.append(ceiling)
                for target in who:
                    calls = workload.calls(target, run_id)
                    base = target.root if workload.wado_uri else target.url
                    result = run(base, calls, workload.count, connections, server_pid=target.pid,
                                 warmup=0 if workload.stow else min(len(calls), 4), max_seconds=args.max_seconds,
                                 min_seconds=0.0 if workload.stow else args.min_seconds)
                    cells.setdefault((workload.name, connections, target.name), Cell()).runs.append(result)
                    if rep == 0 and connections == args.connections[0] and not workload.stow:
                        answers.setdefault(workload.name, {})[target.name] = _answer_size(result)
                print(f"  rep {rep + 1}/{args.reps} {workload.name} x{connections}: " + ", ".join(
                    f"{t.name} {getattr(cells[(workload.name, connections, t.name)].runs[-1], workload.metric):.1f}"
                    for t in who), file=sys.stderr, flush=True)
    for name, by_server in answers.items():
        sizes = [size for _, size in by_server.values()]
        if len({unit for unit, _ in by_server.values()}) > 1 or max(sizes) > min(sizes) * 1.01 + 1:
            notes.append(f"{name}: the servers' answers differ: "
                         + ", ".join(f"{k} {size} {unit}" for k, (unit, size) in by_server.items()))
    return cells


def _answer_size(result: RunResult) -> tuple[str, int]:
    """What one answer held, to check that the servers did the same work: JSON items, else bytes.

    Byte counts may differ by framing (boundaries, part headers), hence the 1% tolerance above.
    """
    if result.samples:
        try:
            return "results", len(json.loads(result.samples[0]))
        except ValueError:
            pass
    return "bytes/request", result.bytes_in // max(1, result.requests)


@dataclass
class Memory:
    """One server's RSS in the big-study workload: sums over its processes, and the largest one."""

    idle: int
    idle_single: int
    storing: int
    storing_single: int
    retrieving: int
    retrieving_single: int
    processes: int
    idle_pss: int
    storing_pss: int
    retrieving_pss: int
    store_seconds: float
    retrieve_seconds: float


def big_study(starters: list[tuple[str, Callable[[str], Target]]], folder: str, args: argparse.Namespace
              ) -> dict[str, Memory]:
    """Peak RSS while storing one ``--big-mb`` request, then retrieving that study (WADO-RS).

    Each server is started fresh for this, alone on the machine, so what earlier workloads left
    in its memory does not count. RSS is summed over the server's process tree (``serve --workers
    N``: the parent and its workers; pages they share count once per process) and also reported
    for the largest single process; PSS, summed, counts shared pages once (what the server takes).
    """
    count = max(1, int(args.big_mb * 1e6 / 525_358))
    corpus = Corpus(args.seed, "large", 1, 1, count, tag="big")
    content_type, body, units = stow_bodies(corpus.files(), count)[0]
    ref = next(corpus.refs())
    out = {}
    for name, start in starters:
        target = start(os.path.join(folder, "big-" + name))
        try:
            before = RssSampler(target.pid)
            processes = len(process_tree(target.pid))
            with RssSampler(target.pid) as storing:
                stored = run(target.url, [Call("POST", "/studies", (("Content-Type", content_type),
                                                                    ("Accept", JSON)), body, units)], 1, max_seconds=3600)
            with RssSampler(target.pid) as retrieving:
                got = run(target.url, [Call("GET", f"/studies/{ref.study_uid}", (("Accept", DICOM_ANY),))], 1,
                          max_seconds=3600)
        finally:
            target.stop()
        if got.bytes_in < len(body) * 0.99:
            print(f"  warning: {name} returned {got.bytes_in} bytes for a {len(body)}-byte study", file=sys.stderr)
        out[name] = Memory(before.peak, before.peak_single, storing.peak, storing.peak_single, retrieving.peak,
                           retrieving.peak_single, processes, before.peak_pss, storing.peak_pss,
                           retrieving.peak_pss, stored.seconds, got.seconds)
    return out


# -- report ----------------------------------------------------------------------------------------
def format_value(value: float, metric: str) -> str:
    return f"{value:.2f}" if metric == "p50_ms" and value < 10 else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _ratio(mine: float, theirs: float, metric: str) -> float:
    """How many times better ``mine`` is (latency: theirs / mine; throughput: mine / theirs)."""
    if not mine or not theirs:
        return 0.0
    return theirs / mine if metric == "p50_ms" else mine / theirs


def table(workloads: list[Workload], cells: dict[tuple[str, int, str], Cell], args: argparse.Namespace,
          have_orthanc: bool, have_ceiling: bool, variants: list[str]) -> list[list[str]]:
    rows = [["workload", "conn", "unit", OURS] + ([ORTHANC, "ratio", "target", "met"] if have_orthanc else [])
            + [c for v in variants for c in (v, "ratio" if have_orthanc else "")]
            + (["ceiling", "of ceiling"] if have_ceiling else []) + ["client CPU", "our CPU"]
            + (["Orthanc CPU"] if have_orthanc else [])]
    for workload in workloads:
        for connections in args.connections:
            ours = cells[(workload.name, connections, OURS)]
            mine = ours.value(workload.metric)
            row = [workload.name, str(connections), workload.unit, format_value(mine, workload.metric)]
            theirs = 0.0
            if have_orthanc:
                theirs = cells[(workload.name, connections, ORTHANC)].value(workload.metric)
                ratio = _ratio(mine, theirs, workload.metric)
                met = "yes" if workload.target and ratio >= workload.target else "NO"
                row += [format_value(theirs, workload.metric), f"{ratio:.2f}x",
                        f">= {workload.target}x" if workload.target else "", met]
            for variant in variants:
                value = cells[(workload.name, connections, variant)].value(workload.metric)
                row += [format_value(value, workload.metric),
                        f"{_ratio(value, theirs, workload.metric):.2f}x" if have_orthanc else ""]
            if have_ceiling:
                if not workload.stow:
                    top = cells[(workload.name, connections, CEILING)].value(workload.metric)
                    row += [format_value(top, workload.metric),
                            f"{_ratio(mine, top, workload.metric):.2f}x" + (" (>= 0.7x)" if workload.byte_serving
                                                                               else "")]
                else:
                    row += ["", ""]
            row += [f"{ours.cpu_share('client_cpu'):.0f}%", f"{ours.cpu_share('server_cpu'):.0f}%"]
            if have_orthanc:
                row.append(f"{cells[(workload.name, connections, ORTHANC)].cpu_share('server_cpu'):.0f}%")
            rows.append(row)
    return rows


def print_table(rows: list[list[str]], markdown: bool = False) -> str:
    if markdown:
        lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def memory_rows(memory: dict[str, Memory], big_mb: int) -> list[list[str]]:
    """RSS sums over each server's processes, with the largest single process in brackets."""
    rows = [["server", "processes", "RSS idle", f"peak storing {big_mb} MB", "peak retrieving it",
             "PSS idle / storing / retrieving", "store s", "retrieve s"]]

    def mb(total: int, single: int, processes: int) -> str:
        return f"{total / 2**20:.0f} MB" + (f" (largest {single / 2**20:.0f})" if processes > 1 else "")
    for name, m in memory.items():
        pss = " / ".join(f"{v / 2**20:.0f}" for v in (m.idle_pss, m.storing_pss, m.retrieving_pss)) + " MB"
        rows.append([name, str(m.processes), mb(m.idle, m.idle_single, m.processes),
                     mb(m.storing, m.storing_single, m.processes), mb(m.retrieving, m.retrieving_single, m.processes),
                     pss, f"{m.store_seconds:.1f}", f"{m.retrieve_seconds:.1f}"])
    return rows


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    mem = next((int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal")), 0)
    return (f"{platform.system()} {platform.release()}, {os.cpu_count()} cores ({cpu}), {mem / 2**20:.0f} GiB RAM, "
            f"Python {platform.python_version()}")


def qido_scaling(runs: int) -> str:
    """bench_qido's table (in-process QIDO at 1,000 and 100,000 instances)."""
    import contextlib
    import io

    import bench_qido

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        bench_qido.main(["--sizes", "1000", "100000", "--runs", str(runs)])
    return buf.getvalue()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--studies", type=int, default=4, help="large studies loaded (x series x instances)")
    parser.add_argument("--series", type=int, default=2)
    parser.add_argument("--instances", type=int, default=50, help="instances per series (large and small)")
    parser.add_argument("--small-studies", type=int, default=10, help="small (64x64) studies loaded")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (medians reported)")
    parser.add_argument("--requests", type=int, default=200, help="requests per run of the light GET workloads")
    parser.add_argument("--distinct", type=int, default=100, help="distinct instances the GET workloads cycle over")
    # 4x 200 at 50 per request is 16 requests: 4 per connection at 4 connections. With 4 requests in
    # all (one per connection) a run timed one straggler: the same server ranged 202-606 instances/s.
    parser.add_argument("--stow-large", type=int, default=200, help="0.5 MB instances per STOW run, 1 per request "
                                                                    "(4x this at 50 per request)")
    parser.add_argument("--stow-small", type=int, default=400, help="small instances per STOW run, 1 per request "
                                                                    "(4x this at 50 per request)")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--big-mb", type=int, default=1024, help="size of the one-request study for peak RSS "
                                                                 "(0 skips it)")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="cap on one run of one workload")
    parser.add_argument("--min-seconds", type=float, default=1.0,
                        help="GET workloads repeat their requests for at least this long per run")
    parser.add_argument("--only", nargs="+", metavar="WORD", help="only workloads whose name contains a WORD")
    parser.add_argument("--no-orthanc", action="store_true", help="run ours (and the ceiling) alone")
    parser.add_argument("--no-ceiling", action="store_true")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                        help="also run our server with this environment (e.g. MALLOC_ARENA_MAX=2; CONFIG=FILE "
                             "serves with that ini file, WORKERS=N with --workers N), as another column; "
                             "repeatable")
    parser.add_argument("--qido-scaling", action="store_true", help="also run bench_qido at 1,000 and 100,000")
    parser.add_argument("--markdown", help="also write the tables as markdown to this file")
    parser.add_argument("--serve-ceiling", help=argparse.SUPPRESS)
    parser.add_argument("--ceiling-workers", type=int, default=1, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_ceiling:
        serve_ceiling(args.serve_ceiling, args.ceiling_workers)
        return 0
    # A plain `kill` must still stop the servers started below (the finally blocks), not orphan them.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    loaded = Loaded(Corpus(args.seed, "large", args.studies, args.series, args.instances),
                    Corpus(args.seed, "small", args.small_studies, args.series, args.instances, tag="load-small"))
    workloads = build_workloads(loaded, args)
    variants = [parse_variant(v) for v in args.variant]
    if args.only:
        workloads = [w for w in workloads if any(word.lower() in w.name.lower() for word in args.only)]
    notes = [f"machine: {machine()}", "command: python benchmarks/compare.py " + " ".join(sys.argv[1:] if argv is None
                                                                                          else argv)]
    notes.append(f"{OURS}: conf/dicomweb.ini as shipped ({shipped_workers()} worker processes; the ceiling runs "
                 "in as many); CPU and RSS are summed over each server's processes")
    started = time.perf_counter()
    starters: list[tuple[str, Callable[[str], Target]]] = [
        (OURS, lambda folder: start_ours(folder, 4 * 3600))]
    for name, env in variants:
        starters.append((name, lambda folder, name=name, env=env: start_ours(folder, 4 * 3600, name, env)))
        notes.append(f"variant {name}: dicomweb_wsgi with " + " ".join(f"{k}={v}" for k, v in env.items()))
    if args.no_orthanc:
        notes.append("Orthanc not run (--no-orthanc)")
    else:
        try:
            orthanc, version = start_orthanc()
            orthanc.stop()
            starters.append((ORTHANC, lambda folder: start_orthanc()[0]))
            notes.append(f"reference: {version} (Debian packages), out-of-the-box settings")
        except OrthancUnavailable as exc:
            notes.append(f"{exc}: running dicomweb_wsgi alone")
    print("\n".join(notes), file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        targets: list[Target] = []
        ceiling = None
        try:
            for name, start in starters:
                targets.append(start(os.path.join(tmp, name)))
            for target in targets:
                seconds = load_corpus(target, loaded)
                notes.append(f"loaded {loaded.large.count} x 0.5 MB + {loaded.small.count} x 10 KB instances into "
                             f"{target.name} in {seconds:.1f} s")
                print(notes[-1], file=sys.stderr)
            if not args.no_ceiling and any(not w.stow for w in workloads):
                os.makedirs(os.path.join(tmp, "ceiling"))
                ceiling = start_ceiling(build_manifest(targets[0], workloads, os.path.join(tmp, "ceiling")),
                                        shipped_workers())
            cells = run_all(targets, ceiling, workloads, args, notes)
        finally:
            for target in reversed(targets + ([ceiling] if ceiling else [])):
                target.stop()
        memory = big_study(starters, tmp, args) if args.big_mb else {}
    have_orthanc = any(t.name == ORTHANC for t in targets)
    rows = table(workloads, cells, args, have_orthanc, ceiling is not None, [name for name, _ in variants])
    text = [print_table(rows)]
    md = [print_table(rows, markdown=True)]
    if memory:
        text.append(print_table(memory_rows(memory, args.big_mb)))
        md.append(print_table(memory_rows(memory, args.big_mb), markdown=True))
    if args.qido_scaling:
        scaling = qido_scaling(50)
        text.append(scaling)
        md.append("```\n" + scaling.rstrip() + "\n```")
    notes.append(f"total time {time.perf_counter() - started:.0f} s; client CPU and server CPU are % of one core "
                 "over each run's wall time (medians)")
    print("\n" + "\n".join(notes) + "\n\n" + "\n\n".join(text))
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as fh:
            fh.write("\n".join(f"- {n}" for n in notes) + "\n\n" + "\n\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
