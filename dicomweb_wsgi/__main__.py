"""Command line: ``dicomweb-wsgi serve | import | check | reindex | gc | stats | add-user | add-token``.

``serve`` with no arguments serves the embedded default (SQLite + files in ./dicomweb-data) on
127.0.0.1:8042 under waitress, in one process. ``--config`` reads an ini file (``conf/dicomweb.ini``):
the ``[app:main]`` section's ``dicomweb.*`` keys and the ``[server:main]`` waitress keys, plus our
``workers`` there (``--workers N``: N processes on one socket, ``workers.py``). ``serve``
refuses a non-loopback address while no authentication is configured, unless
``allow_unauthenticated_remote`` says so. The maintenance commands exit non-zero when something
needs attention (failed imports, an unhealthy archive), so cron and monitoring can act on them.
"""
from __future__ import annotations

import argparse
import configparser
import getpass
import json
import logging
import logging.config
import os
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from .auth import is_loopback, keep_peer_address
from .config import ConfigError, Settings, load_settings
from .storage.base import StorageError

if TYPE_CHECKING:
    from .archive import Archive

DEFAULT_LISTEN = "127.0.0.1:8042"

# waitress settings that keep large STOW bodies in memory-backed buffers instead of many small
# temp-file writes (measured: 0.14-0.6x intake with waitress's 512 KB defaults).
WAITRESS_DEFAULTS: dict[str, Any] = {
    "threads": 8,
    "recv_bytes": 256 * 1024,
    "send_bytes": 1,
    "inbuf_overflow": 64 * 1024 * 1024,
    "outbuf_overflow": 64 * 1024 * 1024,
    "connection_limit": 200,
    "channel_timeout": 300,
    "ident": "dicomweb_wsgi",
}
WAITRESS_INT_KEYS = {"threads", "recv_bytes", "send_bytes", "inbuf_overflow", "outbuf_overflow",
                     "connection_limit", "channel_timeout", "max_request_body_size", "max_request_header_size",
                     "backlog", "cleanup_interval", "asyncore_loop_timeout", "outbuf_high_watermark"}


