"""The UPS event channel with a real ``websockets`` client: event reports arrive in order, queued events
arrive after a reconnect or a restart, and the channel runs from the command line."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from typing import Iterator

import pytest
import webtest
from pydicom.uid import generate_uid
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from dicomweb_wsgi import workflow
from dicomweb_wsgi.app import make_app
from dicomweb_wsgi.events import EventChannel, aetitle_of
from tests.test_ups import GLOBAL, JSON, completion_dataset, create, put_state, workitem_dataset

DEADLINE = 10.0


@pytest.fixture
def channel(dicomweb_app) -> Iterator[EventChannel]:
    """The event channel on 127.0.0.1:0, fed by the test app's workitem store."""
    with EventChannel(dicomweb_app.ctx.workitems, poll_interval=0.2) as running:
        yield running


def receive(ws, count: int) -> list[dict]:
    """The next ``count`` event reports (each must come within the deadline)."""
    return [json.loads(ws.recv(timeout=DEADLINE)) for _ in range(count)]


def summary(report: dict) -> tuple:
    """(event type, workitem, state or None) of one event report."""
    state = report.get("00741000", {}).get("Value", [None])[0]
    return report["00001002"]["Value"][0], report["00001000"]["Value"][0], state


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_events_workitem_lifecycle_arrive_in_order(dicomweb_client, channel):
    uid, _ = create(dicomweb_client)
    with connect(f"{channel.url}/subscribers/WATCHER") as ws:
        dicomweb_client.post(f"/workitems/{uid}/subscribers/WATCHER", status=201)
        tuid = generate_uid()
        put_state(dicomweb_client, uid, "IN PROGRESS", tuid)
        progress = completion_dataset()
        item = {"00741004": {"vr": "DS", "Value": [75]}}
        payload = progress.to_json_dict()
        payload["00741002"] = {"vr": "SQ", "Value": [item]}
        dicomweb_client.post(f"/workitems/{uid}?{tuid}", json.dumps(payload), headers=JSON, status=200)
        put_state(dicomweb_client, uid, "COMPLETED", tuid)
        reports = receive(ws, 4)
    assert [summary(r) for r in reports] == [
        (1, uid, "SCHEDULED"), (1, uid, "IN PROGRESS"), (3, uid, None), (1, uid, "COMPLETED")]
    assert reports[2]["00741002"]["Value"][0]["00741004"]["Value"] == [75]
    ids = [r["00000110"]["Value"][0] for r in reports]
    assert ids == sorted(ids) and len(set(ids)) == 4
    assert all(r["00000002"]["Value"] == [workflow.UPS_PUSH_SOP_CLASS] for r in reports)


def test_events_queued_while_disconnected_arrive_after_reconnect(dicomweb_app, dicomweb_client, channel):
    uid, _ = create(dicomweb_client)
    with connect(f"{channel.url}/subscribers/WATCHER") as ws:
        dicomweb_client.post(f"/workitems/{uid}/subscribers/WATCHER", status=201)
        assert summary(receive(ws, 1)[0]) == (1, uid, "SCHEDULED")
        # Delivery is at-least-once: an event is forgotten only after the pong that follows it.
        wait_until(lambda: dicomweb_app.ctx.workitems.pending_events("WATCHER", 10) == [], "the acknowledgement")
    tuid = generate_uid()
    put_state(dicomweb_client, uid, "IN PROGRESS", tuid)  # nobody connected: queued
    dicomweb_client.post(f"/workitems/{uid}/subscribers/PERFORMER", status=201)
    dicomweb_client.post(f"/workitems/{uid}/cancelrequest", json.dumps({"00741238": {"vr": "LT", "Value": ["stop"]}}),
                         headers=JSON, status=202)
    with connect(f"{channel.url}/subscribers/WATCHER") as ws:
        reports = receive(ws, 2)
        wait_until(lambda: dicomweb_app.ctx.workitems.pending_events("WATCHER", 10) == [], "the acknowledgement")
    assert [summary(r) for r in reports] == [(1, uid, "IN PROGRESS"), (2, uid, None)]
    assert reports[1]["00741238"]["Value"] == ["stop"]


