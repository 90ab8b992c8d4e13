"""TimezoneOffsetFromUTC (0008,0201) at every QIDO level: study and series results carry the value of
their latest stored instance (PS3.18 Tables 10.6.3-3/-4, returned when known), each level matches on
its own value, and migration 3 fills the study and series rows of an index stored before it."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dicomweb_wsgi.storage.sqlite_db import SqliteDatabase
from dicomweb_wsgi.storage.sqlite_index import MIGRATIONS
from dicomweb_wsgi.testing import make_client, make_dataset, new_uid, store

JSON_ACCEPT = {"Accept": "application/dicom+json"}
TZ = "00080201"


class Archive:
    """Study S: series A (two instances at +0100), then series B (one at -0500, stored last).
    Study N: no TimezoneOffsetFromUTC at all."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.s, self.a, self.b, self.n = new_uid(), new_uid(), new_uid(), new_uid()
        self.a_sops = [new_uid(), new_uid()]
        self.datasets = [
            make_dataset(study_uid=self.s, series_uid=self.a, sop_uid=sop, SeriesNumber=1, InstanceNumber=n,
                         PatientID="TZ-1", PatientName="Goldsmith^Ann", TimezoneOffsetFromUTC="+0100")
            for n, sop in enumerate(self.a_sops, 1)]
        self.datasets.append(make_dataset(study_uid=self.s, series_uid=self.b, SeriesNumber=2, PatientID="TZ-1",
                                          PatientName="Goldsmith^Ann", TimezoneOffsetFromUTC="-0500"))
        self.datasets.append(make_dataset(study_uid=self.n, PatientID="TZ-2"))

    def store(self) -> None:
        client = make_client(self.data_dir)
        try:
            store(client, self.datasets)
        finally:
            client.app.close()

    def get(self, url: str) -> list[dict]:
        client = make_client(self.data_dir)
        try:
            return client.get(url, headers=JSON_ACCEPT, status=200).json
        finally:
            client.app.close()


def _by(results: list[dict], tag: str) -> dict[str, str | None]:
    """UID (of ``tag``) -> the result's TimezoneOffsetFromUTC (None: absent; "" present but empty)."""
    return {r[tag]["Value"][0]: (r[TZ].get("Value", [""])[0] if TZ in r else None) for r in results}


def check_every_level(archive: Archive) -> None:
    """What the archive must answer, whether stored now or before migration 3."""
    s, a, b, n = archive.s, archive.a, archive.b, archive.n
    assert _by(archive.get("/studies?PatientID=TZ-*"), "0020000D") == {s: "-0500", n: None}
    assert _by(archive.get(f"/studies/{s}/series"), "0020000E") == {a: "+0100", b: "-0500"}
    # /series also carries study attributes: the series' own value wins, the study's is not lent.
    assert _by(archive.get("/series?PatientID=TZ-*"), "0020000E") == {a: "+0100", b: "-0500",
                                                                       archive.datasets[-1].SeriesInstanceUID: None}
    # Each level matches on its own value (the study's is its latest instance's).
    assert _by(archive.get("/studies?TimezoneOffsetFromUTC=-0500"), "0020000D") == {s: "-0500"}
    assert archive.get("/studies?TimezoneOffsetFromUTC=%2B0100") == []
    assert _by(archive.get("/series?TimezoneOffsetFromUTC=%2B01*"), "0020000E") == {a: "+0100"}
    assert _by(archive.get(f"/studies/{s}/instances?TimezoneOffsetFromUTC=%2B0100"), "00080018") == \
        dict.fromkeys(archive.a_sops, "+0100")
    # Instance results carry their own value without being asked (Table 10.6.3-5, return if known).
    assert _by(archive.get(f"/studies/{s}/series/{a}/instances"), "00080018") == dict.fromkeys(archive.a_sops,
                                                                                             "+0100")
    assert _by(archive.get(f"/studies/{n}/instances"), "00080018") == {archive.datasets[-1].SOPInstanceUID: None}
    # includefield on a study without it: the attribute comes back empty.
    assert _by(archive.get(f"/studies?StudyInstanceUID={n}&includefield=TimezoneOffsetFromUTC"),
               "0020000D") == {n: ""}


@pytest.fixture
def archive(tmp_path) -> Archive:
    return Archive(tmp_path / "data")


def test_studies_and_series_carry_and_match_their_timezone_offset(archive):
    archive.store()
    check_every_level(archive)


def test_the_latest_stored_instance_sets_study_and_series_values(archive):
    archive.store()
    later = make_dataset(study_uid=archive.s, series_uid=archive.a, SeriesNumber=1, PatientID="TZ-1",
                         TimezoneOffsetFromUTC="+0900")
    archive.datasets.append(later)
    archive.store()
    assert _by(archive.get(f"/studies?StudyInstanceUID={archive.s}"), "0020000D") == {archive.s: "+0900"}
    assert _by(archive.get(f"/studies/{archive.s}/series"), "0020000E") == {archive.a: "+0900",
                                                                           archive.b: "-0500"}


def test_index_built_by_schema_2_is_migrated(archive, tmp_path):
    """Migration 3 fills study and series rows; migration 4 indexes the names already stored; migration 5
    gives each instance row its own value."""
    archive.store()
    index = archive.data_dir / "index.sqlite3"
    old = tmp_path / "schema2.sqlite3"
    SqliteDatabase(str(old), migrations=MIGRATIONS[:2]).close()
    with sqlite3.connect(old) as conn:  # the same rows as schema version 2 stored them
        conn.execute("ATTACH DATABASE ? AS new", (str(index),))
        for table in ("study", "series", "instance"):
            columns = ", ".join(row[1] for row in conn.execute(f"PRAGMA main.table_info({table})"))
            conn.execute(f"INSERT INTO main.{table} ({columns}) SELECT {columns} FROM new.{table}")
            if table != "instance":
                conn.execute(f"UPDATE main.{table} SET attrs_json=json_remove(attrs_json, '$.\"{TZ}\"')")
        assert conn.execute("PRAGMA main.user_version").fetchone()[0] == 2
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{index}{suffix}").unlink(missing_ok=True)
    old.rename(index)
    check_every_level(archive)  # the app opens the index, which runs migrations 3, 4 and 5
    names = archive.get("/studies?PatientName=*OLDSMI*&fuzzymatching=false")
    assert [r["0020000D"]["Value"][0] for r in names] == [archive.s]
    with sqlite3.connect(index) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    conn.close()
