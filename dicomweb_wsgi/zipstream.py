"""A ZIP archive written as a stream: for ``application/zip`` retrieval (PS3.18 Supplement 211).

Members are stored, not compressed (DICOM pixel data is either compressed already or large and
noisy; deflating a study costs seconds of CPU for a few percent). Each member's CRC-32 is computed
by reading it once just before it is sent, so its local header carries the CRC and the sizes:
streaming readers that never look at the central directory (Java's ``ZipInputStream``, used by
Java DICOM tools) cannot find the end of a stored member from a data descriptor, and refuse one.
The second read comes from the page cache, and nothing is held in memory beyond one chunk. When
every member's size is known beforehand the archive's exact length is too (``zip_length``), so the
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

_VERSION = 20      # 2.0: stored members
_VERSION64 = 45    # 4.5: ZIP64
_MADE_BY_UNIX = 3 << 8
_UTF8 = 0x0800     # general purpose bit 11: the name is UTF-8 (APPNOTE Appendix D)
_FILE_MODE = 0o100644 << 16
_CHUNK = 1 << 20
_FIRST_DOS, _LAST_DOS = 315532800, 4354819198  # 1980-01-01 and 2107-12-31 23:59:58, what MS-DOS time holds


@dataclass(frozen=True)
class Member:
    """One file of the archive: its name, its size when known beforehand, its modification time
    (seconds since the epoch) and how to open it: ``open()`` returns the file (seekable) and its length."""

    name: str
    size: int | None
    mtime: float
    open: Callable[[], tuple[BinaryIO, int]]


def _dos_time(mtime: float) -> tuple[int, int]:
    """(time, date) in MS-DOS format, in UTC (ZIP cannot say what zone), within what it can hold."""
    t = time.gmtime(min(max(mtime, _FIRST_DOS), _LAST_DOS))
    return (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2), \
        ((t.tm_year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday


def _name(member: Member) -> tuple[bytes, int]:
    """The member's name as written, and the flags it needs."""
    name = member.name.encode("utf-8")
    if not name or len(name) > 0xFFFF:
        raise ValueError(f"a ZIP member name must be 1-65535 bytes, not {len(name)}")
    return name, (0 if name.isascii() else _UTF8)


def _local_header(name: bytes, flags: int, dos: tuple[int, int], crc: int, size: int) -> bytes:
    # A ZIP64 member says so with 0xFFFFFFFF sizes and an extra field holding both (§4.5.3).
    big = size >= ZIP64_LIMIT
    extra = struct.pack("<HHQQ", 1, 16, size, size) if big else b""
    fit = 0xFFFFFFFF if big else size
    return struct.pack("<IHHHHHIIIHH", 0x04034B50, _VERSION64 if big else _VERSION, flags, 0,
                       dos[0], dos[1], crc, fit, fit, len(name), len(extra)) + name + extra


def _central_header(name: bytes, flags: int, dos: tuple[int, int], crc: int, size: int, offset: int) -> bytes:
    wide = [value for value in (size, size, offset) if value >= ZIP64_LIMIT]
    extra = struct.pack("<HH", 1, 8 * len(wide)) + struct.pack(f"<{len(wide)}Q", *wide) if wide else b""
    version = _VERSION64 if wide else _VERSION
    fit = [0xFFFFFFFF if value >= ZIP64_LIMIT else value for value in (size, size, offset)]
    return struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, _MADE_BY_UNIX | version, version, flags, 0,
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
        name, flags = _name(m)
        central += len(_central_header(name, flags, (0, 0), 0, m.size, offset))
        offset += len(_local_header(name, flags, (0, 0), 0, m.size)) + m.size
    return offset + central + len(_end(len(members), offset, central))


def _crc(fh: BinaryIO, length: int, name: str) -> int:
    """The CRC-32 of the first ``length`` bytes, the file left at its start again."""
    crc = 0
    left = length
    while left > 0:
        data = fh.read(min(_CHUNK, left))
        if not data:
            raise OSError(f"{name} ended {left} bytes early")
        crc = zlib.crc32(data, crc)
        left -= len(data)
    fh.seek(0)
    return crc


def write_zip(members: Iterable[Member]) -> Iterator[bytes]:
    """The archive's bytes, member by member; each member is opened when the stream gets to it.

    A member whose length differs from its declared ``size``, or that is shorter than it said, is
    an ``OSError`` (the server then cuts the connection) rather than a wrong archive."""
    offset = 0
    entries: list[bytes] = []
    for m in members:
        name, flags = _name(m)
        fh, length = m.open()
        try:
            if m.size is not None and length != m.size:
                raise OSError(f"{m.name} is {length} bytes, not the {m.size} announced")
            crc = _crc(fh, length, m.name)
            dos = _dos_time(m.mtime)
            header = _local_header(name, flags, dos, crc, length)
            yield header
            left = length
            while left > 0:
                data = fh.read(min(_CHUNK, left))
                if not data:
                    raise OSError(f"{m.name} ended {left} bytes early")
                left -= len(data)
                yield data
        finally:
            fh.close()
        entries.append(_central_header(name, flags, dos, crc, length, offset))
        offset += len(header) + length
    central = b"".join(entries)
    yield central + _end(len(entries), offset, len(central))