def test_events_new_workitem_reaches_global_and_matching_filtered_subscribers(dicomweb_client, channel):
    dicomweb_client.post(f"/workitems/{GLOBAL}/subscribers/MONITOR", status=201)
    dicomweb_client.post(f"/workitems/{workflow.FILTERED_SUBSCRIPTION_UID}/subscribers/MRROOM"
                         "?filter=ScheduledStationNameCodeSequence.CodeValue=MR1", status=201)
    with connect(f"{channel.url}/subscribers/MONITOR") as monitor, \
            connect(f"{channel.url}/subscribers/MRROOM") as mr_room:
        ct, _ = create(dicomweb_client, workitem_dataset("CT1"))
        mr, _ = create(dicomweb_client, workitem_dataset("MR1"))
        seen = [summary(r) for r in receive(monitor, 4)]
        mr_seen = receive(mr_room, 2)
    assert seen == [(1, ct, "SCHEDULED"), (5, ct, None), (1, mr, "SCHEDULED"), (5, mr, None)]
    assert [summary(r) for r in mr_seen] == [(1, mr, "SCHEDULED"), (5, mr, None)]
    assert mr_seen[1]["00404025"]["Value"][0]["00080100"]["Value"] == ["MR1"]


def test_events_frames_a_client_sends_do_not_stop_acknowledgement(dicomweb_app, dicomweb_client):
    # Unread, more than 16 client messages made the library stop reading the socket, pongs (the
    # acknowledgements) included: every batch then timed out and was sent again for ever.
    store = dicomweb_app.ctx.workitems
    uid, _ = create(dicomweb_client)
    with EventChannel(store, poll_interval=0.2, ack_timeout=3.0) as running:
        with connect(f"{running.url}/subscribers/WATCHER") as ws:
            for n in range(40):
                ws.send(json.dumps({"ack": n}))
            dicomweb_client.post(f"/workitems/{uid}/subscribers/WATCHER", status=201)
            assert summary(receive(ws, 1)[0]) == (1, uid, "SCHEDULED")
            wait_until(lambda: store.pending_events("WATCHER", 10) == [], "the acknowledgement")


@pytest.mark.parametrize("how", ["workitem", "global"])
def test_events_queued_for_an_ae_go_when_it_unsubscribes(dicomweb_client, channel, how):
    uid, _ = create(dicomweb_client)
    other, _ = create(dicomweb_client)
    dicomweb_client.post(f"/workitems/{uid}/subscribers/WATCHER", status=201)  # queued: SCHEDULED
    put_state(dicomweb_client, uid, "IN PROGRESS", generate_uid())           # queued: IN PROGRESS
    if how == "workitem":
        dicomweb_client.delete(f"/workitems/{uid}/subscribers/WATCHER", status=200)
    else:
        dicomweb_client.delete(f"/workitems/{GLOBAL}/subscribers/WATCHER", status=200)
    dicomweb_client.post(f"/workitems/{other}/subscribers/WATCHER", status=201)  # the next event it may get
    with connect(f"{channel.url}/subscribers/WATCHER") as ws:
        assert summary(receive(ws, 1)[0]) == (1, other, "SCHEDULED")


def test_events_restart_delivers_queued_events_then_scp_status_change(tmp_path):
    settings = {"data_dir": str(tmp_path / "data"), "fsync": "false", "sqlite_synchronous": "normal"}
    app = make_app(settings)
    client = webtest.TestApp(app)
    uid, _ = create(client)
    client.post(f"/workitems/{uid}/subscribers/WATCHER", status=201)
    put_state(client, uid, "IN PROGRESS", generate_uid())
    app.close()
    app = make_app(settings)
    try:
        with EventChannel(app.ctx.workitems) as running, connect(f"{running.url}/subscribers/WATCHER") as ws:
            reports = receive(ws, 3)
    finally:
        app.close()
    assert [summary(r) for r in reports] == [(1, uid, "SCHEDULED"), (1, uid, "IN PROGRESS"),
                                             (4, workflow.GLOBAL_SUBSCRIPTION_UID, None)]
    assert reports[2]["00741242"]["Value"] == ["RESTARTED"]


