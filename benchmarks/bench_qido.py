"""QIDO-RS benchmark: p50/p95 per query over synthetic archives of 1,000 and 100,000 instances.

Run: ``python -m benchmarks.bench_qido`` (add ``--sizes 1000 10000`` for other archive sizes).
Not a test: CI never runs it. The archive is loaded directly through the SQLite index (synthetic
DICOM JSON, no files, no HTTP), then each query goes through the whole WSGI application in-process
(query parsing, SQL, building the DICOM JSON body), which is what a request costs minus the socket.

Every query matches the same number of results at every size, so the growth ratio from the smallest
to the largest archive measures the archive, not the result: a fixed set of small "needle" studies
(1 series, 1 instance) holds everything the searches look for (10 patient names containing "smi",
10 studies of 2020 with an MR series, and enough others that an unfiltered first page of 101 is full),
and the rest is filler (5 series of 10 instances) that no search but the unfiltered list can match:
no name contains "smi", and a filler of 2020 has no MR series (fillers of other years have). Series
and instance queries pick filler studies. ``n`` is the number of results of the last request.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Iterator

from dicomweb_wsgi.app import make_app
from dicomweb_wsgi.storage.base import DuplicatePolicy, InstanceRecord
from dicomweb_wsgi.storage.sqlite_index import SqliteIndex

SERIES_PER_STUDY = 5
INSTANCES_PER_SERIES = 10
# No filler name contains "smi" (any case): those are the needles of the PatientName=*smi* query.
SURNAMES = ["Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez",
            "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin",
            "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson",
            "Walker", "Young", "Allen", "King", "Wright", "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green",
            "Adams", "Nelson", "Baker", "Hall", "Rivera", "Campbell", "Mitchell", "Carter", "Roberts"]
NEEDLE_SURNAMES = ["Smith", "Goldsmith", "Smiley", "Nesmith", "Smithson"]
GIVEN = ["James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda", "David", "Elizabeth"]
MODALITIES = ["CT", "MR", "CR", "US", "PT", "SR"]
ROOT = "1.2.826.0.1.3680043.10.1255.9"
NAME_NEEDLES = 10       # PatientName contains "smi"
DATE_NEEDLES = 10       # StudyDate in 2020 with an MR series
NEEDLE_STUDIES = 110    # all needles: more than one page of the unfiltered OHIF list (limit=101)


def _el(vr: str, *values: Any) -> dict[str, Any]:
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": v} for v in values]}
    return {"vr": vr, "Value": list(values)}


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(dict(sorted(obj.items())), separators=(",", ":"))


def _date(rng: random.Random, year: int) -> str:
    return f"{year}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"


def _study_records(s: int, rng: random.Random, *, name: str, date: str, modalities: list[str],
                   instances: int) -> Iterator[InstanceRecord]:
    """One study: one series per modality, ``instances`` instances each."""
    study_uid = f"{ROOT}.{s + 1}"
    time_ = f"{rng.randint(7, 19):02d}{rng.randint(0, 59):02d}00"
    study_cols = {"patient_name": name, "patient_id": f"PID{s:06d}", "patient_birth_date": "19600101",
                  "patient_sex": rng.choice("MF"), "study_date": date, "study_time": time_,
                  "accession_number": f"ACC{s:07d}", "referring_physician_name": "Ref^Doctor",
                  "study_id": str(s), "study_description": rng.choice(["CT CHEST", "MR BRAIN", "CT ABDOMEN"])}
    study_json = _dumps({
        "00100010": _el("PN", name), "00100020": _el("LO", f"PID{s:06d}"), "00100030": _el("DA", "19600101"),
        "00100040": _el("CS", study_cols["patient_sex"]), "00080020": _el("DA", date),
        "00080030": _el("TM", time_), "00080050": _el("SH", f"ACC{s:07d}"),
        "00080090": _el("PN", "Ref^Doctor"), "00200010": _el("SH", str(s)), "0020000D": _el("UI", study_uid),
        "00081030": _el("LO", study_cols["study_description"])})
    for se, modality in enumerate(modalities):
        series_uid = f"{study_uid}.{se + 1}"
        series_cols = {"modality": modality, "series_number": str(se + 1), "series_description": f"series {se}"}
        series_json = _dumps({"00080060": _el("CS", modality), "00200011": _el("IS", se + 1),
                              "0008103E": _el("LO", f"series {se}"), "0020000E": _el("UI", series_uid)})
        for i in range(instances):
            sop_uid = f"{series_uid}.{i + 1}"
            meta = {"00080016": _el("UI", "1.2.840.10008.5.1.4.1.1.2"), "00080018": _el("UI", sop_uid),
                    "00200013": _el("IS", i + 1), "00280010": _el("US", 512), "00280011": _el("US", 512),
                    "00280100": _el("US", 16), "00280030": _el("DS", 0.5, 0.5),
                    "00200032": _el("DS", -100.0, -100.0, float(i)), "00180050": _el("DS", 1.0),
                    "7FE00010": {"vr": "OW", "BulkDataURI": "%%BASE%%/bulk"}}
            meta.update(json.loads(study_json))
            meta.update(json.loads(series_json))
            yield InstanceRecord(
                study_uid, series_uid, sop_uid, "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1",
                f"blob-{s}-{se}-{i}", 0, "", study_cols, series_cols,
                {"sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "instance_number": str(i + 1), "rows": "512",
                 "columns": "512", "bits_allocated": "16"},
                study_json, series_json, _dumps(meta))


def filler_studies(instances: int) -> int:
    """How many filler studies bring the archive to about ``instances`` instances."""
    return max(1, (instances - NEEDLE_STUDIES) // (SERIES_PER_STUDY * INSTANCES_PER_SERIES))


def synthetic_records(fillers: int, seed: int = 7) -> Iterator[InstanceRecord]:
    """The needle studies (numbers 0-109), then ``fillers`` studies of 5 series x 10 instances."""
    rng = random.Random(seed)
    for s in range(NEEDLE_STUDIES):
        if s < NAME_NEEDLES:
            name, date, modality = f"{NEEDLE_SURNAMES[s % len(NEEDLE_SURNAMES)]}^{rng.choice(GIVEN)}", \
                _date(rng, rng.choice([2016, 2019, 2022])), "CT"
        elif s < NAME_NEEDLES + DATE_NEEDLES:
            name, date, modality = f"{rng.choice(SURNAMES)}^{rng.choice(GIVEN)}", _date(rng, 2020), "MR"
        else:
            name, date, modality = f"{rng.choice(SURNAMES)}^{rng.choice(GIVEN)}", \
                _date(rng, rng.randint(2015, 2024)), rng.choice(["CT", "CR", "US"])
        yield from _study_records(s, rng, name=name, date=date, modalities=[modality], instances=1)
    for s in range(NEEDLE_STUDIES, NEEDLE_STUDIES + fillers):
        year = rng.randint(2015, 2024)
        modalities = [rng.choice(MODALITIES) for _ in range(SERIES_PER_STUDY)]
        if year == 2020:  # matches the date range, so it must not match ModalitiesInStudy=MR
            modalities = ["CT" if m == "MR" else m for m in modalities]
        yield from _study_records(s, rng, name=f"{rng.choice(SURNAMES)}^{rng.choice(GIVEN)}",
                                  date=_date(rng, year), modalities=modalities, instances=INSTANCES_PER_SERIES)


def load(data_dir: str, fillers: int) -> int:
    """Index the synthetic archive; returns the number of instances."""
    index = SqliteIndex(os.path.join(data_dir, "index.sqlite3"), synchronous="OFF")
    count = 0
    batch: list[InstanceRecord] = []
    for record in synthetic_records(fillers):
        batch.append(record)
        if len(batch) == 2000:
            count += len(index.add_instances(batch, DuplicatePolicy.IGNORE))
            batch = []
    count += len(index.add_instances(batch, DuplicatePolicy.IGNORE))
    index.close()
    return count


def request(app: Callable[..., Any], path: str, query: str) -> bytes:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "bench",
               "SERVER_PORT": "80", "HTTP_HOST": "bench", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(),
               "wsgi.errors": sys.stderr, "HTTP_ACCEPT": "application/dicom+json", "REMOTE_ADDR": "127.0.0.1"}
    status: list[str] = []
    body = app(environ, lambda s, h, exc=None: status.append(s))
    try:
        data = b"".join(body)
    finally:
        getattr(body, "close", lambda: None)()
    if not status[0].startswith("200"):
        raise RuntimeError(f"{path}?{query}: {status[0]}: {data[:200]!r}")
    return data


OHIF_FIELDS = "limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060%2C00080090%2C00100030"


def queries(fillers: int, rng: random.Random) -> dict[str, Callable[[], tuple[str, str]]]:
    """Each query's number of matches is the same at every archive size (see the module docstring)."""
    def filler_uid() -> str:
        return f"{ROOT}.{NEEDLE_STUDIES + rng.randrange(fillers) + 1}"
    return {
        "study by PatientID": lambda: ("/studies", f"PatientID=PID{rng.randrange(NEEDLE_STUDIES + fillers):06d}"),
        "PatientName=*smi*": lambda: ("/studies", "PatientName=%2Asmi%2A"),
        "StudyDate range + ModalitiesInStudy": lambda: (
            "/studies", "StudyDate=20200101-20201231&ModalitiesInStudy=MR"),
        "series of a study": lambda: (f"/studies/{filler_uid()}/series", ""),
        "instances of a series": lambda: (
            f"/studies/{(u := filler_uid())}/series/{u}.{rng.randrange(SERIES_PER_STUDY) + 1}/instances", ""),
        "OHIF study list (limit=101)": lambda: ("/studies", OHIF_FIELDS),
        "OHIF study list, name *smi*": lambda: ("/studies", f"PatientName=%2Asmi%2A&{OHIF_FIELDS}"),
    }


