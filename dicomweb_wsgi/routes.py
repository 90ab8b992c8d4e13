"""ROUTES: the only place that spells URLs, in PS3.18 order.

Placeholders name the handler's keyword arguments; the converter after the colon validates the
segment (``uid``: 1-64 digits and dots, else 400).
"""
from __future__ import annotations

from .config import Settings
from .router import Route
from .transactions import (bulkdata, capabilities, delete, metadata, npi, pixeldata, qido, rendered, stow, ups, wado,
                           wado_uri)

STUDY = "/studies/{study_uid:uid}"
SERIES = STUDY + "/series/{series_uid:uid}"
INSTANCE = SERIES + "/instances/{sop_uid:uid}"


def build_routes(settings: Settings) -> list[Route]:
    """The route table. ``settings`` only moves the WADO-URI path."""
    return [
        # -- Capabilities (PS3.18 §8.9) --
        # OPTIONS on any other resource is answered by this handler too (app.py).
        Route("OPTIONS", "/", capabilities.retrieve_capabilities),
        # -- Studies service: STOW-RS (PS3.18 §10.5) --
        Route("POST", "/studies", stow.store_instances),
        Route("POST", STUDY, stow.store_instances),
        # -- Studies service: WADO-RS (PS3.18 §10.4) --
        Route("GET", STUDY, wado.retrieve_study),
        Route("GET", SERIES, wado.retrieve_series),
        Route("GET", INSTANCE, wado.retrieve_instance),
        # -- Studies service: WADO-RS metadata, bulk data, frames --
        Route("GET", STUDY + "/metadata", metadata.retrieve_study_metadata),
        Route("GET", SERIES + "/metadata", metadata.retrieve_series_metadata),
        Route("GET", INSTANCE + "/metadata", metadata.retrieve_instance_metadata),
        Route("GET", STUDY + "/bulkdata", bulkdata.retrieve_study_bulkdata),
        Route("GET", SERIES + "/bulkdata", bulkdata.retrieve_series_bulkdata),
        Route("GET", INSTANCE + "/bulkdata", bulkdata.retrieve_instance_bulkdata),
        Route("GET", INSTANCE + "/bulkdata/{path:bulkpath}", bulkdata.retrieve_bulkdata),
        Route("GET", STUDY + "/pixeldata", pixeldata.retrieve_study_pixeldata),
        Route("GET", SERIES + "/pixeldata", pixeldata.retrieve_series_pixeldata),
        Route("GET", INSTANCE + "/pixeldata", pixeldata.retrieve_instance_pixeldata),
        Route("GET", INSTANCE + "/frames/{frames:frames}", pixeldata.retrieve_instance_frames),
        # -- Studies service: WADO-RS rendered and thumbnails --
        Route("GET", STUDY + "/rendered", rendered.retrieve_study_rendered),
        Route("GET", SERIES + "/rendered", rendered.retrieve_series_rendered),
        Route("GET", INSTANCE + "/rendered", rendered.retrieve_instance_rendered),
        Route("GET", INSTANCE + "/frames/{frames:frames}/rendered", rendered.retrieve_instance_frames_rendered),
        Route("GET", STUDY + "/thumbnail", rendered.retrieve_study_thumbnail),
        Route("GET", SERIES + "/thumbnail", rendered.retrieve_series_thumbnail),
        Route("GET", INSTANCE + "/thumbnail", rendered.retrieve_instance_thumbnail),
        Route("GET", INSTANCE + "/frames/{frames:frames}/thumbnail", rendered.retrieve_instance_frames_thumbnail),
        # -- Studies service: QIDO-RS (PS3.18 §10.6) --
        Route("GET", "/studies", qido.search_for_studies),
        Route("GET", "/series", qido.search_for_series),
        Route("GET", "/instances", qido.search_for_instances),
        Route("GET", STUDY + "/series", qido.search_for_series),
        Route("GET", STUDY + "/instances", qido.search_for_instances),
        Route("GET", SERIES + "/instances", qido.search_for_instances),
        # -- URI service: WADO-URI (PS3.18 §9) --
        Route("GET", settings.wado_uri_path, wado_uri.retrieve_wado_uri),
        # -- Worklist service: UPS-RS (PS3.18 §11) --
        Route("POST", "/workitems", ups.create_workitem),
        Route("GET", "/workitems", ups.search_for_workitems),
        Route("GET", "/workitems/{workitem_uid:uid}", ups.retrieve_workitem),
        Route("POST", "/workitems/{workitem_uid:uid}", ups.update_workitem),
        Route("PUT", "/workitems/{workitem_uid:uid}/state", ups.change_workitem_state),
        Route("POST", "/workitems/{workitem_uid:uid}/cancelrequest", ups.request_workitem_cancellation),
        Route("POST", "/workitems/{workitem_uid:uid}/subscribers/{aetitle:aetitle}", ups.subscribe),
        Route("DELETE", "/workitems/{workitem_uid:uid}/subscribers/{aetitle:aetitle}", ups.unsubscribe),
        Route("POST", "/workitems/{workitem_uid:uid}/subscribers/{aetitle:aetitle}/suspend",
              ups.suspend_global_subscription),
        # -- Non-Patient Instance service (PS3.18 §12) --
        # After every other one-segment path: "/{resource:npi}" matches any (404 for unknown names).
        Route("POST", "/{resource:npi}", npi.store_npi_instances),
        Route("GET", "/{resource:npi}", npi.search_npi_instances),
        Route("POST", "/{resource:npi}/{sop_uid:uid}", npi.store_npi_instances),
        Route("GET", "/{resource:npi}/{sop_uid:uid}", npi.retrieve_npi_instance),
        # -- Non-standard: DELETE --
        *([Route("DELETE", STUDY, delete.delete_study),
           Route("DELETE", SERIES, delete.delete_series),
           Route("DELETE", INSTANCE, delete.delete_instance)] if settings.allow_delete else []),
    ]
