"""Bulk import of DICOM files from folders, and the progress bar the maintenance commands share.

``import_paths`` walks files and folders recursively and stores every PS3.10 file through
``Archive.store_files`` (the same validation and durability as STOW-RS): each file is first copied
into the blob store's spool folder, because ``store_files`` consumes what it is given. Files that are
not DICOM (no ``DICM`` prefix) and DICOMDIRs are skipped with a reason, and so are symbolic links
met inside a folder (not followed, so a link cannot pull in a file from elsewhere); instances already
stored (same SOP Instance UID in the same study and series) are counted, not stored again, so a
second run over the same folder changes nothing. Parsing is the cost, so several worker processes
share the files when there are enough of them to pay for starting.
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Iterable, TextIO

from .archive import Archive
from .audit import acting_as
from .config import Settings
from .errors import DicomStatus
from .storage.base import DuplicatePolicy, Outcome, StorageError

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
# Below this many files one process does the work: starting workers costs more than it saves.
PARALLEL_MIN_FILES = 64
CHUNK_FILES = 16

STORED, ALREADY, SKIPPED, FAILED = "stored", "already stored", "skipped", "failed"
SYMLINK = "symbolic link, not followed"


@dataclass
class ImportSummary:
    """Counts per outcome, and the path and reason of every file skipped or failed."""

    counts: dict[str, int] = field(default_factory=lambda: {STORED: 0, ALREADY: 0, SKIPPED: 0, FAILED: 0})
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    bytes: int = 0

    def line(self) -> str:
        return ", ".join(f"{n} {what}" for what, n in self.counts.items())


class Progress:
    """A progress line on a stream: count, MB/s and ETA; redrawn in place on a terminal.

    On anything else (a log file, CI) it writes a plain line at most every ``interval`` seconds.
    """

    def __init__(self, label: str, total_count: int, total_bytes: int, stream: TextIO | None = None,
                 interval: float = 5.0) -> None:
        self.label = label
        self.total_count = total_count
        self.total_bytes = total_bytes
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = 0.1 if self.tty else interval
        self.count = 0
        self.bytes = 0
        self.started = time.monotonic()
        self.last_drawn = 0.0

    def advance(self, count: int = 0, nbytes: int = 0) -> None:
        self.count += count
        self.bytes += nbytes
        self._draw()

    def set_bytes(self, nbytes: int) -> None:
        """Set the bytes done so far (for callers that report a running total)."""
        self.bytes = nbytes
        self._draw()

    def note(self, line: str) -> None:
        """Print a line without mangling the bar."""
        if self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.write(line + "\n")
        self.last_drawn = 0.0
        self._draw()

    def finish(self) -> None:
        self._draw(force=True)
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()

    def text(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.bytes / elapsed
        fraction = self.bytes / self.total_bytes if self.total_bytes else (
            self.count / self.total_count if self.total_count else 1.0)
        eta = (elapsed / fraction - elapsed) if 0 < fraction < 1 else 0.0
        done = int(min(fraction, 1.0) * 24)
        counted = f" {self.count}/{self.total_count} files" if self.total_count else ""
        return (f"{self.label} [{'#' * done}{'.' * (24 - done)}]{counted} {fraction:4.0%} "
                f"{rate / 1e6:.1f} MB/s ETA {_clock(eta)}")

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_drawn < self.interval:
            return
        self.last_drawn = now
        self.stream.write(("\r\x1b[K" if self.tty else "") + self.text() + ("" if self.tty else "\n"))
        self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def find_files(paths: Iterable[str]) -> tuple[list[tuple[str, int]], list[tuple[str, str]], list[str]]:
    """Every regular file under ``paths`` (recursively, sorted) with its size, the paths that are not
    there (with a reason), and the symbolic links met inside folders.

    Links inside a folder are not followed, to files or folders alike: one would import whatever it
    points at, anywhere on the machine. A path named on the command line is taken as given.
    """
    found: list[tuple[str, int]] = []
    missing: list[tuple[str, str]] = []
    links: list[str] = []
    for top in paths:
        if os.path.isfile(top):
            found.append((top, os.path.getsize(top)))
        elif os.path.isdir(top):
            for folder, dirs, files in os.walk(top):  # os.walk does not descend into linked folders
                dirs.sort()
                links += [os.path.join(folder, d) for d in dirs if os.path.islink(os.path.join(folder, d))]
                for name in sorted(files):
                    path = os.path.join(folder, name)
                    if os.path.islink(path):
                        links.append(path)
                    elif os.path.isfile(path):
                        found.append((path, os.path.getsize(path)))
        else:
            missing.append((top, "no such file or folder"))
    return found, missing, links


def sniff(path: str) -> str | None:
    """Why a file is not a PS3.10 file worth parsing (None: it looks like one)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    # PS3.10 §7.1: a 128-byte preamble then "DICM"; pydicom also writes the meta group without them.
    if head[128:132] != b"DICM" and not head.startswith(b"\x02\x00"):
        return "not a DICOM file (no PS3.10 'DICM' prefix)"
    return None


def _meta_sop_class(path: str) -> str:
    """The file meta's Media Storage SOP Class UID, cheaply; an empty string if unreadable."""
    import pydicom

    try:
        meta = pydicom.filereader.read_file_meta_info(path)
        return str(meta.get("MediaStorageSOPClassUID", "") or "").strip()
    except Exception:  # a damaged file is reported by the full parse that follows
        return ""


