"""The application shell: routing errors, the one error-to-response path, CORS, base URLs."""
from __future__ import annotations

import logging

import pydicom
import pytest
import webtest

from dicomweb_wsgi.app import make_app
from dicomweb_wsgi.errors import Conflict
from dicomweb_wsgi.http import Response
from dicomweb_wsgi.router import Route, Router
from dicomweb_wsgi.testing import make_dataset, store, stow_body


def test_unknown_path_returns_404_text(dicomweb_client):
    resp = dicomweb_client.get("/nothing/here", status=404)
    assert resp.content_type == "text/plain"


def test_wrong_method_returns_405_with_allow(dicomweb_client):
    resp = dicomweb_client.put("/studies", b"", status=405)
    allow = {m.strip() for m in resp.headers["Allow"].split(",")}
    assert "POST" in allow and "OPTIONS" in allow


@pytest.mark.parametrize("path", [
    "/studies/..%2F..%2Fetc%2Fpasswd",
    "/studies/1.2.3/series/..",
    "/studies/abc",
    "/studies/1.2.3/series/1..2",
    "/studies/" + "1" * 65,
    "/studies/1.2.%00",
    "/studies/.1.2",
])
def test_invalid_uid_in_path_returns_400(dicomweb_client, path):
    resp = dicomweb_client.get(path, status=400)
    assert "invalid" in resp.text


def test_trailing_slash_is_ignored(dicomweb_client):
    ds = make_dataset()
    store(dicomweb_client, [ds])
    dicomweb_client.get(f"/studies/{ds.StudyInstanceUID}/", status=200)


def test_options_without_preflight_lists_allowed_methods(dicomweb_client):
    resp = dicomweb_client.options("/studies", status=200)  # the body is the WADL (test_capabilities)
    assert "POST" in resp.headers["Allow"]


def test_cors_preflight_answers_allow_headers(dicomweb_client):
    resp = dicomweb_client.options("/studies", headers={
        "Origin": "http://viewer.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization"}, status=204)
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    allow_headers = resp.headers["Access-Control-Allow-Headers"].lower()
    for name in ("accept", "authorization", "content-type"):
        assert name in allow_headers
    assert int(resp.headers["Access-Control-Max-Age"]) > 0


def test_cors_headers_on_normal_and_error_responses(dicomweb_client):
    resp = dicomweb_client.get("/studies/1.2.3", headers={"Origin": "http://viewer.example"}, status=404)
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    expose = resp.headers["Access-Control-Expose-Headers"]
    for name in ("Warning", "Content-Location", "Location"):
        assert name in expose


def test_cors_only_configured_origins(tmp_path):
    app = make_app({"data_dir": str(tmp_path / "d"), "cors_origins": "https://ok.example", "fsync": "0"})
    client = webtest.TestApp(app)
    ok = client.get("/studies/1.2.3", headers={"Origin": "https://ok.example"}, status=404)
    assert ok.headers["Access-Control-Allow-Origin"] == "https://ok.example"
    assert ok.headers["Vary"] == "Origin"
    bad = client.get("/studies/1.2.3", headers={"Origin": "https://evil.example"}, status=404)
    assert "Access-Control-Allow-Origin" not in bad.headers
    app.close()


@pytest.mark.parametrize("headers", [{}, {"Origin": "https://evil.example"},
                                     {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}],
                         ids=["no-origin", "other-origin", "other-origin-preflight"])
def test_cors_listed_origins_vary_on_origin_in_every_response(dicomweb_client_factory, headers):
    # Fetch standard, "CORS protocol and HTTP caches": a cache must not give one origin's answer to another.
    client = dicomweb_client_factory(cors_origins="https://ok.example")
    method = "OPTIONS" if "Access-Control-Request-Method" in headers else "GET"
    resp = client.request("/studies", method=method, headers=headers)
    vary = {v.strip().lower() for value in resp.headers.getall("Vary") for v in value.split(",")}
    assert "origin" in vary


def test_cors_any_origin_answers_the_same_with_or_without_origin(dicomweb_client):
    plain = dicomweb_client.get("/studies", status=200)
    cors = dicomweb_client.get("/studies", headers={"Origin": "http://viewer.example"}, status=200)
    for name in ("Access-Control-Allow-Origin", "Access-Control-Expose-Headers"):
        assert plain.headers[name] == cors.headers[name]
    assert "Vary" not in plain.headers


def test_no_cors_headers_when_disabled(tmp_path):
    app = make_app({"data_dir": str(tmp_path / "d"), "fsync": "0"})
    resp = webtest.TestApp(app).get("/studies/1.2.3", headers={"Origin": "https://x.example"}, status=404)
    assert "Access-Control-Allow-Origin" not in resp.headers
    app.close()


