"""Retrieve Capabilities (PS3.18 §8.9, Annex H): ``OPTIONS`` answered with a WADL document.

PS3.18 §8.9 says every RESTful service shall implement this transaction. ``OPTIONS /`` (the service
root) describes the whole server; ``OPTIONS`` on any other resource describes that resource and the
resources below it, with the path values of the request put in. A CORS preflight (``Origin`` +
``Access-Control-Request-Method``) is not this transaction: ``app.py`` answers it first.

The document is generated from the router's table on every request, so it lists exactly the
resources and methods the server serves (``HEAD`` wherever ``GET`` is, ``OPTIONS`` everywhere; the
``npi`` placeholder is expanded into the resource names, as §12 asks). What each transaction takes
and gives (query parameters, request and response media types, success statuses) comes from
``TRANSACTIONS``, which describes PS3.18's transactions by the shape of their URI templates; the
tests check that every route has a description.

Media types: ``application/vnd.sun.wadl+xml`` (default, Annex H), ``application/xml`` and
``text/xml`` (the same document), ``application/json`` (the same tree as JSON, for tools that
prefer it). Anything else is 406. Statuses: 200, 400/404 for a path that names nothing, 406.
Ignores: query parameters other than ``accept``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree as ET

from ..errors import NotAcceptable, NotFound
from ..http import Request, Response, supported_methods
from ..mediatypes import Offer, negotiate
from ..model import INDEXED, NPI_RESOURCES, Level
from ..router import Router
from . import npi

WADL_NAMESPACE = "http://wadl.dev.java.net/2009/02"
WADL_MEDIA_TYPE = "application/vnd.sun.wadl+xml"
OFFERS = (
    Offer(WADL_MEDIA_TYPE, multipart=False),
    Offer("application/xml", multipart=False),
    Offer("text/xml", multipart=False),
    Offer("application/json", multipart=False),
)
_PLACEHOLDER = re.compile(r"\{(\w+)(?::(\w+))?\}")

DICOM = 'multipart/related; type="application/dicom"'
DICOM_JSON = "application/dicom+json"
DICOM_XML = 'multipart/related; type="application/dicom+xml"'
OCTETS = 'multipart/related; type="application/octet-stream"'
SEARCH = ("includefield", "fuzzymatching", "limit", "offset")
RENDER = ("window", "viewport", "quality", "annotation", "charset")


@dataclass(frozen=True)
class Transaction:
    """What one PS3.18 transaction takes and gives."""

    title: str
    query: tuple[str, ...] = ()
    request: tuple[str, ...] = ()
    response: tuple[str, ...] = ()
    status: tuple[int, ...] = (200,)


def _qido_keys(*levels: Level) -> tuple[str, ...]:
    return tuple(a.keyword for a in INDEXED if a.level in levels)


_NPI = "(?:" + "|".join(re.escape(name) for name in sorted(NPI_RESOURCES)) + ")"
_I = "/studies/{}/series/{}/instances/{}"
# (method, regex on the path with every placeholder written "{}", what it is), first match wins.
TRANSACTIONS: tuple[tuple[str, str, Transaction], ...] = (
    ("OPTIONS", r"/", Transaction("Retrieve Capabilities (PS3.18 §8.9)",
                                  response=(WADL_MEDIA_TYPE, "application/json"))),
    ("POST", r"/studies(/\{\})?", Transaction(
        "STOW-RS Store Instances (PS3.18 §10.5)",
        request=(DICOM, "application/dicom", 'multipart/related; type="application/dicom+json"',
                 'multipart/related; type="application/dicom+xml"'),
        response=(DICOM_JSON, "application/dicom+xml"), status=(200, 202, 409))),
    ("GET", r"/studies/\{\}(/series/\{\}(/instances/\{\})?)?", Transaction(
        "WADO-RS Retrieve Study, Series or Instance (PS3.18 §10.4)",
        response=(DICOM, "application/dicom", "application/zip"))),
    ("GET", r".*/metadata", Transaction("WADO-RS Retrieve Metadata (PS3.18 §10.4)",
                                        response=(DICOM_JSON, DICOM_XML), status=(200, 304))),
    ("GET", r".*/(bulkdata(/\{\})?|pixeldata|frames/\{\})", Transaction(
        "WADO-RS Retrieve Bulk Data, Pixel Data or Frames (PS3.18 §10.4)",
        response=(OCTETS, "application/octet-stream", "image/jpeg", "image/jls", "image/jp2", "image/jphc"),
        status=(200, 206))),
    ("GET", r".*/rendered", Transaction("WADO-RS Retrieve Rendered (PS3.18 §10.4, §8.3.5)", query=RENDER,
                                        response=("image/jpeg", "image/png", "image/gif", "application/pdf",
                                                  "text/html", "text/plain"))),
    ("GET", r".*/thumbnail", Transaction("WADO-RS Retrieve Thumbnail (PS3.18 §10.4)", query=("viewport",),
                                         response=("image/jpeg",), status=(200, 304))),
    ("GET", r"/studies", Transaction("QIDO-RS Search for Studies (PS3.18 §10.6)",
                                     query=SEARCH + _qido_keys(Level.STUDY), response=(DICOM_JSON, DICOM_XML))),
    ("GET", r"(/studies/\{\})?/series", Transaction(
        "QIDO-RS Search for Series (PS3.18 §10.6)", query=SEARCH + _qido_keys(Level.STUDY, Level.SERIES),
        response=(DICOM_JSON, DICOM_XML))),
    ("GET", r"(/studies/\{\}(/series/\{\})?)?/instances", Transaction(
        "QIDO-RS Search for Instances (PS3.18 §10.6)", query=SEARCH + _qido_keys(*Level),
        response=(DICOM_JSON, DICOM_XML))),
    ("DELETE", r"/studies/\{\}(/series/\{\}(/instances/\{\})?)?", Transaction(
        "Delete (not in PS3.18)", status=(204,))),
    ("POST", r"/workitems", Transaction("UPS-RS Create Workitem (PS3.18 §11.4)", query=("workitem",),
                                        request=(DICOM_JSON,), status=(201,))),
    ("GET", r"/workitems", Transaction("UPS-RS Search for Workitems (PS3.18 §11.9)", query=SEARCH,
                                       response=(DICOM_JSON, DICOM_XML))),
    ("GET", r"/workitems/\{\}", Transaction("UPS-RS Retrieve Workitem (PS3.18 §11.5)",
                                            response=(DICOM_JSON, DICOM_XML))),
    ("POST", r"/workitems/\{\}", Transaction("UPS-RS Update Workitem (PS3.18 §11.6)",
                                             query=("transaction-uid",), request=(DICOM_JSON,))),
    ("PUT", r"/workitems/\{\}/state", Transaction("UPS-RS Change Workitem State (PS3.18 §11.7)",
                                                  request=(DICOM_JSON,))),
    ("POST", r"/workitems/\{\}/cancelrequest", Transaction(
        "UPS-RS Request Cancellation (PS3.18 §11.8)", request=(DICOM_JSON,), status=(202,))),
    ("POST", r"/workitems/\{\}/subscribers/\{\}", Transaction(
        "UPS-RS Subscribe (PS3.18 §11.10)", query=("deletionlock", "filter"), status=(201,))),
    ("DELETE", r"/workitems/\{\}/subscribers/\{\}", Transaction("UPS-RS Unsubscribe (PS3.18 §11.11)")),
    ("POST", r"/workitems/\{\}/subscribers/\{\}/suspend", Transaction(
        "UPS-RS Suspend Global Subscription (PS3.18 §11.12)")),
    ("GET", r"/subscribers/\{\}", Transaction(
        "UPS-RS Open Notification Channel, WebSocket (PS3.18 §11.13)", status=(101,))),
    ("POST", rf"/{_NPI}(/\{{\}})?", Transaction(
        "NPI Store (PS3.18 §12.5)", request=(DICOM, "application/dicom"),
        response=(DICOM_JSON, "application/dicom+xml"), status=(200, 202, 409))),
    ("GET", rf"/{_NPI}/\{{\}}", Transaction(
        "NPI Retrieve (PS3.18 §12.4)", response=("application/dicom", DICOM, DICOM_JSON, "application/dicom+xml"))),
    ("GET", rf"/{_NPI}", Transaction("NPI Search (PS3.18 §12.6)", query=npi.SEARCH_PARAMETERS,
                                     response=(DICOM_JSON, DICOM_XML))),
)
_WADO_URI = Transaction(
    "WADO-URI Retrieve DICOM or Rendered Instance (PS3.18 §9)",
    query=("requestType", "studyUID", "seriesUID", "objectUID", "contentType", "charset", "anonymize",
           "annotation", "rows", "columns", "region", "windowCenter", "windowWidth", "frameNumber", "imageQuality",
           "presentationUID", "presentationSeriesUID", "transferSyntax"),
    response=("application/dicom", "image/jpeg", "image/png", "image/gif", "text/html", "text/plain"))


def describe(method: str, shape: str, wado_uri_path: str | None = None) -> Transaction | None:
    """The transaction behind ``method`` on a path ``shape`` (placeholders written ``{}``), or None."""
    if method == "GET" and wado_uri_path and shape == wado_uri_path:
        return _WADO_URI
    for wanted, pattern, transaction in TRANSACTIONS:
        if wanted == method and re.fullmatch(pattern, shape):
            return transaction
    return None


@dataclass
class _Node:
    """One resource of the document: its full path, its template parameters and its methods."""

    path: str                              # full path, placeholders written {name}
    shape: str                             # the same with every placeholder written {}
    params: list[tuple[str, str]]          # (name, converter) of the placeholders still in the path
    methods: list[str]
    handler_names: dict[str, str]


def resource_nodes(router: Router, scope: tuple[Any, dict[str, str]] | None = None) -> list[_Node]:
    """The router's resources (all, or those at and under a matched entry with its values put in)."""
    base, values = ("", {}) if scope is None else (scope[0].template, scope[1])
    nodes = []
    for entry in router.entries:
        if scope is not None and entry.template != base and not entry.template.startswith(base + "/"):
            continue
        names = {method: handler.__name__ for method, handler in entry.methods.items()}
        for path, shape, params in _expand(entry.template, values):
            nodes.append(_Node(path, shape, params, router.allowed(entry), names))
    return nodes


