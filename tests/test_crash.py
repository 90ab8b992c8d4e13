"""Crash trials: ``kill -9`` the server during STOW and DELETE, restart it on the same data folder, and
check that nothing acknowledged was lost and nothing half-written is indexed.

Two kinds of trial:

* **Live trials** (``CrashRun``): a client thread sends STOW requests to a live server
  (tests/serverproc.py) and the server is killed at one of these moments: while waitress receives the
  body (``upload``), while the app spools parts (``spool``), once the n-th blob of the run is durable
  (``blobs``: mostly before its index commit), right after the last body byte (``commit``), right after
  a 200 (``acknowledged``), at a random time (``random``), while a DELETE runs (``delete``), or while workitems are created and claimed
  (``ups``: Create Workitem, then Change Workitem State to IN PROGRESS, PS3.18 §11.4 and §11.7).
* **Kill points**: a subprocess stores (or deletes) through the app with one storage step patched to
  SIGKILL its own process at an exact place: after the blob rename, after the blob is durable, before
  the index commit, after the commit but before the response, and in the middle of a DELETE.

After each kill the server restarts with no repair step, and: every instance that got a 200 (or was
referenced in a 202) is retrieved and compared byte for byte; ``Archive.check`` finds no index row
whose file is missing or differs from its digest; the study/series counts agree with the instances;
every acknowledged workitem state change is still there; and after ``gc`` with no grace period nothing
is left over (no orphan blob, no spool file).
``benchmarks/soak_crash.py`` runs the live trials 100 times; this module runs a handful.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import pytest
import requests

from dicomweb_wsgi.archive import Archive
from dicomweb_wsgi.config import load_settings
from dicomweb_wsgi.testing import STOW_BOUNDARY, dataset_bytes, make_dataset, new_uid

from .serverproc import ServerProcess

TRIGGER_DEADLINE = 60.0  # generous: a moment not reached by then kills anyway (recorded as not triggered)
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary="{STOW_BOUNDARY}"'
SINGLE_PART = "application/dicom; transfer-syntax=*"
STRATEGIES = ("upload", "spool", "blobs", "commit", "acknowledged", "random", "delete", "ups")
UPS_JSON = {"Content-Type": "application/dicom+json"}
UPS_STATES = ("SCHEDULED", "IN PROGRESS")  # in the order a workitem goes through them here


# -- audit: what a data folder holds after a crash --------------------------------------------------
@dataclass
class Audit:
    """What is wrong in a data folder; orphans and spool files are what ``gc`` is for."""

    instances: int
    unhealthy: list[str]     # Archive.check: rows whose file is missing or differs; schema; integrity
    miscounted: list[str]    # studies/series whose stored counts disagree with their instances
    orphans: list[str]       # blobs no row points at
    spool: list[str]         # temporary files left by interrupted requests

    @property
    def consistent(self) -> bool:
        """No index row points at a missing or partial file, and the derived counts are right."""
        return not (self.unhealthy or self.miscounted)

    @property
    def clean(self) -> bool:
        return self.consistent and not (self.orphans or self.spool)


def audit_archive(archive: Archive) -> Audit:
    """Check the index against the blobs (``Archive.check``), the derived counts, and the spool folder."""
    report = archive.check()
    unhealthy = report.integrity + report.missing + report.mismatched
    if report.schema_version != report.schema_expected:
        unhealthy.append(f"schema {report.schema_version}, expected {report.schema_expected}")
    miscounted = [f"series {r[0]}" for r in archive.index.read(
        "SELECT s.series_uid FROM series s WHERE s.num_instances = 0 OR s.num_instances != "
        "(SELECT count(*) FROM instance i WHERE i.series_pk = s.pk)")]
    miscounted += [f"study {r[0]}" for r in archive.index.read(
        "SELECT st.study_uid FROM study st WHERE st.num_instances = 0 OR st.num_instances != "
        "(SELECT count(*) FROM instance i WHERE i.study_pk = st.pk) OR st.num_series != "
        "(SELECT count(*) FROM series s WHERE s.study_pk = st.pk)")]
    return Audit(report.instances, unhealthy, miscounted, list(report.orphans),
                 sorted(os.listdir(archive.blobs.spool_dir)))


def audit_dir(data_dir: str, *, gc: bool = False) -> tuple[Audit, int]:
    """Audit a data folder (no request may be in flight); with ``gc``, collect with no grace first."""
    archive = Archive.open(load_settings({"data_dir": data_dir}))
    try:
        removed = archive.gc(grace_seconds=0) if gc else 0
        return audit_archive(archive), removed
    finally:
        archive.close()


def count_files(folder: str, skip: str = "tmp") -> int:
    """Files under ``folder`` (the blob tree), not counting the ``skip`` subfolder (the spool)."""
    total = 0
    for _, dirnames, files in os.walk(folder):
        if skip in dirnames:
            dirnames.remove(skip)
        total += len(files)
    return total


# -- the client side ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sent:
    study_uid: str
    series_uid: str
    sop_uid: str
    data: bytes


def make_batch(rng: random.Random, studies: list[str], acked: dict[str, Sent]) -> list[Sent]:
    """3-12 new instances of a new series of one of ``studies``, plus now and then one already stored."""
    study, series = rng.choice(studies), new_uid()
    batch = []
    for number in range(rng.randint(3, 12)):
        ds = make_dataset(study_uid=study, series_uid=series, rows=48, columns=48, InstanceNumber=number + 1,
                          pixel_seed=rng.randrange(1 << 30))
        batch.append(Sent(study, series, ds.SOPInstanceUID, dataset_bytes(ds)))
    if acked and rng.random() < 0.3:
        batch.insert(rng.randrange(len(batch)), rng.choice(list(acked.values())))
    return batch


def stow_chunks(batch: list[Sent], before_part: Callable[[int], None] | None = None) -> Iterator[bytes]:
    """A STOW body, one chunk per part; ``before_part(i)`` runs before part ``i`` is handed out."""
    for index, sent in enumerate(batch):
        if before_part is not None:
            before_part(index)
        yield f"--{STOW_BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + sent.data + b"\r\n"
    yield f"--{STOW_BOUNDARY}--\r\n".encode()


def acknowledged(status: int, body: dict, batch: list[Sent]) -> list[Sent]:
    """The instances a STOW response references as stored (a 200, or the stored part of a 202)."""
    if status not in (200, 202):
        return []
    by_uid = {s.sop_uid: s for s in batch}
    return [by_uid[item["00081155"]["Value"][0]] for item in body.get("00081199", {}).get("Value", [])]


def instance_url(base: str, sent: Sent) -> str:
    return f"{base}/studies/{sent.study_uid}/series/{sent.series_uid}/instances/{sent.sop_uid}"


def same_bytes(resp: requests.Response, sent: Sent) -> bool:
    return resp.status_code == 200 and hashlib.sha256(resp.content).digest() == hashlib.sha256(sent.data).digest()


class Client(threading.Thread):
    """Sends STOW requests (``make_batch``) one after another until the server goes away or ``stop`` is set.

    ``acked`` collects every instance the server acknowledged. ``on_part(request, part)`` runs before each
    part is sent; ``sent_body`` and ``got_200`` are set once a body has gone out whole and once a 200 came.
    """

    def __init__(self, url: str, rng: random.Random, acked: dict[str, Sent], studies: list[str],
                 on_part: Callable[[int, int], None] | None = None) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.rng = rng
        self.acked = acked
        self.studies = studies
        self.on_part = on_part
        self.stop = threading.Event()
        self.sent_body = threading.Event()
        self.got_200 = threading.Event()
        self.requests = 0
        self.server_errors: list[str] = []

    def _body(self, number: int, batch: list[Sent]) -> Iterator[bytes]:
        hook = self.on_part
        yield from stow_chunks(batch, (lambda i: hook(number, i)) if hook else None)
        self.sent_body.set()

    def run(self) -> None:
        while not self.stop.is_set():
            batch = make_batch(self.rng, self.studies, self.acked)
            try:
                resp = requests.post(f"{self.url}/studies", data=self._body(self.requests, batch),
                                     headers={"Content-Type": STOW_TYPE}, timeout=120)
                body = resp.json() if resp.status_code in (200, 202) else {}
            except (requests.RequestException, ValueError):
                return  # the server was killed (mid-response, the body may be cut short)
            self.requests += 1
            if resp.status_code >= 500:
                self.server_errors.append(f"{resp.status_code} {resp.text[:200]}")
            self.acked.update((s.sop_uid, s) for s in acknowledged(resp.status_code, body, batch))
            if resp.status_code == 200:
                self.got_200.set()


def poll(condition: Callable[[], bool], alive: Callable[[], bool], deadline: float = TRIGGER_DEADLINE) -> bool:
    """Poll ``condition`` until it holds (True), or ``alive()`` turns false or the deadline passes (False)."""
    tick = threading.Event()
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if condition():
            return True
        if not alive():
            return False
        tick.wait(0.0005)
    return False


# -- a crash run: one data folder, the server killed and restarted once per trial ---------------------
@dataclass
class TrialResult:
    number: int
    strategy: str
    triggered: bool          # the kill came at the chosen moment (not at the deadline or after the client)
    requests: int            # requests answered in the trial
    acked: int               # instances acknowledged so far (all trials)
    verified: int            # acknowledged instances retrieved and compared after this trial's restart
    lost: list[str]          # acknowledged instances missing or different after the restart: must be empty
    resurrected: list[str]   # instances whose DELETE was acknowledged but that came back: must be empty
    workitems_lost: list[str]  # workitems whose acknowledged create or state change is gone: must be empty
    before_gc: Audit
    removed_by_gc: int
    after_gc: Audit
    server_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (not self.lost and not self.resurrected and not self.workitems_lost and not self.server_errors
                and self.before_gc.consistent and self.after_gc.clean)


class CrashRun:
    """Live crash trials against one data folder: kill -9, restart without repair, verify, gc, verify."""

    def __init__(self, data_dir: str, *, seed: int = 0, config: str | None = None,
                 verify_sample: int | None = None) -> None:
        self.data_dir = data_dir
        self.rng = random.Random(seed)
        self.config = config
        self.verify_sample = verify_sample  # None: every acknowledged instance after every trial
        self.acked: dict[str, Sent] = {}
        self.deleted: dict[str, Sent] = {}
        self.workitems: dict[str, str] = {}  # workitem UID -> the last state change acknowledged
        self.studies = [new_uid() for _ in range(3)]
        self.results: list[TrialResult] = []
        self.server = ServerProcess(self.data_dir, config=self.config)

    def close(self) -> None:
        self.server.stop()

    def blob_count(self) -> int:
        return count_files(os.path.join(self.data_dir, "blobs"))

    def spool_count(self) -> int:
        try:
            return len(os.listdir(os.path.join(self.data_dir, "blobs", "tmp")))
        except FileNotFoundError:
            return 0

    def trial(self, strategy: str) -> TrialResult:
        """One trial: run the client, kill the server at the ``strategy``'s moment, restart, verify."""
        if strategy == "delete":
            return self._delete_trial()
        if strategy == "ups":
            return self._ups_trial()
        kill_at = (self.rng.randrange(3), self.rng.randrange(1, 6))  # (request, part) or (-, nth blob)

        def on_part(request: int, part: int) -> None:
            if strategy == "upload" and (request, part) >= kill_at and self.server.proc.poll() is None:
                self.server.kill()

        client = Client(self.server.url, self.rng, self.acked, self.studies, on_part)
        blobs_before = self.blob_count()
        delay = self.rng.uniform(0.0, 1.0)
        started = time.monotonic()
        moments: dict[str, Callable[[], bool]] = {
            "spool": lambda: self.spool_count() > 0,
            "blobs": lambda: self.blob_count() >= blobs_before + kill_at[1],
            "commit": client.sent_body.is_set,
            "acknowledged": client.got_200.is_set,
            "random": lambda: time.monotonic() - started >= delay,
        }
        client.start()
        if strategy == "upload":
            client.join(TRIGGER_DEADLINE)
            triggered = self.server.proc.poll() is not None
        else:
            triggered = poll(moments[strategy], client.is_alive)
        self.server.kill()
        client.stop.set()
        client.join(TRIGGER_DEADLINE)
        return self._finish(strategy, triggered, client.requests, client.server_errors)

    def _delete_trial(self) -> TrialResult:
        """Store a study, DELETE it, and kill the server once a random number of its blobs are gone."""
        batch = make_batch(self.rng, [new_uid()], {})
        resp = requests.post(f"{self.server.url}/studies", data=b"".join(stow_chunks(batch)),
                             headers={"Content-Type": STOW_TYPE}, timeout=120)
        errors = [] if resp.status_code == 200 else [f"{resp.status_code} {resp.text[:200]}"]
        body = resp.json() if resp.status_code in (200, 202) else {}
        self.acked.update((s.sop_uid, s) for s in acknowledged(resp.status_code, body, batch))
        blobs_before = self.blob_count()
        outcome: dict[str, int] = {}

        def send_delete() -> None:
            try:
                outcome["status"] = requests.delete(f"{self.server.url}/studies/{batch[0].study_uid}",
                                                    timeout=120).status_code
            except requests.RequestException:
                pass  # killed

        deleter = threading.Thread(target=send_delete, daemon=True)
        wanted = blobs_before - self.rng.randint(0, len(batch))
        deleter.start()
        triggered = poll(lambda: self.blob_count() <= wanted, deleter.is_alive)
        self.server.kill()
        deleter.join(TRIGGER_DEADLINE)
        if outcome.get("status", 0) >= 500:
            errors.append(f"DELETE answered {outcome['status']}")
        if outcome.get("status") in (200, 204):
            self.deleted.update((s.sop_uid, self.acked.pop(s.sop_uid)) for s in batch)
        return self._finish("delete", triggered, 2, errors, deleting=batch)

    def _ups_trial(self) -> TrialResult:
        """Create workitems and claim them (IN PROGRESS) one after another; kill after a random number of acks."""
        errors: list[str] = []
        acks = [0]
        url = self.server.url

        def work() -> None:
            try:
                for _ in range(12):
                    uid = new_uid()
                    resp = requests.post(f"{url}/workitems?{uid}", data=json.dumps(workitem_json()), headers=UPS_JSON,
                                         timeout=120)
                    if resp.status_code != 201:
                        errors.extend([f"create {resp.status_code} {resp.text[:200]}"] if resp.status_code >= 500 else [])
                        continue
                    self.workitems[uid] = "SCHEDULED"
                    acks[0] += 1
                    resp = requests.put(f"{url}/workitems/{uid}/state", data=json.dumps(state_json("IN PROGRESS")),
                                        headers=UPS_JSON, timeout=120)
                    if resp.status_code == 200:
                        self.workitems[uid] = "IN PROGRESS"
                        acks[0] += 1
                    elif resp.status_code >= 500:
                        errors.append(f"state {resp.status_code} {resp.text[:200]}")
            except requests.RequestException:
                pass  # killed

        worker = threading.Thread(target=work, daemon=True)
        wanted = self.rng.randint(1, 16)
        worker.start()
        triggered = poll(lambda: acks[0] >= wanted, worker.is_alive)
        self.server.kill()
        worker.join(TRIGGER_DEADLINE)
        return self._finish("ups", triggered, acks[0], errors)

    def _check_workitems(self) -> list[str]:
        """Every acknowledged workitem is retrievable, in its acknowledged state or a later one."""
        lost = []
        for uid, acked in self.workitems.items():
            resp = requests.get(f"{self.server.url}/workitems/{uid}", timeout=60)
            state_now = resp.json()[0]["00741000"]["Value"][0] if resp.status_code == 200 else None
            if state_now not in UPS_STATES or UPS_STATES.index(state_now) < UPS_STATES.index(acked):
                lost.append(f"{uid}: acknowledged {acked}, now {resp.status_code} {state_now}")
        return lost

    def _finish(self, strategy: str, triggered: bool, answered: int, server_errors: list[str],
                deleting: list[Sent] | None = None) -> TrialResult:
        self.server = ServerProcess(self.data_dir, config=self.config)  # no repair step before the restart
        lost = self._settle_delete(deleting) if deleting else []
        before, _ = audit_dir(self.data_dir)
        lost += self._verify()
        resurrected = [s.sop_uid for s in self.deleted.values() if self._get(s).status_code != 404]
        workitems_lost = self._check_workitems()
        after, removed = audit_dir(self.data_dir, gc=True)
        result = TrialResult(len(self.results) + 1, strategy, triggered, answered, len(self.acked), self._verified,
                             lost, resurrected, workitems_lost, before, removed, after, list(server_errors))
        self.results.append(result)
        return result

    def _settle_delete(self, batch: list[Sent]) -> list[str]:
        """A DELETE cut short is all or nothing (one index transaction): every instance or none remains."""
        present = [s for s in batch if self._get(s).status_code == 200]
        if not present and batch[0].sop_uid in self.acked:
            self.deleted.update((s.sop_uid, self.acked.pop(s.sop_uid)) for s in batch)
        if present and len(present) != len(batch):
            return [f"{s.sop_uid}: half of an interrupted DELETE" for s in batch if s not in present]
        return []

    def _get(self, sent: Sent) -> requests.Response:
        return requests.get(instance_url(self.server.url, sent), headers={"Accept": SINGLE_PART}, timeout=60)

    def _verify(self) -> list[str]:
        """Retrieve acknowledged instances and compare them byte for byte; returns the lost ones."""
        items = list(self.acked.values())
        if self.verify_sample is not None and len(items) > self.verify_sample:
            items = self.rng.sample(items, self.verify_sample)
        self._verified = len(items)
        lost = []
        for sent in items:
            resp = self._get(sent)
            if not same_bytes(resp, sent):
                lost.append(f"{sent.sop_uid}: {resp.status_code}")
        return lost

    def verify_all(self) -> list[str]:
        """Every acknowledged instance, whatever ``verify_sample`` says (the end of a soak run)."""
        sample, self.verify_sample = self.verify_sample, None
        try:
            return self._verify()
        finally:
            self.verify_sample = sample