def read_ini(path: str) -> tuple[dict[str, str], dict[str, str]]:
    """The app settings and the server settings of an ini file.

    A file that is not a valid ini file, or whose logging sections ``logging.config.fileConfig``
    refuses, is a ConfigError naming the file (not a traceback).
    """
    parser = configparser.ConfigParser(interpolation=None)
    try:
        if not parser.read(path):
            raise ConfigError(f"cannot read configuration file {path}")
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not a valid ini file: {_one_line(exc)}") from exc
    app = dict(parser["app:main"]) if parser.has_section("app:main") else {}
    stray = sorted(k for k in app if not k.startswith("dicomweb.") and k not in ("use", "filter-with"))
    if stray:  # a key that lost its prefix (dicomweb_read_only) would otherwise be silently ignored
        raise ConfigError(f"{path} [app:main]: unknown key {', '.join(stray)}; settings are written dicomweb.<key>")
    app = {k: v for k, v in app.items() if k.startswith("dicomweb.")}
    server = dict(parser["server:main"]) if parser.has_section("server:main") else {}
    server.pop("use", None)
    if parser.has_section("loggers"):
        try:
            logging.config.fileConfig(parser, disable_existing_loggers=False)
        except Exception as exc:  # fileConfig evaluates the handlers' args: anything can go wrong, all of it the file's
            what = f"missing section or key {exc}" if isinstance(exc, KeyError) else _one_line(exc)
            raise ConfigError(f"{path}: invalid logging configuration: {what}") from exc
    return app, server


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (configparser's span several), with its type if it has none."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def split_listen(listen: str) -> tuple[str, int]:
    """(host, port) of ``HOST:PORT``; the port must be 0..65535 (0 picks a free one)."""
    host, _, port = listen.rpartition(":")
    if not host or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--listen must be HOST:PORT with a port from 0 to 65535, not {listen!r}")
    return host.strip("[]"), int(port)


PROXY_KEYS = ("trusted_proxy", "trusted_proxy_count", "trusted_proxy_headers", "clear_untrusted_proxy_headers",
              "log_untrusted_proxy_headers")


def load_config(args: argparse.Namespace) -> tuple[Settings, dict[str, Any]]:
    """Settings and waitress options from ``--config`` and ``--data`` (which beats DICOMWEB_DATA_DIR)."""
    app_conf: dict[str, str] = {}
    server_conf: dict[str, Any] = {}
    if args.config:
        app_conf, server_conf = read_ini(args.config)
    if args.data:
        app_conf["dicomweb.data_dir"] = args.data
    return load_settings(app_conf, environ={} if args.data else None), server_conf


def resolve_listen(cli: str | None, server_conf: dict[str, Any], environ: Mapping[str, str]) -> tuple[str, int]:
    """(host, port): ``--listen``, else DICOMWEB_LISTEN, else the ini's listen or host/port, else the default.

    The listen keys are taken out of ``server_conf`` (waitress gets host and port separately).
    """
    listen = server_conf.pop("listen", None)
    host, port = server_conf.pop("host", None), server_conf.pop("port", None)
    if not listen and (host or port):
        listen = f"{host or '127.0.0.1'}:{port or '8042'}"
    return split_listen(cli or environ.get("DICOMWEB_LISTEN") or listen or DEFAULT_LISTEN)


def check_listen(host: str, settings: Settings) -> None:
    """Secure by default: a network address with nobody asked for credentials is refused, for the
    server and for the UPS event channel (``events_listen``), which asks for the same credentials."""
    if settings.allow_unauthenticated_remote:
        return
    if settings.auth_users_file or settings.auth_tokens_file or settings.auth_user_header:
        return
    events_host = split_listen(settings.events_listen)[0] if getattr(settings, "events_listen", "") else ""
    for what, address in (("the UPS event channel on", events_host), ("listen on", host)):
        if address and not is_loopback(address):
            raise ConfigError(f"refusing to {what} {address} without authentication: anyone on the network "
                              "could read patient data. Configure dicomweb.auth_users_file, auth_tokens_file or "
                              "auth_user_header, use 127.0.0.1 behind a proxy, or set "
                              "dicomweb.allow_unauthenticated_remote = true")


def wrap_proxy_handling(app: Any, options: dict[str, Any]) -> Any:
    """Apply waitress's proxy-header handling ourselves, inside a layer that keeps the TCP peer address.

    The peer is what ``auth_trusted_proxies`` is checked against; waitress would overwrite it.
    """
    from waitress.adjustments import Adjustments
    from waitress.proxy_headers import proxy_headers_middleware

    adj = Adjustments(**{k: options.pop(k) for k in PROXY_KEYS if k in options})
    if adj.trusted_proxy or adj.clear_untrusted_proxy_headers:
        app = proxy_headers_middleware(app, trusted_proxy=adj.trusted_proxy,
                                       trusted_proxy_count=adj.trusted_proxy_count,
                                       trusted_proxy_headers=adj.trusted_proxy_headers,
                                       clear_untrusted=adj.clear_untrusted_proxy_headers,
                                       log_untrusted=adj.log_untrusted_proxy_headers)
    options["clear_untrusted_proxy_headers"] = False
    return keep_peer_address(app)


def resolve_workers(cli: int | None, server_conf: dict[str, Any]) -> int:
    """How many server processes: ``--workers``, else the ini's ``[server:main] workers``, else 1.

    The key is taken out of ``server_conf`` (it is ours, not waitress's).
    """
    from .workers import MAX_WORKERS

    text = server_conf.pop("workers", None)
    value: Any = cli if cli is not None else text if text is not None else 1
    try:
        count = int(value)
    except ValueError:
        raise ConfigError(f"[server:main] workers must be a whole number, not {value!r}") from None
    if not 1 <= count <= MAX_WORKERS:
        raise ConfigError(f"workers must be between 1 and {MAX_WORKERS}, not {count}")
    return count


def waitress_options(server_conf: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """WAITRESS_DEFAULTS overridden by the ini's ``[server:main]`` keys (listen and workers taken out)."""
    options: dict[str, Any] = dict(WAITRESS_DEFAULTS)
    for key, value in server_conf.items():
        if key in WAITRESS_INT_KEYS:
            try:
                value = int(value)
            except (TypeError, ValueError):
                raise ConfigError(f"[server:main] {key} must be a whole number, not {value!r}") from None
        options[key] = value
    # waitress must accept at least what the app accepts, or large STOWs fail with its own 413.
    options.setdefault("max_request_body_size", settings.max_request_body)
    return options


def cmd_serve(args: argparse.Namespace) -> int:
    import faulthandler

    import waitress

    from .workers import serve_until_stopped

    # A crash in native code (a codec, Pillow, numpy) then leaves every thread's Python stack in the
    # log instead of only "killed by SIGSEGV"; forked workers inherit it.
    faulthandler.enable()
    settings, server_conf = load_config(args)
    workers = resolve_workers(args.workers, server_conf)
    host, port = resolve_listen(args.listen, server_conf, os.environ)
    check_listen(host, settings)
    options = waitress_options(server_conf, settings)
    if workers > 1:
        return serve_workers(settings, options, host, port, workers, args.max_seconds)

    from .app import make_app

    app = make_app(settings)
    if args.max_seconds:
        timer = threading.Timer(args.max_seconds, os._exit, args=(0,))
        timer.daemon = True
        timer.start()
    try:
        server = waitress.create_server(wrap_proxy_handling(app, options), host=host, port=port, **options)
    except ValueError as exc:  # waitress's word for an unknown or invalid [server:main] key
        app.close()
        raise ConfigError(f"[server:main]: {exc}") from exc
    from .events import start_event_channel  # UPS-RS event channel beside the app, when events_listen is set

    try:
        channel = start_event_channel(settings, app.ctx.workitems)
    except ConfigError:
        app.close()
        raise
    print(f"dicomweb_wsgi serving {os.path.abspath(settings.data_dir)} on "
          f"http://{server.effective_host}:{server.effective_port}", flush=True)
    try:
        serve_until_stopped(server)  # SIGTERM/SIGINT: finish the requests in flight, as workers do
    finally:
        if channel is not None:
            channel.stop()
        app.close()
    return 0


def serve_workers(settings: Settings, options: dict[str, Any], host: str, port: int, count: int,
                  max_seconds: float) -> int:
    """``serve --workers N`` (N > 1): bind here, fork N waitress workers on the socket, supervise them.

    Each worker builds its own app after the fork. Worker 0 also runs the UPS event channel (when
    ``events_listen`` is set), polling the outbox often, since changes made through other workers
    cannot wake it in-process.
    """
    import gc

    import waitress
    from waitress.adjustments import Adjustments

    from . import events
    from .accept_balance import ConnectionCounts, balance_accepts
    from .app import make_app
    from .workers import Supervisor, bind_listeners, listening_dispatchers, serve_until_stopped

    try:
        sockets = bind_listeners(host, port, int(options.get("backlog", 1024)))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    try:
        Adjustments(sockets=sockets, **options)
    except ValueError as exc:  # waitress's word for an unknown or invalid [server:main] key
        for sock in sockets:
            sock.close()
        raise ConfigError(f"[server:main]: {exc}") from exc

    counts = ConnectionCounts(count)  # shared with every worker: see accept_balance.py

    def worker(index: int, ready: Callable[[], None]) -> int:
        try:
            app = make_app(settings)
            channel = None
            try:
                worker_options = dict(options)
                wrapped = wrap_proxy_handling(app, worker_options)
                server = waitress.create_server(wrapped, sockets=sockets, **worker_options)
                balance_accepts(listening_dispatchers(server), counts, index)
                if index == 0:
                    channel = events.start_event_channel(settings, app.ctx.workitems,
                                                         poll_interval=events.CROSS_PROCESS_POLL_S)
                ready()
                serve_until_stopped(server, on_listeners_closed=lambda: counts.retire(index), on_tick=ready)
            finally:
                if channel is not None:
                    channel.stop()
                app.close()
        except (ConfigError, StorageError) as exc:
            return report_error(exc)
        return 0

    shown_host, shown_port = sockets[0].getsockname()[:2]

    def announce() -> None:
        print(f"dicomweb_wsgi serving {os.path.abspath(settings.data_dir)} on http://{shown_host}:{shown_port} "
              f"with {count} worker processes", flush=True)

    # The modules (pydicom, numpy, codecs: ~40 MB) were imported above, before the fork, so the workers
    # share those pages copy-on-write; frozen, the workers' garbage collector leaves them unwritten.
    # Measured idle, 2 workers: 104 -> 82 MB of proportional memory (PSS) for the three processes.
    gc.freeze()
    return Supervisor(count, worker, sockets, max_seconds=max_seconds,
                      on_exit=counts.retire).run(on_ready=announce)


def open_archive(args: argparse.Namespace, *, existing: bool = False) -> Archive:
    """The archive of ``--config``/``--data``; a data folder the OS refuses is a StorageError naming it.
    ``existing``: the folder must already hold an archive (a check of a mistyped path must not
    create an empty one and call it healthy)."""
    from .maintenance import open_archive as open_checked

    settings = load_config(args)[0]
    if existing and not os.path.exists(os.path.join(settings.data_dir, "index.sqlite3")):
        raise StorageError(f"no archive in {os.path.abspath(settings.data_dir)} (no index.sqlite3 there)")
    return open_checked(settings)


def cmd_events(args: argparse.Namespace) -> int:
    from .events import run_event_channel

    return run_event_channel(load_config(args)[0], args.listen, args.max_seconds)


def cmd_gc(args: argparse.Namespace) -> int:
    archive = open_archive(args)
    try:
        removed = archive.gc(grace_seconds=args.grace)
        if os.path.isdir(os.path.join(archive.settings.data_dir, "npi-blobs")):
            removed += archive.npi_gc(grace_seconds=args.grace)
    finally:
        archive.close()
        archive.close_npi()
    print(f"removed {removed} orphan files")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from .maintenance import import_paths

    summary = import_paths(load_config(args)[0], args.paths, actor=f"cli:{_os_user()}", jobs=args.jobs)
    print(f"{summary.line()} ({summary.bytes / 1e6:.1f} MB)")
    return 1 if summary.failed else 0


def cmd_check(args: argparse.Namespace) -> int:
    from .maintenance import Progress

    archive = open_archive(args, existing=True)
    try:
        progress = Progress("check", 0, archive.stats()["bytes"])
        report = archive.check(verify_digests=not args.quick, progress=progress.set_bytes)
        progress.finish()
    finally:
        archive.close()
    state = "current" if report.schema_version == report.schema_expected else f"expected {report.schema_expected}"
    print(f"index schema version {report.schema_version} ({state})")
    for title, items in (("index integrity", report.integrity), ("missing blob", report.missing),
                         ("mismatch", report.mismatched), ("orphan blob", report.orphans)):
        for item in items:
            print(f"{title}: {item}")
    print(f"{report.instances} instances checked: {len(report.missing)} missing, {len(report.mismatched)} "
          f"mismatched, {len(report.orphans)} orphan blobs (dicomweb-wsgi gc removes those older than its "
          f"grace period) -> {'healthy' if report.healthy else 'NOT HEALTHY'}")
    return 0 if report.healthy else 1


def cmd_reindex(args: argparse.Namespace) -> int:
    from .maintenance import Progress

    archive = open_archive(args)
    try:
        progress = Progress("reindex", 0, sum(b.size for b in archive.blobs.iter_blobs()))
        report = archive.reindex(progress=progress.set_bytes)
        progress.finish()
    finally:
        archive.close()
    for item in report.unreadable:
        print(f"not indexed: {item}")
    for item in report.duplicates:
        print(f"duplicate (left for gc): {item}")
    print(f"reindexed {report.indexed} instances; {len(report.unreadable)} blobs could not be indexed, "
          f"{len(report.duplicates)} duplicate copies")
    return 1 if report.unreadable else 0


def cmd_backup(args: argparse.Namespace) -> int:
    from .backup import backup
    from .maintenance import Progress

    archive = open_archive(args, existing=True)
    try:
        total = archive.stats()["bytes"]
    finally:
        archive.close()
    progress = Progress("backup", 0, total)
    try:
        report = backup(archive.settings, args.dest, progress=progress.set_bytes)
    except KeyboardInterrupt:
        print(f"dicomweb-wsgi: backup interrupted; {args.dest} is marked incomplete (the next run clears it)",
              file=sys.stderr)
        return 130
    progress.finish()
    for item in report.replaced:
        print(f"replaced during the backup, copied in its new version: {item}")
    for item in report.dropped:
        print(f"left out: {item}")
    print(f"backed up {report.instances} instances and {report.npi_instances} non-patient instances "
          f"({report.bytes / 1e6:.1f} MB) to {report.dest}")
    return 1 if report.lost else 0


def cmd_stats(args: argparse.Namespace) -> int:
    archive = open_archive(args)
    try:
        stats = archive.stats()
    finally:
        archive.close()
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(f"{'level':<10}{'count':>12}")
    for level in ("studies", "series", "instances"):
        print(f"{level:<10}{stats[level]:>12}")
    print(f"{'bytes':<10}{stats['bytes']:>12}  ({stats['bytes'] / 1e6:.1f} MB)\n")
    print(f"{'modality':<10}{'studies':>10}{'series':>10}{'instances':>12}{'bytes':>16}")
    for modality, row in stats["modalities"].items():
        print(f"{modality:<10}{row['studies']:>10}{row['series']:>10}{row['instances']:>12}{row['bytes']:>16}")
    return 0


def cmd_add_user(args: argparse.Namespace) -> int:
    from .auth import hash_password, update_credentials

    if args.password_stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if password != getpass.getpass("again: "):
            raise ConfigError("the passwords differ")
    if not password:
        raise ConfigError("empty password")
    update_credentials(args.file, args.name, _roles(args.roles), hash_password(password))
    print(f"{args.name} ({args.roles}) written to {args.file}")
    return 0


def cmd_add_token(args: argparse.Namespace) -> int:
    from .auth import hash_token, new_token, update_credentials

    token = new_token()
    update_credentials(args.file, args.name, _roles(args.roles), hash_token(token))
    # Only the digest is kept: this is the one time the token can be seen.
    print(token)
    return 0


def _roles(text: str) -> list[str]:
    return [r.strip() for r in text.split(",") if r.strip()]


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicomweb-wsgi", description="DICOMweb origin server")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="ini file (see conf/dicomweb.ini)")
        p.add_argument("--data", help="data folder (overrides dicomweb.data_dir)")

    serve = sub.add_parser("serve", help="run the server under waitress")
    common(serve)
    serve.add_argument("--listen", help=f"HOST:PORT to listen on (default {DEFAULT_LISTEN}; port 0 picks one)")
    serve.add_argument("--workers", type=int, help="server processes sharing the listening socket (default: "
                                                   "[server:main] workers, else 1)")
    serve.add_argument("--max-seconds", type=float, default=0, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    events = sub.add_parser("events", help="run the UPS-RS event channel (WebSocket) on its own")
    common(events)
    events.add_argument("--listen", help="HOST:PORT (default: dicomweb.events_listen, else 127.0.0.1:8043)")
    events.add_argument("--max-seconds", type=float, default=0, help=argparse.SUPPRESS)
    events.set_defaults(func=cmd_events)

    gc = sub.add_parser("gc", help="remove orphan blobs and temporary files")
    common(gc)
    gc.add_argument("--grace", type=float, default=3600.0, help="only files older than this many seconds")
    gc.set_defaults(func=cmd_gc)

    def command(name: str, func: Any, help: str, *, archive: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        if archive:
            common(p)
        p.set_defaults(func=func)
        return p

    imp = command("import", cmd_import, "store DICOM files and folders (recursively); non-DICOM files are skipped")
    imp.add_argument("paths", nargs="+", metavar="PATH")
    imp.add_argument("--jobs", type=int, default=0, help="worker processes (default: up to 4 when there are enough files)")
    command("check", cmd_check, "compare the index with the blobs; exit 1 if anything is wrong").add_argument(
        "--quick", action="store_true", help="compare sizes only, not SHA-256 digests")
    command("reindex", cmd_reindex, "rebuild the index from the blobs (stop the server first)")
    command("backup", cmd_backup, "copy the archive into a new folder while the server runs (restore: serve "
            "that folder)").add_argument("dest", help="the new folder (must not exist, or be empty)")
    command("stats", cmd_stats, "counts and bytes per level and modality").add_argument(
        "--json", action="store_true", help="print JSON")
    for name, func, what, file_help in (
            ("add-user", cmd_add_user, "add or update an HTTP Basic user (password from a prompt or stdin)",
             "the auth_users_file"),
            ("add-token", cmd_add_token, "create a bearer token (printed once; only its digest is kept)",
             "the auth_tokens_file")):
        p = command(name, func, what, archive=False)
        p.add_argument("file", help=file_help)
        p.add_argument("name")
        p.add_argument("--roles", default="read", help="comma list of read, write, delete (default read)")
    sub.choices["add-user"].add_argument("--password-stdin", action="store_true",
                                         help="read the password from stdin")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        # The maintenance commands print their own report; their log lines (audit included) go to
        # stderr only as warnings unless the ini's logging section says otherwise.
        level = logging.INFO if args.command == "serve" else logging.WARNING
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ConfigError, StorageError, OSError) as exc:  # OSError: a file or folder the OS refuses, not a bug
        return report_error(exc)


def report_error(exc: ConfigError | StorageError | OSError) -> int:
    """Print a configuration, storage or operating-system error on one line, the way every command
    does (no traceback: the operator needs the file and the reason); the exit status (2)."""
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename is not None else ""
        print(f"dicomweb-wsgi: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    kind = "configuration" if isinstance(exc, ConfigError) else "storage"
    print(f"dicomweb-wsgi: {kind} error: {exc}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
