"""Latency of WADO-RS retrieve, metadata, frames and bulk data on a live server (prints a table; not a test).

Workloads (issue 4, point 8; issue 10 for the retrieves):

* WADO-RS retrieve of one instance, a series and a study (two series) of ``--ct-instances``
  512x512 16-bit instances (0.5 MB each) per series, as stored (``transfer-syntax=*``): MB/s and
  p50 over 1 and 4 keep-alive connections of ``client.py``'s raw-socket client, each run at least
  ``--seconds`` long (client and server share this process and its GIL: compare runs of this
  script with each other, not with ``compare.py``);

* series metadata of a series of ``--instances`` instances (cold first request, then warm; with
  gzip; an ``If-None-Match`` revalidation);
* frames first / middle / last of a ``--frames``-frame instance, native and JPEG Baseline
  (OHIF's ``transfer-syntax=*`` request), and the JPEG one decoded to uncompressed;
* the PixelData BulkDataURI of one instance.

The server is ``make_app`` under waitress in this process, on 127.0.0.1, with a throw-away data
folder. ``--peer URL`` (e.g. ``http://127.0.0.1:8042/dicom-web``) stores the same data on another
DICOMweb server and prints its numbers beside ours.

    python benchmarks/bench_wado.py [--instances 1000] [--frames 1000] [--ct-instances 50] [--repeat 20] [--peer URL]
"""
from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import threading
import time
from typing import Callable

import numpy as np
import requests
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit

import client
from client import RunResult
from dicomweb_wsgi.app import make_app
from dicomweb_wsgi.testing import make_dataset, new_uid, stow_body

OHIF_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"
DICOM_AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def start_server(data_dir: str) -> tuple[str, Callable[[], None]]:
    """Our app under waitress on a free port; returns its URL and a stop function."""
    import waitress

    app = make_app({"data_dir": data_dir, "fsync": "false", "sqlite_synchronous": "normal"})
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    def stop() -> None:
        server.close()
        app.close()
    return f"http://127.0.0.1:{server.effective_port}", stop


def series_datasets(count: int) -> list[Dataset]:
    """A CT-like series: each instance with a realistic number of attributes."""
    study, series = new_uid(), new_uid()
    out = []
    for number in range(1, count + 1):
        ds = make_dataset(study_uid=study, series_uid=series, InstanceNumber=number, rows=64, columns=64,
                          pixel_seed=number, ImagePositionPatient=[0, 0, float(number)],
                          ImageOrientationPatient=[1, 0, 0, 0, 1, 0], PixelSpacing=[0.7, 0.7],
                          SliceThickness=1.0, WindowCenter=40, WindowWidth=400, RescaleIntercept=-1024,
                          RescaleSlope=1, KVP=120, Manufacturer="Bench", BodyPartExamined="CHEST",
                          ProtocolName="Bench protocol", ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])
        out.append(ds)
    return out


def ct_study(per_series: int) -> list[Dataset]:
    """A study of two series of ``per_series`` 512x512 16-bit instances (0.5 MB each), for the retrieves."""
    study, series = new_uid(), (new_uid(), new_uid())
    return [make_dataset(study_uid=study, series_uid=series[s], SeriesNumber=s + 1, InstanceNumber=number,
                         rows=512, columns=512, pixel_seed=number)
            for s in (0, 1) for number in range(1, per_series + 1)]


def multiframe(frames: int, size: int, jpeg: bool) -> Dataset:
    """A multi-frame instance: 16-bit native, or 8-bit JPEG Baseline with a Basic Offset Table."""
    if not jpeg:
        return make_dataset(frames=frames, rows=size, columns=size)
    ds = make_dataset(frames=frames, rows=size, columns=size, bits=8, transfer_syntax=JPEGBaseline8Bit)
    ramp = np.add.outer(np.arange(size), np.arange(size)).astype(np.uint8)
    encoded = []
    for number in range(frames):
        buf = io.BytesIO()
        Image.fromarray(ramp + np.uint8(number % 200)).save(buf, "JPEG", quality=90)
        encoded.append(buf.getvalue())
    ds.PixelData = encapsulate(encoded, has_bot=True)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.LossyImageCompression = "01"
    return ds


def stow(session: requests.Session, base: str, datasets: list[Dataset], batch: int = 100) -> None:
    for start in range(0, len(datasets), batch):
        content_type, body = stow_body(datasets[start:start + batch])
        resp = session.post(base + "/studies", data=body, headers={"Content-Type": content_type}, timeout=600)
        if resp.status_code != 200:
            raise SystemExit(f"STOW to {base} failed: {resp.status_code} {resp.text[:300]}")


def timed(session: requests.Session, url: str, headers: dict[str, str], repeat: int) -> tuple[float, float, int]:
    """(first request ms, median of ``repeat`` more ms, body bytes)."""
    def once() -> tuple[float, int]:
        started = time.perf_counter()
        resp = session.get(url, headers=headers, timeout=600)
        data = resp.content
        elapsed = (time.perf_counter() - started) * 1000
        size = int(resp.headers.get("Content-Length", len(data)))  # on the wire (gzip: compressed)
        if resp.status_code not in (200, 206, 304):
            raise SystemExit(f"GET {url} failed: {resp.status_code} {resp.text[:300]}")
        return elapsed, size
    first, size = once()
    rest = [once()[0] for _ in range(repeat)]
    return first, statistics.median(rest), size


