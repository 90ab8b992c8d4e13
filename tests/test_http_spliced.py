"""``http.SplicedFile`` read the way waitress sends a ``wsgi.file_wrapper`` body.

Waitress reads the file in pieces of its socket's send buffer size, seeks back, and then skips
forward by what the socket took (often less than the piece); the read-ahead must give exactly the
spliced bytes under that pattern, across segment and read-ahead boundaries.
"""
from __future__ import annotations

import os
import random

import pytest
from waitress.buffers import ReadOnlyFileBasedBuffer

from dicomweb_wsgi.http import SplicedFile


def _send_all(body: SplicedFile, rng: random.Random) -> bytes:
    buf = ReadOnlyFileBasedBuffer(body, 1 << 20)
    buf.prepare()
    sent = []
    while buf.remain:
        piece = buf.get(16384)
        taken = rng.randint(1, len(piece))  # a socket takes part of what it is offered
        sent.append(piece[:taken])
        buf.skip(taken, True)
    return b"".join(sent)


def test_spliced_file_sent_as_waitress_does_gives_the_exact_bytes(tmp_path):
    rng = random.Random(5)
    files = []
    for name, size in (("a", 1_500_000), ("b", 3), ("c", 2_200_000)):
        path = tmp_path / name
        path.write_bytes(rng.randbytes(size))
        files.append(str(path))
    segments = [b"--head-a\r\n", (files[0], 0, 1_500_000), b"\r\n--head-b\r\n", (files[1], 0, 3),
                b"", (files[2], 100, 1_048_576 + 7), (files[2], 5, 10), b"\r\n--end--\r\n"]
    expected = b"".join(seg if isinstance(seg, bytes) else open(seg[0], "rb").read()[seg[1]:seg[1] + seg[2]]
                        for seg in segments)
    body = SplicedFile(segments)
    assert body.length == len(expected)
    assert _send_all(body, rng) == expected
    body.seek(1_500_000)
    assert body.read(40) == expected[1_500_000:1_500_040]
    body.close()


def test_spliced_file_whose_later_file_is_gone_raises_when_reached(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(b"x" * 100_000)
    second.write_bytes(b"y" * 100_000)
    body = SplicedFile([b"--a\r\n", (str(first), 0, 100_000), b"--b\r\n", (str(second), 0, 100_000)])
    os.unlink(second)  # opened lazily: the first file was opened by the constructor, this one not yet
    assert body.read(50_000) == b"--a\r\n" + b"x" * 49_995
    with pytest.raises(FileNotFoundError):
        body.read(100_000)
    body.close()


def test_spliced_file_shorter_than_announced_raises(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(b"z" * 1000)
    body = SplicedFile([(str(path), 0, 2000)])
    with pytest.raises(OSError, match="early"):
        body.read()
    body.close()
