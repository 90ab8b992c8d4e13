"""Command line: ``dicomweb-wsgi serve | gc``.

``serve`` with no arguments serves the embedded default (SQLite + files in ./dicomweb-data) on
127.0.0.1:8042 under waitress. ``--config`` reads an ini file (``conf/dicomweb.ini``): the
``[app:main]`` section's ``dicomweb.*`` keys and the ``[server:main]`` waitress keys.
"""
from __future__ import annotations

import argparse
import configparser
import logging
import logging.config
import os
import sys
import threading
from typing import Any, Sequence

from .config import ConfigError, load_settings

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
    """The app settings and the server settings of an ini file."""
    parser = configparser.ConfigParser(interpolation=None)
    if not parser.read(path):
        raise ConfigError(f"cannot read configuration file {path}")
    app = dict(parser["app:main"]) if parser.has_section("app:main") else {}
    app = {k: v for k, v in app.items() if k.startswith("dicomweb.")}
    server = dict(parser["server:main"]) if parser.has_section("server:main") else {}
    server.pop("use", None)
    if parser.has_section("loggers"):
        logging.config.fileConfig(parser, disable_existing_loggers=False)
    return app, server


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--listen must be HOST:PORT, not {listen!r}")
    return host.strip("[]"), int(port)


def cmd_serve(args: argparse.Namespace) -> int:
    import waitress

    from .app import make_app

    app_conf: dict[str, str] = {}
    server_conf: dict[str, Any] = {}
    if args.config:
        app_conf, server_conf = read_ini(args.config)
    if args.data:
        app_conf["dicomweb.data_dir"] = args.data
    settings = load_settings(app_conf)
    listen = args.listen or os.environ.get("DICOMWEB_LISTEN") or server_conf.pop("listen", None)
    if not listen and ("host" in server_conf or "port" in server_conf):
        listen = f"{server_conf.pop('host', '127.0.0.1')}:{server_conf.pop('port', '8042')}"
    server_conf.pop("host", None)
    server_conf.pop("port", None)
    host, port = split_listen(listen or DEFAULT_LISTEN)
    options: dict[str, Any] = dict(WAITRESS_DEFAULTS)
    for key, value in server_conf.items():
        options[key] = int(value) if key in WAITRESS_INT_KEYS else value
    # waitress must accept at least what the app accepts, or large STOWs fail with its own 413.
    options.setdefault("max_request_body_size", settings.max_request_body)
    app = make_app(settings)
    if args.max_seconds:
        timer = threading.Timer(args.max_seconds, os._exit, args=(0,))
        timer.daemon = True
        timer.start()
    server = waitress.create_server(app, host=host, port=port, **options)
    print(f"dicomweb_wsgi serving {os.path.abspath(settings.data_dir)} on "
          f"http://{server.effective_host}:{server.effective_port}", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        app.close()
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from .archive import Archive

    app_conf = read_ini(args.config)[0] if args.config else {}
    if args.data:
        app_conf["dicomweb.data_dir"] = args.data
    archive = Archive.open(load_settings(app_conf))
    try:
        removed = archive.gc(grace_seconds=args.grace)
    finally:
        archive.close()
    print(f"removed {removed} orphan files")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicomweb-wsgi", description="DICOMweb origin server")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="ini file (see conf/dicomweb.ini)")
        p.add_argument("--data", help="data folder (overrides dicomweb.data_dir)")

    serve = sub.add_parser("serve", help="run the server under waitress")
    common(serve)
    serve.add_argument("--listen", help=f"HOST:PORT to listen on (default {DEFAULT_LISTEN}; port 0 picks one)")
    serve.add_argument("--max-seconds", type=float, default=0, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    gc = sub.add_parser("gc", help="remove orphan blobs and temporary files")
    common(gc)
    gc.add_argument("--grace", type=float, default=3600.0, help="only files older than this many seconds")
    gc.set_defaults(func=cmd_gc)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"dicomweb-wsgi: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
