"""PatientName patterns with a leading wildcard go through the trigram index of the folded names
(migration 4): the answers must be exactly the reference matcher's, while names are stored, changed
by a later instance, and deleted."""
from __future__ import annotations

import pytest

from dicomweb_wsgi.testing import make_client, make_dataset, new_uid, store

JSON_ACCEPT = {"Accept": "application/dicom+json"}
NAMES = {"gold": "Goldsmith^Ann", "smith": "Smith^Bob", "smithers": "SMITHERS^Carl", "muller": "Müller^Hans",
         "doe": "Doe^John", "ng": "Ng^Li", "empty": ""}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    client = make_client(tmp_path_factory.mktemp("names") / "data", allow_delete=True)
    uids = {label: new_uid() for label in NAMES}
    store(client, [make_dataset(study_uid=uids[label], PatientName=name) for label, name in NAMES.items()])
    try:
        yield client, uids
    finally:
        client.app.close()


def found(client, uids: dict[str, str], query: str) -> set[str]:
    labels = {uid: label for label, uid in uids.items()}
    results = client.get(f"/studies?{query}", headers=JSON_ACCEPT, status=200).json
    return {labels[r["0020000D"]["Value"][0]] for r in results}


@pytest.mark.parametrize("query, expected", [
    ("PatientName=*smi*", {"gold", "smith", "smithers"}),
    ("PatientName=%2ASMI%2A", {"gold", "smith", "smithers"}),      # case-insensitive, encoded as OHIF does
    ("PatientName=*ller*", {"muller"}),
    ("PatientName=*%C3%BCll*", {"muller"}),                         # ü folds to u on both sides
    ("PatientName=?mith*", {"smith", "smithers"}),                  # one character, then "mith"
    ("PatientName=*mi*", {"gold", "smith", "smithers"}),            # too short for trigrams: still right
    ("PatientName=*g%5El*", {"ng"}),
    ("PatientName=*smith%5Eb*", {"smith"}),
    ("PatientName=*smi*b*", {"smith"}),
    ("PatientName=*smith", set()),                                  # the name goes on after "smith"
    ("PatientName=*john", {"doe"}),
    ("PatientName=*smit?ers*%5C*doe*", {"smithers", "doe"}),        # either pattern
    ("PatientName=*xyz*", set()),
    ("PatientName=*smi*&fuzzymatching=true", {"gold", "smith", "smithers"}),
    ("PatientName=gold&fuzzymatching=true", {"gold"}),              # fuzzy: a prefix of a name component
    ("PatientName=smith%5Ebo&fuzzymatching=true", {"smith"}),
    ("PatientName=mith&fuzzymatching=true", set()),                 # not a prefix of any component
])
def test_leading_wildcard_patterns_match_as_the_reference_matcher(archive, query, expected):
    client, uids = archive
    assert found(client, uids, query) == expected


def test_a_later_instance_renaming_the_patient_and_a_delete_update_the_name_index(tmp_path):
    client = make_client(tmp_path / "data", allow_delete=True)
    try:
        doe, smith = new_uid(), new_uid()
        uids = {"doe": doe, "smith": smith}
        store(client, [make_dataset(study_uid=doe, PatientName="Doe^John"),
                       make_dataset(study_uid=smith, PatientName="Smith^Bob")])
        assert found(client, uids, "PatientName=*smi*") == {"smith"}
        store(client, [make_dataset(study_uid=doe, PatientName="Goldsmith^John")])  # the latest instance wins
        assert found(client, uids, "PatientName=*smi*") == {"smith", "doe"}
        assert found(client, uids, "PatientName=*doe*") == set()
        client.delete(f"/studies/{smith}", status=204)
        assert found(client, uids, "PatientName=*smi*") == {"doe"}
        store(client, [make_dataset(study_uid=smith, PatientName="Smith^Bob")])  # stored again
        assert found(client, uids, "PatientName=*smi*") == {"smith", "doe"}
    finally:
        client.app.close()
