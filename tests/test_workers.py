"""``serve --workers N`` on live servers: several processes answer on one port and share one data folder,
a dead worker is replaced, the parent's SIGTERM stops everything (finishing a request in flight) and frees
the port, its SIGKILL takes the workers with it, and the UPS event channel in worker 0 delivers, in order,
the events of changes made through the other worker.

Which process answers is shown with job control, not with anything added to responses: while every worker
but one is stopped (SIGSTOP), a new connection can only be accepted by that one.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Iterator

import pytest
import requests
from pydicom.uid import generate_uid
from websockets.sync.client import connect

from dicomweb_wsgi import workers, workflow
from dicomweb_wsgi.accept_balance import NOT_SERVING, ConnectionCounts
from dicomweb_wsgi.workers import Supervisor, bind_listeners, serve_until_stopped
from dicomweb_wsgi.testing import dataset_bytes, make_dataset

from .serverproc import ServerProcess, process_gone, process_state
from .test_concurrency import ROUNDS, check_final_state, make_pool, run_clients
from .test_crash import SINGLE_PART, STOW_TYPE, Sent, audit_dir, instance_url, same_bytes, stow_chunks
from .test_ups import GLOBAL, JSON, body, completion_dataset, state_body, workitem_dataset

DEADLINE = 30.0
WORKERS_2 = ("--workers", "2")


def wait_for(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def stopped(pids: list[int]) -> Iterator[None]:
    """Stop these processes (SIGSTOP) for the block; they continue afterwards whatever happens."""
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        for pid in pids:
            wait_for(lambda pid=pid: process_state(pid) == "T", f"process {pid} to stop")
        yield
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


def fresh_get(url: str, path: str = "/studies", **kwargs) -> requests.Response:
    """A request on a new connection (closed afterwards), so whichever worker runs now accepts it."""
    return requests.get(url + path, headers={"Connection": "close", **kwargs.pop("headers", {})}, timeout=DEADLINE,
                        **kwargs)


def store(url: str, batch: list[Sent], session: requests.Session | None = None) -> requests.Response:
    post = (session or requests).post
    return post(f"{url}/studies", data=b"".join(stow_chunks(batch)), headers={"Content-Type": STOW_TYPE},
                timeout=DEADLINE)


def new_instance(study: str | None = None) -> Sent:
    ds = make_dataset(study_uid=study)
    return Sent(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, dataset_bytes(ds))


def workers_of(server: ServerProcess, count: int = 2) -> list[int]:
    seen: list[int] = []

    def counted() -> bool:
        seen[:] = server.children()  # one look per check, and the answer is that look
        return len(seen) == count
    wait_for(counted, f"{count} workers")
    return list(seen)


def port_is_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port any more (what a new server start needs)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen(1)
        except OSError:
            return False
    return True


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


# -- which processes serve --------------------------------------------------------------------------

def test_workers_each_worker_serves_alone_and_all_share_one_data_folder(tmp_path):
    with ServerProcess(str(tmp_path / "data"), extra=WORKERS_2, max_seconds=300) as server:
        assert "with 2 worker processes" in "".join(server.startup_output)
        first, second = workers_of(server)
        sent = new_instance()
        with stopped([second]):  # only `first` can accept: it stores
            assert store(server.url, [sent]).status_code == 200
        with stopped([first]):  # only `second` can accept: it finds and returns what `first` stored
            resp = requests.get(instance_url(server.url, sent), headers={"Accept": SINGLE_PART,
                                                                          "Connection": "close"}, timeout=DEADLINE)
            assert same_bytes(resp, sent)
            found = fresh_get(server.url, params={"StudyInstanceUID": sent.study_uid})
            assert [s["0020000D"]["Value"] for s in found.json()] == [[sent.study_uid]]
        assert server.children() == [first, second]  # stopping and continuing replaced nobody


def keep_alive(port: int) -> socket.socket:
    """A new connection that has been answered once (so a worker has accepted it) and stays open."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
    assert answers(conn)
    return conn