def workitem_json() -> dict:
    """A workitem with what Create Workitem requires (PS3.4 Table CC.2.5-3, N-CREATE Type 1)."""
    return {"00741200": {"vr": "CS", "Value": ["MEDIUM"]}, "00741204": {"vr": "LO", "Value": ["crash trial"]},
            "00404005": {"vr": "DT", "Value": ["20240102101500"]}, "00404041": {"vr": "CS", "Value": ["READY"]},
            "00741000": {"vr": "CS", "Value": ["SCHEDULED"]}}


def state_json(state: str) -> dict:
    """A Change Workitem State body with a new Transaction UID (PS3.18 §11.7)."""
    return {"00741000": {"vr": "CS", "Value": [state]}, "00081195": {"vr": "UI", "Value": [new_uid()]}}


def delete_config(folder: str) -> str:
    """An ini enabling the non-standard DELETE routes (for the DELETE trials)."""
    path = os.path.join(folder, "crash.ini")
    with open(path, "w") as fh:
        fh.write("[app:main]\ndicomweb.allow_delete = true\n")
    return path


def describe(result: TrialResult) -> str:
    return (f"trial {result.number} ({result.strategy}): lost={result.lost[:5]} resurrected={result.resurrected[:5]} "
            f"workitems_lost={result.workitems_lost[:5]} "
            f"5xx={result.server_errors[:3]} before_gc={result.before_gc} after_gc={result.after_gc}")


