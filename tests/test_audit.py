"""Audit lines: their own UTC timestamp (ISO 8601, milliseconds, ``Z``), one per stored or refused
instance, values with spaces or quotes quoted so that a line splits back into its fields."""
from __future__ import annotations

import logging
import re
import shlex
import time
from datetime import datetime, timezone

from dicomweb_wsgi.testing import make_dataset, new_uid, store

_STAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


def _audit_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "dicomweb_wsgi.audit"]


def test_audit_store_lines_carry_their_own_utc_millisecond_timestamp(dicomweb_client, caplog):
    study = new_uid()
    datasets = [make_dataset(study_uid=study) for _ in range(3)]
    before = datetime.fromtimestamp(int(time.time() * 1000) / 1000, timezone.utc)
    with caplog.at_level(logging.INFO, logger="dicomweb_wsgi.audit"):
        store(dicomweb_client, datasets)
    after = datetime.now(timezone.utc)
    lines = _audit_lines(caplog)
    assert len(lines) == 3
    stamps = [line.split(" ", 1)[0] for line in lines]
    assert all(_STAMP.fullmatch(s) for s in stamps), stamps
    when = [datetime.fromisoformat(s.replace("Z", "+00:00")) for s in stamps]
    assert before <= when[0] <= when[1] <= when[2] <= after
    assert [line.split()[1] for line in lines] == ["store"] * 3
    assert [f"sop={ds.SOPInstanceUID}" in line for ds, line in zip(datasets, lines)] == [True] * 3


def test_audit_refused_store_quotes_its_detail(dicomweb_client, caplog):
    ds = make_dataset(study_uid=new_uid())
    with caplog.at_level(logging.INFO, logger="dicomweb_wsgi.audit"):
        store(dicomweb_client, [ds], study_uid=new_uid(), status=409)
    [line] = _audit_lines(caplog)
    fields = dict(f.split("=", 1) for f in shlex.split(line)[2:])
    assert fields["reason"] == "0xA901"  # StudyInstanceUID does not match the target study
    assert fields["sop"] == ds.SOPInstanceUID
    assert fields["detail"].startswith(f"StudyInstanceUID {ds.StudyInstanceUID} does not match")
    assert fields["by"].startswith("-@")  # no user: the server is open

