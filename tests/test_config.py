"""Configuration: the shipped ini documents every option, start-up refuses unknown keys, the
environment overrides the data folder and listen address, and the disk guard protects stores."""
from __future__ import annotations

import configparser
import os
import subprocess
import sys

import pytest

from dicomweb_wsgi.__main__ import read_ini, resolve_listen, split_listen, waitress_options
from dicomweb_wsgi.config import PREFIX, SCHEMA, ConfigError, load_settings
from dicomweb_wsgi.testing import make_client, make_dataset, store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INI = os.path.join(ROOT, "conf", "dicomweb.ini")


def test_shipped_ini_lists_every_option_with_its_default_and_a_comment():
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(INI)
    keys = [k for k in parser["app:main"] if k.startswith(PREFIX)]
    assert sorted(k[len(PREFIX):] for k in keys) == sorted(opt.key for opt in SCHEMA)
    values = {k: v for k, v in parser["app:main"].items() if k.startswith(PREFIX)}
    assert load_settings(values, environ={}) == load_settings({}, environ={})
    lines = open(INI, encoding="utf-8").read().splitlines()
    for opt in SCHEMA:
        at = next(i for i, ln in enumerate(lines) if ln.startswith(f"{PREFIX}{opt.key} ="))
        above = lines[at - 1]
        assert above.startswith("#") or above.startswith(PREFIX), f"{opt.key} has no comment above it"


def test_shipped_ini_logging_section_configures_access_and_audit_loggers():
    import logging

    names = ("", "dicomweb_wsgi", "dicomweb_wsgi.access", "dicomweb_wsgi.audit")
    saved = {n: (logging.getLogger(n).level, logging.getLogger(n).handlers[:]) for n in names}
    try:
        read_ini(INI)
        assert logging.getLogger("dicomweb_wsgi.audit").getEffectiveLevel() == logging.INFO
        assert logging.getLogger("dicomweb_wsgi.access").getEffectiveLevel() == logging.INFO
        assert logging.getLogger().handlers and logging.getLogger().level == logging.WARNING
    finally:
        for name, (level, handlers) in saved.items():
            logging.getLogger(name).setLevel(level)
            logging.getLogger(name).handlers[:] = handlers


def _serve(tmp_path, ini_text: str) -> subprocess.CompletedProcess:
    ini = tmp_path / "site.ini"
    ini.write_text(ini_text)
    return subprocess.run([sys.executable, "-m", "dicomweb_wsgi", "serve", "--config", str(ini), "--data",
                           str(tmp_path / "d"), "--listen", "127.0.0.1:0", "--max-seconds", "20"],
                          capture_output=True, text=True, timeout=60)


def test_unknown_app_key_stops_start_up_with_a_clear_message(tmp_path):
    proc = _serve(tmp_path, "[app:main]\ndicomweb.max_request_bodyy = 1G\n")
    assert proc.returncode == 2
    assert "unknown setting 'dicomweb.max_request_bodyy'" in proc.stderr
    assert "max_request_body" in proc.stderr  # the known keys are listed


def test_app_key_without_prefix_is_refused(tmp_path):
    ini = tmp_path / "site.ini"
    ini.write_text("[app:main]\nuse = egg:dicomweb-wsgi\nread_only = true\n")
    with pytest.raises(ConfigError, match="unknown key read_only; settings are written dicomweb.<key>"):
        read_ini(str(ini))


def test_unknown_server_key_stops_start_up_with_a_clear_message(tmp_path):
    proc = _serve(tmp_path, "[server:main]\nthreadz = 4\n")
    assert proc.returncode == 2
    assert "[server:main]" in proc.stderr and "threadz" in proc.stderr


def test_invalid_value_names_the_key():
    with pytest.raises(ConfigError, match="invalid value 'maybe' for setting 'read_only'"):
        load_settings({"read_only": "maybe"}, environ={})
    with pytest.raises(ConfigError, match="unknown role"):
        load_settings({"anonymous_roles": "read admin"}, environ={})
    with pytest.raises(ConfigError, match="auth_trusted_proxies"):
        load_settings({"auth_trusted_proxies": "proxy.example.org"}, environ={})