def answers(conn: socket.socket, timeout: float = DEADLINE) -> bool:
    """Whether a GET on this open connection is answered within ``timeout``."""
    conn.settimeout(timeout)
    conn.sendall(b"GET /studies HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    try:
        return read_head(conn).startswith(b"HTTP/1.1 200 ")
    except socket.timeout:
        return False
    finally:
        conn.settimeout(DEADLINE)


def test_workers_new_connections_go_to_the_worker_holding_fewer(tmp_path):
    """accept_balance.py: a worker holding more connections leaves new ones to the other; by chance
    alone, three new connections would all land on the idle worker one time in eight."""
    with ServerProcess(str(tmp_path / "data"), extra=WORKERS_2, max_seconds=300) as server:
        first, second = workers_of(server)
        with stopped([second]):  # `first` takes these (after its grace, as `second` holds fewer)
            held = [keep_alive(server.port) for _ in range(3)]
        wait_for(lambda: process_state(second) == "S", "the continued worker to wait for work")
        fresh = [keep_alive(server.port) for _ in range(3)]
        try:
            with stopped([first]):
                assert all(answers(conn) for conn in fresh)  # `second` holds the new ones ...
                assert not answers(held[0], timeout=0.5)  # ... and `first`, stopped, the old ones
            assert read_head(held[0]).startswith(b"HTTP/1.1 200 ")  # answered once `first` continues
        finally:
            for conn in held + fresh:
                conn.close()


def test_workers_concurrent_stows_over_many_connections_land_exactly_once(tmp_path):
    pool = make_pool(random.Random(3))
    data_dir = str(tmp_path / "data")
    with ServerProcess(data_dir, extra=WORKERS_2, max_seconds=300) as server:
        assert len(workers_of(server)) == 2
        tally = run_clients([server.url], pool)  # 8 writers (the same instance at the same moment) + 4 readers
        check_final_state(server.url, data_dir, pool, tally, ROUNDS)
        output = "".join(server.output)
    assert "database is locked" not in output and "Traceback" not in output, output[-3000:]


# -- supervision --------------------------------------------------------------------------------------

def test_workers_killed_worker_is_replaced_and_the_server_keeps_answering(tmp_path):
    with ServerProcess(str(tmp_path / "data"), extra=WORKERS_2, max_seconds=300) as server:
        victim, survivor = workers_of(server)
        os.kill(victim, signal.SIGKILL)
        assert fresh_get(server.url).status_code == 200  # the survivor answers meanwhile
        others: list[int] = []

        def replaced() -> bool:
            # One look at the children per check: a killed worker still tearing down is listed
            # (not yet a zombie) in one look and gone in the next.
            pids = server.children()
            others[:] = [pid for pid in pids if pid not in (victim, survivor)]
            return process_gone(victim) and survivor in pids and len(others) == 1
        wait_for(replaced, "a replacement worker")
        replacement = others[0]
        with stopped([survivor]):  # the replacement serves on its own
            sent = new_instance()
            assert store(server.url, [sent]).status_code == 200
            assert same_bytes(requests.get(instance_url(server.url, sent), headers={"Accept": SINGLE_PART,
                              "Connection": "close"}, timeout=DEADLINE), sent)
        assert replacement != victim
        wait_for(lambda: "was killed by SIGKILL" in "".join(server.output), "the restart to be logged")
        assert re.search(rf"worker \d \(pid {victim}\) was killed by SIGKILL .*restarting it in", "".join(server.output))


def read_head(conn: socket.socket) -> bytes:
    """One response: its head and the Content-Length bytes of body that follow it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(rest) < length:
        chunk = conn.recv(65536)
        assert chunk, data
        rest += chunk
    return head


@pytest.mark.parametrize("count", [1, 2])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_workers_sigterm_to_parent_finishes_the_request_in_flight_stops_all_and_frees_the_port(tmp_path, signum,
                                                                                              count):
    # workers = 1 (one process, what a small appliance runs) stops as gracefully as several.
    data_dir = str(tmp_path / "data")
    server = ServerProcess(data_dir, extra=("--workers", str(count)), max_seconds=300)
    try:
        workers = workers_of(server) if count > 1 else []
        sent = new_instance()
        payload = b"".join(stow_chunks([sent]))
        with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as conn:
            conn.sendall(b"GET /studies HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # a worker has accepted it
            assert read_head(conn).startswith(b"HTTP/1.1 200 ")
            conn.sendall(f"POST /studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {STOW_TYPE}\r\n"
                         f"Accept: application/dicom+json\r\nContent-Length: {len(payload)}\r\n\r\n".encode())
            conn.sendall(payload[:1000])
            server.proc.send_signal(signum)
            # Every process has closed the listening socket: the workers are stopping now.
            wait_for(lambda: refuses_connections(server.port), "the listening socket to close")
            conn.sendall(payload[1000:])
            answer = read_head(conn)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        assert server.proc.wait(timeout=DEADLINE) == 0
        assert all(process_gone(pid) for pid in workers)
        assert port_is_free(server.port)
    finally:
        server.stop()
    found, _ = audit_dir(data_dir)
    assert found.instances == 1 and found.consistent, found


def test_workers_sigkill_to_parent_makes_the_workers_exit(tmp_path):
    server = ServerProcess(str(tmp_path / "data"), extra=WORKERS_2, max_seconds=300)
    try:
        workers = workers_of(server)
        server.kill()
        wait_for(lambda: all(process_gone(pid) for pid in workers), "the orphaned workers to exit")
        wait_for(lambda: port_is_free(server.port), "the port to be free")
    finally:
        server.stop()
        for pid in workers:  # never leave one behind, even if the test failed
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_workers_max_seconds_stops_the_parent_and_its_workers(tmp_path):
    server = ServerProcess(str(tmp_path / "data"), extra=WORKERS_2, max_seconds=4)
    try:
        workers = workers_of(server)
        assert server.proc.wait(timeout=DEADLINE) == 0
        assert all(process_gone(pid) for pid in workers)
    finally:
        server.stop()


def test_supervisor_reports_every_worker_that_ended_to_on_exit():
    """The parent learns of each ended worker (``on_exit``: accept_balance clears its slot with it),
    whether it ended by itself or was stopped."""
    ended: list[int] = []

    def target(index: int, ready: Callable[[], None]) -> int:
        ready()
        time.sleep(0.2 if index == 1 else 60)  # worker 1 ends by itself; worker 0 runs until stopped
        return 0

    sockets = bind_listeners("127.0.0.1", 0, 16)
    supervisor = Supervisor(2, target, sockets, max_seconds=1.5, on_exit=ended.append)
    assert supervisor.run() == 0
    assert ended.count(1) >= 1 and ended.count(0) == 1, ended


def test_a_stopping_worker_retires_its_slot_once_its_listeners_are_closed():
    """serve_until_stopped calls ``on_listeners_closed`` (accept_balance: the others stop deferring to it)."""
    import waitress

    counts = ConnectionCounts(1)
    sockets = bind_listeners("127.0.0.1", 0, 16)
    pid = os.fork()
    if pid == 0:  # the child must never return into pytest
        code = 1
        try:
            def app(env: dict, start: Callable) -> list[bytes]:
                start("200 OK", [("Content-Length", "0")])
                return [b""]
            server = waitress.create_server(app, sockets=sockets, threads=1)
            counts[0] = 5
            serve_until_stopped(server, drain_seconds=1, on_listeners_closed=lambda: counts.retire(0))
            code = 0
        finally:
            os._exit(code)
    try:
        wait_for(lambda: counts[0] == 5, "the child to start")
        # An answer means its loop runs, so its SIGTERM handler is in place (installed before the loop).
        port = sockets[0].getsockname()[1]
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=DEADLINE).status_code == 200
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
    finally:
        for sock in sockets:
            sock.close()
    assert os.waitstatus_to_exitcode(status) == 0
    assert counts[0] == NOT_SERVING


# -- configuration -------------------------------------------------------------------------------------

def test_workers_one_is_a_single_process_and_the_ini_key_sets_the_count(tmp_path):
    ini = tmp_path / "site.ini"
    ini.write_text("[server:main]\nworkers = 2\nthreads = 4\n")
    with ServerProcess(str(tmp_path / "data"), config=str(ini), extra=("--workers", "1"), max_seconds=120) as one:
        assert fresh_get(one.url).status_code == 200
        assert one.children() == []
        assert "worker processes" not in "".join(one.startup_output)
    with ServerProcess(str(tmp_path / "data"), config=str(ini), max_seconds=120) as two:
        assert len(workers_of(two)) == 2
        assert fresh_get(two.url).status_code == 200


@pytest.mark.parametrize("flag, ini_text, message", [
    (("--workers", "0"), "", "workers must be between 1 and 64, not 0"),
    ((), "[server:main]\nworkers = many\n", "workers must be a whole number, not 'many'"),
    (("--workers", "2"), "[server:main]\nthreadz = 4\n", "threadz"),
])
def test_workers_invalid_settings_exit_2_with_a_message(tmp_path, flag, ini_text, message):
    ini = tmp_path / "site.ini"
    ini.write_text(ini_text)
    result = subprocess.run([sys.executable, "-m", "dicomweb_wsgi", "serve", "--config", str(ini), "--data",
                             str(tmp_path / "d"), "--listen", "127.0.0.1:0", "--max-seconds", "30", *flag],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_workers_worker_that_cannot_start_ends_the_server_with_status_2(tmp_path):
    with socket.socket() as taken:  # worker 0 cannot run the event channel on a port in use
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        ini = tmp_path / "site.ini"
        ini.write_text(f"[app:main]\ndicomweb.events_listen = 127.0.0.1:{taken.getsockname()[1]}\n")
        result = subprocess.run([sys.executable, "-m", "dicomweb_wsgi", "serve", "--config", str(ini), "--data",
                                 str(tmp_path / "d"), "--listen", "127.0.0.1:0", "--max-seconds", "60",
                                 "--workers", "2"], capture_output=True, text=True, timeout=90)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "cannot run the event channel" in result.stderr and "worker 0 could not start" in result.stderr
    assert "serving" not in result.stdout


# -- the UPS event channel -------------------------------------------------------------------------------

def ups_lifecycle(session: requests.Session, url: str, uid: str) -> None:
    """Create a workitem, claim it, set its final attributes and complete it (PS3.18 §11.4, §11.6, §11.7)."""
    def ok(resp: requests.Response, status: int) -> None:
        assert resp.status_code == status, resp.text[:300]
    ok(session.post(f"{url}/workitems?{uid}", body(workitem_dataset()), headers=JSON, timeout=DEADLINE), 201)
    tuid = generate_uid()
    ok(session.put(f"{url}/workitems/{uid}/state", state_body("IN PROGRESS", tuid), headers=JSON,
                   timeout=DEADLINE), 200)
    ok(session.post(f"{url}/workitems/{uid}?{tuid}", body(completion_dataset()), headers=JSON, timeout=DEADLINE), 200)
    ok(session.put(f"{url}/workitems/{uid}/state", state_body("COMPLETED", tuid), headers=JSON,
                   timeout=DEADLINE), 200)


def summary(report: dict) -> tuple:
    state = report.get("00741000", {}).get("Value", [None])[0]
    return report["00001002"]["Value"][0], state


def test_workers_event_channel_delivers_changes_made_through_every_worker_in_order(tmp_path):
    ini = tmp_path / "site.ini"
    ini.write_text("[app:main]\ndicomweb.events_listen = 127.0.0.1:0\n"
                   "dicomweb.fsync = false\ndicomweb.sqlite_synchronous = normal\n")
    with ServerProcess(str(tmp_path / "data"), config=str(ini), extra=WORKERS_2, max_seconds=300) as server:
        startup = "".join(server.startup_output)
        ws_url = re.search(r"events on (ws://127\.0\.0\.1:\d+)/subscribers/", startup).group(1)
        channel_pid = int(re.search(r"worker 0 started \(pid (\d+)\)", startup).group(1))
        other_pid = next(pid for pid in workers_of(server) if pid != channel_pid)
        # Keep-alive sessions opened while one worker is stopped stay with the other: half of the clients
        # talk to worker 0 (which runs the channel), half to worker 1 (whose commits it cannot hear).
        sessions = []
        for pinned_away_from in (channel_pid, other_pid, channel_pid, other_pid, channel_pid, other_pid):
            with stopped([pinned_away_from]):
                session = requests.Session()
                assert session.get(f"{server.url}/workitems", timeout=DEADLINE).status_code in (200, 204)
                sessions.append(session)
        with connect(f"{ws_url}/subscribers/WATCHER") as ws:
            assert sessions[0].post(f"{server.url}/workitems/{GLOBAL}/subscribers/WATCHER",
                                    timeout=DEADLINE).status_code == 201
            uids = [[generate_uid() for _ in range(3)] for _ in sessions]
            errors: list[BaseException] = []

            def client(number: int) -> None:
                try:
                    for uid in uids[number]:
                        ups_lifecycle(sessions[number], server.url, uid)
                except BaseException as exc:  # reported by the main thread
                    errors.append(exc)
            threads = [threading.Thread(target=client, args=(n,)) for n in range(len(sessions))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert errors == []
            expected = {uid for row in uids for uid in row}
            reports: list[dict] = []
            completed: set[str] = set()
            while completed != expected:
                report = json.loads(ws.recv(timeout=DEADLINE))
                reports.append(report)
                if summary(report) == (1, "COMPLETED"):
                    completed.add(report["00001000"]["Value"][0])
        for session in sessions:
            session.close()
    ids = [r["00000110"]["Value"][0] for r in reports]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # queue order, nothing twice
    by_uid: dict[str, list[tuple]] = {}
    for report in reports:
        by_uid.setdefault(report["00001000"]["Value"][0], []).append(summary(report))
    assert set(by_uid) == expected
    # State reports, and the Assigned report of a workitem created with a station (PS3.4 CC.2.4).
    lifecycle = [(1, "SCHEDULED"), (5, None), (1, "IN PROGRESS"), (1, "COMPLETED")]
    assert all(events == lifecycle for events in by_uid.values()), by_uid
    assert all(r["00000002"]["Value"] == [workflow.UPS_PUSH_SOP_CLASS] for r in reports)



# -- the supervisor keeps a server that cannot serve from looking alive ----------------------------------

def _incarnation(folder: str, index: int) -> int:
    """How many times worker ``index`` has been started (counted in a file: each start is a new process)."""
    path = os.path.join(folder, f"worker-{index}")
    with open(path, "a+") as fh:
        fh.write("x")
        fh.seek(0)
        return len(fh.read())


def test_a_replacement_that_keeps_failing_to_start_ends_the_server(tmp_path, monkeypatch):
    # Worker 1 serves, dies, and then cannot start again (a damaged index, a port taken): the parent
    # must end with the worker's status so the service manager sees it, not hold a dead port for ever.
    monkeypatch.setattr(workers, "BACKOFF_FIRST", 0.01)
    monkeypatch.setattr(workers, "BACKOFF_MAX", 0.05)
    monkeypatch.setattr(workers, "MAX_FAILED_STARTS", 3)
    folder = str(tmp_path)

    def target(index: int, ready: Callable[[], None]) -> int:
        if index == 0:
            ready()
            time.sleep(60)
            return 0
        if _incarnation(folder, index) == 1:
            ready()
            time.sleep(0.1)
            return 0
        return 2  # a storage error at start-up

    sockets = bind_listeners("127.0.0.1", 0, 16)
    started = time.monotonic()
    assert Supervisor(2, target, sockets, max_seconds=30).run() == 2
    assert time.monotonic() - started < 10
    assert _incarnation(folder, 1) - 1 == 1 + 3  # served once, then three failed starts


def test_a_worker_whose_heartbeat_stops_is_killed_and_replaced(tmp_path, monkeypatch):
    # A worker alive but stuck (a C call holding the GIL, a read from a failing disk; SIGSTOP here)
    # sends no heartbeat: the parent kills and replaces it.
    monkeypatch.setattr(workers, "HEARTBEAT_SECONDS", 0.05)
    monkeypatch.setattr(workers, "LIVENESS_SECONDS", 0.6)
    monkeypatch.setattr(workers, "BACKOFF_FIRST", 0.01)
    folder = str(tmp_path)

    def target(index: int, ready: Callable[[], None]) -> int:
        ready()
        if index == 1 and _incarnation(folder, 1) == 1:
            os.kill(os.getpid(), signal.SIGSTOP)  # hung: alive, silent
        while True:
            time.sleep(0.05)
            ready()  # the heartbeat serve_until_stopped sends

    ended: list[int] = []
    sockets = bind_listeners("127.0.0.1", 0, 16)
    assert Supervisor(2, target, sockets, max_seconds=3, on_exit=ended.append).run() == 0
    assert _incarnation(folder, 1) - 1 >= 2  # the hung one was replaced
    assert ended.count(1) >= 2 and ended.count(0) == 1, ended


def test_a_failed_fork_while_restarting_is_retried_and_keeps_the_others_serving(monkeypatch):
    import errno

    real_fork = os.fork
    parent = os.getpid()
    forks: list[float] = []

    def flaky_fork() -> int:
        if os.getpid() == parent:
            forks.append(time.monotonic())
            if len(forks) == 3:  # the first restart, after the two first starts
                raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))
        return real_fork()

    def target(index: int, ready: Callable[[], None]) -> int:
        ready()
        time.sleep(0.2 if index == 1 else 60)  # worker 1 keeps ending; worker 0 serves throughout
        return 0

    ended: list[int] = []
    monkeypatch.setattr(workers.os, "fork", flaky_fork)
    monkeypatch.setattr(workers, "BACKOFF_FIRST", 0.05)
    sockets = bind_listeners("127.0.0.1", 0, 16)
    started = time.monotonic()
    assert Supervisor(2, target, sockets, max_seconds=3, on_exit=ended.append).run() == 0
    assert time.monotonic() - started >= 2.5 and len(forks) > 3
    assert ended.count(0) == 1  # worker 0 was stopped only at the end


@pytest.mark.parametrize("count", [1, 2])
def test_sighup_reopens_the_log_files_and_the_server_keeps_serving(tmp_path, count):
    # logrotate moves the file away and sends SIGHUP: every process writes to a new file; nothing stops.
    log_path = tmp_path / "access.log"
    ini = tmp_path / "server.ini"
    ini.write_text(f"""[app:main]
dicomweb.fsync = false

[loggers]
keys = root, access

[handlers]
keys = file

[formatters]
keys = plain

[logger_root]
level = WARNING
handlers =

[logger_access]
level = INFO
handlers = file
qualname = dicomweb_wsgi.access
propagate = 0

[handler_file]
class = FileHandler
args = ({str(log_path)!r}, "a")
formatter = plain

[formatter_plain]
format = %(message)s
""")
    server = ServerProcess(str(tmp_path / "data"), extra=("--config", str(ini), "--workers", str(count)),
                           max_seconds=120)
    try:
        pids = [server.proc.pid] + (workers_of(server) if count > 1 else [])
        for _ in range(4):
            assert requests.get(f"{server.url}/studies/1.1", timeout=DEADLINE).status_code == 404
        wait_for(lambda: log_path.exists() and "/studies/1.1 " in log_path.read_text(), "the first lines")
        log_path.rename(tmp_path / "access.log.1")
        server.proc.send_signal(signal.SIGHUP)
        time.sleep(1.5)  # the parent forwards it; each process reopens on its next loop pass
        for _ in range(8):  # over new connections, so that every worker answers some
            assert requests.get(f"{server.url}/studies/2.2", timeout=DEADLINE).status_code == 404
        wait_for(lambda: log_path.exists() and log_path.read_text().count("/studies/2.2 ") == 8,
                 "new lines in the new file")
        assert "/studies/2.2 " not in (tmp_path / "access.log.1").read_text()
        assert server.proc.poll() is None and all(not process_gone(pid) for pid in pids)
    finally:
        server.stop()


def test_a_worker_killed_by_a_native_crash_leaves_its_python_stack_in_the_log(tmp_path):
    # faulthandler is on in serve (and inherited by the workers): a crash in a codec, Pillow or
    # numpy leaves each thread's Python stack, not only "killed by SIGSEGV".
    server = ServerProcess(str(tmp_path / "data"), extra=WORKERS_2, max_seconds=120)
    try:
        victim = workers_of(server)[1]
        os.kill(victim, signal.SIGSEGV)
        wait_for(lambda: any("was killed by SIGSEGV" in line for line in server.output), "the death to be logged")
        text = "".join(server.output)
        assert "Fatal Python error: Segmentation fault" in text and 'File "' in text
    finally:
        server.stop()
