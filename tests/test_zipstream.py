"""The streaming ZIP writer, read back by Python's zipfile and by Info-ZIP's unzip."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import time
import zipfile

import pytest

from dicomweb_wsgi import zipstream


def _member(name: str, data: bytes, mtime: float = 1700000000.0, announce: bool = True) -> zipstream.Member:
    return zipstream.Member(name, len(data) if announce else None, mtime,
                            lambda: (io.BytesIO(data), len(data)))


def _contents(seed: int) -> dict[str, bytes]:
    # Sizes around the writer's chunk size and the empty file.
    rnd = __import__("random").Random(seed)
    sizes = [0, 1, 17, (1 << 20) - 1, 1 << 20, (1 << 20) + 3, 70000]
    return {f"1.2.3/4.5/{i}.{seed}.dcm": rnd.randbytes(size) for i, size in enumerate(sizes)}


def _archive(members: list[zipstream.Member]) -> bytes:
    return b"".join(zipstream.write_zip(members))


@pytest.mark.parametrize("seed", [1, 2])
def test_archive_reads_back_with_every_member_its_crc_and_time(seed):
    contents = _contents(seed)
    members = [_member(name, data) for name, data in contents.items()]
    data = _archive(members)
    assert zipstream.zip_length(members) == len(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None  # every CRC-32 checks
        assert zf.namelist() == list(contents)
        for info in zf.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            assert not info.flag_bits & 0x08  # CRC and sizes in the local header, no data descriptor
            t = time.gmtime(1700000000)
            assert info.date_time == (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec // 2 * 2)
            assert zf.read(info) == contents[info.filename]


def test_unknown_sizes_give_no_length_but_the_same_archive():
    contents = _contents(3)
    announced = _archive([_member(n, d) for n, d in contents.items()])
    members = [_member(n, d, announce=False) for n, d in contents.items()]
    assert zipstream.zip_length(members) is None
    assert _archive(members) == announced


def test_empty_archive_is_valid():
    data = _archive([])
    assert zipstream.zip_length([]) == len(data) == 22
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.namelist() == []


def test_times_before_1980_are_clamped():
    data = _archive([_member("a.dcm", b"x", mtime=0)])
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.infolist()[0].date_time == (1980, 1, 1, 0, 0, 0)


@pytest.mark.parametrize("actual", [b"short", b"longer than announced"])
def test_a_member_whose_size_changed_is_an_error_not_a_wrong_length(actual):
    member = zipstream.Member("a.dcm", 10, 0, lambda: (io.BytesIO(actual), len(actual)))
    with pytest.raises(OSError, match="not the 10"):
        _archive([member])


def _read_as_a_stream(data: bytes) -> dict[str, bytes]:
    """Read the archive the way a streaming reader (Java's ZipInputStream) does: local headers only,
    each member's size and CRC taken from its own header, the central directory never consulted."""
    import struct
    import zlib

    members, pos = {}, 0
    while data[pos:pos + 4] == b"PK\x03\x04":
        (_, _, flags, method, _, _, crc, csize, usize, name_len, extra_len) = struct.unpack_from(
            "<IHHHHHIIIHH", data, pos)
        assert method == 0 and not flags & 0x08, "a stored member must say its size in its local header"
        name = data[pos + 30:pos + 30 + name_len].decode("utf-8" if flags & 0x800 else "cp437")
        extra = data[pos + 30 + name_len:pos + 30 + name_len + extra_len]
        if usize == 0xFFFFFFFF:
            assert extra[:4] == struct.pack("<HH", 1, 16)
            usize, csize = struct.unpack_from("<QQ", extra, 4)
        start = pos + 30 + name_len + extra_len
        body = data[start:start + csize]
        assert len(body) == csize == usize and zlib.crc32(body) == crc, name
        members[name] = body
        pos = start + csize
    assert data[pos:pos + 4] == b"PK\x01\x02" or data[pos:pos + 4] in (b"PK\x05\x06", b"PK\x06\x06")
    return members


@pytest.mark.parametrize("zip64", [False, True])
def test_a_streaming_reader_finds_every_member_from_its_local_header(monkeypatch, zip64):
    if zip64:
        monkeypatch.setattr(zipstream, "ZIP64_LIMIT", 1000)
        monkeypatch.setattr(zipstream, "ZIP64_COUNT_LIMIT", 3)
    contents = _contents(5)
    assert _read_as_a_stream(_archive([_member(n, d) for n, d in contents.items()])) == contents


def test_non_ascii_names_are_flagged_utf8():
    data = _archive([_member("Müller/ü.dcm", b"abc"), _member("plain.dcm", b"d")])
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.namelist() == ["Müller/ü.dcm", "plain.dcm"]
        assert [bool(i.flag_bits & 0x800) for i in zf.infolist()] == [True, False]


def test_times_after_2107_are_clamped_not_a_broken_stream():
    members = [_member("a.dcm", b"x", mtime=4354819200.0)]  # 2108-01-01
    data = _archive(members)
    assert len(data) == zipstream.zip_length(members)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.infolist()[0].date_time == (2107, 12, 31, 23, 59, 58)


@pytest.mark.parametrize("name", ["", "x" * 70000])
def test_names_a_zip_cannot_hold_are_refused_before_anything_is_sent(name):
    with pytest.raises(ValueError):
        zipstream.zip_length([_member(name, b"x")])
    with pytest.raises(ValueError):
        next(zipstream.write_zip([_member(name, b"x")]))


def test_a_member_that_ends_early_is_an_error():
    member = zipstream.Member("a.dcm", 10, 0, lambda: (io.BytesIO(b"12345"), 10))
    with pytest.raises(OSError, match="ended 5 bytes early"):
        _archive([member])


def test_every_member_file_is_closed():
    opened = []

    def opener(data):
        def open_():
            fh = io.BytesIO(data)
            opened.append(fh)
            return fh, len(data)
        return open_

    _archive([zipstream.Member(f"{i}", 3, 0, opener(b"abc")) for i in range(4)])
    assert len(opened) == 4 and all(fh.closed for fh in opened)


@pytest.fixture
def small_zip64_limits(monkeypatch):
    """ZIP64 fields from 1,000 bytes and 3 members on, so that a small archive exercises all of them."""
    monkeypatch.setattr(zipstream, "ZIP64_LIMIT", 1000)
    monkeypatch.setattr(zipstream, "ZIP64_COUNT_LIMIT", 3)


def test_zip64_sizes_offsets_and_count(small_zip64_limits):
    contents = {"small.dcm": b"a" * 10, "big.dcm": os.urandom(1500), "after-big.dcm": b"b" * 20,
                "last.dcm": b"c" * 999}
    members = [_member(n, d) for n, d in contents.items()]
    data = _archive(members)
    assert zipstream.zip_length(members) == len(data)
    assert b"PK\x06\x06" in data and b"PK\x06\x07" in data  # ZIP64 end record and its locator
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        assert {i.filename: zf.read(i) for i in zf.infolist()} == contents
        infos = {i.filename: i for i in zf.infolist()}
        assert infos["big.dcm"].file_size == 1500
        assert infos["last.dcm"].header_offset > 1000  # read from the ZIP64 extra field


def _unzip(tmp_path, data: bytes) -> subprocess.CompletedProcess:
    path = tmp_path / "a.zip"
    path.write_bytes(data)
    return subprocess.run(["unzip", "-t", str(path)], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("unzip") is None, reason="Info-ZIP unzip is not installed (.ci/run installs it)")
@pytest.mark.parametrize("zip64", [False, True])
def test_info_zip_unzip_accepts_the_archive(tmp_path, monkeypatch, zip64):
    if zip64:
        monkeypatch.setattr(zipstream, "ZIP64_LIMIT", 1000)
        monkeypatch.setattr(zipstream, "ZIP64_COUNT_LIMIT", 3)
    contents = _contents(4)
    result = _unzip(tmp_path, _archive([_member(n, d) for n, d in contents.items()]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No errors detected" in result.stdout
    assert result.stdout.count("OK") == len(contents)