def test_unexpected_error_is_500_revealing_nothing(dicomweb_app, caplog):
    def boom(req):
        raise RuntimeError("secret /etc/path detail")

    dicomweb_app.ctx.router = Router([Route("GET", "/boom", boom)])
    with caplog.at_level(logging.ERROR):
        resp = webtest.TestApp(dicomweb_app).get("/boom", status=500)
    assert "secret" not in resp.text and "Traceback" not in resp.text
    assert "secret /etc/path detail" in caplog.text


def test_handler_error_becomes_its_status(dicomweb_app):
    def conflict(req):
        raise Conflict("already there")

    def ok(req):
        return Response(200, b"fine", "text/plain")

    dicomweb_app.ctx.router = Router([Route("GET", "/c", conflict), Route("GET", "/ok", ok)])
    client = webtest.TestApp(dicomweb_app)
    assert client.get("/c", status=409).text == "already there\n"
    assert client.get("/ok", status=200).text == "fine"


def test_public_url_setting_is_used_in_retrieve_urls(tmp_path):
    app = make_app({"data_dir": str(tmp_path / "d"), "public_url": "https://pacs.example/dicomweb/",
                    "fsync": "0"})
    resp = store(webtest.TestApp(app), [make_dataset()])
    assert resp.json["00081190"]["Value"][0].startswith("https://pacs.example/dicomweb/studies/")
    app.close()


def test_script_name_and_forwarded_scheme_are_used_in_retrieve_urls(dicomweb_client):
    ds = make_dataset()
    from dicomweb_wsgi.testing import stow_body

    content_type, body = stow_body([ds])
    resp = dicomweb_client.post("/studies", body, headers={"Content-Type": content_type, "Host": "pacs:8443"},
                                extra_environ={"SCRIPT_NAME": "/dicomweb", "wsgi.url_scheme": "https"},
                                status=200)
    assert resp.json["00081190"]["Value"] == [f"https://pacs:8443/dicomweb/studies/{ds.StudyInstanceUID}"]


def test_non_ascii_script_name_is_percent_encoded_once(dicomweb_client):
    # PEP 3333: SCRIPT_NAME is the request's bytes decoded as ISO-8859-1; /café arrives as /caf\xc3\xa9.
    ds = make_dataset()
    content_type, body = stow_body([ds])
    resp = dicomweb_client.post("/studies", body, headers={"Content-Type": content_type},
                                extra_environ={"SCRIPT_NAME": "/caf\xc3\xa9"}, status=200)
    assert resp.json["00081190"]["Value"] == [f"http://localhost:80/caf%C3%A9/studies/{ds.StudyInstanceUID}"]


def test_read_only_405_allows_the_resources_own_read_methods(dicomweb_client_factory):
    client = dicomweb_client_factory(read_only="true")
    uid = "1.2.3"
    resp = client.post("/studies", b"", headers={"Content-Type": "application/dicom"}, status=405)
    assert resp.headers["Allow"] == "GET, HEAD, OPTIONS" and "read-only" in resp.text
    # RFC 9110 §15.5.6: Allow lists what the resource supports, and /state has no GET.
    resp = client.put(f"/workitems/{uid}/state", b"{}", headers={"Content-Type": "application/dicom+json"},
                      status=405)
    assert resp.headers["Allow"] == "OPTIONS" and "only OPTIONS" in resp.text
    assert client.get(f"/workitems/{uid}/state", status=405).headers["Allow"] == "OPTIONS"
    client.options(f"/workitems/{uid}/state", status=200)
    preflight = client.options("/studies", headers={"Origin": "http://viewer.example",
                                                    "Access-Control-Request-Method": "POST"}, status=204)
    assert preflight.headers["Access-Control-Allow-Methods"] == "GET, HEAD, OPTIONS"


def test_read_only_write_to_an_unknown_path_is_404(dicomweb_client_factory):
    client = dicomweb_client_factory(read_only="true")
    client.post("/no/such/resource", b"x", headers={"Content-Type": "application/dicom"}, status=404)
    client.delete("/studies/1.2.3/nothing", status=404)


def test_apps_are_independent(tmp_path):
    a = make_app({"data_dir": str(tmp_path / "a"), "fsync": "0"})
    b = make_app({"data_dir": str(tmp_path / "b"), "fsync": "0"})
    ds = make_dataset()
    store(webtest.TestApp(a), [ds])
    webtest.TestApp(b).get(f"/studies/{ds.StudyInstanceUID}", status=404)
    webtest.TestApp(a).get(f"/studies/{ds.StudyInstanceUID}", status=200)
    a.close()
    b.close()


