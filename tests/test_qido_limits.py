"""QIDO-RS ``qido_max_matches``: a search matching more results than the setting is a 413 on every
one of the six search resources; at or below it (and with the setting at 0) results are paged."""
from __future__ import annotations

import pytest

from dicomweb_wsgi.testing import make_client, make_dataset, new_uid, store

JSON_ACCEPT = {"Accept": "application/dicom+json"}
XML_ACCEPT = {"Accept": 'multipart/related; type="application/dicom+xml"'}


class Archive:
    """Four studies of patient P-MANY (the first: 5 instances in 4 series, two in ``series``) and one of
    P-ONE."""

    def __init__(self, client) -> None:
        self.client = client
        self.study, self.series = new_uid(), new_uid()
        datasets = [make_dataset(study_uid=self.study, series_uid=self.series if n < 2 else None,
                                 InstanceNumber=n + 1, PatientID="P-MANY") for n in range(5)]
        datasets += [make_dataset(PatientID="P-MANY") for _ in range(3)]
        datasets.append(make_dataset(PatientID="P-ONE"))
        store(client, datasets)

    def get(self, url: str, status: int = 200, headers: dict | None = None):
        return self.client.get(url, headers=headers or JSON_ACCEPT, status=status)


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """At most 3 matches per search; pages of 2 by default."""
    client = make_client(tmp_path_factory.mktemp("qido-max") / "data", qido_max_matches=3, qido_default_limit=2)
    try:
        yield Archive(client)
    finally:
        client.app.close()


# (resource, query) pairs matching 4 or more results, one per search resource.
TOO_BROAD = [
    ("/studies", "PatientID=P-MANY"),        # 4 studies
    ("/series", "PatientID=P-MANY"),         # 7 series
    ("/instances", "PatientID=P-MANY"),      # 8 instances
    ("/studies/{study}/series", ""),         # 4 series
    ("/studies/{study}/instances", ""),      # 5 instances
]


def _url(archive: Archive, resource: str, query: str) -> str:
    return resource.format(study=archive.study, series=archive.series) + (f"?{query}" if query else "")


@pytest.mark.parametrize("resource, query", TOO_BROAD + [("/studies/{study}/instances", "limit=1")])
def test_search_matching_more_than_max_matches_is_413_asking_to_narrow(limited, resource, query):
    resp = limited.get(_url(limited, resource, query), status=413)
    assert "narrow" in resp.text and "more than the 3" in resp.text


def test_413_also_for_xml_and_for_an_empty_page_past_the_end(limited):
    limited.get("/studies?PatientID=P-MANY", status=413, headers=XML_ACCEPT)
    resp = limited.get("/instances?PatientID=P-MANY&offset=50", status=413)
    assert "matches 8 results" in resp.text


@pytest.mark.parametrize("resource, query, count", [
    ("/studies", "PatientID=P-ONE", 1),
    ("/studies/{study}/series/{series}/instances", "", 2),  # the sixth resource, within the limit
    ("/studies/{study}/instances", "InstanceNumber=3%5C4%5C5&limit=5", 3),  # exactly the limit is allowed
    ("/studies/{study}/instances", "InstanceNumber=1", 1),  # narrowed
    ("/series", "PatientID=P-ONE&offset=50", 0),            # past the end of a small result
])
def test_search_within_max_matches_is_answered(limited, resource, query, count):
    assert len(limited.get(_url(limited, resource, query)).json) == count


def test_sixth_resource_is_413_when_its_series_is_too_big(tmp_path):
    client = make_client(tmp_path / "data", qido_max_matches=2)
    try:
        study, series = new_uid(), new_uid()
        store(client, [make_dataset(study_uid=study, series_uid=series, InstanceNumber=n) for n in range(3)])
        resp = client.get(f"/studies/{study}/series/{series}/instances", headers=JSON_ACCEPT, status=413)
        assert "matches 3 results" in resp.text
        assert len(client.get(f"/studies/{study}/series/{series}/instances?InstanceNumber=1",
                              headers=JSON_ACCEPT).json) == 1
    finally:
        client.app.close()


def test_zero_means_no_limit_and_pages_with_the_warning(tmp_path):
    client = make_client(tmp_path / "data", qido_default_limit=2)
    try:
        store(client, [make_dataset(PatientID="P-MANY") for _ in range(5)])
        resp = client.get("/studies?PatientID=P-MANY", headers=JSON_ACCEPT, status=200)
        assert len(resp.json) == 2 and '"There are 3 additional results' in resp.headers["Warning"]
    finally:
        client.app.close()
