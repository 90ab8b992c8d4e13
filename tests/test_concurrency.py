"""Concurrency on a live server: 8 writers storing overlapping studies (the same instance at the same
moment, through a barrier) while 4 readers search and retrieve; then the same with two server processes
sharing one data folder. Zero 5xx, zero "database is locked", and at the end the index, the counts and
the files agree with exactly what was sent.
"""
from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

import requests

from dicomweb_wsgi.testing import dataset_bytes, make_dataset, new_uid

from .serverproc import ServerProcess
from .test_crash import STOW_TYPE, SINGLE_PART, Sent, audit_dir, instance_url, same_bytes, stow_chunks

WRITERS = 8
READERS = 4
ROUNDS = 6
TIMEOUT = 120


def make_pool(rng: random.Random) -> list[Sent]:
    """3 studies x 2 series x 6 instances, each built once so every writer sends identical bytes."""
    pool = []
    for _ in range(3):
        study = new_uid()
        for _ in range(2):
            series = new_uid()
            for number in range(1, 7):
                ds = make_dataset(study_uid=study, series_uid=series, InstanceNumber=number,
                                  pixel_seed=rng.randrange(1 << 30))
                pool.append(Sent(study, series, ds.SOPInstanceUID, dataset_bytes(ds)))
    return pool


@dataclass
class Tally:
    """What the clients saw: every status, and every answer that was a 5xx or mentions a lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: dict[int, int] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)
    stored: set[str] = field(default_factory=set)

    def record(self, what: str, resp: requests.Response) -> None:
        with self.lock:
            self.statuses[resp.status_code] = self.statuses.get(resp.status_code, 0) + 1
            text = resp.text[:2000] if resp.headers.get("Content-Type", "").startswith(("text", "application/dicom+json")) \
                else ""
            if resp.status_code >= 500 or "locked" in text or "locked" in resp.headers.get("Warning", ""):
                self.bad.append(f"{what}: {resp.status_code} {text[:300]}")


def _writer(urls: list[str], number: int, pool: list[Sent], barrier: threading.Barrier, tally: Tally,
            rounds: int) -> None:
    rng = random.Random(number)
    url = urls[number % len(urls)]
    for round_no in range(rounds):
        shared = pool[(round_no * 7) % len(pool)]  # every writer sends this one in the same moment
        batch = [shared] + rng.sample(pool, 4)
        barrier.wait(TIMEOUT)
        resp = requests.post(f"{url}/studies", data=b"".join(stow_chunks(batch)),
                             headers={"Content-Type": STOW_TYPE}, timeout=TIMEOUT)
        tally.record(f"STOW by writer {number}", resp)
        if resp.status_code == 200:
            with tally.lock:
                tally.stored.update(s.sop_uid for s in batch)
        else:
            with tally.lock:
                tally.bad.append(f"STOW by writer {number}: {resp.status_code} {resp.text[:300]}")


def _reader(urls: list[str], number: int, pool: list[Sent], done: threading.Event, tally: Tally) -> None:
    rng = random.Random(1000 + number)
    while not done.is_set():
        url = rng.choice(urls)
        sent = rng.choice(pool)
        kind = rng.randrange(4)
        if kind == 0:
            resp = requests.get(f"{url}/studies", params={"StudyInstanceUID": sent.study_uid}, timeout=TIMEOUT)
        elif kind == 1:
            resp = requests.get(f"{url}/studies/{sent.study_uid}", timeout=TIMEOUT)
        elif kind == 2:
            resp = requests.get(f"{url}/studies/{sent.study_uid}/metadata", timeout=TIMEOUT)
        else:
            resp = requests.get(instance_url(url, sent), headers={"Accept": SINGLE_PART}, timeout=TIMEOUT)
            if resp.status_code == 200 and not same_bytes(resp, sent):
                with tally.lock:
                    tally.bad.append(f"instance {sent.sop_uid} retrieved with different bytes")
        tally.record(f"GET by reader {number}", resp)


def run_clients(urls: list[str], pool: list[Sent], rounds: int = ROUNDS) -> Tally:
    """WRITERS writers for ``rounds`` barrier-aligned rounds while READERS readers search and retrieve."""
    tally = Tally()
    barrier = threading.Barrier(WRITERS)
    done = threading.Event()
    writers = [threading.Thread(target=_writer, args=(urls, n, pool, barrier, tally, rounds)) for n in range(WRITERS)]
    readers = [threading.Thread(target=_reader, args=(urls, n, pool, done, tally)) for n in range(READERS)]
    for thread in writers + readers:
        thread.start()
    for thread in writers:
        thread.join()
    done.set()
    for thread in readers:
        thread.join()
    return tally


def check_final_state(url: str, data_dir: str, pool: list[Sent], tally: Tally, rounds: int = ROUNDS) -> None:
    """No 5xx or lock seen; the index, counts, search results and files agree with what was stored."""
    assert tally.bad == [], tally.bad[:10]
    assert all(status < 500 for status in tally.statuses), tally.statuses
    assert tally.statuses.get(200, 0) >= WRITERS * rounds
    found, _ = audit_dir(data_dir)
    assert found.clean, found  # counts agree with the instances; every row's file is whole; no leftovers
    assert found.instances == len(tally.stored)
    for study in {s.study_uid for s in pool}:
        expected = {s.sop_uid for s in pool if s.study_uid == study and s.sop_uid in tally.stored}
        resp = requests.get(f"{url}/studies/{study}/metadata", timeout=TIMEOUT)
        assert resp.status_code == 200, resp.text[:300]
        assert {item["00080018"]["Value"][0] for item in resp.json()} == expected
        studies = requests.get(f"{url}/studies", params={"StudyInstanceUID": study}, timeout=TIMEOUT).json()
        assert [s["00201208"]["Value"] for s in studies] == [[len(expected)]]  # NumberOfStudyRelatedInstances
        found_uids = requests.get(f"{url}/studies/{study}/instances", timeout=TIMEOUT).json()
        assert {item["00080018"]["Value"][0] for item in found_uids} == expected
    for sent in pool:
        if sent.sop_uid in tally.stored:
            assert same_bytes(requests.get(instance_url(url, sent), headers={"Accept": SINGLE_PART},
                                           timeout=TIMEOUT), sent)


def test_concurrency_8_writers_and_4_readers_see_no_5xx_and_consistent_counts(tmp_path):
    pool = make_pool(random.Random(1))
    data_dir = str(tmp_path / "data")
    with ServerProcess(data_dir) as server:
        tally = run_clients([server.url], pool)
        check_final_state(server.url, data_dir, pool, tally)
        output = "".join(server.output)
    assert "database is locked" not in output and "Traceback" not in output, output[-3000:]


def test_concurrency_two_processes_on_one_data_folder_agree(tmp_path):
    pool = make_pool(random.Random(2))
    data_dir = str(tmp_path / "data")
    with ServerProcess(data_dir) as first, ServerProcess(data_dir) as second:
        tally = run_clients([first.url, second.url], pool)
        check_final_state(first.url, data_dir, pool, tally)
        check_final_state(second.url, data_dir, pool, tally)
        output = "".join(first.output + second.output)
    assert "database is locked" not in output and "Traceback" not in output, output[-3000:]