def test_environment_overrides_data_dir_and_listen():
    settings = load_settings({"dicomweb.data_dir": "/from/ini"}, environ={"DICOMWEB_DATA_DIR": "/from/env"})
    assert settings.data_dir == "/from/env"
    conf = {"listen": "127.0.0.1:9000"}
    assert resolve_listen(None, dict(conf), {"DICOMWEB_LISTEN": "127.0.0.1:9100"}) == ("127.0.0.1", 9100)
    assert resolve_listen("127.0.0.1:9200", dict(conf), {"DICOMWEB_LISTEN": "127.0.0.1:9100"}) == ("127.0.0.1", 9200)
    assert resolve_listen(None, dict(conf), {}) == ("127.0.0.1", 9000)
    assert resolve_listen(None, {"host": "::1", "port": "9300"}, {}) == ("::1", 9300)


def test_disk_guard_refuses_stores_with_503_and_writes_nothing(tmp_path):
    ds = make_dataset()
    ok = make_client(str(tmp_path / "data"), min_free_space="1K")
    store(ok, [ds])
    ok.app.close()
    full = make_client(str(tmp_path / "data"), min_free_space="1000000T")
    try:
        resp = store(full, [make_dataset()], status=503)
        assert "0xA700" in resp.text and "min_free_space" in resp.text
        assert os.listdir(full.app.archive.blobs.spool_dir) == []
        assert sum(1 for _ in full.app.archive.blobs.iter_blobs()) == 1
        # Reads keep working.
        full.get(f"/studies/{ds.StudyInstanceUID}", status=200)
    finally:
        full.app.close()


def test_disk_guard_counts_the_request_body(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 30, 0, (1 << 30) + 4096))
    client = make_client(str(tmp_path / "data"), min_free_space="1G")
    try:
        store(client, [make_dataset(rows=8, columns=8)], status=200)   # ~1 KB body fits in 4 KB
        store(client, [make_dataset(rows=64, columns=64)], status=503)  # ~8 KB body does not
    finally:
        client.app.close()


MALFORMED_INIS = {
    "no section header": ("not an ini file\n", "not a valid ini file"),
    "duplicated key": ("[app:main]\ndicomweb.read_only = true\ndicomweb.read_only = false\n", "not a valid ini file"),
    "logging without formatters": ("[loggers]\nkeys = root\n", "invalid logging configuration"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED_INIS))
def test_malformed_ini_is_a_configuration_error_naming_the_file(tmp_path, name):
    text, message = MALFORMED_INIS[name]
    ini = tmp_path / "site.ini"
    ini.write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        read_ini(str(ini))
    assert str(ini) in str(caught.value)
    proc = _serve(tmp_path, text)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-400:]
    assert "dicomweb-wsgi: configuration error: " in proc.stderr and str(ini) in proc.stderr


def test_size_must_be_a_finite_number():
    for value in ("inf", "-inf", "nan", "1e400", "infG"):
        with pytest.raises(ConfigError, match=f"invalid value '{value}' for setting 'max_request_body'"):
            load_settings({"max_request_body": value}, environ={})
    assert load_settings({"max_request_body": "1.5K"}, environ={}).max_request_body == 1536


def test_bad_server_integer_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"\[server:main\] threads must be a whole number, not 'many'"):
        waitress_options({"threads": "many"}, load_settings({}, environ={}))
    proc = _serve(tmp_path, "[server:main]\nthreads = many\n")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-400:]
    assert "threads must be a whole number" in proc.stderr


def test_listen_port_must_be_0_to_65535(tmp_path):
    assert split_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert split_listen("[::1]:65535") == ("::1", 65535)
    for bad in ("127.0.0.1:65536", "127.0.0.1:73000", "127.0.0.1:\u0662", "127.0.0.1:-1"):
        with pytest.raises(ConfigError, match="port from 0 to 65535"):
            split_listen(bad)
    with pytest.raises(ConfigError, match="port from 0 to 65535"):
        resolve_listen(None, {"port": "70000"}, {})
    proc = subprocess.run([sys.executable, "-m", "dicomweb_wsgi", "serve", "--data", str(tmp_path / "d"),
                           "--listen", "127.0.0.1:73000", "--max-seconds", "20"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "port from 0 to 65535" in proc.stderr and "serving" not in proc.stdout


def test_max_parts_must_be_at_least_one():
    # 0 used to be accepted, and then every multipart STOW was a 500 (the reader refuses a limit of 0).
    with pytest.raises(ConfigError, match="invalid value '0' for setting 'max_parts'"):
        load_settings({"max_parts": "0"}, environ={})
    assert load_settings({"max_parts": "1"}, environ={}).max_parts == 1
