"""``python -m example_app [--host H] [--port P] [--smtp-port S]``: the demo CRM.

Starts the local SMTP server (aiosmtpd, in a thread) that stores what the CRM sends,
builds the app with ``MAILTRACK_BASE_URL`` = the served origin (demo data is made on the
first run), and serves it with Werkzeug's threaded server until Ctrl-C.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from . import API_TOKEN, DEFAULT_PORT, create_app
from .mailbox import LocalSMTPServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m example_app", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("EXAMPLE_HOST", "127.0.0.1"),
                        help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", os.environ.get("EXAMPLE_PORT", DEFAULT_PORT))),
                        help=f"HTTP port (default {DEFAULT_PORT}, or $PORT)")
    smtp_env = os.environ.get("EXAMPLE_SMTP_PORT")
    parser.add_argument("--smtp-port", type=int, default=int(smtp_env) if smtp_env else None,
                        help="port of the local SMTP server (default: 8025 if free, else any; 0: any free port)")
    parser.add_argument("--base-url", default=os.environ.get("EXAMPLE_BASE_URL"),
                        help="external origin for tracking links (default http://HOST:PORT)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd: one line per connection otherwise

    smtp_port = args.smtp_port if args.smtp_port is not None else (8025 if _is_free(8025) else 0)
    smtp = LocalSMTPServer(port=smtp_port or None).start()
    shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    base_url = args.base_url or f"http://{shown_host}:{args.port}"
    print("Preparing the example CRM (the first run creates demo data) ...", file=sys.stderr, flush=True)
    try:
        app = create_app({"MAILTRACK_BASE_URL": base_url, "MAILTRACK_SMTP_URL": smtp.url})
    except BaseException:
        smtp.stop()
        raise
    smtp.app = app
    print(f"Local SMTP server on {smtp.url}; received mail shows under {base_url}/inbox", file=sys.stderr)
    print(f"Northwind CRM on {base_url}/  (JSON API under {base_url}/mailtrack/api/, "
          f"token {API_TOKEN})", file=sys.stderr, flush=True)
    try:
        from werkzeug.serving import run_simple

        run_simple(args.host, args.port, app, threaded=True, use_reloader=False)
    except KeyboardInterrupt:
        pass
    finally:
        smtp.stop()
    return 0


def _is_free(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


if __name__ == "__main__":
    sys.exit(main())
