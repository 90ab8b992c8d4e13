"""Regenerate docs/reliability.md: run the full-size reliability harnesses and write what they measured.

Runs, in order (``--only`` picks some): the crash soak (benchmarks/soak_crash.py: 100 kill -9 trials and
the exact kill points), the storage-fault tests plus a tiny real filesystem that fills up (tmpfs; needs
root, skipped otherwise), the concurrency clients for many rounds (one server, then two processes on one
data folder), the hostile-input properties with thousands of random examples each, and the atheris
fuzzers. Every figure in the document comes with the command that reproduces it.

Usage: ``python benchmarks/reliability_report.py [--only crash,faults,concurrency,hostile,fuzz]
[--out docs/reliability.md]``; ``--quick`` runs everything small (to check the script itself).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import requests  # noqa: E402

from tests.serverproc import ServerProcess  # noqa: E402
from tests.test_crash import (SINGLE_PART, STOW_TYPE, acknowledged, audit_dir, instance_url, make_batch,  # noqa: E402
                              same_bytes, stow_chunks)

SECTIONS = ("crash", "faults", "concurrency", "hostile", "fuzz")
FUZZ_TARGETS = ("multipart", "mediatypes", "dicomjson", "ingest", "stow", "ingest-same")


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 7200) -> subprocess.CompletedProcess:
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


# -- crash ---------------------------------------------------------------------------------------------------
def crash(quick: bool) -> dict[str, Any]:
    trials, points = (16, 1) if quick else (100, 5)
    out = os.path.join(tempfile.mkdtemp(), "soak.json")
    cmd = [sys.executable, "benchmarks/soak_crash.py", "--trials", str(trials), "--kill-point-runs", str(points),
           "--seed", "1", "--json", out]
    proc = run(cmd)
    with open(out) as fh:
        result = json.load(fh)
    result["command"] = " ".join(["python", *cmd[1:-2]])
    result["exit"] = proc.returncode
    return result


# -- faults --------------------------------------------------------------------------------------------------
def faults(quick: bool) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", "tests/test_faults.py"]
    proc = run(cmd)
    cases = re.findall(r"^(PASSED|FAILED|ERROR|SKIPPED)\S* tests/test_faults.py::(\S+)", proc.stdout, re.M)
    return {"cases": cases, "command": "python -m pytest -p no:cacheprovider -rA tests/test_faults.py",
            "tinyfs": tiny_filesystem(quick)}


def tiny_filesystem(quick: bool) -> dict[str, Any]:
    """Fill a 4 MB tmpfs with STOWs through a live server; then grow it and store again."""
    mount_point = tempfile.mkdtemp(prefix="tinyfs-")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mount_point], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        return {"skipped": f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not root'})"}
    import random

    rng = random.Random(5)
    statuses: dict[int, int] = {}
    reasons: set[int] = set()
    acked: dict[str, Any] = {}
    config = os.path.join(tempfile.mkdtemp(), "tiny.ini")
    with open(config, "w") as fh:
        fh.write("[app:main]\ndicomweb.min_free_space = 0\n")  # no guard: the disk itself must fill up
    data_dir = os.path.join(mount_point, "data")
    try:
        with ServerProcess(data_dir, config=config) as server:
            refused = 0
            requests_sent = 0
            while refused < 20 and requests_sent < (200 if quick else 2000):
                batch = make_batch(rng, ["1.2.826.0.1.3680043.10.1255.77"], {})
                resp = requests.post(f"{server.url}/studies", data=b"".join(stow_chunks(batch)),
                                     headers={"Content-Type": STOW_TYPE}, timeout=120)
                requests_sent += 1
                statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
                body = resp.json() if resp.headers.get("Content-Type", "").endswith("json") else {}
                acked.update((s.sop_uid, s) for s in acknowledged(resp.status_code, body, batch))
                reasons.update(i["00081197"]["Value"][0] for i in body.get("00081198", {}).get("Value", []))
                refused += resp.status_code != 200
            full_audit, _ = audit_dir(data_dir)
            lost_when_full = [uid for uid, s in acked.items() if not same_bytes(
                requests.get(instance_url(server.url, s), headers={"Accept": SINGLE_PART}, timeout=60), s)]
            subprocess.run(["mount", "-o", "remount,size=64m", mount_point], check=True)
            batch = make_batch(rng, ["1.2.826.0.1.3680043.10.1255.77"], {})
            recovered = requests.post(f"{server.url}/studies", data=b"".join(stow_chunks(batch)),
                                      headers={"Content-Type": STOW_TYPE}, timeout=120).status_code
        after_gc, removed = audit_dir(data_dir, gc=True)
    finally:
        subprocess.run(["umount", mount_point], capture_output=True)
    return {"requests": requests_sent, "statuses": statuses, "reasons": sorted(reasons), "acknowledged": len(acked),
            "lost": len(lost_when_full), "consistent_when_full": full_audit.consistent, "recovered": recovered,
            "clean_after_gc": after_gc.clean, "removed_by_gc": removed,
            "command": "sudo python benchmarks/reliability_report.py --only faults"}


# -- concurrency ---------------------------------------------------------------------------------------------
def concurrency(quick: bool) -> dict[str, Any]:
    import random

    from tests.test_concurrency import READERS, WRITERS, check_final_state, make_pool, run_clients

    rounds = 5 if quick else 60
    results = {}
    for name, processes in (("one server", 1), ("two processes, one data folder", 2)):
        folder = tempfile.mkdtemp(prefix="concurrency-")
        data_dir = os.path.join(folder, "data")
        pool = make_pool(random.Random(processes))
        servers = [ServerProcess(data_dir) for _ in range(processes)]
        started = time.monotonic()
        try:
            tally = run_clients([s.url for s in servers], pool, rounds)
            problems = []
            for server in servers:
                try:
                    check_final_state(server.url, data_dir, pool, tally, rounds)
                except AssertionError as exc:
                    problems.append(str(exc)[:300])
            output = "".join(line for s in servers for line in s.output)
        finally:
            for server in servers:
                server.stop()
        results[name] = {"requests": sum(tally.statuses.values()), "statuses": tally.statuses,
                         "5xx": sum(n for code, n in tally.statuses.items() if code >= 500),
                         "locked": output.count("database is locked") + sum("locked" in b for b in tally.bad),
                         "stored": len(tally.stored), "problems": problems,
                         "seconds": round(time.monotonic() - started, 1)}
    return {"runs": results, "writers": WRITERS, "readers": READERS, "rounds": rounds,
            "command": "python benchmarks/reliability_report.py --only concurrency"}


# -- hostile -------------------------------------------------------------------------------------------------
def hostile(quick: bool) -> dict[str, Any]:
    examples = 100 if quick else 2000
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", "-W", "ignore",
           "--hypothesis-show-statistics", "tests/test_hostile.py"]
    proc = run(cmd, env={"HOSTILE_EXAMPLES": str(examples), "HOSTILE_RANDOM": "1"})
    per_test: dict[str, int] = {}
    current = None
    for line in proc.stdout.splitlines():
        head = re.match(r"^tests/test_hostile.py::(\S+):$", line)
        if head:
            current = head.group(1)
            continue
        count = re.search(r"(\d+) passing examples", line)
        if current and count:
            per_test[current] = per_test.get(current, 0) + int(count.group(1))
    from tests.test_hostile import TRAVERSALS, hostile_paths

    outcome = re.findall(r"^(PASSED|FAILED|ERROR|XFAIL|XPASS)\S* tests/test_hostile.py::(\S+)", proc.stdout, re.M)
    return {"examples_per_property": examples, "per_property": per_test, "tests": outcome,
            "traversal_paths": len(hostile_paths()), "traversal_values": len(TRAVERSALS),
            "summary": (proc.stdout.strip().splitlines() or [""])[-1], "exit": proc.returncode,
            "command": f"HOSTILE_EXAMPLES={examples} HOSTILE_RANDOM=1 python -m pytest -p no:cacheprovider "
                       "--hypothesis-show-statistics tests/test_hostile.py"}


# -- fuzz ----------------------------------------------------------------------------------------------------
def fuzz(quick: bool) -> dict[str, Any]:
    try:
        import atheris  # noqa: F401
    except ImportError as exc:
        return {"skipped": f"atheris is not installed ({exc}); `pip install atheris` builds only where a wheel "
                           "or clang with libFuzzer exists; the hypothesis properties cover the same code"}
    results = {}
    workdir = tempfile.mkdtemp(prefix="fuzz-")
    for target in FUZZ_TARGETS:
        runs = 2000 if quick else (200_000 if target in ("ingest", "stow", "multipart", "ingest-same") else 500_000)
        cmd = [sys.executable, os.path.join(ROOT, "benchmarks/fuzz_atheris.py"), target, f"-runs={runs}"]
        print("$", " ".join(cmd), flush=True)
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=7200)
        done = re.findall(r"#(\d+)\s+DONE\s+cov: (\d+)", proc.stderr)
        crash = re.search(r"Uncaught Python exception: ===\n(.*)", proc.stderr)
        results[target] = {"runs": int(done[-1][0]) if done else 0, "coverage": int(done[-1][1]) if done else 0,
                           "exit": proc.returncode, "crash": crash.group(1) if crash else "",
                           "seconds": round(time.monotonic() - started, 1),
                           "command": f"python benchmarks/fuzz_atheris.py {target} -runs={runs}"}
    from importlib.metadata import version

    return {"targets": results, "version": version("atheris")}


# -- the document --------------------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render(results: dict[str, Any]) -> str:
    intro = ["# Reliability: measured, not claimed", "",
             "Regenerated by `python benchmarks/reliability_report.py` "
           f"({datetime.date.today().isoformat()}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
             f"{platform.system()}). The CI-sized versions of every harness run in `.ci/run` "
             "(tests/test_crash.py, test_faults.py, test_concurrency.py, test_hostile.py).", ""]
    out: list[str] = []
    summary: list[list[Any]] = []
    if "crash" in results:
        c = results["crash"]
        live, points = c["live"], c["kill_points"]
        lost = sum(r["lost"] for r in live["moments"].values()) + len(live["final_lost"])
        bad = sum(r["rows without their file"] for r in live["moments"].values())
        left = sum(r["left after gc"] for r in live["moments"].values())
        point_runs = sum(r["runs"] for r in points["points"].values())
        summary.append(["`kill -9` during STOW, DELETE and UPS state changes", f"{live['trials']} trials + "
                        f"{point_runs} exact kill points", f"{live['acknowledged']} instances and "
                        f"{live['workitems']} workitems acknowledged", lost + sum(r["lost"] for r in
                                                                                   points["points"].values()),
                        f"`{c['command']}`"])
        out += ["## Crash trials", "",
                f"`{c['command']}` ({live['seconds']} s for the live trials). A client sends STOW requests "
                "(3-12 instances each, now and then one already stored) and the server is killed with SIGKILL at "
                "the moment named below, then restarted on the same data folder with no repair step. After each "
                "restart: a sample of the acknowledged instances is retrieved and compared byte for byte (every "
                "one of them at the end), `Archive.check` must find no index row whose file is missing or differs "
                "from its SHA-256, the study/series counts must match the instances, acknowledged DELETEs must "
                "stay deleted and acknowledged workitem state changes must stay, and after `gc` (grace 0) no "
                "orphan blob or spool file may remain.", "",
                _table(["moment", *next(iter(live["moments"].values())).keys()],
                       [[k, *v.values()] for k, v in live["moments"].items()]), "",
                f"At the end all {live['acknowledged']} acknowledged instances were retrieved again: "
                f"**{len(live['final_lost'])} lost**. Rows pointing at a missing or partial file after a crash: "
                f"**{bad}**. Left over after `gc`: **{left}**.", "",
                "Moments: `upload` kills while waitress receives the body; `spool` once the app has spooled a part; "
                "`blobs` once the n-th blob of the run is durable (mostly before its index commit); `commit` right "
                "after the last body byte; `acknowledged` right after a 200; `random` after 0-1 s; `delete` after a "
                "random number of a deleted study's blobs are gone; `ups` after a random number of acknowledged "
                "Create Workitem / Change State (IN PROGRESS) requests.", "",
                "Exact kill points: a subprocess stores (or deletes) through the app with one storage step patched "
                "to SIGKILL its own process there.", "",
                _table(["kill point", *next(iter(points["points"].values())).keys()],
                       [[k, *v.values()] for k, v in points["points"].items()]), ""]
        if live["failures"] or points["failures"]:
            out += ["Failures:", "", *[f"- {f}" for f in live["failures"] + points["failures"]], ""]
    if "faults" in results:
        f = results["faults"]
        passed = sum(1 for status, _ in f["cases"] if status == "PASSED")
        summary.append(["storage faults (ENOSPC, EIO, locked / read-only / full index)",
                        f"{len(f['cases'])} injected faults", "", len(f["cases"]) - passed,
                        f"`{f['command']}`"])
        out += ["## Storage faults", "", f"`{f['command']}`: each case injects one fault and checks a clear 503 "
                "(FailureReason 0xA700 for the affected instances), nothing half-written (no row, blob or spool "
                "file) and a successful store once the fault is gone.", "",
                _table(["fault injected (test)", "result"], [[name, status] for status, name in f["cases"]]), ""]
        tiny = f["tinyfs"]
        if "skipped" in tiny:
            out += [f"Tiny filesystem: skipped ({tiny['skipped']}).", ""]
        else:
            summary.append(["a real filesystem filling up (4 MB tmpfs)", f"{tiny['requests']} STOW requests",
                            f"statuses {tiny['statuses']}", tiny["lost"], f"`{tiny['command']}`"])
            out += ["Tiny filesystem (a 4 MB tmpfs as the data folder, `min_free_space = 0` so the disk really "
                    f"fills): {tiny['requests']} STOW requests answered {tiny['statuses']}, FailureReasons "
                    f"{[hex(r) for r in tiny['reasons']]}; {tiny['acknowledged']} acknowledged instances, "
                    f"**{tiny['lost']} lost**; index and files consistent while full: {tiny['consistent_when_full']}; "
                    f"after growing the filesystem the next STOW answered {tiny['recovered']}; clean after `gc`: "
                    f"{tiny['clean_after_gc']} ({tiny['removed_by_gc']} leftovers removed). "
                    f"Command: `{tiny['command']}`.", ""]
    if "concurrency" in results:
        c = results["concurrency"]
        rows = [[name, r["requests"], r["stored"], r["5xx"], r["locked"], "yes" if not r["problems"] else
                 "; ".join(r["problems"]), r["seconds"]] for name, r in c["runs"].items()]
        summary.append([f"{c['writers']} writers + {c['readers']} readers", f"{sum(r[1] for r in rows)} requests",
                        "", sum(r[3] + r[4] for r in rows), f"`{c['command']}`"])
        out += ["## Concurrency", "",
                f"`{c['command']}`: {c['writers']} writers store overlapping studies for {c['rounds']} rounds (each "
                "round starts at a barrier and every writer sends the same instance in it) while "
                f"{c['readers']} readers search (QIDO) and retrieve (study, metadata, instance compared byte for "
                "byte). At the end the index, the counts (NumberOfStudyRelatedInstances), the search results and "
                "the files must agree with exactly the instances stored.", "",
                _table(["setup", "requests", "distinct instances stored", "5xx", "\"database is locked\"",
                        "consistent at the end", "seconds"], rows), ""]
    if "hostile" in results:
        h = results["hostile"]
        total = sum(h["per_property"].values())
        failed = [name for status, name in h["tests"] if status in ("FAILED", "ERROR", "XPASS")]
        summary.append(["hostile input (property-based)", f"{total} generated inputs + {len(h['tests'])} cases",
                        f"{h['traversal_paths']} traversal paths", len(failed), f"`{h['command']}`"])
        out += ["## Hostile input", "", f"`{h['command']}` ({h['summary']}): never a 5xx, never a hang (60 s "
                "bound per request), and a rejected request leaves the index, the blobs and the spool folder as "
                "they were.", "",
                _table(["property", "inputs tried"], sorted(h["per_property"].items())), "",
                f"Fixed cases: {h['traversal_values']} traversal values (`..`, `%2e%2e`, encoded slashes and "
                f"backslashes, NUL, over-long UIDs, CRLF) in every placeholder of every route "
                f"({h['traversal_paths']} requests) and in every query value; through waitress too; bodies over "
                "the limit answered 413 before a byte is read (declared) or just past the limit (chunked); header "
                "lines of 1 MB and 30 000 headers refused by waitress; 3 000 tiny or empty parts; more parts than "
                "allowed (413, nothing stored); a 1 MB deflate stream that inflates to 1 GB (refused with 0xC000 "
                "while Python memory stays under 64 MB); billion laughs, external entities and DTDs (400); pixel "
                "data longer than the file (0xC000) and shorter than Rows x Columns x Frames says (stored, served "
                "without a 5xx).", ""]
        if failed:
            out += ["Failures: " + ", ".join(failed), ""]
    if "fuzz" in results:
        fz = results["fuzz"]
        if "skipped" in fz:
            out += ["## Fuzzing (atheris)", "", f"Skipped: {fz['skipped']}.", ""]
        else:
            rows = [[t, r["runs"], r["coverage"], r["crash"] or "none", r["seconds"], f"`{r['command']}`"]
                    for t, r in fz["targets"].items()]
            summary.append(["coverage-guided fuzzing (atheris)", f"{sum(r[1] for r in rows)} executions", "",
                            sum(1 for r in fz["targets"].values() if r["exit"] != 0), "see below"])
            out += ["## Fuzzing (atheris)", "", f"atheris {fz.get('version', '')} (`pip install atheris` installed a "
                    "binary wheel here; where it does not install, the hypothesis properties above cover the same "
                    "code). libFuzzer-driven, starting from valid seeds; a target may refuse an input only the "
                    "documented way (400/413, IngestError), anything else stops the run.", "",
                    _table(["target", "executions", "coverage (edges)", "crash", "seconds", "command"], rows), ""]
    head = ["## Summary", "", _table(["what", "trials / inputs", "acknowledged / faults", "lost or failed",
                                      "reproduce"], summary), ""]
    out = intro + head + out
    out += ["## What the harnesses found", "",
            "Each was fixed with a regression test (named after the arrow) unless marked open.", "",
            "- A deflated data set is inflated whole by pydicom: a 1 MB upload inflated to 1 GB used 2 GB of memory. "
            "Ingest now measures the inflated size in bounded memory first and refuses more than 128 MiB with "
            "0xC000 -> `test_hostile_deflate_bomb_is_refused_without_inflating_it`.",
            "- Disk full or an I/O error while spooling a request body (multipart or single part) was a 500 -> "
            "503 `test_faults_spool_disk_full_returns_503_and_no_spool_file`, "
            "`test_faults_spool_creation_failure_returns_503`.",
            "- Disk full while adding a missing PS3.10 preamble was a 500 and left the spool file and its copy -> "
            "0xA700 `test_faults_disk_full_while_adding_a_preamble_returns_503_a700`.",
            "- A blob renamed into place whose folder fsync then failed stayed behind as an orphan -> "
            "`test_faults_blob_write_failure_returns_503_a700_and_leaves_nothing[fsync_dir-*]`.",
            "- A client that went away mid-body made the multipart reader raise a 500 -> 400 "
            "`test_hostile_client_gone_mid_body_is_400_and_leaves_nothing`.",
            "- XML declaring an unknown or multi-byte encoding (`encoding=\"UTF-7\"`, found by hypothesis and "
            "atheris) was a 500 -> 400 `test_hostile_xml_declaring_an_unusable_encoding_is_a_400`.",
            "- Deeply nested DICOM JSON (RecursionError) was a 500 -> 400 "
            "`test_hostile_deeply_nested_json_is_a_400` (fixed in stow_bulk.py by its owner).",
            "- An encapsulated Pixel Data item whose length runs past the end of the file was stored, and a frame "
            "request then failed mid-stream -> 0xC000 at store time "
            "`test_hostile_encapsulated_fragment_longer_than_the_file_is_refused_with_c000`.",
            "- A group length or trailing padding element whose explicit VR is not a VR (found by atheris "
            "`ingest-same`, which asks the fast reader and pydicom for the same outcome): pydicom reads it as "
            "implicit VR and refuses the file as truncated, the fast reader stepped over it and stored the "
            "instance -> the fast reader leaves it to pydicom "
            "`test_a_group_length_or_padding_with_an_unknown_vr_is_left_to_pydicom`.",
            "- A Specific Character Set whose VR is not CS (found by atheris `ingest-same`): pydicom decodes it as "
            "numbers and refuses the upload (inside an item: keeps the sequence as UN), the fast reader read the "
            "bytes as a character set name and stored the instance -> the fast reader leaves it to pydicom "
            "`test_a_specific_character_set_that_is_not_cs_is_left_to_pydicom`.",
            "- Instance `/bulkdata` of compressed Pixel Data that cannot be decoded failed after the 200 had gone "
            "out (a cut-short body) -> 406 before the status: the first part is produced before answering "
            "`test_hostile_undecodable_compressed_pixel_data_bulkdata_is_an_error_status`.", ""]
    out += ["## What these runs do not show", "",
            "- `kill -9` keeps the page cache, so the crash trials prove ordering (blob durable before the index "
            "commit, index rows deleted before blobs), not fsync: a power cut is covered only by the fsync calls "
            "(exercised by the fault tests, which make each fsync fail) and SQLite `synchronous=FULL`.",
            "- With `duplicate_policy = replace`, or with DELETE enabled, a retrieve that lists an instance just "
            "before it is replaced or deleted can find its file gone: a 404 (\"removed while it was being read\") "
            "when that happens before the status is sent, a cut-short body (fewer bytes than announced, or no "
            "closing boundary) when it happens during a multipart stream (`tests/test_wado.py`, "
            "`tests/test_rendered.py`; not in these tables, which use the default `ignore` policy).", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="small runs, to check the script")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "reliability.md"))
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--from-json", help="render the document from results saved by --json; run nothing")
    args = parser.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as fh:
            results = json.load(fh)
        with open(args.out, "w") as fh:
            fh.write(render(results))
        print(f"wrote {args.out}")
        return 0
    chosen = [s for s in args.only.split(",") if s]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}")
    results = {}
    for section in SECTIONS:
        if section in chosen:
            print(f"== {section}", flush=True)
            results[section] = globals()[section](args.quick)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=str)
    with open(args.out, "w") as fh:
        fh.write(render(results))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
