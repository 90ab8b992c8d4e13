"""dicomweb_wsgi.testing as other teams use it: the pytest plugin, its fixtures and helpers."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from dicomweb_wsgi.testing import (basic_auth, bearer_auth, make_client, make_dataset, new_uid,
                                   retrieve_datasets, store)


def test_plugin_in_a_foreign_suite_runs_the_readme_example(tmp_path):
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["dicomweb_wsgi.testing"]\n')
    (tmp_path / "test_mine.py").write_text(textwrap.dedent("""
        from dicomweb_wsgi.testing import make_dataset, retrieve_datasets, store

        def test_roundtrip(dicomweb_client):
            ds = make_dataset()
            store(dicomweb_client, [ds])
            assert retrieve_datasets(dicomweb_client, f"/studies/{ds.StudyInstanceUID}")[0].SOPInstanceUID == \\
                ds.SOPInstanceUID

        def test_fresh_archive_each_test(dicomweb_client):
            assert dicomweb_client.app.archive.index.counts()["instances"] == 0
    """))
    # A generous limit: two tests take 2 s, but on ext4 without a journal creating the archive's 512
    # folders right after mass deletions can take minutes (benchmarks/README.md); 120 s once ran out.
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout


class TestSettingsOverride:
    @pytest.fixture
    def dicomweb_settings(self):
        return {"read_only": "true"}

    def test_overridden_settings_reach_the_app(self, dicomweb_client):
        store(dicomweb_client, [make_dataset()], status=405)


def test_client_factory_builds_independent_apps(dicomweb_client_factory):
    plain = dicomweb_client_factory()
    locked = dicomweb_client_factory(read_only="true")
    ds = make_dataset()
    store(plain, [ds])
    store(locked, [ds], status=405)
    locked.get(f"/studies/{ds.StudyInstanceUID}", status=404)
    assert plain.app.settings.data_dir != locked.app.settings.data_dir


def test_make_client_without_pytest_fixtures(tmp_path):
    client = make_client(tmp_path / "d", allow_delete="true")
    try:
        ds = make_dataset(study_uid=new_uid())
        store(client, [ds])
        client.delete(f"/studies/{ds.StudyInstanceUID}", status=204)
        assert client.app.settings.fsync is False and client.app.settings.min_free_space == 0
    finally:
        client.app.close()


def test_retrieve_datasets_returns_every_instance_in_order(dicomweb_client):
    study, series = new_uid(), new_uid()
    datasets = [make_dataset(study_uid=study, series_uid=series, InstanceNumber=i) for i in (2, 1, 3)]
    store(dicomweb_client, datasets)
    got = retrieve_datasets(dicomweb_client, f"/studies/{study}/series/{series}")
    assert [d.InstanceNumber for d in got] == [1, 2, 3]


def test_auth_header_helpers():
    assert basic_auth("a", "b") == {"Authorization": "Basic YTpi"}
    assert bearer_auth("t") == {"Authorization": "Bearer t"}
