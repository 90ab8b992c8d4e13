"""Retrieve Capabilities: OPTIONS answers a WADL document generated from the route table."""
from __future__ import annotations

import re

import pytest
import webtest
from defusedxml.ElementTree import fromstring

from dicomweb_wsgi.app import make_app
from dicomweb_wsgi.model import NPI_RESOURCES
from dicomweb_wsgi.transactions.capabilities import WADL_NAMESPACE, describe, resource_nodes

W = "{" + WADL_NAMESPACE + "}"
PLACEHOLDER = re.compile(r"\{(\w+)(?::(\w+))?\}")


def expected_resources(router) -> dict[str, set[str]]:
    """Every path the router serves (NPI names put in, converters dropped) -> its allowed methods."""
    expected: dict[str, set[str]] = {}
    for entry in router.entries:
        paths = [""]
        pos = 0
        for m in PLACEHOLDER.finditer(entry.template):
            literal = entry.template[pos:m.start()]
            names = sorted(NPI_RESOURCES) if m.group(2) == "npi" else ["{" + m.group(1) + "}"]
            paths = [p + literal + n for p in paths for n in names]
            pos = m.end()
        for path in paths:
            expected[path + entry.template[pos:]] = set(router.allowed(entry))
    return expected


def wadl_resources(body: bytes) -> tuple[str, dict[str, set[str]]]:
    """(resources base, full path -> method names) read back from a WADL document."""
    root = fromstring(body)
    assert root.tag == W + "application"
    resources = root.find(W + "resources")
    found: dict[str, set[str]] = {}

    def walk(node, prefix: str) -> None:
        path = prefix.rstrip("/") + "/" + node.get("path")
        assert path not in found, f"{path} listed twice"
        found[path] = {m.get("name") for m in node.findall(W + "method")}
        for child in node.findall(W + "resource"):
            walk(child, path)

    for top in resources.findall(W + "resource"):
        walk(top, "")
    return resources.get("base"), found


def test_capabilities_root_wadl_lists_exactly_the_route_table(dicomweb_app, dicomweb_client):
    resp = dicomweb_client.options("/", status=200)
    assert resp.headers["Content-Type"] == "application/vnd.sun.wadl+xml"
    base, found = wadl_resources(resp.body)
    assert base == "http://localhost:80/"
    assert found == expected_resources(dicomweb_app.ctx.router)


def test_capabilities_with_every_optional_route_still_match(tmp_path):
    app = make_app({"data_dir": str(tmp_path / "d"), "fsync": "false", "allow_delete": "true",
                    "public_url": "https://pacs.example.org/dicomweb"})
    try:
        resp = webtest.TestApp(app, lint=True).options("/", status=200)
        base, found = wadl_resources(resp.body)
        assert base == "https://pacs.example.org/dicomweb/"
        assert found == expected_resources(app.ctx.router)
        assert "DELETE" in found["/studies/{study_uid}"]
    finally:
        app.close()


def test_capabilities_every_route_is_described(tmp_path):
    app = make_app({"data_dir": str(tmp_path / "d"), "fsync": "false", "allow_delete": "true"})
    try:
        wado_uri = app.settings.wado_uri_path
        missing = [(method, node.path) for node in resource_nodes(app.ctx.router) for method in node.methods
                   if method not in ("HEAD", "OPTIONS") and describe(method, node.shape, wado_uri) is None]
        assert missing == []
    finally:
        app.close()


def test_capabilities_lists_npi_names_and_their_matching_keys(dicomweb_client):
    root = fromstring(dicomweb_client.options("/", status=200).body)
    tops = {r.get("path"): r for r in root.find(W + "resources").findall(W + "resource")}
    assert set(NPI_RESOURCES) <= set(tops)
    search = [m for m in tops["color-palettes"].findall(W + "method") if m.get("name") == "GET"][0]
    params = {p.get("name") for p in search.find(W + "request").findall(W + "param")}
    assert {"ContentLabel", "SOPInstanceUID", "includefield", "limit", "offset"} <= params
    types = {r.get("mediaType") for r in search.find(W + "response").findall(W + "representation")}
    assert "application/dicom+json" in types


