"""Deterministic benchmark corpus: PS3.10 CT instances and STOW-RS request bodies, from a seed.

Two kinds of instance:

* ``large``: 512x512 16-bit CT (about 0.5 MB each), the byte-heavy workloads;
* ``small``: 64x64 16-bit CT (about 10 KB), for count-heavy stores and queries.

Every UID, patient name, date and pixel value derives from the seed and the instance's place
(kind, study, series, number), so two runs, and the two servers of one run, get byte-identical
files. UIDs are ``2.25.1`` + 38 digits (44 characters), the same length everywhere.

    python benchmarks/corpus.py --out /tmp/corpus --studies 2   # write files to look at
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

from dicomweb_wsgi.testing import stow_body

SIZES = {"large": 512, "small": 64}
SURNAMES = ["Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez",
            "Wilson", "Anderson", "Taylor", "Thomas", "Moore", "Jackson", "Martin", "Lee", "Thompson", "White"]
GIVEN = ["James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda", "David", "Elizabeth"]


def _number(seed: int, *parts: object) -> int:
    text = "/".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:16], "big")


def uid(seed: int, *parts: object) -> str:
    """A 44-character UID under 2.25 derived from the seed and ``parts``."""
    return f"2.25.1{_number(seed, *parts) % 10 ** 38:038d}"


@dataclass(frozen=True)
class InstanceRef:
    """Where one generated instance sits: its UIDs (for building request URLs)."""

    study_uid: str
    series_uid: str
    sop_uid: str


@dataclass(frozen=True)
class Corpus:
    """The shape of a corpus: ``studies`` x ``series`` x ``instances`` of ``kind``, under ``tag``.

    ``tag`` keeps corpora of one seed apart (the loaded archive, each STOW repetition, the 1 GB study).
    """

    seed: int
    kind: str = "large"
    studies: int = 1
    series: int = 2
    instances: int = 50
    tag: str = "load"

    @property
    def count(self) -> int:
        return self.studies * self.series * self.instances

    def ref(self, study: int, series: int, number: int) -> InstanceRef:
        return InstanceRef(uid(self.seed, self.tag, self.kind, "study", study),
                           uid(self.seed, self.tag, self.kind, "series", study, series),
                           uid(self.seed, self.tag, self.kind, "sop", study, series, number))

    def refs(self) -> Iterator[InstanceRef]:
        for study in range(self.studies):
            for series in range(self.series):
                for number in range(self.instances):
                    yield self.ref(study, series, number)

    def patient_name(self, study: int) -> str:
        n = _number(self.seed, self.tag, "patient", study)
        return f"{SURNAMES[n % len(SURNAMES)]}^{GIVEN[(n >> 8) % len(GIVEN)]}"

    def instance_bytes(self, study: int, series: int, number: int) -> bytes:
        """One PS3.10 file (preamble, File Meta, Explicit VR Little Endian data set)."""
        ref = self.ref(study, series, number)
        size = SIZES[self.kind]
        n = _number(self.seed, self.tag, "patient", study)
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ref.sop_uid
        ds.StudyInstanceUID = ref.study_uid
        ds.SeriesInstanceUID = ref.series_uid
        ds.PatientName = self.patient_name(study)
        ds.PatientID = f"P{n % 10 ** 8:08d}"
        ds.PatientBirthDate = f"19{40 + n % 50:02d}0{1 + n % 9}1{n % 10}"
        ds.PatientSex = "MF"[n % 2]
        ds.StudyDate = f"20{10 + n % 14:02d}0{1 + n % 9}1{n % 10}"
        ds.StudyTime = "101500"
        ds.AccessionNumber = f"A{n % 10 ** 9:09d}"
        ds.StudyID = str(study + 1)
        ds.StudyDescription = "CT CHEST"
        ds.ReferringPhysicianName = "Ref^Doctor"
        ds.Modality = "CT"
        ds.SeriesNumber = series + 1
        ds.SeriesDescription = f"Series {series + 1}"
        ds.InstanceNumber = number + 1
        ds.Manufacturer = "Benchmark"
        ds.BodyPartExamined = "CHEST"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SliceThickness = "1.0"
        ds.KVP = "120"
        ds.ImagePositionPatient = ["-250.0", "-250.0", f"{number * 1.0:.1f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = ["0.7", "0.7"]
        ds.FrameOfReferenceUID = uid(self.seed, self.tag, self.kind, "for", study)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = size
        ds.Columns = size
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        rng = np.random.default_rng(_number(self.seed, self.tag, self.kind, "pixels", study, series, number))
        ds.PixelData = rng.integers(0, 4096, size=(size, size), dtype=np.uint16).tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    def files(self) -> Iterator[bytes]:
        """Every instance's PS3.10 bytes, study by study, series by series."""
        for study in range(self.studies):
            for series in range(self.series):
                for number in range(self.instances):
                    yield self.instance_bytes(study, series, number)


def stored_app(corpus: Corpus, folder: str) -> Any:
    """A fresh ``make_app`` over ``folder``/data holding ``corpus`` (stored in-process, not over HTTP);
    the instance files are written to ``folder`` first."""
    from dicomweb_wsgi.app import make_app

    paths = []
    for n, data in enumerate(corpus.files()):
        path = os.path.join(folder, f"in{n}.dcm")
        with open(path, "wb") as fh:
            fh.write(data)
        paths.append(path)
    app = make_app({"dicomweb.data_dir": os.path.join(folder, "data"), "dicomweb.min_free_space": "0"})
    for result in app.archive.store_files(paths):
        assert result.failure is None, result
    return app


def stow_bodies(files: Iterator[bytes] | list[bytes], per_request: int) -> list[tuple[str, bytes, int]]:
    """STOW-RS requests of ``per_request`` instances each: ``(Content-Type, body, instance count)``."""
    out: list[tuple[str, bytes, int]] = []
    batch: list[bytes] = []
    for data in list(files) + [b""]:
        if data:
            batch.append(data)
        if batch and (len(batch) == per_request or not data):
            out.append(stow_body(batch) + (len(batch),))
            batch = []
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write the .dcm files into")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kind", choices=sorted(SIZES), default="large")
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--series", type=int, default=2)
    parser.add_argument("--instances", type=int, default=50)
    args = parser.parse_args()
    corpus = Corpus(args.seed, args.kind, args.studies, args.series, args.instances)
    os.makedirs(args.out, exist_ok=True)
    total = 0
    for ref, data in zip(corpus.refs(), corpus.files()):
        with open(os.path.join(args.out, ref.sop_uid + ".dcm"), "wb") as fh:
            fh.write(data)
        total += len(data)
    print(f"wrote {corpus.count} instances, {total / 1e6:.1f} MB, to {args.out}")


if __name__ == "__main__":
    main()
