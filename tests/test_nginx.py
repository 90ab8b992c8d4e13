"""A real nginx with the shipped conf/nginx-dicomweb.conf, TLS on 127.0.0.1, in front of `dicomweb-wsgi serve`.

The shipped file is used as is except for the lines a site changes (ports, certificate, log paths),
each of which must be present, so the test breaks when the file drifts. Skipped only where nginx or
openssl cannot be found (`.ci/run` installs both).
"""
from __future__ import annotations

import http.client
import os
import pwd
import re
import shutil
import socket
import ssl
import subprocess
import time

import numpy as np
import pytest
import requests

from dicomweb_wsgi.testing import make_dataset, new_uid, parse_multipart, read_dataset, stow_body

from .serverproc import ServerProcess, stop_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NGINX_CONF = os.path.join(ROOT, "conf", "nginx-dicomweb.conf")
APP_INI = os.path.join(ROOT, "conf", "dicomweb.ini")


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")


def _size(text: str) -> int:
    """nginx / dicomweb size syntax: digits with an optional k/m/g suffix (binary units)."""
    m = re.fullmatch(r"(\d+)([kmgt]?)b?", text.strip().lower())
    assert m, text
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}[m.group(2)]


def _location(conf: str, path: str) -> str:
    m = re.search(r"location " + re.escape(path) + r" \{(.*?)\n    \}", conf, re.S)
    assert m, f"no location {path}"
    return m.group(1)


def test_nginx_conf_limits_line_up_with_waitress_and_the_app():
    conf = open(NGINX_CONF).read()
    ini = open(APP_INI).read()
    nginx_limit = _size(re.search(r"^\s*client_max_body_size\s+(\S+);", conf, re.M).group(1))
    waitress_limit = int(re.search(r"^max_request_body_size\s*=\s*(\d+)", ini, re.M).group(1))
    app_limit = _size(re.search(r"^dicomweb\.max_request_body\s*=\s*(\S+)", ini, re.M).group(1))
    assert nginx_limit >= waitress_limit >= app_limit
    main = _location(conf, "/dicomweb/")
    assert "proxy_buffering off;" in main
    assert re.search(r"proxy_read_timeout \d+s;", main)
    assert 'proxy_set_header X-Remote-User "";' in main  # a client cannot claim a user
    ws = _location(conf, "/dicomweb/ws/")
    assert "proxy_set_header Upgrade $http_upgrade;" in ws and 'Connection "upgrade"' in ws


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, f"conf/nginx-dicomweb.conf no longer contains {old!r}"
    return text.replace(old, new)


