"""Built-in access control: Basic users, bearer tokens, proxy-authenticated users, roles, audit lines."""
from __future__ import annotations

import logging
import os

import pytest

from dicomweb_wsgi.__main__ import check_listen, main
from dicomweb_wsgi.auth import hash_password, hash_token, update_credentials, verify_password
from dicomweb_wsgi.config import ConfigError, load_settings
from dicomweb_wsgi.testing import basic_auth, bearer_auth, make_dataset, store, stow_body

FAST = 1 << 10  # a cheap scrypt cost: the tests check the logic, not the slowness


@pytest.fixture
def credential_files(tmp_path):
    users = tmp_path / "users"
    update_credentials(str(users), "reader", ["read"], hash_password("r-secret", n=FAST))
    update_credentials(str(users), "writer", ["read", "write"], hash_password("w-secret", n=FAST))
    update_credentials(str(users), "admin", ["read", "write", "delete"], hash_password("a-secret", n=FAST))
    tokens = tmp_path / "tokens"
    update_credentials(str(tokens), "modality", ["write"], hash_token("tok-modality"))
    return str(users), str(tokens)


@pytest.fixture
def secured(dicomweb_client_factory, credential_files):
    users, tokens = credential_files
    return dicomweb_client_factory(auth_users_file=users, auth_tokens_file=tokens, allow_delete="true")


def _post(client, ds, headers=None, status=200):
    content_type, body = stow_body([ds])
    return client.post("/studies", body, headers={"Content-Type": content_type, **(headers or {})}, status=status)


def test_auth_no_credentials_returns_401_with_challenges(secured):
    resp = secured.get("/studies/1.2.3", status=401)
    challenge = resp.headers["WWW-Authenticate"]
    assert 'Basic realm="dicomweb"' in challenge and 'Bearer realm="dicomweb"' in challenge


def test_auth_wrong_password_returns_401(secured):
    resp = secured.get("/studies/1.2.3", headers=basic_auth("reader", "nope"), status=401)
    assert "WWW-Authenticate" in resp.headers
    secured.get("/studies/1.2.3", headers=basic_auth("nobody", "r-secret"), status=401)


def test_auth_malformed_basic_returns_401(secured):
    secured.get("/studies/1.2.3", headers={"Authorization": "Basic !!!not-base64"}, status=401)
    secured.get("/studies/1.2.3", headers={"Authorization": "Digest x=1"}, status=401)


def test_auth_reader_cannot_store_returns_403_and_stores_nothing(secured):
    ds = make_dataset()
    resp = _post(secured, ds, basic_auth("reader", "r-secret"), status=403)
    assert "write" in resp.text
    secured.get(f"/studies/{ds.StudyInstanceUID}", headers=basic_auth("reader", "r-secret"), status=404)


def test_auth_right_roles_store_read_and_delete(secured):
    ds = make_dataset()
    _post(secured, ds, basic_auth("writer", "w-secret"), status=200)
    secured.get(f"/studies/{ds.StudyInstanceUID}", headers=basic_auth("reader", "r-secret"), status=200)
    secured.delete(f"/studies/{ds.StudyInstanceUID}", headers=basic_auth("writer", "w-secret"), status=403)
    secured.delete(f"/studies/{ds.StudyInstanceUID}", headers=basic_auth("admin", "a-secret"), status=204)


def test_auth_bearer_token_roles(secured):
    ds = make_dataset()
    _post(secured, ds, bearer_auth("tok-modality"), status=200)
    secured.get(f"/studies/{ds.StudyInstanceUID}", headers=bearer_auth("tok-modality"), status=403)
    resp = secured.get(f"/studies/{ds.StudyInstanceUID}", headers=bearer_auth("tok-wrong"), status=401)
    assert "Bearer" in resp.headers["WWW-Authenticate"]


def test_auth_cors_preflight_needs_no_credentials(secured):
    resp = secured.options("/studies", headers={"Origin": "https://viewer.example",
                                                "Access-Control-Request-Method": "POST",
                                                "Access-Control-Request-Headers": "authorization"}, status=204)
    assert "authorization" in resp.headers["Access-Control-Allow-Headers"].lower()


