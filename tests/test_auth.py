"""Built-in access control: Basic users, bearer tokens, proxy-authenticated users, roles, audit lines."""
from __future__ import annotations

import base64
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


def _raw_basic(user_pass: bytes) -> dict[str, str]:
    """Basic credentials from raw bytes (no colon, Latin-1, ...), which ``basic_auth`` cannot make."""
    return {"Authorization": "Basic " + base64.b64encode(user_pass).decode("ascii")}


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


# -- review of the access-control code: defects found and fixed --------------------------------------
def test_auth_unsupported_scheme_is_not_echoed(secured, caplog):
    # A client that sends a bare token has put its secret where the scheme goes.
    with caplog.at_level(logging.DEBUG):
        resp = secured.get("/studies/1.2.3", headers={"Authorization": "SuperSecretApiKey0123456789"}, status=401)
    assert "WWW-Authenticate" in resp.headers
    assert "supersecret" not in resp.text.lower()
    assert "supersecret" not in caplog.text.lower()


def test_auth_basic_without_colon_is_malformed_and_not_logged(secured, caplog):
    secret = "s3cr3t-api-key-in-basic"
    with caplog.at_level(logging.DEBUG):
        resp = secured.get("/studies/1.2.3", headers=_raw_basic(secret.encode()), status=401)
    assert "WWW-Authenticate" in resp.headers and "malformed" in resp.text
    assert secret not in caplog.text


def test_auth_basic_without_colon_costs_a_known_name_what_it_costs_an_unknown_one(secured):
    # Unknown names pay a decoy password check so timing does not tell which names exist; a known name
    # sent without the colon (RFC 7617 user-pass = user-id ":" password) used to skip it: ~0 ms
    # against ~100 ms for an unknown name, an oracle for the user list.
    auth = secured.app.auth
    assert auth._decoy_hash is None
    secured.get("/studies/1.2.3", headers=_raw_basic(b"reader"), status=401)
    assert auth._decoy_hash is not None


