"""Serve the host CRM on 127.0.0.1 with werkzeug's threaded server on a port the OS picks;
the first line on stdout is ``PORT <n>``. Runs until terminated."""
from __future__ import annotations

import sys

from werkzeug.serving import make_server

from hostapp import create_app


def main() -> None:
    server = make_server("127.0.0.1", 0, create_app(), threaded=True)
    print(f"PORT {server.server_port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
