"""The JavaScript dicomweb-client (the library OHIF uses) against a live server, run under Node.

tests/js holds the pinned client and a small driver (search.js); ``npm ci`` installs it once per
session when node_modules is missing. The test skips only when node/npm are absent or the install
fails (.ci/run installs them, so CI never skips).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dicomweb_wsgi.testing import make_client, make_dataset, new_uid, store

from .serverproc import ServerProcess

JS_DIR = Path(__file__).parent / "js"


@pytest.fixture(scope="session")
def node() -> str:
    """The node executable, with tests/js/node_modules installed from package-lock.json."""
    node_exe, npm_exe = shutil.which("node"), shutil.which("npm")
    if node_exe is None or npm_exe is None:
        pytest.skip("node and npm are needed to run the JavaScript dicomweb-client (.ci/run installs them)")
    if not (JS_DIR / "node_modules" / "dicomweb-client").is_dir():
        try:
            done = subprocess.run([npm_exe, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=JS_DIR,
                                  capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"npm ci in tests/js failed: {exc}")
        if done.returncode != 0:
            pytest.skip(f"npm ci in tests/js failed: {done.stderr.strip()[-500:]}")
    return node_exe


def run_client(node: str, url: str, calls: list[dict]) -> dict[str, dict]:
    """Run the calls through dicomweb-client in one Node process; outcome per call name."""
    done = subprocess.run([node, str(JS_DIR / "search.js"), json.dumps({"url": url, "calls": calls})],
                          cwd=JS_DIR, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NODE_PATH": str(JS_DIR / "node_modules")})
    assert done.returncode == 0, done.stderr
    return {outcome["name"]: outcome for outcome in json.loads(done.stdout)}


def _uids(outcome: dict, tag: str) -> list[str]:
    assert outcome["ok"], outcome
    return [result[tag]["Value"][0] for result in outcome["result"]]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("js-client")
    study = new_uid()
    series = [new_uid(), new_uid()]
    datasets = [make_dataset(study_uid=study, series_uid=series[n % 2], SeriesNumber=n % 2 + 1, InstanceNumber=n,
                             PatientName="Doe^Jane", PatientID="JS-1", StudyDate="20240102") for n in range(1, 6)]
    others = [make_dataset(PatientID=f"JS-{n}", PatientName=f"Other^{n}", StudyDate=f"2023010{n}")
              for n in range(2, 6)]
    writer = make_client(str(folder / "data"))
    try:
        store(writer, datasets + others)
    finally:
        writer.app.close()
    with ServerProcess(str(folder / "data"), max_seconds=300) as live:
        yield live.url, study, series, datasets, others


def test_js_client_search_for_studies_filter_and_paging(node, server):
    url, study, series, datasets, others = server
    got = run_client(node, url, [
        {"name": "filter", "method": "searchForStudies",
         "options": {"queryParams": {"PatientName": "doe^jane", "PatientID": "JS-*"}}},
        {"name": "page", "method": "searchForStudies",
         "options": {"queryParams": {"PatientID": "JS-*", "limit": 2, "offset": 1}}},
        {"name": "all", "method": "searchForStudies", "options": {"queryParams": {"PatientID": "JS-*"}}},
    ])
    assert _uids(got["filter"], "0020000D") == [study]
    everything = _uids(got["all"], "0020000D")
    # Newest study first: Doe^Jane's (2024), then the others by date, newest first.
    assert everything == [study] + [ds.StudyInstanceUID for ds in reversed(others)]
    assert _uids(got["page"], "0020000D") == everything[1:3]


def test_js_client_search_for_series_and_instances(node, server):
    url, study, series, datasets, others = server
    got = run_client(node, url, [
        {"name": "series", "method": "searchForSeries", "options": {"studyInstanceUID": study}},
        {"name": "series by number", "method": "searchForSeries",
         "options": {"studyInstanceUID": study, "queryParams": {"SeriesNumber": "2"}}},
        {"name": "instances", "method": "searchForInstances",
         "options": {"studyInstanceUID": study, "seriesInstanceUID": series[1],
                     "queryParams": {"includefield": "Rows"}}},
        {"name": "instances of study", "method": "searchForInstances",
         "options": {"studyInstanceUID": study, "queryParams": {"InstanceNumber": "4"}}},
    ])
    assert _uids(got["series"], "0020000E") == series  # by SeriesNumber: 1, then 2
    assert _uids(got["series by number"], "0020000E") == [series[1]]
    instances = got["instances"]["result"]
    assert [r["00200013"]["Value"][0] for r in instances] == [1, 3, 5]
    assert all(r["00280010"]["Value"] == [ds.Rows] for r, ds in zip(instances, datasets[0::2]))
    assert _uids(got["instances of study"], "00080018") == [datasets[3].SOPInstanceUID]


def test_js_client_empty_result_is_an_empty_array(node, server):
    url, study, series, datasets, others = server
    got = run_client(node, url, [
        {"name": "studies", "method": "searchForStudies", "options": {"queryParams": {"PatientID": "nobody"}}},
        {"name": "series", "method": "searchForSeries", "options": {"queryParams": {"Modality": "XA"}}},
        {"name": "instances", "method": "searchForInstances",
         "options": {"studyInstanceUID": study, "queryParams": {"InstanceNumber": "99"}}},
        {"name": "past the end", "method": "searchForStudies",
         "options": {"queryParams": {"PatientID": "JS-*", "offset": 50}}},
    ])
    for name in ("studies", "series", "instances", "past the end"):
        assert got[name] == {"name": name, "ok": True, "result": []}
