"""The router on its own: converters, ordering, 404/405."""
from __future__ import annotations

import pytest

from dicomweb_wsgi.errors import BadRequest, MethodNotAllowed, NotFound
from dicomweb_wsgi.router import Route, Router


def _h(name):
    def handler(req, **kwargs):
        return name, kwargs
    return handler


class _Req:
    def __init__(self, method, path):
        self.method, self.path = method, path


ROUTER = Router([
    Route("GET", "/studies", _h("search")),
    Route("GET", "/studies/{study_uid:uid}", _h("study")),
    Route("GET", "/studies/{study_uid:uid}/series/{series_uid:uid}/instances/{sop_uid:uid}/frames/{frames:frames}",
          _h("frames")),
    Route("GET", "/{resource:npi}", _h("npi")),
    Route("POST", "/{resource:npi}", _h("npi-store")),
])


@pytest.mark.parametrize("path,name,kwargs", [
    ("/studies", "search", {}),
    ("/studies/", "search", {}),
    ("/studies/1.2.3", "study", {"study_uid": "1.2.3"}),
    ("/studies/1.2/series/3.4/instances/5.6/frames/1,3,2", "frames",
     {"study_uid": "1.2", "series_uid": "3.4", "sop_uid": "5.6", "frames": [1, 3, 2]}),
    ("/color-palettes", "npi", {"resource": "color-palettes"}),
])
def test_router_resolves_to_handler_with_converted_values(path, name, kwargs):
    handler, values = ROUTER.resolve(_Req("GET", path))
    assert handler(None, **values) == (name, kwargs)


def test_router_head_uses_get_and_405_lists_allowed():
    handler, _ = ROUTER.resolve(_Req("HEAD", "/studies"))
    assert handler(None) == ("search", {})
    with pytest.raises(MethodNotAllowed) as info:
        ROUTER.resolve(_Req("DELETE", "/color-palettes"))
    assert info.value.headers["Allow"] == "GET, HEAD, OPTIONS, POST"


@pytest.mark.parametrize("path,error", [("/studies/1.2.x", BadRequest), ("/studies/1/series/2/instances/3/frames/0",
                                        BadRequest), ("/nothing-here", NotFound), ("/studies/1/series", NotFound),
                                       ("/studies/../x", BadRequest)])
def test_router_rejects_bad_values_and_unknown_paths(path, error):
    with pytest.raises(error):
        ROUTER.resolve(_Req("GET", path))


def test_router_first_match_in_table_order_wins_across_placeholder_templates():
    router = Router([Route("GET", "/{resource:npi}", _h("npi")), Route("GET", "/hanging-protocols", _h("literal"))])
    handler, values = router.resolve(_Req("GET", "/hanging-protocols"))
    assert handler(None, **values)[0] == "npi"
    router = Router([Route("GET", "/hanging-protocols", _h("literal")), Route("GET", "/{resource:npi}", _h("npi"))])
    handler, values = router.resolve(_Req("GET", "/hanging-protocols"))
    assert handler(None, **values)[0] == "literal"


def test_router_duplicate_route_is_refused():
    with pytest.raises(ValueError):
        Router([Route("GET", "/a", _h("a")), Route("GET", "/a", _h("b"))])


def _linear_match(router, path):
    """The reference: every template in table order, the first whose regex matches."""
    if len(path) > 1 and path.endswith("/"):
        path = path.rstrip("/") or "/"
    for entry in router.entries:
        m = entry.regex.match(path)
        if m:
            return entry, m.groupdict()
    return None


def _paths():
    """Paths of every shape the real table knows, plus near misses (extra, missing, empty segments)."""
    uids = ["1.2.3", "2.25.1", "x"]
    tails = ["", "/metadata", "/bulkdata", "/bulkdata/7FE00010", "/bulkdata/00091001/2/7FE00010", "/pixeldata",
             "/rendered", "/thumbnail", "/frames/1", "/frames/1,2/rendered", "/frames/3/thumbnail", "/instances",
             "/series", "/nothing", "/frames", "/frames/1/x/y",
             "/bulkdata/00091001/2/00091001/3/00091001/4/7FE00010"]  # more slashes than any template
    out = ["/", "//", "/studies", "/series", "/instances", "/wado", "/workitems", "/color-palettes",
           "/hanging-protocols/1.2", "/hanging-protocols/1.2/x", "/unknown", "/unknown/1/2/3/4/5/6/7/8/9/10/11/12",
           "/workitems/1.2/subscribers/AE1/suspend", "/workitems/1.2/state", "/workitems/1.2/cancelrequest",
           "/workitems/1.2/subscribers/AE1", "/studies//series", "/studies/1.2/", "/studies/1.2//", "studies", ""]
    for study in uids:
        out.append(f"/studies/{study}")
        for tail in tails:
            out += [f"/studies/{study}{tail}", f"/studies/{study}/series/{study}{tail}",
                    f"/studies/{study}/series/{study}/instances/{study}{tail}",
                    f"/studies/{study}/series/{study}/instances/{study}{tail}/"]
    return out


@pytest.mark.parametrize("allow_delete", [False, True])
def test_router_candidate_index_matches_a_linear_scan_of_the_real_table(tmp_path, allow_delete):
    from dicomweb_wsgi.config import load_settings
    from dicomweb_wsgi.routes import build_routes

    router = Router(build_routes(load_settings({"dicomweb.data_dir": str(tmp_path),
                                                "dicomweb.allow_delete": str(allow_delete).lower()})))
    matched = 0
    for path in _paths():
        found, expected = router.match(path), _linear_match(router, path)
        assert (found[0].template, found[1]) == (expected[0].template, expected[1]) if expected else found is None, path
        matched += expected is not None
    assert matched > 100  # most of the generated paths name a resource


def test_router_candidate_index_keeps_table_order_for_spanning_placeholders():
    router = Router([Route("GET", "/a/{p:bulkpath}", _h("spanning")), Route("GET", "/a/{x:uid}/b", _h("fixed")),
                     Route("GET", "/{resource:npi}/{x:uid}/b", _h("npi"))])
    assert router.match("/a/00100010/b")[0].template == "/a/{p:bulkpath}"
    assert router.match("/a/1.2/b/3/c/4")[0].template == "/a/{p:bulkpath}"
    assert router.match("/color-palettes/1.2/b")[0].template == "/{resource:npi}/{x:uid}/b"
    assert router.match("/b/1.2/b") is not None  # the npi converter decides later (404), not the shape
    assert router.match("/a") is None