def _instance_uids(path: str) -> tuple[str, str, str]:
    """(Study, Series, SOP Instance UID) of the data set itself; empty strings if unreadable.

    The data set's own UIDs, not the file meta's: a meta left stale (some anonymisers do) names
    another instance, and STOW-RS stores by the data set.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True,
                             specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
        return tuple(str(ds.get(k, "") or "").strip()  # type: ignore[return-value]
                     for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
    except Exception:  # a damaged file is reported by the full parse that follows
        return "", "", ""


def _stored_here(archive: Archive, study: str, series: str, sop: str) -> bool:
    """Whether this SOP Instance UID is stored in this study and series (not merely somewhere)."""
    return bool(study and series and sop and archive.instances(study, series, sop))


def import_file(archive: Archive, path: str) -> tuple[str, str]:
    """Store one file; returns (outcome, reason) with outcome one of STORED, ALREADY, SKIPPED, FAILED.

    ALREADY means the same SOP Instance UID is stored in the same study and series; one stored under
    another study or series is a failure (the archive refuses it, as STOW-RS does).
    """
    reason = sniff(path)
    if reason:
        return SKIPPED, reason
    if _meta_sop_class(path) == MEDIA_STORAGE_DIRECTORY:
        return SKIPPED, "DICOMDIR (a media directory, not an instance)"
    uids = _instance_uids(path)
    if archive.settings.policy is not DuplicatePolicy.REPLACE and _stored_here(archive, *uids):
        return ALREADY, ""
    fd, spooled = tempfile.mkstemp(dir=archive.blobs.spool_dir, suffix=".import")
    try:
        with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
    except OSError as exc:
        os.unlink(spooled)
        return FAILED, f"cannot copy: {exc.strerror}"
    (result,) = list(archive.store_files([spooled]))
    if result.failure is None:
        return (ALREADY, "") if result.outcome is Outcome.IGNORED else (STORED, "")
    if (result.failure == DicomStatus.DUPLICATE_SOP_INSTANCE  # duplicate_policy = reject
            and _stored_here(archive, result.study_uid or "", result.series_uid or "", result.sop_uid or "")):
        return ALREADY, ""
    return FAILED, f"0x{int(result.failure):04X} {result.reason}"


def open_archive(settings: Settings) -> Archive:
    """``Archive.open``, with a data folder the OS refuses (a file in its path, no permission) as a
    StorageError naming the folder, which the CLI prints on one line instead of a traceback."""
    try:
        return Archive.open(settings)
    except OSError as exc:
        raise StorageError(f"cannot use the data folder {os.path.abspath(settings.data_dir)}: "
                           f"{exc.strerror or exc}") from exc


# -- worker processes --------------------------------------------------------------------------------
_worker: dict[str, object] = {}  # the archive and actor of this worker process (set by _worker_init)


def _worker_init(settings: Settings, actor: str) -> None:
    _worker["archive"] = Archive.open(settings)
    _worker["actor"] = actor


def _worker_chunk(paths: list[str]) -> list[tuple[str, str, str]]:
    archive = _worker["archive"]
    assert isinstance(archive, Archive)
    with acting_as(_worker["actor"]):
        return [(p, *import_file(archive, p)) for p in paths]


def import_paths(settings: Settings, paths: Iterable[str], *, actor: str, jobs: int = 0,
                 stream: TextIO | None = None) -> ImportSummary:
    """Import files and folders; progress and skip/failure notes go to ``stream`` (stderr)."""
    files, missing, links = find_files(paths)
    summary = ImportSummary()
    progress = Progress("import", len(files), sum(size for _, size in files), stream)
    sizes = dict(files)

    def record(path: str, outcome: str, reason: str) -> None:
        summary.counts[outcome] += 1
        if outcome in (SKIPPED, FAILED):
            (summary.skipped if outcome == SKIPPED else summary.failed).append((path, reason))
            progress.note(f"{outcome}: {path}: {reason}")
        summary.bytes += sizes.get(path, 0)
        progress.advance(1, sizes.get(path, 0))

    for path, reason in missing:
        summary.counts[FAILED] += 1
        summary.failed.append((path, reason))
        progress.note(f"{FAILED}: {path}: {reason}")
    for path in links:
        summary.counts[SKIPPED] += 1
        summary.skipped.append((path, SYMLINK))
        progress.note(f"{SKIPPED}: {path}: {SYMLINK}")
    jobs = jobs or (min(4, os.cpu_count() or 1) if len(files) >= PARALLEL_MIN_FILES else 1)
    names = [p for p, _ in files]
    archive = open_archive(settings)  # here too, not only in the workers: an unusable data folder is one clear error
    if jobs <= 1:
        try:
            with acting_as(actor):
                for path in names:
                    record(path, *import_file(archive, path))
        finally:
            archive.close()
    else:
        archive.close()
        chunks = [names[i:i + CHUNK_FILES] for i in range(0, len(names), CHUNK_FILES)]
        with concurrent.futures.ProcessPoolExecutor(
                max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init, initargs=(settings, actor)) as pool:
            for future in concurrent.futures.as_completed([pool.submit(_worker_chunk, c) for c in chunks]):
                for path, outcome, reason in future.result():
                    record(path, outcome, reason)
    progress.finish()
    return summary