def test_auth_anonymous_roles_allow_reading_only(dicomweb_client_factory, credential_files):
    client = dicomweb_client_factory(auth_users_file=credential_files[0], anonymous_roles="read")
    client.get("/studies/1.2.3", status=404)
    _post(client, make_dataset(), status=401)


def test_auth_users_file_is_reread_when_it_changes(secured, credential_files):
    secured.get("/studies/1.2.3", headers=basic_auth("late", "l-secret"), status=401)
    update_credentials(credential_files[0], "late", ["read"], hash_password("l-secret", n=FAST))
    # A file rewritten within the same second with the same size would look unchanged: move the mtime.
    os.utime(credential_files[0], (1, 1))
    secured.get("/studies/1.2.3", headers=basic_auth("late", "l-secret"), status=404)


@pytest.fixture
def proxied(dicomweb_client_factory, credential_files):
    return dicomweb_client_factory(auth_users_file=credential_files[0], auth_user_header="X-Remote-User",
                                   auth_trusted_proxies="127.0.0.1", auth_proxy_roles="read")


def test_auth_proxy_user_header_from_trusted_proxy_is_honoured(proxied):
    # 404, not 401: the user is known and may read; nothing is stored yet.
    proxied.get("/studies/1.2.3", headers={"X-Remote-User": "sso-alice"},
                extra_environ={"REMOTE_ADDR": "127.0.0.1"}, status=404)
    # A user listed in the users file gets the roles listed there (writer may store).
    content_type, body = stow_body([make_dataset()])
    proxied.post("/studies", body, headers={"Content-Type": content_type, "X-Remote-User": "writer"},
                 extra_environ={"REMOTE_ADDR": "127.0.0.1"}, status=200)


def test_auth_proxy_user_header_from_untrusted_peer_is_ignored(proxied):
    resp = proxied.get("/studies/1.2.3", headers={"X-Remote-User": "admin"},
                       extra_environ={"REMOTE_ADDR": "10.1.2.3"}, status=401)
    assert "WWW-Authenticate" in resp.headers


def test_auth_proxy_peer_address_beats_rewritten_remote_addr(proxied):
    # Behind waitress's proxy handling REMOTE_ADDR is the client; the recorded TCP peer decides.
    proxied.get("/studies/1.2.3", headers={"X-Remote-User": "sso-bob"},
                extra_environ={"REMOTE_ADDR": "127.0.0.1", "dicomweb.peer_addr": "192.0.2.7"}, status=401)


def test_auth_proxy_role_default_cannot_write(proxied):
    content_type, body = stow_body([make_dataset()])
    proxied.post("/studies", body, headers={"Content-Type": content_type, "X-Remote-User": "sso-carol"},
                 extra_environ={"REMOTE_ADDR": "127.0.0.1"}, status=403)


def test_auth_user_header_without_trusted_proxies_is_a_config_error(tmp_path):
    from dicomweb_wsgi.app import make_app

    with pytest.raises(ConfigError, match="auth_trusted_proxies"):
        make_app({"data_dir": str(tmp_path), "auth_user_header": "X-Remote-User"})


def test_auth_missing_users_file_is_a_config_error(tmp_path):
    from dicomweb_wsgi.app import make_app

    with pytest.raises(ConfigError, match="cannot read"):
        make_app({"data_dir": str(tmp_path), "auth_users_file": str(tmp_path / "absent")})


def test_auth_bad_line_in_users_file_names_the_line(tmp_path):
    from dicomweb_wsgi.app import make_app

    bad = tmp_path / "users"
    bad.write_text("# comment\nalice:read:scrypt$1\nbob:superuser:x\n")
    with pytest.raises(ConfigError, match=r"users:3: unknown role superuser"):
        make_app({"data_dir": str(tmp_path), "auth_users_file": str(bad)})