def _expand(template: str, values: dict[str, str]) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(path, shape, open placeholders) of a template: request values put in the path, each NPI
    resource name put in both (one result per name); other placeholders stay ``{name}`` / ``{}``."""
    results: list[tuple[str, str, list[tuple[str, str]]]] = [("", "", [])]
    pos = 0
    for m in _PLACEHOLDER.finditer(template):
        literal = template[pos:m.start()]
        name, conv = m.group(1), m.group(2) or "uid"
        if conv == "npi":
            names = [values[name]] if name in values else sorted(NPI_RESOURCES)
            results = [(p + literal + n, s + literal + n, ps) for p, s, ps in results for n in names]
        elif name in values:
            results = [(p + literal + values[name], s + literal + "{}", ps) for p, s, ps in results]
        else:
            results = [(p + literal + "{" + name + "}", s + literal + "{}", ps + [(name, conv)])
                       for p, s, ps in results]
        pos = m.end()
    rest = template[pos:]
    return [(p + rest, s + rest, ps) for p, s, ps in results]


def capabilities_tree(req: Request, nodes: list[_Node]) -> dict[str, Any]:
    """The WADL tree as plain data: each resource nested under the longest other resource path
    that is a prefix of its own, with the rest of its path relative to that parent."""
    wado_uri = req.ctx.settings.wado_uri_path
    by_path: dict[str, dict[str, Any]] = {}
    roots: list[dict[str, Any]] = []
    for node in sorted(nodes, key=lambda n: (n.path.count("/"), n.path)):
        parent = None
        for other in sorted(by_path, key=len, reverse=True):
            if other != "/" and node.path.startswith(other + "/"):
                parent = other
                break
        relative = node.path[len(parent) + 1:] if parent else node.path.lstrip("/")
        item: dict[str, Any] = {
            "path": relative,
            "params": [{"name": name, "style": "template", "type": "xsd:string", "required": True,
                        "doc": _param_doc(conv)} for name, conv in node.params if "{" + name + "}" in relative],
            "methods": [_method(req, name, node, wado_uri) for name in node.methods],
            "resources": [],
        }
        by_path[node.path] = item
        (by_path[parent]["resources"] if parent else roots).append(item)
    return {"title": "dicomweb_wsgi: DICOMweb origin server (PS3.18)", "base": req.base_url + "/",
            "resources": roots}


def _param_doc(converter: str) -> str:
    return {"uid": "a UID: 1-64 digits and dots", "frames": "1-based frame numbers separated by commas",
            "aetitle": "an AE title (1-16 characters)",
            "bulkpath": "tag[/item/tag...]: the path of a bulk data value, as in its BulkDataURI"}.get(converter, "")


def _method(req: Request, name: str, node: _Node, wado_uri: str) -> dict[str, Any]:
    described = "GET" if name == "HEAD" else name
    shape = "/" if name == "OPTIONS" else node.shape
    transaction = describe(described, shape, wado_uri)
    query: tuple[str, ...] = ("accept",)
    if transaction is not None:
        query += transaction.query
    npi_name = node.shape[1:]
    if npi_name in NPI_RESOURCES and described == "GET":
        query += npi.COMMON_MATCHING + npi.MODELS[npi_name].matching
    title = transaction.title if transaction else "(not described)"
    handler = node.handler_names.get(described, "retrieve_capabilities")
    return {
        "name": name,
        "doc": f"{'HEAD of ' if name == 'HEAD' else ''}{title}: {handler}",
        "query": list(query),
        "request": list(transaction.request) if transaction else [],
        "response": list(transaction.response) if transaction and name != "HEAD" else [],
        "status": list(transaction.status) if transaction else [200],
    }


def wadl_document(tree: dict[str, Any]) -> bytes:
    """The tree as a WADL document (W3C Member Submission 2009, namespace ``WADL_NAMESPACE``)."""
    # Plain names with xmlns set as attributes: ElementTree's namespace options either change a
    # process-wide prefix table or refuse unqualified attributes, which WADL uses everywhere.
    app = ET.Element("application", {"xmlns": WADL_NAMESPACE, "xmlns:xsd": "http://www.w3.org/2001/XMLSchema"})
    ET.SubElement(app, "doc", title=tree["title"]).text = (
        "Generated from the route table; every resource also answers OPTIONS (Retrieve Capabilities).")
    resources = ET.SubElement(app, "resources", base=tree["base"])

    def add(parent: ET.Element, item: dict[str, Any]) -> None:
        res = ET.SubElement(parent, "resource", path=item["path"])
        for p in item["params"]:
            param = ET.SubElement(res, "param", name=p["name"], style="template", type=p["type"],
                                  required="true")
            if p["doc"]:
                ET.SubElement(param, "doc").text = p["doc"]
        for m in item["methods"]:
            method = ET.SubElement(res, "method", name=m["name"])
            ET.SubElement(method, "doc").text = m["doc"]
            request = ET.SubElement(method, "request")
            for q in m["query"]:
                ET.SubElement(request, "param", name=q, style="query", type="xsd:string")
            for media_type in m["request"]:
                ET.SubElement(request, "representation", mediaType=media_type)
            response = ET.SubElement(method, "response", status=" ".join(map(str, m["status"])))
            for media_type in m["response"]:
                ET.SubElement(response, "representation", mediaType=media_type)
        for child in item["resources"]:
            add(res, child)

    for item in tree["resources"]:
        add(resources, item)
    return ET.tostring(app, encoding="utf-8", xml_declaration=True)


def retrieve_capabilities(req: Request, **_path_values: Any) -> Response:
    """The WADL (or JSON) description of the resource ``req.path`` names and those below it; for
    the service root, of the whole server. Carries ``Allow`` for the resource itself."""
    router: Router = req.ctx.router
    selection = negotiate(req.accept, OFFERS)
    if selection is None:
        raise NotAcceptable(f"capabilities are {WADL_MEDIA_TYPE} (default), application/xml, text/xml "
                            "or application/json")
    found = router.match(req.path)
    if found is None:
        raise NotFound(f"no resource at {req.path[:200]}")
    entry, values = found
    for name, value in values.items():
        entry.converters[name](value)  # checked as for a GET: a bad UID is a 400, an unknown NPI name a 404
    scope = None if entry.template == "/" else (entry, values)
    tree = capabilities_tree(req, resource_nodes(router, scope))
    media_type = selection.offer.media_type
    if media_type == "application/json":
        resp = Response(200, json.dumps(tree, indent=1).encode("utf-8"), "application/json")
    else:
        resp = Response(200, wadl_document(tree), media_type)
    resp.add_header("Allow", ", ".join(supported_methods(router.allowed(entry), req.ctx.settings.read_only)))
    return resp
