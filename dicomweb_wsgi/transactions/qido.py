"""QIDO-RS: Search for studies, series and instances (PS3.18 §10.6).

Supports all six search resources: ``/studies``, ``/series``, ``/instances``,
``/studies/{study}/series``, ``/studies/{study}/instances`` and
``/studies/{study}/series/{series}/instances``. Matching keys, ``includefield``, ``fuzzymatching``,
``limit`` and ``offset`` are read by ``query.py`` (which documents the matching rules); any
attribute held at the query level or above can be a matching key or an ``includefield``, and keys
of a lower level select the entities having a child that matches (``/studies?Modality=MR``).

Results carry the required return keys of PS3.18 Tables 10.6.3-3/-4/-5 (required ones even when
empty), every match key and includefield attribute at the query level or above, and, for the
relational resources, the default attributes of the parent levels the path does not fix.
SpecificCharacterSet is always ``ISO_IR 192``: the response is UTF-8 whatever the stored character
set was (values were decoded at store time). ``includefield=all`` returns every attribute held at
the query level; for instances that is the stored instance minus bulk data (BulkDataURI values)
and the study and series attributes.

Media types: ``application/dicom+json`` (default; ``application/json`` is accepted as an alias) and
``multipart/related; type="application/dicom+xml"`` (one PS3.19 document per result; a plain
``application/dicom+xml`` Accept gets the same multipart answer); anything else is a 406.

Status: 200 with the results; an empty result is 200 ``[]`` in JSON, and 204 for XML (a multipart
body needs at least one part, RFC 2046 §5.1.1); 400 for malformed parameter values (the reason
names the parameter); 406 as above; 413 when ``qido_max_matches`` is set and the search matches
more results than that (the client should narrow it). When more results match than the page holds,
the response carries ``Warning: 299 <host> "There are N additional results that can be requested"``.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import replace
from typing import Any

from ..dicomjson import BASE_PLACEHOLDER, dumps, json_to_xml, loads
from ..errors import NotAcceptable, PayloadTooLarge
from ..http import Request, Response, more_results_warning
from ..mediatypes import Offer, negotiate
from ..model import EVERY_LEVEL_TAGS, INDEXED, Level
from ..multipart import multipart_content_type, new_boundary, write_multipart
from ..query import RESULT_ONLY, attribute_level, attribute_vr, parse_search
from ..storage.base import IndexStore, SearchQuery, SearchResult, SearchRow

OFFERS = (
    Offer("application/dicom+json", multipart=False),
    Offer("application/json", multipart=False),
    Offer("application/dicom+xml", multipart=True),
    Offer("application/dicom+xml", multipart=False),
)
# PS3.18 Table 10.6.3-3 (study), -4 (series), -5 (instance): returned even when empty ...
STUDY_REQUIRED = ("00080020", "00080030", "00080050", "00080090", "00100010", "00100020", "00100030",
                  "00100040", "0020000D", "00200010")
SERIES_REQUIRED = ("00080060", "0020000E", "00200011")
INSTANCE_REQUIRED = ("00080016", "00080018", "00200013")
# ... and returned when the entity has them (TimezoneOffsetFromUTC: the instances' value, model.EVERY_LEVEL_TAGS).
CONDITIONAL = {"study": ("00080201",), "series": ("00080201", "0008103E", "00400244", "00400245", "00400275"),
               "instance": ("00080201", "00280008", "00280010", "00280011", "00280100")}
INSTANCE_ATTRIBUTES = {a.tag: a for a in INDEXED if a.level is Level.INSTANCE}
CHARACTER_SET = {"vr": "CS", "Value": ["ISO_IR 192"]}
ONLINE = {"vr": "CS", "Value": ["ONLINE"]}
_RANK = {"study": 0, "series": 1, "instance": 2}
_INTEGER = re.compile(r"[+-]?\d+")


def search_for_studies(req: Request) -> Response:
    """``GET /studies``: matching studies."""
    return _search(req, "study")


def search_for_series(req: Request, study_uid: str | None = None) -> Response:
    """``GET /series`` and ``GET /studies/{study}/series``: matching series."""
    return _search(req, "series", study_uid=study_uid)


def search_for_instances(req: Request, study_uid: str | None = None, series_uid: str | None = None) -> Response:
    """``GET /instances``, ``/studies/{study}/instances`` and ``/studies/{study}/series/{series}/instances``."""
    return _search(req, "instance", study_uid=study_uid, series_uid=series_uid)


def _search(req: Request, level: str, study_uid: str | None = None, series_uid: str | None = None) -> Response:
    selection = negotiate(req.accept, OFFERS)
    if selection is None:
        raise NotAcceptable('search results are application/dicom+json or multipart/related; '
                            'type="application/dicom+xml"')
    settings = req.ctx.settings
    query = parse_search(req.query, level, study_uid=study_uid, series_uid=series_uid,
                         default_limit=settings.qido_default_limit, max_limit=settings.qido_max_limit)
    index = req.ctx.archive.index
    result = index.search(query)
    if settings.qido_max_matches > 0:
        _check_match_count(index, query, result, settings.qido_max_matches)
    results = ResultBuilder(query, req.base_url).build(result.rows)
    headers = []
    if result.remaining > 0:
        # PS3.18 §8.3.4.4: tell the client that a further page exists.
        headers.append(("Warning", more_results_warning(req.base_url, result.remaining)))
    if selection.offer.media_type == "application/dicom+xml":
        if not results:
            return Response(204, headers=headers)
        boundary = new_boundary()
        parts = (({"Content-Type": "application/dicom+xml"}, [json_to_xml(obj)]) for obj in results)
        return Response(body=write_multipart(parts, boundary), headers=headers,
                        content_type=multipart_content_type("application/dicom+xml", boundary))
    return Response(body=dumps(results).encode("utf-8"), content_type=selection.offer.media_type, headers=headers)


def _check_match_count(index: IndexStore, query: SearchQuery, result: SearchResult, most: int) -> None:
    """413 when the search matches more than ``most`` results (setting ``qido_max_matches``).

    A page and its remaining count give the total; an empty page past the end says nothing, so one
    probe then asks for the match after the first ``most``."""
    if result.rows:
        total = query.offset + len(result.rows) + result.remaining
    elif query.offset > most:
        probe = index.search(replace(query, limit=1, offset=most))
        total = most + len(probe.rows) + probe.remaining
    else:
        return
    if total > most:
        # PS3.18 lists 413 among the search statuses: too broad a search (dcm4chee's Query Max Number of Results).
        raise PayloadTooLarge(f"the query matches {total} results, more than the {most} this server answers "
                              "in one search; narrow it with more matching keys (e.g. PatientID, StudyDate, "
                              "ModalitiesInStudy)")


class ResultBuilder:
    """Builds each result's DICOM JSON object from an index row (parsing each study/series once)."""

    def __init__(self, query: SearchQuery, base_url: str) -> None:
        self.query = query
        self.base = base_url
        # The stored JSON names the public base URL by a placeholder inside JSON strings.
        self.base_in_json = json.dumps(base_url)[1:-1]
        self.rank = _RANK[query.level]
        # Each extra attribute with the level whose document holds it (RESULT_ONLY ones are always there).
        self.extra = [(tag, attribute_level(tag, query.level))
                      for tag in sorted((query.include | query.return_tags) - RESULT_ONLY)]
        self._documents: dict[tuple[str, str], dict[str, Any]] = {}

    def build(self, rows: list[SearchRow]) -> list[dict[str, Any]]:
        return [self.result(row) for row in rows]

    def _load(self, text: str) -> dict[str, Any]:
        if BASE_PLACEHOLDER in text:
            text = text.replace(BASE_PLACEHOLDER, self.base_in_json)
        return loads(text)

    def documents(self, row: SearchRow) -> dict[str, dict[str, Any]]:
        """Every attribute the row holds, per level, derived ones (counts, ModalitiesInStudy) included.

        A study's and a series' documents are built once per search: every row of one study (or
        series) comes from the same read, so it carries the same stored JSON and counts."""
        docs = {"study": self._study_document(row)}
        if row.series_uid is not None and row.series_json is not None:
            docs["series"] = self._series_document(row)
        if row.sop_uid is not None:
            docs["instance"] = self._instance_document(row)
        return docs

    def _study_document(self, row: SearchRow) -> dict[str, Any]:
        study = self._documents.get(("study", row.study_uid))
        if study is None:
            study = self._documents[("study", row.study_uid)] = self._load(row.study_json)
            study["00080061"] = {"vr": "CS", "Value": row.modalities.split("\\")} if row.modalities else {"vr": "CS"}
            study["00201206"] = {"vr": "IS", "Value": [row.num_series]}
            study["00201208"] = {"vr": "IS", "Value": [row.num_study_instances]}
        return study

    def _series_document(self, row: SearchRow) -> dict[str, Any]:
        assert row.series_uid is not None and row.series_json is not None
        series = self._documents.get(("series", row.series_uid))
        if series is None:
            series = self._documents[("series", row.series_uid)] = self._load(row.series_json)
            series["00201209"] = {"vr": "IS", "Value": [row.num_series_instances]}
        return series

    def _instance_document(self, row: SearchRow) -> dict[str, Any]:
        if row.metadata_json is not None:
            meta = self._load(row.metadata_json)
            return {tag: element for tag, element in meta.items()
                    if attribute_level(tag, "instance") == "instance" and "BulkDataURI" not in element}
        doc = {"00080018": {"vr": "UI", "Value": [row.sop_uid]}}
        for tag, attr in INSTANCE_ATTRIBUTES.items():
            text = row.instance_columns.get(attr.column)
            if text not in (None, "") and tag != "00080018":
                doc[tag] = _column_element(attr.vr, text)
        return doc

    def result(self, row: SearchRow) -> dict[str, Any]:
        docs = self.documents(row)
        out: dict[str, Any] = {}
        q = self.query
        # Parent levels' defaults for the relational resources (those the path does not fix).
        if self.rank >= 1 and q.study_uid is None:
            out.update(self._defaults("study", docs["study"], row))
        if self.rank == 2 and q.series_uid is None:
            out.update(self._defaults("series", docs["series"], row))
        out.update(self._defaults(q.level, docs[q.level], row))
        if self.rank >= 1:
            out["0020000D"] = {"vr": "UI", "Value": [row.study_uid]}
        if self.rank == 2:
            out["0020000E"] = {"vr": "UI", "Value": [row.series_uid]}
        if q.include_all:
            out.update(docs[q.level])
        for tag, level in self.extra:
            _copy(docs[level], tag, out)
        out["00080005"] = CHARACTER_SET
        return dict(sorted(out.items()))

    def _defaults(self, level: str, doc: dict[str, Any], row: SearchRow) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if level == "study":
            for tag in STUDY_REQUIRED:
                _copy(doc, tag, out)
            for tag in ("00080061", "00201206", "00201208"):
                out[tag] = doc[tag]
            out["00080056"] = ONLINE
            out["00081190"] = {"vr": "UR", "Value": [f"{self.base}/studies/{row.study_uid}"]}
        elif level == "series":
            for tag in SERIES_REQUIRED:
                _copy(doc, tag, out)
            out["00201209"] = doc["00201209"]
            out["00081190"] = {"vr": "UR", "Value": [
                f"{self.base}/studies/{row.study_uid}/series/{row.series_uid}"]}
        else:
            for tag in INSTANCE_REQUIRED:
                _copy(doc, tag, out)
            out["00080056"] = ONLINE
            out["00081190"] = {"vr": "UR", "Value": [
                f"{self.base}/studies/{row.study_uid}/series/{row.series_uid}/instances/{row.sop_uid}"]}
        # A parent level's defaults leave out what the result's own level holds a value of.
        own = level == self.query.level
        for tag in CONDITIONAL[level]:
            if tag in doc and (own or tag not in EVERY_LEVEL_TAGS):
                out[tag] = doc[tag]
        return out


