"""Smoke test of the benchmark scripts: they import and run one tiny iteration against our server.

No timing is asserted (CI never benchmarks); Orthanc is never started here.
"""
from __future__ import annotations

import json
import os
import sys

import pydicom
import pytest

from tests.serverproc import ServerProcess

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCHMARKS)

import bench_floor  # noqa: E402
import client  # noqa: E402
import compare  # noqa: E402
import corpus  # noqa: E402


def test_corpus_same_seed_identical_bytes() -> None:
    first = corpus.Corpus(7, "small", 1, 1, 3).instance_bytes(0, 0, 2)
    again = corpus.Corpus(7, "small", 1, 1, 3).instance_bytes(0, 0, 2)
    other = corpus.Corpus(8, "small", 1, 1, 3).instance_bytes(0, 0, 2)
    assert first == again
    assert first != other
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(first))
    ref = corpus.Corpus(7, "small", 1, 1, 3).ref(0, 0, 2)
    assert (ds.StudyInstanceUID, ds.SOPInstanceUID) == (ref.study_uid, ref.sop_uid)
    assert len(ds.SOPInstanceUID) == 44 and ds.Rows == 64


def test_client_store_and_query_live_server_counts_match(tmp_path) -> None:
    small = corpus.Corpus(1, "small", 1, 2, 3, tag="smoke")
    with ServerProcess(str(tmp_path / "data"), max_seconds=120) as server:
        calls = [client.Call("POST", "/studies", (("Content-Type", ct),), body, units)
                 for ct, body, units in corpus.stow_bodies(small.files(), 4)]
        stored = client.run(server.url, calls, len(calls), server_pid=server.proc.pid)
        ref = next(small.refs())
        query = client.Call("GET", f"/studies/{ref.study_uid}/series/{ref.series_uid}/instances",
                            (("Accept", "application/dicom+json"),))
        found = client.run(server.url, [query], 3, connections=2, server_pid=server.proc.pid)
    assert stored.units == 6 and stored.requests == 2
    assert found.requests == 3 and len(json.loads(found.samples[0])) == 3
    assert found.server_cpu is not None and found.client_cpu >= 0


def test_client_unexpected_status_raises(tmp_path) -> None:
    with ServerProcess(str(tmp_path / "data"), max_seconds=120) as server:
        with pytest.raises(client.HttpError, match="404"):
            client.run(server.url, [client.Call("GET", "/studies/1.2.3/metadata")], 1)


def test_compare_ours_alone_prints_table(tmp_path, capsys) -> None:
    out = tmp_path / "table.md"
    assert compare.main(["--no-orthanc", "--studies", "1", "--series", "1", "--instances", "2", "--small-studies", "1",
                         "--reps", "1", "--requests", "2", "--distinct", "2", "--stow-large", "1", "--stow-small", "2",
                         "--connections", "1", "--big-mb", "1", "--min-seconds", "0", "--only", "instance", "STOW 1 x 10",
                         "--markdown", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Orthanc not run" in printed
    assert "WADO-RS instance" in printed and "STOW 1 x 10 KB per request" in printed and "ceiling" in printed
    assert "peak storing 1 MB" in printed
    assert "| workload | conn |" in out.read_text()


@pytest.mark.parametrize("workload", ["wado-uri", "qido-series"])
def test_bench_floor_apps_answer_what_ours_answers(tmp_path, workload) -> None:
    from wsgiref.util import FileWrapper

    from webtest import TestApp

    _, data_dir, manifest, calls = bench_floor.load(str(tmp_path), workload, 2)
    apps = {kind: TestApp(bench_floor._app(kind, workload, data_dir, manifest),
                          extra_environ={"wsgi.file_wrapper": FileWrapper})
            for kind in ("ours", "floor", "ceiling")}
    assert len(calls) == 2
    for call in calls:
        answers = {kind: app.get(call.path, headers=dict(call.headers)) for kind, app in apps.items()}
        assert {resp.status_int for resp in answers.values()} == {200}
        if workload == "wado-uri":
            assert answers["floor"].body == answers["ours"].body == answers["ceiling"].body
            assert len(answers["ours"].body) > 500_000
        else:
            assert answers["ceiling"].body == answers["ours"].body
            series = {kind: sorted(item["0020000E"]["Value"][0] for item in json.loads(resp.body))
                      for kind, resp in answers.items()}
            assert series["floor"] == series["ours"] and len(series["ours"]) == 2


def test_bench_floor_prints_a_row_per_server(tmp_path) -> None:
    import subprocess

    done = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "bench_floor.py"), "--workload", "qido-series",
                           "--count", "2", "--reps", "1", "--seconds", "0"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    assert [(row[0], row[1]) for row in rows] == [(c, kind) for c in ("1", "4") for kind in bench_floor.APPS]
    assert all(float(row[2].replace(",", "")) > 0 for row in rows)
