"""Coverage-guided fuzzing (atheris / libFuzzer) of the code that reads untrusted bytes.

Targets, each allowed to refuse its input only the documented way:

* ``multipart``: ``multipart.read_multipart`` over the input as a body -> parts, or 400 / 413;
* ``mediatypes``: ``parse_media_type`` (400), ``parse_accept`` and ``negotiate`` (never raise);
* ``dicomjson``: ``json.loads`` then ``dicomjson.json_to_dataset`` (400), and ``xml_to_json`` (400);
* ``ingest``: ``ingest.prepare`` on the input as an uploaded file -> a record, or ``IngestError``
  (anything else would be a 500 in STOW);
* ``stow``: the input as a single-part STOW request through the whole app -> never a 5xx;
* ``ingest-same``: ``ingest.prepare`` with the fast reader (``part10_json``) and with pydicom alone on the
  same upload -> the same record, or the same refusal (what tests/test_part10_json.py asserts).

Usage: ``python benchmarks/fuzz_atheris.py TARGET [libFuzzer options, e.g. -runs=100000
-max_total_time=300]``. Any other exception stops the run with the crashing input saved by libFuzzer
(``crash-<sha1>``). atheris installs from a binary wheel on Linux x86-64 with CPython 3.11; where it
does not, the hypothesis properties in tests/test_hostile.py cover the same code.
"""
from __future__ import annotations

import io
import json
import os
import sys
import tempfile
from typing import Callable

import atheris
from pydicom.encaps import encapsulate

from dicomweb_wsgi import dicomjson, ingest, mediatypes, multipart
from dicomweb_wsgi.errors import BadRequest, PayloadTooLarge
from dicomweb_wsgi.testing import STOW_BOUNDARY, dataset_bytes, make_dataset, stow_body

SPOOL = tempfile.mkdtemp(prefix="fuzz-spool-")
OFFERS = [mediatypes.Offer("application/dicom", multipart=True, transfer_syntaxes=frozenset({"1.2.840.10008.1.2.1"})),
          mediatypes.Offer("application/dicom+json", multipart=False)]


MULTIPART_TYPE = mediatypes.parse_media_type(f'multipart/related; boundary="{STOW_BOUNDARY}"')


def fuzz_multipart(data: bytes) -> None:
    chunk = 1 + (data[0] if data else 0) * 16  # the first byte picks the read size: splits move around
    body = data[1:]
    try:
        for part in multipart.read_multipart(io.BytesIO(body), MULTIPART_TYPE, spool_dir=SPOOL,
                                             content_length=len(body), max_parts=100, max_part_size=1 << 16,
                                             chunk_size=chunk):
            os.unlink(part.path)
    except (BadRequest, PayloadTooLarge):
        pass
    if os.listdir(SPOOL):
        raise AssertionError("spool file left behind")


def fuzz_mediatypes(data: bytes) -> None:
    text = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(len(data))
    try:
        parsed = mediatypes.parse_media_type(text)
        mediatypes.parse_media_type(str(parsed))
    except BadRequest:
        pass
    mediatypes.negotiate(mediatypes.parse_accept([text]), OFFERS)


def _no_bulk(uri: str) -> bytes:
    raise BadRequest("no bulk data")


def fuzz_dicomjson(data: bytes) -> None:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        obj = None
    if isinstance(obj, list) and obj:
        obj = obj[0]
    if obj is not None:
        try:
            dicomjson.json_to_dataset(obj, _no_bulk)
        except BadRequest:
            pass
    try:
        dicomjson.xml_to_json(data)
    except BadRequest:
        pass


def _upload(data: bytes) -> str:
    fd, path = tempfile.mkstemp(dir=SPOOL)
    with os.fdopen(fd, "wb") as fh:
        fh.write(b"\0" * 128 + b"DICM" + data if not data.startswith(b"\x02\x00") else data)
    return path


