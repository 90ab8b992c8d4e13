"""STOW streams: storing a 200 MB request must not grow the server's memory with the request."""
from __future__ import annotations

import os
import sys

import pytest
import requests

from dicomweb_wsgi.testing import STOW_BOUNDARY, dataset_bytes, make_dataset, new_uid, stow_body

from .serverproc import ServerProcess

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for memory figures")

INSTANCES = 200
ROWS = COLUMNS = 724  # 724*724*2 bytes ~ 1 MB of pixels per instance


def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _body(study: str, series: str):
    template = make_dataset(study_uid=study, series_uid=series, rows=ROWS, columns=COLUMNS)
    for number in range(1, INSTANCES + 1):
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = new_uid()
        template.InstanceNumber = number
        part = dataset_bytes(template)
        yield f"--{STOW_BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
    yield f"--{STOW_BOUNDARY}--\r\n".encode()


def test_stow_200mb_request_keeps_server_memory_flat(tmp_path):
    with ServerProcess(str(tmp_path / "data")) as server:
        pid = server.proc.pid
        # Warm up: imports, codecs and the index are loaded before the baseline is taken.
        content_type, small = stow_body([make_dataset()])
        assert requests.post(f"{server.url}/studies", data=small, headers={"Content-Type": content_type},
                             timeout=60).status_code == 200
        baseline_kb = _status_kb(pid, "VmHWM")
        study, series = new_uid(), new_uid()
        resp = requests.post(f"{server.url}/studies", data=_body(study, series),  # chunked upload
                             headers={"Content-Type": content_type}, timeout=300)
        assert resp.status_code == 200, resp.text[:500]
        assert len(resp.json()["00081199"]["Value"]) == INSTANCES
        peak_kb = _status_kb(pid, "VmHWM")
        stored = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tmp_path / "data" / "blobs")
                     for f in fs)
        assert stored > INSTANCES * ROWS * COLUMNS * 2
        growth_mb = (peak_kb - baseline_kb) / 1024
        print(f"peak RSS growth {growth_mb:.1f} MB for {stored >> 20} MB stored")
        assert growth_mb < 100, f"server peak RSS grew by {growth_mb:.0f} MB while storing {stored >> 20} MB"
