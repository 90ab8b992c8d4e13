"""ROUTES: the only place that spells URLs, in PS3.18 order.

Placeholders name the handler's keyword arguments; the converter after the colon validates the
segment (``uid``: 1-64 digits and dots, else 400).
"""
from __future__ import annotations

from .config import Settings
from .router import Route
from .transactions import stow, wado

STUDY = "/studies/{study_uid:uid}"
SERIES = STUDY + "/series/{series_uid:uid}"
INSTANCE = SERIES + "/instances/{sop_uid:uid}"


def build_routes(settings: Settings) -> list[Route]:
    """The route table. ``settings`` only moves the WADO-URI path."""
    return [
        # Studies service: STOW-RS (PS3.18 §10.5)
        Route("POST", "/studies", stow.store_instances),
        Route("POST", STUDY, stow.store_instances),
        # Studies service: WADO-RS (PS3.18 §10.4)
        Route("GET", STUDY, wado.retrieve_study),
        Route("GET", SERIES, wado.retrieve_series),
        Route("GET", INSTANCE, wado.retrieve_instance),
    ]