def workloads(base: str, meta_series: Dataset, native: Dataset, jpeg: Dataset,
              session: requests.Session) -> list[tuple[str, str, dict[str, str]]]:
    """(name, URL, headers) of each timed request against the server at ``base``."""
    def inst(ds: Dataset) -> str:
        return f"{base}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"

    series_url = f"{base}/studies/{meta_series.StudyInstanceUID}/series/{meta_series.SeriesInstanceUID}/metadata"
    json_accept = {"Accept": "application/dicom+json", "Accept-Encoding": "identity"}
    etag = session.get(series_url, headers=json_accept, timeout=600).headers.get("ETag", "")
    n_native, n_jpeg = int(native.NumberOfFrames), int(jpeg.NumberOfFrames)
    rows = [
        ("series metadata (json)", series_url, json_accept),
        ("series metadata (json, gzip)", series_url, {**json_accept, "Accept-Encoding": "gzip"}),
        ("series metadata (If-None-Match)", series_url, {**json_accept, "If-None-Match": etag}),
    ]
    for label, ds, count, accept in (("native", native, n_native, "multipart/related; type=application/octet-stream"),
                                     ("jpeg *", jpeg, n_jpeg, OHIF_ACCEPT),
                                     ("jpeg -> uncompressed", jpeg, n_jpeg,
                                      "multipart/related; type=application/octet-stream")):
        for where, number in (("first", 1), ("middle", (count + 1) // 2), ("last", count)):
            rows.append((f"frame {where} of {count} ({label})", f"{inst(ds)}/frames/{number}", {"Accept": accept}))
    rows.append(("PixelData BulkDataURI (1 instance)", f"{inst(meta_series)}/bulkdata/7FE00010",
                 {"Accept": "multipart/related; type=application/octet-stream"}))
    return rows


def run(base: str, data: tuple[list[Dataset], Dataset, Dataset, list[Dataset]],
        repeat: int) -> dict[str, tuple[float, float, int]]:
    series, native, jpeg, ct = data
    session = requests.Session()
    started = time.perf_counter()
    stow(session, base, series)
    stow(session, base, [native], batch=1)
    stow(session, base, [jpeg], batch=1)
    stow(session, base, ct, batch=25)
    print(f"  stored {len(series) + len(ct) + 2} instances on {base} in {time.perf_counter() - started:.1f} s")
    return {name: timed(session, url, headers, repeat)
            for name, url, headers in workloads(base, series[0], native, jpeg, session)}


def retrieves(base: str, ct: list[Dataset], seconds: float) -> list[tuple[str, int, RunResult]]:
    """WADO-RS instance, series and study as stored, over 1 and 4 keep-alive connections (raw client)."""
    first = ct[0]
    study = f"/studies/{first.StudyInstanceUID}"
    series = f"{study}/series/{first.SeriesInstanceUID}"
    headers = (("Accept", DICOM_AS_STORED),)
    rows = []
    for name, path in (("instance (multipart)", f"{series}/instances/{first.SOPInstanceUID}"),
                       (f"series ({len(ct) // 2} x 0.5 MB)", series),
                       (f"study ({len(ct)} x 0.5 MB)", study)):
        for connections in (1, 4):
            result = client.run(base, [client.Call("GET", path, headers)], 4, connections=connections,
                                warmup=1, min_seconds=seconds)
            rows.append((name, connections, result))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1000, help="instances in the metadata series")
    parser.add_argument("--frames", type=int, default=1000, help="frames of the multi-frame instances")
    parser.add_argument("--size", type=int, default=128, help="rows = columns of each frame")
    parser.add_argument("--ct-instances", type=int, default=50,
                        help="0.5 MB instances in each of the two series of the retrieved study")
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum length of each retrieve run")
    parser.add_argument("--repeat", type=int, default=20, help="warm requests per workload (median reported)")
    parser.add_argument("--peer", help="base URL of another DICOMweb server to run the same workload on")
    args = parser.parse_args()

    print(f"building {args.instances} instances, two {args.frames}-frame {args.size}x{args.size} instances "
          f"and 2 x {args.ct_instances} 512x512 instances ...")
    data = (series_datasets(args.instances), multiframe(args.frames, args.size, jpeg=False),
            multiframe(args.frames, args.size, jpeg=True), ct_study(args.ct_instances))
    results: dict[str, dict[str, tuple[float, float, int]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        url, stop = start_server(tmp)
        try:
            results["dicomweb_wsgi"] = run(url, data, args.repeat)
            retrieved = retrieves(url, data[3], args.seconds)
        finally:
            stop()
    if args.peer:
        results["peer"] = run(args.peer.rstrip("/"), data, args.repeat)

    names = list(results["dicomweb_wsgi"])
    columns = "".join(f"{k + ' first':>22s}{k + ' median':>23s}" for k in results)
    header = f"{'workload':44s}{columns}{'bytes':>12s}"
    print()
    print(header)
    print("-" * len(header))
    for name in names:
        cells = "".join(f"{results[k][name][0]:19.1f} ms{results[k][name][1]:20.1f} ms" for k in results)
        print(f"{name:44s}{cells}{results['dicomweb_wsgi'][name][2]:12d}")
    header = f"{'WADO-RS retrieve (dicomweb_wsgi, as stored)':44s}{'connections':>12s}{'requests':>10s}" \
             f"{'p50':>12s}{'MB/s':>10s}"
    print()
    print(header)
    print("-" * len(header))
    for name, connections, result in retrieved:
        print(f"{name:44s}{connections:12d}{result.requests:10d}{result.p50_ms:9.1f} ms{result.mb_per_second:10.0f}")


if __name__ == "__main__":
    main()
