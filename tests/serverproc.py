"""Run ``dicomweb-wsgi serve`` in a subprocess on a free 127.0.0.1 port, for end-to-end tests."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from typing import Sequence

STARTUP_TIMEOUT = 30.0


class ServerProcess:
    """A live server: ``url`` is its base URL; ``stop()`` (or the context manager) ends it.

    ``--max-seconds`` makes the server exit by itself even if a test run is killed.
    """

    def __init__(self, data_dir: str, *, config: str | None = None, extra: Sequence[str] = (),
                 max_seconds: float = 600, env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, "-m", "dicomweb_wsgi", "serve", "--data", data_dir, "--listen", "127.0.0.1:0",
               "--max-seconds", str(max_seconds), *extra]
        if config:
            cmd += ["--config", config]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, **(env or {})})
        self.startup_output: list[str] = []  # the lines up to and including the one with the URL
        try:
            self.url = self._wait_for_url()
        except BaseException:  # including SystemExit from a benchmark's SIGTERM: not left running
            self.stop()
            raise
        self.output: list[str] = []
        # Keep reading the server's output so a full pipe never blocks it.
        self._drain = threading.Thread(target=self._read_output, daemon=True)
        self._drain.start()

    def _read_output(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self.output.append(line)
                del self.output[:-200]
        except (ValueError, OSError):
            pass

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        lines = []
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
            if m:
                self.startup_output = lines
                return m.group(1)
        self.stop()
        raise RuntimeError("server did not start:\n" + "".join(lines))

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def children(self) -> list[int]:
        """PIDs of the server's child processes (``serve --workers N``: its workers), from /proc."""
        return child_pids(self.proc.pid)

    def kill(self) -> None:
        """kill -9: no chance to clean up (crash trials)."""
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not ended within 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def child_pids(parent: int) -> list[int]:
    """Running (not zombie) processes whose parent is ``parent``, from /proc/*/stat."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent and fields[0] != b"Z":
            found.append(int(name))
    return sorted(found)


def process_state(pid: int) -> str:
    """The state letter of ``pid`` in /proc (R, S, T stopped, Z zombie...); raises OSError once it is gone."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        return fh.read().rsplit(b")", 1)[1].split()[0].decode()


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie nobody has reaped yet counts as gone)."""
    try:
        return process_state(pid) in ("Z", "X")
    except OSError:
        return True