def test_auth_users_file_replaced_within_one_clock_tick_is_reread(secured, credential_files):
    users = credential_files[0]
    secured.get("/studies/1.2.3", headers=basic_auth("reader", "r-secret"), status=404)
    before = os.stat(users)
    # A password change: same name, roles and hash length, so the same size; within one clock tick
    # the modification time is the same too. The rewrite is atomic, so the inode is new.
    update_credentials(users, "reader", ["read"], hash_password("r-changed", n=FAST))
    os.utime(users, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(users).st_size == before.st_size
    secured.get("/studies/1.2.3", headers=basic_auth("reader", "r-secret"), status=401)
    secured.get("/studies/1.2.3", headers=basic_auth("reader", "r-changed"), status=404)


def test_auth_malformed_users_file_while_running_keeps_last_version_and_is_reported_once(secured, credential_files,
                                                                                        caplog):
    users = credential_files[0]
    secured.get("/studies/1.2.3", headers=basic_auth("reader", "r-secret"), status=404)
    with open(users, "a") as fh:
        fh.write("half-written line\n")
    with caplog.at_level(logging.ERROR, logger="dicomweb_wsgi.auth"):
        for _ in range(3):
            secured.get("/studies/1.2.3", headers=basic_auth("reader", "r-secret"), status=404)
    errors = [r for r in caplog.records if r.name == "dicomweb_wsgi.auth" and r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "keeping the last good version" in errors[0].getMessage()


def test_auth_tokens_file_with_a_non_ascii_line_answers_401_not_500(dicomweb_client_factory, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("typo:read:sha256$caf\u00e9\nviewer:read:" + hash_token("tok-viewer") + "\n", encoding="utf-8")
    client = dicomweb_client_factory(auth_tokens_file=str(tokens))
    client.get("/studies/1.2.3", headers=bearer_auth("tok-unknown"), status=401)
    client.get("/studies/1.2.3", headers=bearer_auth("tok-viewer"), status=404)


def test_auth_users_file_with_absurd_hash_cost_answers_401_not_500(dicomweb_client_factory, tmp_path):
    users = tmp_path / "users"
    users.write_text(f"odd:read:scrypt${2 ** 70}$8$1$AAAA$AAAA\n")
    client = dicomweb_client_factory(auth_users_file=str(users))
    client.get("/studies/1.2.3", headers=basic_auth("odd", "x"), status=401)
    assert not verify_password("x", f"pbkdf2_sha256${2 ** 70}$AAAA$AAAA")


def test_auth_realm_is_sent_as_a_quoted_string(dicomweb_client_factory, credential_files, tmp_path):
    from dicomweb_wsgi.app import make_app

    client = dicomweb_client_factory(auth_users_file=credential_files[0], auth_realm='PACS "main" C:\\')
    challenge = client.get("/studies/1.2.3", status=401).headers["WWW-Authenticate"]
    # RFC 9110 §5.6.4: '"' and '\' travel as quoted-pairs; a bare trailing '\' would escape the closing quote.
    assert challenge == 'Basic realm="PACS \\"main\\" C:\\\\", charset="UTF-8"'
    with pytest.raises(ConfigError, match="auth_realm"):
        make_app({"data_dir": str(tmp_path / "d"), "auth_users_file": credential_files[0],
                  "auth_realm": "two\nlines"})


@pytest.mark.parametrize("name", ["#alice", "a\x85b", "a\u2028b", "a\x0bb", "a\tb", "a\x00b"])
def test_update_credentials_refuses_names_the_file_cannot_give_back(tmp_path, name):
    users = tmp_path / "users"
    update_credentials(str(users), "reader", ["read"], hash_password("r", n=FAST))
    with pytest.raises(ConfigError, match="invalid name"):
        update_credentials(str(users), name, ["read"], hash_password("x", n=FAST))
    from dicomweb_wsgi.auth import CredentialFile

    assert list(CredentialFile(str(users)).entries()) == ["reader"]


def test_access_log_names_a_user_refused_by_role(secured, caplog):
    with caplog.at_level(logging.INFO, logger="dicomweb_wsgi.access"):
        _post(secured, make_dataset(), basic_auth("reader", "r-secret"), status=403)
    lines = [r.getMessage() for r in caplog.records if r.name == "dicomweb_wsgi.access"]
    assert len(lines) == 1 and " reader POST /studies 403 " in lines[0]


# -- behaviour checked in the review and found right: kept from regressing ----------------------------
@pytest.mark.parametrize("header, status", [
    ("bAsIc " + base64.b64encode(b"reader:r-secret").decode(), 404),  # scheme is case-insensitive
    ("Basic    " + base64.b64encode(b"reader:r-secret").decode() + "  ", 404),
    ("Basic " + base64.b64encode(b"reader:r-secret").decode()[:-1], 401),  # bad padding
    ("Basic cmVh ZGVyOnItc2VjcmV0", 401),  # a space inside
    ("Basic", 401),
    ("Basic " + "A" * 20000, 401),
    ("Bearer", 401),
    ("Bearer tok-modality extra", 401),
])
def test_auth_authorization_header_parsing(secured, header, status):
    secured.get("/studies/1.2.3", headers={"Authorization": header}, status=status)


def test_auth_password_with_colons_and_latin1_bytes(dicomweb_client_factory, tmp_path):
    users = tmp_path / "users"
    update_credentials(str(users), "jos\u00e9", ["read"], hash_password("p\u00e4ss:w:rd", n=FAST))
    client = dicomweb_client_factory(auth_users_file=str(users))
    client.get("/studies/1.2.3", headers=basic_auth("jos\u00e9", "p\u00e4ss:w:rd"), status=404)  # UTF-8
    client.get("/studies/1.2.3", headers=_raw_basic("jos\u00e9:p\u00e4ss:w:rd".encode("latin-1")), status=404)
    client.get("/studies/1.2.3", headers=_raw_basic(b"jos\xc3\xa9:p\xff"), status=401)


def test_auth_roles_per_route(secured):
    reader, writer, modality = basic_auth("reader", "r-secret"), basic_auth("writer", "w-secret"), bearer_auth(
        "tok-modality")
    secured.options("/", status=401)  # Retrieve Capabilities is a read
    secured.options("/", headers=reader, status=200)
    secured.get("/color-palettes", headers=modality, status=403)
    secured.get("/workitems", headers=reader, status=(200, 204))
    # A UPS unsubscribe is a write, not a deletion of data; a study DELETE needs the delete role.
    secured.delete("/workitems/1.2.3/subscribers/VIEWER", headers=reader, status=403)
    assert secured.delete("/workitems/1.2.3/subscribers/VIEWER", headers=writer, expect_errors=True).status_int \
        not in (401, 403)
    secured.delete("/studies/1.2.3", headers=writer, status=403)
    secured.delete("/studies/1.2.3", headers=basic_auth("admin", "a-secret"), status=404)


def test_auth_trusted_proxy_header_wins_over_authorization(proxied):
    # The proxy's word decides; a client's own Basic credentials do not raise the proxy user's roles.
    content_type, body = stow_body([make_dataset()])
    proxied.post("/studies", body, headers={"Content-Type": content_type, "X-Remote-User": "sso-dave",
                                            **basic_auth("writer", "w-secret")},
                 extra_environ={"REMOTE_ADDR": "127.0.0.1"}, status=403)
    # From an untrusted peer the header is ignored and the credentials count.
    proxied.get("/studies/1.2.3", headers={"X-Remote-User": "admin", **basic_auth("reader", "r-secret")},
                extra_environ={"REMOTE_ADDR": "10.1.2.3"}, status=404)


def test_auth_deleting_the_users_file_revokes_everyone_in_it(secured, credential_files, caplog):
    secured.get("/studies/1.2.3", headers=basic_auth("reader", "r-secret"), status=404)
    os.unlink(credential_files[0])
    with caplog.at_level(logging.ERROR, logger="dicomweb_wsgi.auth"):
        for _ in range(3):
            secured.get("/studies/1.2.3", headers=basic_auth("reader", "r-secret"), status=401)
    assert sum("was deleted" in r.getMessage() for r in caplog.records) == 1
    update_credentials(credential_files[0], "reader", ["read"], hash_password("new-secret", n=FAST))
    secured.get("/studies/1.2.3", headers=basic_auth("reader", "new-secret"), status=404)


def test_auth_unknown_bearer_token_says_invalid_token(secured):
    resp = secured.get("/studies/1.2.3", headers=bearer_auth("not-a-token"), status=401)
    assert 'Bearer realm="dicomweb", error="invalid_token"' in resp.headers["WWW-Authenticate"]
    # Without a token there is no error code (RFC 6750 §3.1).
    resp = secured.get("/studies/1.2.3", status=401)
    assert "error=" not in resp.headers["WWW-Authenticate"]


@pytest.mark.parametrize("name", ["alice\x00", "alice\x1b[31m", "a" * 300])
def test_auth_proxy_user_name_that_is_not_printable_is_refused(proxied, name):
    proxied.get("/studies/1.2.3", headers={"X-Remote-User": name}, extra_environ={"REMOTE_ADDR": "127.0.0.1"},
                status=401)


def test_update_credentials_concurrent_runs_lose_nothing(tmp_path):
    import threading

    users = str(tmp_path / "users")
    names = [f"user{i}" for i in range(24)]
    threads = [threading.Thread(target=update_credentials, args=(users, n, ["read"], hash_token(n)))
               for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(users, encoding="utf-8") as fh:
        written = {line.split(":", 1)[0] for line in fh if not line.startswith("#")}
    assert written == set(names)
