"""A small fault-injecting HTTP proxy in front of a real S3 server (moto_server), for tests.

Debian has no toxiproxy, so this is ours: it forwards each request to the upstream server and,
as told, answers 503 SlowDown at a rate, refuses everything during an outage, or cuts a request
in the middle of its body (the upstream never sees it: the client must retry). It counts
what it injected so that tests can print it.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
ACCESS_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied</Message></Error>"
)
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


class FaultProxy:
    def __init__(self, upstream: str, seed: int = 0) -> None:
        self.upstream = urlparse(upstream)
        self.rate_503 = 0.0
        self.outage_until = 0.0
        self.outage_trigger: Callable[[str, str], bool] | None = lambda method, path: False
        self.outage_requests = 0  # the next requests after the trigger's that are dropped
        self.history: list[tuple[str, str, str | None]] = []  # (method, path, fault) in order
        self.cut_put: Callable[[str], bool] = lambda path: False  # cut this PUT's body?
        # as S3 answers a caller without s3:ListBucket: 403 AccessDenied for a missing key
        self.missing_as_403 = False
        self.injected: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _handle(self) -> None:
                proxy.forward(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def outage(self, seconds: float) -> None:
        self.outage_until = time.monotonic() + seconds

    def outage_after(self, trigger: Callable[[str, str], bool], requests: int) -> None:
        """An outage that starts at an event of the run, not at a time: the first request for
        which `trigger(method, path)` holds goes through, and the `requests` after it (from
        any client) are dropped. Its length is counted in requests, so it does not depend on
        how fast the machine is."""
        self.outage_trigger, self.outage_requests = trigger, requests

    def _decide(self, method: str, path: str) -> str | None:
        with self._lock:
            fault = self._fault(method, path)
            self.history.append((method, path, fault))
            return fault

    def _fault(self, method: str, path: str) -> str | None:
        self.requests[method] += 1
        if time.monotonic() < self.outage_until:
            return "outage"
        if self.outage_trigger is None and self.outage_requests > 0:
            self.outage_requests -= 1
            return "outage"
        if self.outage_trigger is not None and self.outage_trigger(method, path):
            self.outage_trigger = None  # fired: the next ones are dropped
            return None
        if method == "PUT" and self.cut_put(path):
            return "cut"
        if self._random.random() < self.rate_503:
            return "503"
        return None

    @staticmethod
    def _answer(h: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        """An S3 error answer of ours, in place of the upstream's."""
        h.send_response(status)
        h.send_header("Content-Type", "application/xml")
        h.send_header("Content-Length", "0" if h.command == "HEAD" else str(len(body)))
        h.end_headers()
        if h.command != "HEAD":  # a HEAD answer has no body, whatever its length says
            h.wfile.write(body)

    def forward(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        fault = self._decide(h.command, h.path)
        if fault == "outage":  # as a dead network: the connection drops, no answer
            self.injected["outage: connection dropped"] += 1
            h.close_connection = True
            h.connection.close()
            return
        if fault == "cut":  # half the body arrives, then the connection dies
            h.rfile.read(length // 2)
            self.injected["cut mid-body (PUT)"] += 1
            h.close_connection = True
            h.connection.close()
            return
        body = h.rfile.read(length) if length else b""
        if fault == "503":
            self.injected["503 SlowDown"] += 1
            self._answer(h, 503, SLOW_DOWN)
            return
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP_BY_HOP}
        conn.request(h.command, h.path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        if self.missing_as_403 and response.status == 404:
            self.injected["404 answered as 403 AccessDenied"] += 1
            conn.close()
            self._answer(h, 403, ACCESS_DENIED)
            return
        h.send_response(response.status)
        head = h.command == "HEAD"  # its Content-Length is the object's size: pass it on
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP and (head or key.lower() != "content-length"):
                h.send_header(key, value)
        if not head:
            h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)
        conn.close()
