"""End to end: ``dicomweb-wsgi serve`` under waitress, driven by the real dicomweb-client package."""
from __future__ import annotations

import numpy as np
import pytest

from dicomweb_wsgi.testing import make_dataset, new_uid

from .serverproc import ServerProcess

dicomweb_client = pytest.importorskip("dicomweb_client")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(str(tmp_path_factory.mktemp("e2e") / "data")) as proc:
        yield proc


def test_dicomweb_client_store_and_retrieve_large_chunked_body(server):
    client = dicomweb_client.DICOMwebClient(server.url)
    study, series = new_uid(), new_uid()
    # 4 x 512x512x16 bit = 2 MB: over dicomweb-client's 1 MB chunk size, so it is sent chunked.
    datasets = [make_dataset(study_uid=study, series_uid=series, rows=512, columns=512, InstanceNumber=i,
                             pixel_seed=i) for i in range(1, 5)]
    result = client.store_instances(datasets)
    refs = result.ReferencedSOPSequence
    assert {r.ReferencedSOPInstanceUID for r in refs} == {d.SOPInstanceUID for d in datasets}
    assert "FailedSOPSequence" not in result

    got_study = client.retrieve_study(study)
    assert sorted(d.SOPInstanceUID for d in got_study) == sorted(d.SOPInstanceUID for d in datasets)
    got_series = client.retrieve_series(study, series)
    assert [d.InstanceNumber for d in got_series] == [1, 2, 3, 4]
    one = client.retrieve_instance(study, series, datasets[2].SOPInstanceUID)
    assert np.array_equal(one.pixel_array, datasets[2].pixel_array)
    assert one.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"


def test_dicomweb_client_store_to_study_with_mismatch_raises(server):
    import requests

    client = dicomweb_client.DICOMwebClient(server.url)
    ds = make_dataset()
    with pytest.raises(requests.HTTPError) as info:
        client.store_instances([ds], study_instance_uid=new_uid())
    assert info.value.response.status_code == 409