# -- kill points: SIGKILL at an exact step of the store and delete paths ----------------------------------
KILL_POINT_SCRIPT = r"""
import os, signal, sys
import webtest
from dicomweb_wsgi.app import make_app
from dicomweb_wsgi.storage import file_blobs, sqlite_index

data_dir, point, body_path, content_type = sys.argv[1:5]
app = make_app({"data_dir": data_dir, "allow_delete": "true"})
client = webtest.TestApp(app)
body = open(body_path, "rb").read()

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def then_die(func):
    def wrapper(*args, **kwargs):
        result = func(*args, **kwargs)
        die()
        return result
    return wrapper

if point.startswith("delete"):
    client.post("/studies", body, headers={"Content-Type": content_type}, status=200)
patches = {
    "blob-renamed": (file_blobs, "fsync_dir", die),
    "blob-file-flush": (file_blobs, "fsync_file", die),
    "blob-durable": (file_blobs.FileBlobStore, "put", then_die(file_blobs.FileBlobStore.put)),
    "before-commit": (sqlite_index.SqliteIndex, "add_instances", die),
    "committed": (sqlite_index.SqliteIndex, "add_instances", then_die(sqlite_index.SqliteIndex.add_instances)),
    "delete-rows-gone": (sqlite_index.SqliteIndex, "delete", then_die(sqlite_index.SqliteIndex.delete)),
    "delete-one-blob-gone": (file_blobs.FileBlobStore, "delete", then_die(file_blobs.FileBlobStore.delete)),
}
target, name, replacement = patches[point]
setattr(target, name, replacement)
if point.startswith("delete"):
    client.delete("/studies/" + sys.argv[5], status="*")
else:
    client.post("/studies", body, headers={"Content-Type": content_type}, status="*")
sys.exit(3)  # not killed: the kill point was never reached
"""