def test_password_hash_is_salted_and_verifies():
    a, b = hash_password("pw", n=FAST), hash_password("pw", n=FAST)
    assert a != b and a.startswith("scrypt$")
    assert verify_password("pw", a) and not verify_password("pW", a)
    assert not verify_password("pw", "md5$abc")


def test_users_file_keeps_no_plain_password(credential_files):
    text = open(credential_files[0]).read()
    assert "r-secret" not in text and "reader:read:scrypt$" in text
    assert oct(os.stat(credential_files[0]).st_mode & 0o777) == "0o600"


def test_audit_lines_name_who_stored_and_deleted(secured, caplog):
    ds = make_dataset()
    with caplog.at_level(logging.INFO, logger="dicomweb_wsgi.audit"):
        _post(secured, ds, basic_auth("writer", "w-secret"), status=200)
        secured.delete(f"/studies/{ds.StudyInstanceUID}", headers=basic_auth("admin", "a-secret"), status=204)
    lines = [r.getMessage() for r in caplog.records if r.name == "dicomweb_wsgi.audit"]
    stored = [ln for ln in lines if " store " in ln]
    deleted = [ln for ln in lines if " delete " in ln]
    assert len(stored) == 1 and "by=writer@" in stored[0] and f"sop={ds.SOPInstanceUID}" in stored[0]
    assert "outcome=stored" in stored[0]
    assert len(deleted) == 1 and "by=admin@" in deleted[0] and f"study={ds.StudyInstanceUID}" in deleted[0]
    assert lines[0][:4].isdigit() and "T" in lines[0].split()[0]  # an ISO timestamp of its own


def test_access_log_line_names_the_user(secured, caplog):
    with caplog.at_level(logging.INFO, logger="dicomweb_wsgi.access"):
        secured.get("/studies/1.2.3", headers=basic_auth("reader", "r-secret"), status=404)
    lines = [r.getMessage() for r in caplog.records if r.name == "dicomweb_wsgi.access"]
    assert len(lines) == 1
    assert " reader GET /studies/1.2.3 404 " in lines[0]


def test_serve_refuses_network_address_without_auth():
    with pytest.raises(ConfigError, match="refusing to listen on 0.0.0.0"):
        check_listen("0.0.0.0", load_settings({}, environ={}))
    check_listen("127.0.0.1", load_settings({}, environ={}))
    check_listen("::1", load_settings({}, environ={}))
    check_listen("0.0.0.0", load_settings({"allow_unauthenticated_remote": "true"}, environ={}))
    check_listen("0.0.0.0", load_settings({"auth_tokens_file": "/x"}, environ={}))


def test_cli_add_user_and_add_token_write_working_files(tmp_path, monkeypatch, capsys, dicomweb_client_factory):
    import io

    users, tokens = str(tmp_path / "u"), str(tmp_path / "t")
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    assert main(["add-user", users, "dora", "--roles", "read,write", "--password-stdin"]) == 0
    assert main(["add-token", tokens, "ct1", "--roles", "write"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["add-token", tokens, "x", "--roles", "admin"]) == 2
    client = dicomweb_client_factory(auth_users_file=users, auth_tokens_file=tokens)
    client.get("/studies/1.2.3", headers=basic_auth("dora", "s3cret"), status=404)
    store(client, [make_dataset()], status=401)
    content_type, body = stow_body([make_dataset()])
    client.post("/studies", body, headers={"Content-Type": content_type, **bearer_auth(token)}, status=200)


def test_cli_add_user_and_add_token_into_a_missing_folder_are_clear_errors(tmp_path, monkeypatch, capsys):
    import io

    missing = tmp_path / "no" / "users"
    with pytest.raises(ConfigError, match=f"cannot write {missing}: No such file or directory"):
        update_credentials(str(missing), "dora", ["read"], hash_token("t"))
    assert main(["add-token", str(missing), "ct1", "--roles", "write"]) == 2
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    assert main(["add-user", str(missing), "dora", "--password-stdin"]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # no token printed for a file that was not written
    assert err.splitlines() == [f"dicomweb-wsgi: configuration error: cannot write {missing}: "
                                "No such file or directory"] * 2
    assert not (tmp_path / "no").exists()
