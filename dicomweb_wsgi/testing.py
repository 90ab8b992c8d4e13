"""Helpers for test suites that run against dicomweb_wsgi (ours and our users').

Use as a pytest plugin: ``pytest_plugins = ["dicomweb_wsgi.testing"]`` in a conftest.py gives the
fixtures ``dicomweb_app`` (an app on a fresh temporary data folder) and ``dicomweb_client``
(a ``webtest.TestApp`` over it); override the ``dicomweb_settings`` fixture to change the app's
settings, or call the ``dicomweb_client_factory`` fixture for several differently configured apps.
The functions build real DICOM data sets with pydicom, STOW bodies, and parse multipart responses
with the standard library's ``email`` package. Without pytest, ``make_client`` does the same.
"""
from __future__ import annotations

import base64
import email.parser
import email.policy
import io
import os
import uuid
from typing import Any, Iterable, Iterator

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

try:
    import pytest
except ImportError:  # the helpers work without pytest
    pytest = None  # type: ignore[assignment]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
# Settings for throw-away test archives: no fsync (tests do not survive power cuts), CORS on, and no
# free-space guard (a nearly full CI disk should not turn every store into a 503).
TEST_SETTINGS: dict[str, Any] = {"fsync": "false", "sqlite_synchronous": "normal", "cors_origins": "*",
                                 "min_free_space": "0"}
STOW_BOUNDARY = "0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1"


def make_dataset(*, study_uid: str | None = None, series_uid: str | None = None, sop_uid: str | None = None,
                 sop_class_uid: str = CT_IMAGE_STORAGE, rows: int = 16, columns: int = 16, frames: int = 1,
                 bits: int = 16, modality: str = "CT", transfer_syntax: str = ExplicitVRLittleEndian,
                 pixel_seed: int = 0, **attributes: Any) -> Dataset:
    """A small but complete image instance (patient, study, series, image pixel modules)."""
    import numpy as np

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.ImplementationClassUID = "1.2.826.0.1.3680043.10.1255.1"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName = "Doe^John"
    ds.PatientID = "PID-1"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC-1"
    ds.ReferringPhysicianName = "Ref^Doctor"
    ds.StudyID = "S1"
    ds.StudyDescription = "Test study"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.SeriesDescription = "Test series"
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for key, value in attributes.items():
        setattr(ds, key, value)
    rng = np.random.default_rng(pixel_seed)
    dtype = np.uint8 if bits == 8 else np.uint16
    shape = (frames, rows, columns) if frames > 1 else (rows, columns)
    pixels = rng.integers(0, 1 << min(bits, 12), size=shape, dtype=dtype)
    ds.PixelData = pixels.tobytes()
    return ds


def dataset_bytes(ds: Dataset) -> bytes:
    """A data set as a PS3.10 file, in the transfer syntax its file meta names."""
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def stow_body(items: Iterable[Dataset | bytes], boundary: str = STOW_BOUNDARY) -> tuple[str, bytes]:
    """(Content-Type, body) of a STOW-RS request as dicomweb-client sends it (quoted parameters)."""
    chunks = []
    for item in items:
        data = item if isinstance(item, bytes) else dataset_bytes(item)
        chunks.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    content_type = f'multipart/related; type="application/dicom"; boundary="{boundary}"'
    return content_type, b"".join(chunks)


def parse_multipart(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart response into (headers, body) pairs with the ``email`` package (an oracle
    independent of the server's own multipart writer)."""
    raw = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode() + body
    msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)
    if not msg.is_multipart():
        raise ValueError("not a multipart body")
    parts = []
    for part in msg.get_payload():
        headers = {k: str(v) for k, v in part.items()}
        parts.append((headers, part.get_payload(decode=True) or b""))
    return parts


def read_dataset(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def store(client: Any, datasets: Iterable[Dataset | bytes], study_uid: str | None = None,
          status: int | str = 200) -> Any:
    """POST datasets to a webtest client's STOW-RS endpoint; returns the webtest response."""
    content_type, body = stow_body(datasets)
    url = f"/studies/{study_uid}" if study_uid else "/studies"
    return client.post(url, body, headers={"Content-Type": content_type}, status=status)


def retrieve_datasets(client: Any, url: str, status: int | str = 200) -> list[Dataset]:
    """GET a WADO-RS multipart resource through a webtest client; the data sets in it, in order."""
    resp = client.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'}, status=status)
    return [read_dataset(body) for _, body in parse_multipart(resp.headers["Content-Type"], resp.body)]


def basic_auth(user: str, password: str) -> dict[str, str]:
    """Request headers for HTTP Basic authentication."""
    token = base64.b64encode(f"{user}:{password}".encode("utf-8")).decode("ascii")
    return {"Authorization": f"Basic {token}"}


def bearer_auth(token: str) -> dict[str, str]:
    """Request headers for a bearer token."""
    return {"Authorization": f"Bearer {token}"}


def make_client(data_dir: str, **settings: Any) -> Any:
    """A ``webtest.TestApp`` over a new app on ``data_dir`` with TEST_SETTINGS plus ``settings``.

    Close it with ``client.app.close()`` (the fixtures do this for you).
    """
    import webtest

    from .app import make_app

    return webtest.TestApp(make_app({**TEST_SETTINGS, "data_dir": os.fspath(data_dir), **settings}), lint=True)


def new_uid() -> str:
    return generate_uid()


def random_token() -> str:
    return uuid.uuid4().hex


if pytest is not None:

    @pytest.fixture
    def dicomweb_settings() -> dict[str, Any]:
        """Extra settings for ``dicomweb_app`` (override this fixture in a conftest.py or test module)."""
        return {}

    @pytest.fixture
    def dicomweb_app(tmp_path: Any, dicomweb_settings: dict[str, Any]) -> Iterator[Any]:
        """A dicomweb_wsgi app on a fresh data folder, closed after the test."""
        from .app import make_app

        app = make_app({**TEST_SETTINGS, "data_dir": str(tmp_path / "data"), **dicomweb_settings})
        try:
            yield app
        finally:
            app.close()

    @pytest.fixture
    def dicomweb_client_factory(tmp_path: Any) -> Iterator[Any]:
        """A function ``(**settings) -> webtest.TestApp``: each call a new app on its own fresh folder."""
        clients: list[Any] = []

        def factory(**settings: Any) -> Any:
            clients.append(make_client(str(tmp_path / f"data{len(clients)}"), **settings))
            return clients[-1]

        try:
            yield factory
        finally:
            for client in clients:
                client.app.close()

    @pytest.fixture
    def dicomweb_client(dicomweb_app: Any) -> Any:
        """A webtest.TestApp over ``dicomweb_app``."""
        import webtest

        return webtest.TestApp(dicomweb_app, lint=True)