def test_capabilities_on_a_resource_describes_it_and_below(dicomweb_app, dicomweb_client):
    resp = dicomweb_client.options("/studies/1.2.3/series/4.5", status=200)
    _, found = wadl_resources(resp.body)
    assert "/studies/1.2.3/series/4.5" in found
    assert all(path.startswith("/studies/1.2.3/series/4.5") for path in found)
    assert "/studies/1.2.3/series/4.5/instances/{sop_uid}" in found
    assert set(resp.headers["Allow"].split(", ")) == found["/studies/1.2.3/series/4.5"]
    _, npi_found = wadl_resources(dicomweb_client.options("/hanging-protocols", status=200).body)
    assert set(npi_found) == {"/hanging-protocols", "/hanging-protocols/{sop_uid}"}


@pytest.mark.parametrize("path, status", [("/studies/not-a-uid", 400), ("/no-such-thing", 404),
                                          ("/studies/1.2/nothing", 404)])
def test_capabilities_on_a_bad_path_is_an_error(dicomweb_client, path, status):
    dicomweb_client.options(path, status=status)


@pytest.mark.parametrize("accept, media_type", [
    ("application/vnd.sun.wadl+xml", "application/vnd.sun.wadl+xml"),
    ("application/xml", "application/xml"),
    ("*/*", "application/vnd.sun.wadl+xml"),
    ("application/json;q=0.9, text/xml;q=0.5", "application/json"),
])
def test_capabilities_accept_negotiation(dicomweb_client, accept, media_type):
    resp = dicomweb_client.options("/", headers={"Accept": accept}, status=200)
    assert resp.headers["Content-Type"] == media_type
    if media_type == "application/json":
        assert resp.json["base"] == "http://localhost:80/"
    else:
        assert fromstring(resp.body).tag == W + "application"


def test_capabilities_unacceptable_type_is_406(dicomweb_client):
    dicomweb_client.options("/", headers={"Accept": "image/png"}, status=406)


def test_capabilities_cors_preflight_keeps_its_answer(dicomweb_client):
    preflight = dicomweb_client.options("/studies", headers={
        "Origin": "https://viewer.example.org", "Access-Control-Request-Method": "POST"}, status=204)
    assert preflight.body == b""
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    # The same OPTIONS without Access-Control-Request-Method is Retrieve Capabilities, with CORS headers.
    plain = dicomweb_client.options("/studies", headers={"Origin": "https://viewer.example.org"}, status=200)
    assert plain.headers["Content-Type"] == "application/vnd.sun.wadl+xml"
    assert plain.headers["Access-Control-Allow-Origin"] == "*"
    _, found = wadl_resources(plain.body)
    assert "POST" in found["/studies"]


def test_capabilities_get_on_the_root_is_405_with_allow(dicomweb_client):
    resp = dicomweb_client.get("/", status=405)
    assert resp.headers["Allow"] == "OPTIONS"


def test_capabilities_allow_on_a_read_only_server_lists_no_writes(dicomweb_client_factory):
    # RFC 9110 §10.2.1: Allow is what the resource supports now; a read-only server refuses every write.
    client = dicomweb_client_factory(read_only="true")
    assert client.options("/studies", status=200).headers["Allow"] == "GET, HEAD, OPTIONS"
    assert client.options("/workitems/1.2.3/state", status=200).headers["Allow"] == "OPTIONS"


def test_capabilities_of_a_study_lists_the_retrieve_media_types_including_zip(dicomweb_client):
    root = fromstring(dicomweb_client.options("/studies/1.2.3", status=200).body)
    study = [r for r in root.iter(W + "resource") if r.get("path", "").endswith("1.2.3")][0]
    get = [m for m in study.findall(W + "method") if m.get("name") == "GET"][0]
    types = {r.get("mediaType") for r in get.find(W + "response").findall(W + "representation")}
    assert {'multipart/related; type="application/dicom"', "application/zip"} <= types