def test_events_second_connection_same_ae_closes_the_first(dicomweb_app, dicomweb_client, channel):
    uid, _ = create(dicomweb_client)
    with connect(f"{channel.url}/subscribers/WATCHER") as old:
        dicomweb_client.post(f"/workitems/{uid}/subscribers/WATCHER", status=201)
        assert summary(receive(old, 1)[0]) == (1, uid, "SCHEDULED")  # the first connection is being served
        wait_until(lambda: dicomweb_app.ctx.workitems.pending_events("WATCHER", 10) == [], "the acknowledgement")
        with connect(f"{channel.url}/subscribers/WATCHER") as new:
            with pytest.raises(ConnectionClosed) as closed:
                old.recv(timeout=DEADLINE)
            assert closed.value.rcvd.code == 4000
            put_state(dicomweb_client, uid, "IN PROGRESS", generate_uid())
            assert summary(receive(new, 1)[0]) == (1, uid, "IN PROGRESS")


@pytest.mark.parametrize("path", ["/", "/subscribers/", "/other/WATCHER", "/subscribers/" + "A" * 17,
                                  "/subscribers/A%5CB"])
def test_events_handshake_other_path_returns_404(channel, path):
    with pytest.raises(InvalidStatus) as refused:
        connect(channel.url + path, open_timeout=DEADLINE)
    assert refused.value.response.status_code == 404


def test_events_path_with_proxy_prefix_names_the_subscriber():
    assert aetitle_of("/dicomweb/ws/subscribers/CT%20ROOM") == "CT ROOM"
    assert aetitle_of("/subscribers/AE1?x=1") == "AE1"
    assert aetitle_of("/subscribers/AE1/extra") is None


def test_events_command_serves_queued_events(tmp_path):
    data = str(tmp_path / "data")
    app = make_app({"data_dir": data, "fsync": "false"})
    client = webtest.TestApp(app)
    uid, _ = create(client)
    client.post(f"/workitems/{uid}/subscribers/WATCHER", status=201)
    app.close()
    proc = subprocess.Popen([sys.executable, "-m", "dicomweb_wsgi", "events", "--data", data, "--listen",
                             "127.0.0.1:0", "--max-seconds", "60"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ})
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline()]
        while "events on" not in lines[-1] and lines[-1] and len(lines) < 50:
            lines.append(proc.stdout.readline())
        m = re.search(r"events on (ws://127\.0\.0\.1:\d+)/subscribers/", lines[-1])
        assert m, lines
        with connect(f"{m.group(1)}/subscribers/WATCHER") as ws:
            reports = receive(ws, 2)
        assert [summary(r)[0] for r in reports] == [1, 4]
    finally:
        proc.terminate()
        proc.wait(timeout=DEADLINE)