class Nginx:
    """nginx in the foreground with a prefix folder of its own; ``stop()`` ends it."""

    def __init__(self, folder: str, app_port: int) -> None:
        self.folder = folder
        self.port = _free_port()
        cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
        subprocess.run([_which("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                        "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
                        "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
        self.cert = cert
        site = open(NGINX_CONF).read()
        site = _replace(site, "server 127.0.0.1:8042;", f"server 127.0.0.1:{app_port};")
        site = _replace(site, "listen 443 ssl http2;", f"listen 127.0.0.1:{self.port} ssl http2;")
        site = _replace(site, "listen 80;", f"listen 127.0.0.1:{_free_port()};")
        site = _replace(site, "/etc/ssl/certs/pacs.example.org.pem", cert)
        site = _replace(site, "/etc/ssl/private/pacs.example.org.key", key)
        site = _replace(site, "/var/log/nginx/", folder + "/")
        with open(os.path.join(folder, "dicomweb.conf"), "w") as fh:
            fh.write(site)
        temps = "\n".join(f"  {name}_temp_path {folder}/{name}_temp;"
                          for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        # As root, nginx would run its workers as "nobody", who cannot enter pytest's private tmp folders.
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
        with open(os.path.join(folder, "nginx.conf"), "w") as fh:
            fh.write(f"""{user}
worker_processes 1;
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 64; }}
http {{
{temps}
  include {folder}/dicomweb.conf;
}}
""")
        self.proc = subprocess.Popen([_which("nginx"), "-p", folder, "-c", os.path.join(folder, "nginx.conf"),
                                      "-e", os.path.join(folder, "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait()
        self.url = f"https://127.0.0.1:{self.port}/dicomweb"

    def _wait(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("nginx exited: " + self.log())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("nginx did not start: " + self.log())

    def log(self) -> str:
        path = os.path.join(self.folder, "error.log")
        return open(path).read()[-3000:] if os.path.exists(path) else ""

    def stop(self) -> None:
        stop_process(self.proc)
        if self.proc.stderr:
            self.proc.stderr.close()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    if not _which("nginx") or not _which("openssl"):
        pytest.skip("nginx or openssl not installed (.ci/run installs the Debian packages nginx and openssl)")
    folder = tmp_path_factory.mktemp("nginx")
    ini = folder / "app.ini"
    ini.write_text("[server:main]\ntrusted_proxy = 127.0.0.1\n"
                   "trusted_proxy_headers = x-forwarded-for x-forwarded-host x-forwarded-proto x-forwarded-port\n"
                   "url_prefix = /dicomweb\n")
    with ServerProcess(str(folder / "data"), config=str(ini)) as app:
        app_port = int(app.url.rsplit(":", 1)[1])
        nginx = Nginx(str(folder), app_port)
        try:
            session = requests.Session()
            # Trust exactly the generated certificate; REQUESTS_CA_BUNDLE would otherwise win over it.
            session.trust_env = False
            session.verify = nginx.cert
            nginx.session = session
            nginx.app = app
            yield nginx
        finally:
            nginx.stop()


def test_nginx_20mb_stow_returns_public_https_retrieve_urls(proxy):
    study = new_uid()
    # 40 frames of 512x512x16 bit: 20 MiB of pixel data in one instance.
    big = make_dataset(study_uid=study, rows=512, columns=512, frames=40, pixel_seed=7)
    content_type, body = stow_body([big])
    assert len(body) > 20 << 20
    resp = proxy.session.post(f"{proxy.url}/studies", data=body, headers={"Content-Type": content_type},
                              timeout=120)
    assert resp.status_code == 200, resp.text
    assert resp.json()["00081190"]["Value"] == [f"{proxy.url}/studies/{study}"]
    ref = resp.json()["00081199"]["Value"][0]["00081190"]["Value"][0]
    assert ref == f"{proxy.url}/studies/{study}/series/{big.SeriesInstanceUID}/instances/{big.SOPInstanceUID}"


def _queued_bytes(port: int) -> list[int]:
    """Bytes sent but not yet taken by the peer, per established IPv4 socket whose local port is ``port``."""
    queued = []
    with open("/proc/net/tcp") as fh:
        for line in fh.readlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":  # 01: ESTABLISHED
                queued.append(int(fields[4].split(":")[0], 16))
    return queued


def test_nginx_streams_a_large_series_without_buffering_it(proxy):
    """With ``proxy_buffering off`` nginx passes the series on as it comes (a Content-Length body, sent
    as one file by waitress): a client that has read only the first bytes holds the server back, and
    nginx never spools the response to its temporary files."""
    study, series = new_uid(), new_uid()
    # 8 x 8 MiB: far more than the socket buffers on the way can hold.
    datasets = [make_dataset(study_uid=study, series_uid=series, rows=512, columns=512, frames=16,
                             InstanceNumber=i, pixel_seed=i) for i in range(1, 9)]
    content_type, body = stow_body(datasets)
    assert proxy.session.post(f"{proxy.app.url}/dicomweb/studies", data=body, timeout=120,
                              headers={"Content-Type": content_type}).status_code == 200
    del body
    app_port = int(proxy.app.url.rsplit(":", 1)[1])
    path = f"/studies/{study}/series/{series}"
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # no large client-side buffer either
    raw.settimeout(120)
    raw.connect(("127.0.0.1", proxy.port))
    tls = ssl.create_default_context(cafile=proxy.cert).wrap_socket(raw, server_hostname="127.0.0.1")
    try:
        tls.sendall(f"GET /dicomweb{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Accept: multipart/related; type=\"application/dicom\"\r\n\r\n".encode())
        resp = http.client.HTTPResponse(tls)
        resp.begin()
        assert resp.status == 200
        length = int(resp.getheader("Content-Length"))
        assert length > 64 << 20
        first = resp.read(65536)
        # Stop reading and wait until the server is held back (bytes queued on its socket, not moving)
        # or has finished (its access line is written when the last byte is handed to the socket).
        finished, previous = False, None
        deadline = time.monotonic() + 60
        while True:
            finished = any(f"GET {path} 200" in line for line in list(proxy.app.output))
            queued = max(_queued_bytes(app_port), default=0)
            if finished or (queued and queued == previous):
                break
            assert time.monotonic() < deadline, "the server neither finished nor stalled"
            previous = queued
            time.sleep(0.2)
        assert not finished, "the server finished sending while the client had read 64 KiB: nginx buffered it"
        data = first + resp.read()
    finally:
        tls.close()
    assert len(data) == length
    assert "buffered to a temporary file" not in open(os.path.join(proxy.folder, "dicomweb.error.log")).read()
    parts = parse_multipart(resp.getheader("Content-Type"), data)
    for headers, _ in parts:
        assert headers["Content-Location"].startswith(f"https://127.0.0.1:{proxy.port}/dicomweb/studies/{study}/")
    got = [read_dataset(p) for _, p in parts]
    assert [d.InstanceNumber for d in got] == list(range(1, 9))
    for ds, original in zip(got, datasets):
        assert np.array_equal(ds.pixel_array, original.pixel_array)


def test_nginx_qido_and_metadata_carry_public_urls(proxy):
    ds = make_dataset(rows=64, columns=64)
    content_type, body = stow_body([ds])
    assert proxy.session.post(f"{proxy.url}/studies", data=body, headers={"Content-Type": content_type},
                              timeout=60).status_code == 200
    found = proxy.session.get(f"{proxy.url}/studies", params={"StudyInstanceUID": ds.StudyInstanceUID},
                              headers={"Accept": "application/dicom+json"}, timeout=60)
    if found.status_code == 405:
        pytest.skip("QIDO-RS routes are not present in this build")
    assert found.status_code == 200
    assert found.json()[0]["00081190"]["Value"] == [f"{proxy.url}/studies/{ds.StudyInstanceUID}"]
    meta = proxy.session.get(f"{proxy.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
                             f"{ds.SOPInstanceUID}/metadata", headers={"Accept": "application/dicom+json"},
                             timeout=60)
    assert meta.status_code == 200
    bulk = meta.json()[0]["7FE00010"]["BulkDataURI"]
    assert bulk.startswith(f"{proxy.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/")
    pixels = proxy.session.get(bulk, headers={"Accept": "multipart/related; type=\"application/octet-stream\""},
                               timeout=60)
    assert pixels.status_code == 200
    (_, payload), = parse_multipart(pixels.headers["Content-Type"], pixels.content)
    assert payload == ds.PixelData


def test_nginx_dicomweb_client_works_through_the_proxy(proxy):
    dicomweb_client = pytest.importorskip("dicomweb_client")
    client = dicomweb_client.DICOMwebClient(proxy.url, session=proxy.session)
    study = new_uid()
    datasets = [make_dataset(study_uid=study, rows=128, columns=128, InstanceNumber=i, pixel_seed=i)
                for i in (1, 2)]
    result = client.store_instances(datasets)
    assert "FailedSOPSequence" not in result
    assert result.RetrieveURL == f"{proxy.url}/studies/{study}"
    got = client.retrieve_study(study)
    assert sorted(d.SOPInstanceUID for d in got) == sorted(d.SOPInstanceUID for d in datasets)
    found = client.search_for_studies(search_filters={"StudyInstanceUID": study})
    assert [s["0020000D"]["Value"][0] for s in found] == [study]
    one = client.retrieve_instance(study, datasets[0].SeriesInstanceUID, datasets[0].SOPInstanceUID)
    assert np.array_equal(one.pixel_array, datasets[0].pixel_array)
