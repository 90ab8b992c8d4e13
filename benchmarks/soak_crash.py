"""The full-size crash trials: ``kill -9`` the live server 100 times, restart it each time on the same
data folder with no repair step, and check that nothing acknowledged was lost.

Each trial is one of tests/test_crash.py's moments (upload, spool, blobs, commit, acknowledged, random,
delete, ups), taken in turn; after each restart a sample of the acknowledged instances is retrieved and
compared byte for byte (all of them at the end), ``Archive.check`` must find no row pointing at a missing
or different file, and after ``gc`` nothing may be left over. Then each exact kill point (a subprocess
SIGKILLs itself at one step of the store or delete path) runs ``--kill-point-runs`` times.

Usage: ``python benchmarks/soak_crash.py [--trials 100] [--seed 1] [--json out.json]``. Prints a table;
exit status 1 if anything was lost or left inconsistent.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import defaultdict

import requests

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.test_crash import (STRATEGIES, CrashRun, audit_dir, delete_config, describe,  # noqa: E402
                              instance_url, make_batch, run_kill_point, same_bytes, SINGLE_PART)
from tests.serverproc import ServerProcess  # noqa: E402

KILL_POINTS = {"blob-renamed": False, "blob-durable": False, "before-commit": False, "committed": True,
               "delete-rows-gone": False, "delete-one-blob-gone": False}


def live_trials(trials: int, seed: int, sample: int, folder: str) -> dict:
    """Run ``trials`` live crash trials; returns the per-moment table and the totals."""
    os.makedirs(folder, exist_ok=True)
    run = CrashRun(os.path.join(folder, "data"), seed=seed, config=delete_config(folder), verify_sample=sample)
    rows: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    failures = []
    started = time.monotonic()
    try:
        for number in range(trials):
            result = run.trial(STRATEGIES[number % len(STRATEGIES)])
            row = rows[result.strategy]
            row["trials"] += 1
            row["at the moment"] += int(result.triggered)
            row["requests answered"] += result.requests
            row["verified"] += result.verified
            row["lost"] += len(result.lost) + len(result.resurrected) + len(result.workitems_lost)
            row["rows without their file"] += len(result.before_gc.unhealthy) + len(result.before_gc.miscounted)
            row["removed by gc"] += result.removed_by_gc
            row["left after gc"] += len(result.after_gc.orphans) + len(result.after_gc.spool)
            row["5xx"] += len(result.server_errors)
            if not result.ok:
                failures.append(describe(result))
            print(f"trial {number + 1:3d} {result.strategy:12s} ok={result.ok} acked={result.acked}", flush=True)
        final_lost = run.verify_all()
    finally:
        run.close()
    return {"moments": {k: dict(v) for k, v in rows.items()}, "trials": trials, "acknowledged": len(run.acked),
            "workitems": len(run.workitems), "deleted": len(run.deleted), "final_lost": final_lost,
            "failures": failures, "seconds": round(time.monotonic() - started, 1)}


def kill_points(runs: int, seed: int, folder: str) -> dict:
    """Run every exact kill point ``runs`` times on fresh data folders."""
    rng = random.Random(seed)
    table: dict[str, dict[str, int]] = {}
    failures = []
    for point, survives in KILL_POINTS.items():
        row = table.setdefault(point, {"runs": 0, "lost": 0, "rows without their file": 0, "left after gc": 0})
        for number in range(runs):
            data_dir = os.path.join(folder, f"{point}-{number}", "data")
            os.makedirs(os.path.dirname(data_dir))
            batch = make_batch(rng, [f"1.2.826.0.1.3680043.10.1255.{rng.randrange(1 << 30)}"], {})
            run_kill_point(data_dir, point, batch)
            before, _ = audit_dir(data_dir)
            with ServerProcess(data_dir) as server:
                present = [same_bytes(requests.get(instance_url(server.url, s), headers={"Accept": SINGLE_PART},
                                                   timeout=60), s) for s in batch]
            after, _ = audit_dir(data_dir, gc=True)
            expected = survives and not point.startswith("delete")
            row["runs"] += 1
            row["lost"] += sum(1 for p in present if not p) if expected else 0
            row["rows without their file"] += len(before.unhealthy) + len(before.miscounted)
            row["left after gc"] += len(after.orphans) + len(after.spool) + len(after.unhealthy)
            if (expected and not all(present)) or (not expected and any(present)) or not before.consistent \
                    or not after.clean:
                failures.append(f"{point} run {number}: present={present} before={before} after={after}")
    return {"points": table, "failures": failures}


def print_table(title: str, rows: dict[str, dict[str, int]]) -> None:
    columns = list(next(iter(rows.values())).keys())
    print(f"\n{title}")
    print("| " + " | ".join(["moment", *columns]) + " |")
    print("|" + "---|" * (len(columns) + 1))
    for name, row in rows.items():
        print("| " + " | ".join([name, *(str(row.get(c, 0)) for c in columns)]) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--kill-point-runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sample", type=int, default=200,
                        help="acknowledged instances re-verified after each trial (every one at the end)")
    parser.add_argument("--json", help="write the results as JSON to this file")
    args = parser.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="soak-crash-")
    live = live_trials(args.trials, args.seed, args.sample, os.path.join(folder, "live"))
    points = kill_points(args.kill_point_runs, args.seed, os.path.join(folder, "points"))
    print_table(f"{live['trials']} live kill -9 trials ({live['seconds']} s); {live['acknowledged']} instances "
                f"acknowledged, {live['deleted']} deleted, {live['workitems']} workitems; all re-verified at the end: "
                f"{len(live['final_lost'])} lost", live["moments"])
    print_table("exact kill points", points["points"])
    failures = live["failures"] + points["failures"] + live["final_lost"]
    for line in failures:
        print("FAILED:", line)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"live": live, "kill_points": points, "seed": args.seed}, fh, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
