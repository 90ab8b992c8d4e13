"""Rendered-image and thumbnail latency, against our server and (optionally) a reference peer.

Run: ``python benchmarks/bench_rendered.py [--peer http://127.0.0.1:8042/dicom-web] [--repeat 9]``.

The workload is stored by STOW-RS on every server: a series of ``--instances`` 512x512 16-bit CT
images with a window in the file, and one multi-frame instance of ``--frames`` 256x256 16-bit
frames. Then each request is timed over HTTP (median and max of ``--repeat`` runs, milliseconds):
rendered instance as JPEG and PNG, rendered frame first / middle / last of the multi-frame,
rendered series (all images, multipart), and thumbnails cold (first request for each instance)
and cached. Our server runs in-process under waitress on a free port with a temporary data
folder (``bench_wado.start_server``). A peer that answers a request with an error shows its status instead of a time.
This prints a table; it is not a test and asserts nothing about speed.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from typing import Callable

import numpy as np
import requests
from pydicom.uid import generate_uid

from bench_wado import start_server  # the same in-process waitress server as the WADO benchmark
from dicomweb_wsgi.testing import make_dataset, stow_body


def build_workload(instances: int, frames: int) -> tuple[str, str, list, object]:
    """The data sets: a single-frame CT series and one multi-frame instance in the same study."""
    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    images = []
    for n in range(1, instances + 1):
        ds = make_dataset(study_uid=study, series_uid=series, rows=512, columns=512, InstanceNumber=n,
                          WindowCenter="40", WindowWidth="400", RescaleSlope="1", RescaleIntercept="-1024")
        ds.PixelData = rng.integers(0, 4096, size=(512, 512), dtype=np.uint16).tobytes()
        images.append(ds)
    multi = make_dataset(study_uid=study, series_uid=generate_uid(), rows=256, columns=256, frames=frames,
                         SeriesNumber=2, WindowCenter="2048", WindowWidth="4096")
    return study, series, images, multi


def store(url: str, datasets: list) -> None:
    """STOW in batches so the request bodies stay moderate."""
    batch: list = []
    size = 0
    for ds in datasets + [None]:
        if ds is not None:
            batch.append(ds)
            size += len(ds.PixelData)
        if batch and (ds is None or size > 64 << 20):
            content_type, body = stow_body(batch)
            resp = requests.post(url + "/studies", data=body, headers={"Content-Type": content_type}, timeout=600)
            resp.raise_for_status()
            batch, size = [], 0


def timed(fn: Callable[[], requests.Response], repeat: int) -> str:
    """``median / max ms`` of ``repeat`` calls, or the HTTP status of a failing one."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        resp = fn()
        elapsed = (time.perf_counter() - start) * 1000
        if resp.status_code != 200:
            return f"HTTP {resp.status_code}"
        times.append(elapsed)
    return f"{statistics.median(times):8.1f} / {max(times):8.1f}"


def run(url: str, repeat: int, instances: int, frames: int, workload: tuple) -> dict[str, str]:
    study, series, images, multi = workload
    session = requests.Session()

    def get(path: str, accept: str = "image/jpeg", **params: str) -> Callable[[], requests.Response]:
        return lambda: session.get(url + path, headers={"Accept": accept}, params=params, timeout=600)

    first = images[0]
    inst = f"/studies/{study}/series/{series}/instances/{first.SOPInstanceUID}"
    minst = f"/studies/{study}/series/{multi.SeriesInstanceUID}/instances/{multi.SOPInstanceUID}"
    results = {
        "rendered instance JPEG 512x512": timed(get(inst + "/rendered"), repeat),
        "rendered instance PNG 512x512": timed(get(inst + "/rendered", "image/png"), repeat),
        "rendered instance JPEG window+viewport": timed(get(inst + "/rendered", window="40,80",
                                                            viewport="256,256"), repeat),
        f"rendered frame 1 of {frames}": timed(get(minst + "/frames/1/rendered"), repeat),
        f"rendered frame {frames // 2} of {frames}": timed(get(minst + f"/frames/{frames // 2}/rendered"), repeat),
        f"rendered frame {frames} of {frames}": timed(get(minst + f"/frames/{frames}/rendered"), repeat),
        f"rendered series ({instances} images)": timed(get(f"/studies/{study}/series/{series}/rendered"),
                                                      max(1, repeat // 3)),
    }
    cold = []
    for ds in images[:repeat]:
        path = f"/studies/{study}/series/{series}/instances/{ds.SOPInstanceUID}/thumbnail"
        start = time.perf_counter()
        resp = session.get(url + path, headers={"Accept": "image/jpeg"}, timeout=600)
        if resp.status_code != 200:
            cold = [f"HTTP {resp.status_code}"]
            break
        cold.append((time.perf_counter() - start) * 1000)
    results["thumbnail instance, first request"] = (
        cold[0] if cold and isinstance(cold[0], str)
        else f"{statistics.median(cold):8.1f} / {max(cold):8.1f}")
    results["thumbnail instance, cached"] = timed(get(inst + "/thumbnail"), repeat)
    results["thumbnail series, cached"] = timed(get(f"/studies/{study}/series/{series}/thumbnail"), repeat)
    results[f"thumbnail frame {frames // 2} of {frames}"] = timed(get(minst + f"/frames/{frames // 2}/thumbnail"),
                                                                 repeat)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peer", help="base URL of a reference DICOMweb server to compare with")
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--frames", type=int, default=1000)
    args = parser.parse_args(argv)
    print(f"building workload: {args.instances} x 512x512 CT + 1 x {args.frames} frames 256x256 ...", flush=True)
    workload = build_workload(args.instances, args.frames)
    datasets = workload[2] + [workload[3]]
    columns: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-rendered-") as tmp:
        url, stop = start_server(tmp)
        try:
            started = time.perf_counter()
            store(url, datasets)
            print(f"stored on dicomweb_wsgi in {time.perf_counter() - started:.1f} s", flush=True)
            columns["dicomweb_wsgi"] = run(url, args.repeat, args.instances, args.frames, workload)
        finally:
            stop()
    if args.peer:
        peer = args.peer.rstrip("/")
        try:
            store(peer, datasets)
            columns["peer"] = run(peer, args.repeat, args.instances, args.frames, workload)
        except requests.RequestException as exc:
            print(f"peer {peer} unavailable: {exc}", file=sys.stderr)
    names = list(columns)
    print()
    print(f"{'request (median / max ms)':45}" + "".join(f"{n:>24}" for n in names))
    for key in columns[names[0]]:
        print(f"{key:45}" + "".join(f"{columns[n].get(key, '-'):>24}" for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