def run_kill_point(data_dir: str, point: str, batch: list[Sent]) -> int:
    """Run KILL_POINT_SCRIPT for ``point`` on ``batch``; returns the subprocess's exit code."""
    body_path = os.path.join(os.path.dirname(data_dir), f"{point}.body")
    with open(body_path, "wb") as fh:
        fh.write(b"".join(stow_chunks(batch)))
    proc = subprocess.run([sys.executable, "-c", KILL_POINT_SCRIPT, data_dir, point, body_path, STOW_TYPE,
                           batch[0].study_uid], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.returncode


# -- the CI-sized trials -----------------------------------------------------------------------------------
def test_crash_kill9_at_each_moment_loses_nothing_acknowledged(tmp_path):
    run = CrashRun(str(tmp_path / "data"), seed=20240101, config=delete_config(str(tmp_path)))
    try:
        for strategy in STRATEGIES:
            result = run.trial(strategy)
            assert result.ok, describe(result)
        assert run.verify_all() == []
    finally:
        run.close()
    assert len(run.acked) >= 3  # the "acknowledged" trial alone stores a whole request
    assert {r.strategy for r in run.results} == set(STRATEGIES)
    assert all(r.after_gc.instances == r.before_gc.instances for r in run.results)


@pytest.mark.parametrize("point, survives", [
    ("blob-renamed", False),
    ("blob-file-flush", False),
    ("blob-durable", False),
    ("before-commit", False),
    ("committed", True),
])
def test_crash_kill_point_during_stow_leaves_index_and_files_agreeing(tmp_path, point, survives):
    data_dir = str(tmp_path / "data")
    batch = make_batch(random.Random(point), [new_uid()], {})
    run_kill_point(data_dir, point, batch)
    before, _ = audit_dir(data_dir)
    assert before.consistent, before
    with ServerProcess(data_dir) as server:  # starts on what the kill left, no repair
        statuses = {requests.get(instance_url(server.url, s), headers={"Accept": SINGLE_PART},
                                 timeout=60).status_code for s in batch}
        if survives:  # committed but never acknowledged: stored whole
            assert all(same_bytes(requests.get(instance_url(server.url, s), headers={"Accept": SINGLE_PART},
                                               timeout=60), s) for s in batch)
        else:
            assert statuses == {404}
    after, removed = audit_dir(data_dir, gc=True)
    assert after.clean, after
    assert removed > 0 or survives  # the blob written before the kill was an orphan, and gc removed it
    assert after.instances == (len(batch) if survives else 0)


@pytest.mark.parametrize("point", ["delete-rows-gone", "delete-one-blob-gone"])
def test_crash_kill_point_during_delete_leaves_no_row_without_its_file(tmp_path, point):
    data_dir = str(tmp_path / "data")
    batch = make_batch(random.Random(point), [new_uid()], {})
    run_kill_point(data_dir, point, batch)
    before, _ = audit_dir(data_dir)
    assert before.consistent, before
    assert before.orphans  # the rows went first; the blobs still on disk are orphans, not dangling rows
    with ServerProcess(data_dir) as server:
        assert {requests.get(instance_url(server.url, s), timeout=60).status_code for s in batch} == {404}
    after, removed = audit_dir(data_dir, gc=True)
    assert after.clean and after.instances == 0, after
    assert removed == len(before.orphans)