def measure(app: Callable[..., Any], make: Callable[[], tuple[str, str]], runs: int) -> tuple[float, float, int]:
    """(p50 ms, p95 ms, results in the last response)."""
    for _ in range(5):
        request(app, *make())
    times = []
    body = b"[]"
    for _ in range(runs):
        path, query = make()
        started = time.perf_counter()
        body = request(app, path, query)
        times.append((time.perf_counter() - started) * 1000)
    cuts = statistics.quantiles(times, n=20)
    return statistics.median(times), cuts[18], len(json.loads(body))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 100000], help="instances per archive")
    parser.add_argument("--runs", type=int, default=200, help="requests per query")
    args = parser.parse_args(argv)
    table: dict[str, dict[int, tuple[float, float, int]]] = {}
    for size in args.sizes:
        fillers = filler_studies(size)
        with tempfile.TemporaryDirectory(prefix="bench-qido-") as data_dir:
            started = time.perf_counter()
            count = load(data_dir, fillers)
            print(f"loaded {count} instances ({NEEDLE_STUDIES} needle + {fillers} filler studies) in "
                  f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
            app = make_app({"data_dir": data_dir, "fsync": "false", "sqlite_synchronous": "normal"})
            try:
                for name, make in queries(fillers, random.Random(1)).items():
                    table.setdefault(name, {})[size] = measure(app, make, args.runs)
            finally:
                app.close()
    sizes = args.sizes
    head = f"{'query':38}" + "".join(f"{f'{s:,} p50':>13}{f'{s:,} p95':>13}{'n':>5}" for s in sizes) + \
        f"{'p50 ratio':>11}"
    print(head)
    print("-" * len(head))
    for name, by_size in table.items():
        cells = "".join(f"{by_size[s][0]:>10.2f} ms{by_size[s][1]:>10.2f} ms{by_size[s][2]:>5}" for s in sizes)
        ratio = by_size[sizes[-1]][0] / by_size[sizes[0]][0]
        print(f"{name:38}{cells}{ratio:>10.1f}x")


if __name__ == "__main__":
    main()