def test_events_serve_with_events_listen_runs_the_channel_beside_the_app(tmp_path):
    ini = tmp_path / "dicomweb.ini"
    ini.write_text("[app:main]\ndicomweb.events_listen = 127.0.0.1:0\ndicomweb.fsync = false\n")
    proc = subprocess.Popen([sys.executable, "-m", "dicomweb_wsgi", "serve", "--config", str(ini), "--data",
                             str(tmp_path / "data"), "--listen", "127.0.0.1:0", "--max-seconds", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not any("serving" in line for line in lines) and len(lines) < 50:
            lines.append(proc.stdout.readline())
        output = "".join(lines)
        ws_url = re.search(r"events on (ws://127\.0\.0\.1:\d+)/subscribers/", output)
        http_url = re.search(r"serving .* on (http://127\.0\.0\.1:\d+)", output)
        assert ws_url and http_url, output
        uid = generate_uid()
        request = urllib.request.Request(f"{http_url.group(1)}/workitems?{uid}", method="POST",
                                         data=workitem_body(), headers=JSON)
        assert urllib.request.urlopen(request, timeout=DEADLINE).status == 201
        with connect(f"{ws_url.group(1)}/subscribers/WATCHER") as ws:
            request = urllib.request.Request(f"{http_url.group(1)}/workitems/{uid}/subscribers/WATCHER", method="POST")
            assert urllib.request.urlopen(request, timeout=DEADLINE).status == 201
            assert summary(receive(ws, 1)[0]) == (1, uid, "SCHEDULED")
    finally:
        proc.terminate()
        proc.wait(timeout=DEADLINE)


def workitem_body() -> bytes:
    return json.dumps(workitem_dataset().to_json_dict()).encode()


def test_events_serve_bad_events_listen_exits_2(tmp_path):
    ini = tmp_path / "dicomweb.ini"
    ini.write_text("[app:main]\ndicomweb.events_listen = nohost\n")
    result = subprocess.run([sys.executable, "-m", "dicomweb_wsgi", "serve", "--config", str(ini), "--data",
                             str(tmp_path / "data"), "--listen", "127.0.0.1:0", "--max-seconds", "30"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "HOST:PORT" in result.stderr



# -- authentication on the handshake (the channel asks for what the server asks for) ------------------

@pytest.fixture
def secured_channel(dicomweb_client_factory, tmp_path):
    from dicomweb_wsgi.auth import Authenticator, hash_password, hash_token, update_credentials
    from dicomweb_wsgi.config import load_settings

    users, tokens = str(tmp_path / "users"), str(tmp_path / "tokens")
    update_credentials(users, "reader", ["read"], hash_password("r-secret", n=1 << 10))
    update_credentials(tokens, "modality", ["write"], hash_token("tok-modality"))
    client = dicomweb_client_factory(auth_users_file=users, auth_tokens_file=tokens)
    settings = load_settings({"data_dir": str(tmp_path / "unused"), "auth_users_file": users,
                              "auth_tokens_file": tokens})
    with EventChannel(client.app.ctx.workitems, poll_interval=0.2,
                      authenticator=Authenticator(settings)) as running:
        yield running, client


def _basic(user: str, password: str) -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize("headers, status", [
    ({}, 401),
    (_basic("reader", "wrong"), 401),
    ({"Authorization": "Bearer not-a-token"}, 401),
    ({"Authorization": "Bearer tok-modality"}, 403),  # a modality's token may store, not read events
])
def test_events_handshake_without_the_read_role_is_refused(secured_channel, headers, status):
    running, _ = secured_channel
    with pytest.raises(InvalidStatus) as refused:
        with connect(f"{running.url}/subscribers/WATCHER", additional_headers=headers):
            pass
    assert refused.value.response.status_code == status
    if status == 401:
        assert refused.value.response.headers["WWW-Authenticate"].startswith('Basic realm="dicomweb"')


def test_events_handshake_with_credentials_delivers_reports(secured_channel):
    running, client = secured_channel
    auth = _basic("reader", "r-secret")
    writer = {"Authorization": "Bearer tok-modality"}
    uid = generate_uid()
    client.post(f"/workitems?{uid}", json.dumps(workitem_dataset().to_json_dict()),
                headers={**JSON, **_basic("reader", "r-secret")}, status=403)
    client.post(f"/workitems?{uid}", json.dumps(workitem_dataset().to_json_dict()), headers={**JSON, **writer},
                status=201)
    with connect(f"{running.url}/subscribers/WATCHER", additional_headers=auth) as ws:
        client.post(f"/workitems/{uid}/subscribers/WATCHER", headers=writer, status=201)
        assert summary(receive(ws, 1)[0])[:2] == (1, uid)


@pytest.mark.parametrize("auth, refused", [(False, True), (True, False)])
def test_events_listen_on_a_network_address_needs_authentication(tmp_path, auth, refused):
    from dicomweb_wsgi.__main__ import check_listen
    from dicomweb_wsgi.config import ConfigError, load_settings

    options = {"data_dir": str(tmp_path), "events_listen": "0.0.0.0:8043"}
    if auth:
        options["auth_tokens_file"] = str(tmp_path / "tokens")
    settings = load_settings(options)
    if refused:
        with pytest.raises(ConfigError, match="UPS event channel"):
            check_listen("127.0.0.1", settings)
    else:
        check_listen("127.0.0.1", settings)


def test_events_channel_started_for_serve_asks_for_the_servers_credentials(dicomweb_app, tmp_path):
    from dicomweb_wsgi.auth import hash_token, update_credentials
    from dicomweb_wsgi.config import load_settings
    from dicomweb_wsgi.events import start_event_channel

    tokens = str(tmp_path / "tokens")
    update_credentials(tokens, "viewer", ["read"], hash_token("tok-viewer"))
    settings = load_settings({"data_dir": str(tmp_path / "d"), "auth_tokens_file": tokens,
                              "events_listen": "127.0.0.1:0"})
    running = start_event_channel(settings, dicomweb_app.ctx.workitems)
    try:
        with pytest.raises(InvalidStatus) as refused:
            with connect(f"{running.url}/subscribers/WATCHER"):
                pass
        assert refused.value.response.status_code == 401
        with connect(f"{running.url}/subscribers/WATCHER",
                     additional_headers={"Authorization": "Bearer tok-viewer"}) as ws:
            assert ws.protocol.state.name == "OPEN"
    finally:
        running.stop()
