"""The embedded MongoDB-wire server of the dev stack and the tests (SecantusDB, GPL: dev/test only).

`python -m libs.devstack.mongo --port 27017 --storage var/mongo` serves MongoDB's wire protocol from a directory
that survives restarts. The stock `secantusd-py` launcher ignores SIGTERM; this wrapper stops the server cleanly
on SIGTERM/SIGINT so `make run`'s Ctrl-C and test teardown leave nothing behind. It prints
`mongo-wire listening on mongodb://HOST:PORT/` once it accepts connections (tests parse that line).
Production uses a real MongoDB (`CARINA_MONGODB_URL`); nothing here ships in the images.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="MongoDB-wire server for Carina's dev stack and tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=27017, help="0 picks a free port")
    parser.add_argument("--storage", default="var/mongo", help="data directory (kept across restarts)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        from secantus.server import SecantusDBServer
    except ImportError:
        sys.stderr.write("mongo-wire: secantusdb is not installed (pip install -e '.[dev]'), or set MONGODB_URL\n")
        return 2

    Path(args.storage).mkdir(parents=True, exist_ok=True)
    # Standalone, not a one-member replica set: Carina uses neither change streams nor transactions, and the
    # replica-set mode writes an oplog entry for every modified document (about a third of each write's cost).
    server = SecantusDBServer(host=args.host, port=args.port, storage_path=args.storage, enable_test_commands=False,
                              replica_set_name=None)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    host, port = server.address
    sys.stdout.write(f"mongo-wire listening on mongodb://{host}:{port}/\n")
    sys.stdout.flush()
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
