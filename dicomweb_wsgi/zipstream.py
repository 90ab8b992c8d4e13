"""A ZIP archive written as a stream: for ``application/zip`` retrieval (PS3.18 Supplement 211).

Members are stored, not compressed (DICOM pixel data is either compressed already or large and
noisy; deflating a study costs seconds of CPU for a few percent), and each member's CRC-32 is
computed while its bytes go out and written in a data descriptor after them (general purpose flag
bit 3), so nothing is read twice and nothing is held in memory beyond one chunk. When every
member's size is known beforehand the archive's exact length is too (``zip_length``), so the
response can carry a Content-Length. ZIP64 records are written only where a size, an offset or the
member count does not fit the classic fields (APPNOTE 6.3.x §4.3.9, §4.5.3), so a study of more than
4 GiB or 65,535 instances is still one valid archive.
"""
from __future__ import annotations

import struct
import time
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Iterator, Sequence

# Fields at or above these values move to ZIP64 records (module level so tests can lower them).
ZIP64_LIMIT = 0xFFFFFFFF
ZIP64_COUNT_LIMIT = 0xFFFF

_VERSION = 20      # 2.0: stored members, data descriptors
_VERSION64 = 45    # 4.5: ZIP64
_MADE_BY_UNIX = 3 << 8
_FLAGS = 0x0008    # bit 3: CRC and sizes follow the data
_FILE_MODE = 0o100644 << 16


@dataclass(frozen=True)
class Member:
    """One file of the archive: its name, its size when known beforehand, its modification time
    (seconds since the epoch) and how to open it: ``open()`` returns the file and its length."""

    name: str
    size: int | None
    mtime: float
    open: Callable[[], tuple[BinaryIO, int]]


def _dos_time(mtime: float) -> tuple[int, int]:
    """(time, date) in MS-DOS format, in UTC; ZIP cannot say what zone, and cannot go before 1980."""
    t = time.gmtime(max(mtime, 315532800))
    return (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2), \
        ((t.tm_year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday


def _local_header(name: bytes, dos: tuple[int, int], big: bool) -> bytes:
    # With bit 3 set, CRC and sizes are zero here; a ZIP64 member says so with 0xFFFFFFFF and an
    # extra field of zero sizes, and its data descriptor then carries 8-byte sizes (§4.3.9.2).
    extra = struct.pack("<HHQQ", 1, 16, 0, 0) if big else b""
    size_field = 0xFFFFFFFF if big else 0
    return struct.pack("<IHHHHHIIIHH", 0x04034B50, _VERSION64 if big else _VERSION, _FLAGS, 0,
                       dos[0], dos[1], 0, size_field, size_field, len(name), len(extra)) + name + extra


def _descriptor(crc: int, size: int, big: bool) -> bytes:
    if big:
        return struct.pack("<IIQQ", 0x08074B50, crc, size, size)
    return struct.pack("<IIII", 0x08074B50, crc, size, size)


def _central_header(name: bytes, dos: tuple[int, int], crc: int, size: int, offset: int, big: bool) -> bytes:
    wide = [value for value in (size, size, offset) if value >= ZIP64_LIMIT]
    extra = struct.pack("<HH", 1, 8 * len(wide)) + struct.pack(f"<{len(wide)}Q", *wide) if wide else b""
    version = _VERSION64 if (big or wide) else _VERSION
    fit = [0xFFFFFFFF if value >= ZIP64_LIMIT else value for value in (size, size, offset)]
    return struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, _MADE_BY_UNIX | version, version, _FLAGS, 0,
                       dos[0], dos[1], crc, fit[0], fit[1], len(name), len(extra), 0, 0, 0,
                       _FILE_MODE, fit[2]) + name + extra


def _end(count: int, cd_offset: int, cd_size: int) -> bytes:
    out = b""
    if count >= ZIP64_COUNT_LIMIT or cd_offset >= ZIP64_LIMIT or cd_size >= ZIP64_LIMIT:
        end64_offset = cd_offset + cd_size
        out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, _MADE_BY_UNIX | _VERSION64, _VERSION64, 0, 0,
                           count, count, cd_size, cd_offset)
        out += struct.pack("<IIQI", 0x07064B50, 0, end64_offset, 1)
    return out + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, min(count, 0xFFFF), min(count, 0xFFFF),
                             min(cd_size, 0xFFFFFFFF), min(cd_offset, 0xFFFFFFFF), 0)


def zip_length(members: Sequence[Member]) -> int | None:
    """The exact length of ``write_zip(members)``, or None when a member's size is not known."""
    if any(m.size is None for m in members):
        return None
    offset = 0
    central = 0
    for m in members:
        assert m.size is not None
        name = m.name.encode("utf-8")
        big = m.size >= ZIP64_LIMIT
        central += len(_central_header(name, (0, 0), 0, m.size, offset, big))
        offset += len(_local_header(name, (0, 0), big)) + m.size + len(_descriptor(0, m.size, big))
    return offset + central + len(_end(len(members), offset, central))


def write_zip(members: Iterable[Member], chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """The archive's bytes, member by member; each member is opened when the stream gets to it.

    A member that turns out larger than its declared ``size`` would make ``zip_length`` wrong, so it
    is an ``OSError`` (the server then cuts the connection) rather than a longer body."""
    offset = 0
    entries: list[bytes] = []
    for m in members:
        fh, length = m.open()
        try:
            if m.size is not None and length != m.size:
                raise OSError(f"{m.name} is {length} bytes, not the {m.size} announced")
            name = m.name.encode("utf-8")
            dos = _dos_time(m.mtime)
            big = length >= ZIP64_LIMIT
            header = _local_header(name, dos, big)
            yield header
            crc = 0
            left = length
            while left > 0:
                data = fh.read(min(chunk_size, left))
                if not data:
                    raise OSError(f"{m.name} ended {left} bytes early")
                crc = zlib.crc32(data, crc)
                left -= len(data)
                yield data
            trailer = _descriptor(crc, length, big)
            yield trailer
        finally:
            fh.close()
        entries.append(_central_header(name, dos, crc, length, offset, big))
        offset += len(header) + length + len(trailer)
    central = b"".join(entries)
    yield central + _end(len(entries), offset, len(central))
