"""``python -m example_app [--host H] [--port P] [--smtp-port S]``: the demo CRM.

Starts the local SMTP server (aiosmtpd, in a thread) that stores what the CRM sends,
builds the app with ``MAILTRACK_BASE_URL`` = the served origin (demo data is made on the
first run), and serves it with Werkzeug's threaded server until Ctrl-C.
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from . import API_TOKEN, DEFAULT_PORT, create_app
from .mailbox import LocalSMTPServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m example_app", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("EXAMPLE_HOST", "127.0.0.1"),
                        help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", os.environ.get("EXAMPLE_PORT", DEFAULT_PORT))),
                        help=f"HTTP port (default {DEFAULT_PORT}, or $PORT; 0: any free port, shown at start)")
    smtp_env = os.environ.get("EXAMPLE_SMTP_PORT")
    parser.add_argument("--smtp-port", type=int, default=int(smtp_env) if smtp_env else None,
                        help="port of the local SMTP server (default: 8025 if free, else any; 0: any free port)")
    parser.add_argument("--base-url", default=os.environ.get("EXAMPLE_BASE_URL"),
                        help="external origin for tracking links (default http://HOST:PORT)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd: one line per connection otherwise

    smtp = _start_smtp(args.smtp_port)
    # The HTTP socket is bound first (port 0: the OS picks one) and handed to the server, so
    # the tracking links carry the port really served and no other process can take it.
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    try:
        listener = socket.create_server((args.host, args.port), family=family, backlog=128)
    except BaseException:
        smtp.stop()
        raise
    port = listener.getsockname()[1]
    shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    base_url = args.base_url or f"http://{shown_host}:{port}"
    print("Preparing the example CRM (the first run creates demo data) ...", file=sys.stderr, flush=True)
    try:
        app = create_app({"MAILTRACK_BASE_URL": base_url, "MAILTRACK_SMTP_URL": smtp.url})
    except BaseException:
        smtp.stop()
        listener.close()
        raise
    smtp.app = app
    print(f"Local SMTP server on {smtp.url}; received mail shows under {base_url}/inbox", file=sys.stderr)
    print(f"Northwind CRM on {base_url}/  (JSON API under {base_url}/mailtrack/api/, "
          f"token {API_TOKEN})", file=sys.stderr, flush=True)
    try:
        from werkzeug.serving import make_server

        make_server(args.host, port, app, threaded=True, fd=listener.fileno()).serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        smtp.stop()
        listener.close()
    return 0


def _start_smtp(port: int | None) -> LocalSMTPServer:
    """The local SMTP server on ``port`` (0: any free port); by default on 8025, or any
    free port when 8025 is taken."""
    if port is not None:
        return LocalSMTPServer(port=port or None).start()
    try:
        return LocalSMTPServer(port=8025).start()
    except OSError:
        return LocalSMTPServer().start()


if __name__ == "__main__":
    sys.exit(main())
