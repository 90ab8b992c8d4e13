"""Start and stop a reference Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) by hand.

The benchmark's reference peer. Orthanc is started from a JSON configuration that this module
writes into a temporary folder (storage and index live there too), never through systemd: HTTP
on a free loopback port with ``RemoteAccessAllowed: false``, the DICOM (DIMSE) server off,
authentication off, the DICOMweb plugin at ``/dicom-web/`` and WADO-URI at ``/wado``. It is
stopped by its PID. Everything else is Orthanc's out-of-the-box default, which is what a site
installing it would run.

    python benchmarks/orthanc.py          # start one, print its DICOMweb URL, stop on Enter
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

ORTHANC_BINARY = "Orthanc"
PLUGIN_CANDIDATES = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
                     "/usr/lib/orthanc/libOrthancDicomWeb.so")
STARTUP_TIMEOUT = 60.0


class OrthancUnavailable(RuntimeError):
    """Orthanc or its DICOMweb plugin is not installed here (``apt-get install orthanc orthanc-dicomweb``)."""


def find_orthanc() -> tuple[str, str]:
    """The Orthanc executable and the DICOMweb plugin, or ``OrthancUnavailable`` saying what is missing."""
    binary = shutil.which(ORTHANC_BINARY) or next(
        (p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if os.access(p, os.X_OK)), None)
    plugin = next((p for p in PLUGIN_CANDIDATES if os.path.exists(p)), None)
    if binary is None or plugin is None:
        missing = " and ".join(n for n, v in (("Orthanc", binary), ("its DICOMweb plugin", plugin)) if v is None)
        raise OrthancUnavailable(f"Orthanc not available: {missing} not installed "
                                 "(apt-get install orthanc orthanc-dicomweb)")
    return binary, plugin


def orthanc_version(binary: str) -> str:
    """``Orthanc 1.10.1`` (first line of ``--version``)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    words = out.split()
    return f"Orthanc {words[1]}" if len(words) > 1 else "Orthanc (unknown version)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(folder: str, http_port: int, plugin: str, threads: int = 50) -> str:
    """The configuration file (loopback, no DIMSE, no auth, DICOMweb on); returns its path."""
    config = {
        "Name": "benchmark-reference",
        "StorageDirectory": os.path.join(folder, "storage"),
        "IndexDirectory": os.path.join(folder, "index"),
        "HttpPort": http_port,
        "HttpServerEnabled": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "HttpThreadsCount": threads,
        "SslEnabled": False,
        "LuaScripts": [],
        "Plugins": [plugin],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado",
                     "Host": f"127.0.0.1:{http_port}", "Ssl": False},
    }
    path = os.path.join(folder, "orthanc.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(config, fh, indent=2)
    return path


class OrthancProcess:
    """A running Orthanc: ``url`` is its DICOMweb base URL, ``wado_uri`` its WADO-URI URL, ``pid`` its PID."""

    def __init__(self, folder: str | None = None) -> None:
        binary, plugin = find_orthanc()
        self.version = orthanc_version(binary)
        self._own_folder = folder is None
        self.folder = folder or tempfile.mkdtemp(prefix="bench-orthanc-")
        port = free_port()
        config = write_config(self.folder, port, plugin)
        self.log_path = os.path.join(self.folder, "orthanc.log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([binary, config], stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=self.folder, start_new_session=True)
        self.pid = self.proc.pid
        self.root = f"http://127.0.0.1:{port}"
        self.url = self.root + "/dicom-web"
        self.wado_uri = self.root + "/wado"
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start-up:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.root + "/system", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"Orthanc did not answer within {STARTUP_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                return b"\n".join(fh.read().splitlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to our PID (Orthanc shuts down cleanly), SIGKILL after 20 s; removes a temp folder we made."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> OrthancProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    try:
        with OrthancProcess() as orthanc:
            print(f"{orthanc.version} (pid {orthanc.pid}) DICOMweb at {orthanc.url}, WADO-URI at {orthanc.wado_uri}")
            input("Enter stops it ... ")
    except OrthancUnavailable as exc:
        print(exc)