def test_unknown_setting_is_rejected(tmp_path):
    from dicomweb_wsgi.config import ConfigError

    with pytest.raises(ConfigError, match="unknown setting"):
        make_app({"data_dir": str(tmp_path), "no_such_key": "1"})


def test_host_header_without_port_gets_the_connection_port(dicomweb_client):
    # dicomweb-client sends "Host: 127.0.0.1" without the port it connected to.
    from dicomweb_wsgi.testing import stow_body

    ds = make_dataset()
    content_type, body = stow_body([ds])
    resp = dicomweb_client.post("/studies", body, headers={"Content-Type": content_type, "Host": "127.0.0.1"},
                                extra_environ={"SERVER_PORT": "41234"}, status=200)
    assert resp.json["00081190"]["Value"] == [f"http://127.0.0.1:41234/studies/{ds.StudyInstanceUID}"]


def test_storage_failure_is_503_not_500(dicomweb_app):
    from dicomweb_wsgi.storage.base import StorageError

    def locked(req):
        raise StorageError("index read failed: database is locked")

    dicomweb_app.ctx.router = Router([Route("GET", "/locked", locked)])
    resp = webtest.TestApp(dicomweb_app).get("/locked", status=503)
    assert "locked" not in resp.text and "try again" in resp.text


def test_retrieve_racing_a_delete_is_404_not_500(dicomweb_app, dicomweb_client):
    ds = make_dataset()
    store(dicomweb_client, [ds])
    inst = dicomweb_app.archive.instances(ds.StudyInstanceUID)[0]
    import os

    os.unlink(dicomweb_app.archive.path(inst))  # what a concurrent DELETE or replace leaves behind
    resp = dicomweb_client.get(f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
                               f"{ds.SOPInstanceUID}", headers={"Accept": "application/dicom"}, status=404)
    assert "removed" in resp.text


def test_files_go_to_the_servers_file_wrapper_unwrapped_and_are_logged_on_close(dicomweb_app, dicomweb_client,
                                                                                 caplog):
    ds = make_dataset()
    store(dicomweb_client, [ds])

    class FileWrapper:  # what waitress hands the app as wsgi.file_wrapper
        def __init__(self, filelike, block_size):
            self.filelike = filelike

        def __iter__(self):
            return iter(lambda: self.filelike.read(65536), b"")

        def close(self):
            self.filelike.close()

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": f"/studies/{ds.StudyInstanceUID}/series/"
               f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}", "QUERY_STRING": "",
               "HTTP_ACCEPT": "application/dicom", "SERVER_NAME": "localhost", "SERVER_PORT": "80",
               "wsgi.url_scheme": "http", "wsgi.input": __import__("io").BytesIO(), "wsgi.file_wrapper": FileWrapper}
    seen = {}
    body = dicomweb_app(environ, lambda status, headers: seen.update(status=status, headers=dict(headers)))
    assert isinstance(body, FileWrapper)
    data = b"".join(body)
    assert seen["status"].startswith("200") and int(seen["headers"]["Content-Length"]) == len(data)
    assert pydicom.dcmread(__import__("io").BytesIO(data)).SOPInstanceUID == ds.SOPInstanceUID
    with caplog.at_level(logging.INFO, logger="dicomweb_wsgi.access"):
        body.close()
    assert f"GET /studies/{ds.StudyInstanceUID}" in caplog.text and f" 200 {len(data)} " in caplog.text


@pytest.mark.parametrize("path, user_header", [
    ("/x%0A1.2.3.4%20admin%20DELETE%20/studies/1%20204", None),   # a forged second line
    ("/studies/1.2%0D%0A", None),
    ("/studies", "alice\nbob admin"),                                # a proxy's user name, unchecked
])
def test_access_log_line_cannot_be_split_or_forged(dicomweb_client_factory, caplog, path, user_header):
    settings = {"auth_user_header": "X-Remote-User", "auth_trusted_proxies": "127.0.0.1"} if user_header else {}
    client = dicomweb_client_factory(**settings)
    headers = {"X-Remote-User": user_header} if user_header else {}
    with caplog.at_level(logging.INFO, logger="dicomweb_wsgi.access"):
        client.get(path, headers=headers, extra_environ={"REMOTE_ADDR": "127.0.0.1"}, status="*")
    [line] = [r.getMessage() for r in caplog.records if r.name == "dicomweb_wsgi.access"]
    assert "\n" not in line and "\r" not in line
    assert len(line.split(" ")) == 7  # client, user, method, path, status, bytes, time: one field each
