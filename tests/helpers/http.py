"""A real HTTP server on 127.0.0.1 serving a folder (Python's ThreadingHTTPServer in a thread), which can drop a
connection mid-transfer: what remote-shard tests read from."""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class DroppingHandler(SimpleHTTPRequestHandler):
    """Serves a folder; the first GET of a file named in `drop` sends its headers (full Content-Length) and only
    `drop_after` bytes, then closes the connection, as a failing server or proxy does mid-transfer."""

    drop: set[str] = set()
    drop_after = 0
    requests: Counter[str] = Counter()

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass

    def copyfile(self, source, outputfile) -> None:
        name = self.path.rsplit("/", 1)[-1]
        self.requests[name] += 1
        if name in self.drop and self.requests[name] == 1:
            outputfile.write(source.read(self.drop_after))
            outputfile.flush()
            self.close_connection = True
            return
        shutil.copyfileobj(source, outputfile)


@contextmanager
def http_server(folder: Path, drop: tuple[str, ...] = (), drop_after: int = 0) -> Iterator[str]:
    """The base URL (http://127.0.0.1:PORT) of a server on `folder` while the context is open."""
    handler = type("Handler", (DroppingHandler,), {"drop": set(drop), "drop_after": drop_after, "requests": Counter()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
