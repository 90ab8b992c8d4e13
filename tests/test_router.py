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