def _prepared(path: str, fast: bool) -> ingest.Prepared | tuple:
    try:
        return ingest.prepare(path, fast=fast)
    except ingest.IngestError as exc:
        return ("refused", exc.code, exc.reason, exc.sop_class_uid, exc.sop_uid)


def fuzz_ingest(data: bytes) -> None:
    path = _upload(data)
    try:
        _prepared(path, fast=True)
    finally:
        os.unlink(path)


def fuzz_ingest_same(data: bytes) -> None:
    outcomes = []
    for fast in (False, True):  # each reader gets the upload as sent (prepare may add a missing preamble)
        path = _upload(data)
        try:
            outcomes.append(_prepared(path, fast=fast))
        finally:
            os.unlink(path)
    slow, fast = outcomes
    if fast != slow:
        raise AssertionError(f"fast reader and pydicom differ:\n fast: {fast!r:.2000}\n pydicom: {slow!r:.2000}")


_APP = None


def fuzz_stow(data: bytes) -> None:
    global _APP
    if _APP is None:
        import webtest

        from dicomweb_wsgi.app import make_app

        _APP = webtest.TestApp(make_app({"data_dir": tempfile.mkdtemp(prefix="fuzz-data-"), "fsync": "false",
                                         "min_free_space": "0"}), lint=False)
    resp = _APP.post("/studies", b"\0" * 128 + b"DICM" + data, headers={"Content-Type": "application/dicom"},
                     status="*", expect_errors=True)
    if resp.status_int >= 500:
        raise AssertionError(f"STOW answered {resp.status_int}")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "multipart": fuzz_multipart, "mediatypes": fuzz_mediatypes, "dicomjson": fuzz_dicomjson,
    "ingest": fuzz_ingest, "stow": fuzz_stow, "ingest-same": fuzz_ingest_same,
}


def seeds(target: str) -> list[bytes]:
    """Valid inputs to start from, so the fuzzer mutates real structure rather than finding it."""
    ds = make_dataset(rows=4, columns=4)
    ds.ReferencedImageSequence = [make_dataset(rows=1, columns=1)]
    encapsulated = make_dataset(rows=4, columns=4, bits=8, transfer_syntax="1.2.840.10008.1.2.4.50")
    encapsulated.PixelData = encapsulate([b"\xff\xd8\xff\xe0" + bytes([n]) * 24 for n in range(2)])
    encapsulated["PixelData"].VR = "OB"
    encapsulated["PixelData"].is_undefined_length = True
    encapsulated.NumberOfFrames = 2
    files = [dataset_bytes(ds), dataset_bytes(make_dataset(rows=4, columns=4, transfer_syntax="1.2.840.10008.1.2")),
             dataset_bytes(make_dataset(rows=4, columns=4, transfer_syntax="1.2.840.10008.1.2.1.99")),
             dataset_bytes(encapsulated)]
    if target == "multipart":
        return [b"\x10" + stow_body([make_dataset(rows=2, columns=2)] * 2)[1]]
    if target == "mediatypes":
        return [b'multipart/related; type="application/dicom"; transfer-syntax=*; q=0.5, application/dicom+json']
    if target == "dicomjson":
        obj = dicomjson.dataset_to_json(ds, bulk_prefix=None)[0]
        return [json.dumps([obj]).encode(), dicomjson.json_to_xml(obj)]
    return [f[132:] for f in files]  # ingest and stow add the preamble back


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(TARGETS)}}} [libFuzzer options]")
    name = sys.argv[1]
    corpus = tempfile.mkdtemp(prefix=f"fuzz-corpus-{name}-")
    for number, seed in enumerate(seeds(name)):
        with open(os.path.join(corpus, f"seed{number}"), "wb") as fh:
            fh.write(seed)
    import logging
    import warnings

    warnings.simplefilter("ignore")  # pydicom warns on every damaged element
    logging.disable(logging.CRITICAL)
    atheris.instrument_all()
    atheris.Setup([sys.argv[0], *sys.argv[2:], corpus], TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