def _copy(doc: dict[str, Any], tag: str, out: dict[str, Any]) -> None:
    """Copy an attribute into a result: empty when the entity lacks it (a known attribute is always
    returned, PS3.4 C.2.2.2.3), with its Private Creator when it is a private data element."""
    element = doc.get(tag)
    private, creator = _tag_kind(tag)
    if element is None:
        if not private:
            out[tag] = {"vr": attribute_vr(tag)}
        return
    out[tag] = element
    if creator is not None and creator in doc:
        out[creator] = doc[creator]


@functools.lru_cache(maxsize=4096)
def _tag_kind(tag: str) -> tuple[bool, str | None]:
    """Whether a tag is private, and the tag of its Private Creator (None for a public tag or a creator)."""
    number = int(tag, 16)
    private = bool(number >> 16 & 1)
    if private and number & 0xFFFF >= 0x1000:
        return True, f"{number >> 16:04X}00{number >> 8 & 0xFF:02X}"
    return private, None


@functools.lru_cache(maxsize=8192)
def _column_element(vr: str, text: str) -> dict[str, Any]:
    """An indexed instance column back as a DICOM JSON element (IS and US as numbers).

    Cached, because the same few values (Rows, Columns, InstanceNumber ...) come back in every
    instance search; the element is shared, so results must never be changed once built."""
    values: list[Any] = text.split("\\")
    if vr in ("US", "IS"):
        values = [int(v) if _INTEGER.fullmatch(v.strip()) else v for v in values]
    return {"vr": vr, "Value": values}
