"""A tenant's webhook receiver: a real HTTP server on 127.0.0.1 that verifies Standard Webhooks
signatures with the `standardwebhooks` library, exactly as a tenant's code would::

    with WebhookReceiver() as receiver:
        receiver.secret = created["secret"]          # the whsec_… from the create response
        receiver.respond(Reply(503, retry_after="600"), Reply(200))   # then the default (204)
        ...
        assert receiver.wait_for(1)
        assert receiver.received[0].verified

Every request is recorded (verified or not) before its scripted reply is sent; a request whose
signature does not verify is answered 400 (and never consumes a scripted reply).

`SubprocessWebhookReceiver` is the same server run in a child process, for throughput
measurements: in-process, the receiver's parsing and HMAC checks would compete with the worker
under test for the same interpreter lock.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

__all__ = ["Received", "Reply", "SubprocessWebhookReceiver", "WebhookReceiver"]


@dataclass(frozen=True)
class Reply:
    """What the receiver answers: a status, an optional Retry-After, after an optional delay."""

    status: int = 204
    retry_after: str | None = None
    delay: float = 0.0
    body: bytes = b""


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    payload: Any
    error: str | None
    monotonic: float = field(compare=False)  # CLOCK_MONOTONIC: comparable across processes

    @property
    def webhook_id(self) -> str | None:
        return self.headers.get("webhook-id")


class _Recordings:
    """The requests received so far, and ways to wait for and count them."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._changed = threading.Condition()

    def verified(self) -> list[Received]:
        with self._changed:
            return [r for r in self.received if r.verified]

    def counts_by_id(self) -> Counter[str]:
        """How many verified requests arrived per webhook-id."""
        with self._changed:
            return Counter(r.webhook_id for r in self.received if r.verified and r.webhook_id)

    def wait_for(self, count: int, timeout: float = 5.0, *, verified: bool = False) -> bool:
        """Wait until at least `count` requests (only verified ones, if asked) have arrived."""

        def arrived() -> int:
            return sum(1 for r in self.received if r.verified) if verified else len(self.received)

        with self._changed:
            return self._changed.wait_for(lambda: arrived() >= count, timeout=timeout)

    def _append(self, received: Received) -> None:
        with self._changed:
            self.received.append(received)
            self._changed.notify_all()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Two workers of 16 threads connect at once; the default backlog of 5 would drop SYNs.
    request_queue_size = 256
    receiver: WebhookReceiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is expected in some tests


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # Keep-alive, as every production receiver does: HTTP/1.0 would close each connection and
    # the benchmark would measure TCP set-up instead of the worker.
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY, as production servers set it on keep-alive connections: the status line and
    # headers go out in one write and the body in another, and with Nagle's algorithm the body
    # waited for the client's delayed ACK, up to 40 ms per delivery.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = self.server.receiver._accept(self.path, headers, body)
        if reply.delay:
            time.sleep(reply.delay)
        self.send_response(reply.status)
        if reply.retry_after is not None:
            self.send_header("Retry-After", reply.retry_after)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if reply.body:
            self.wfile.write(reply.body)


class WebhookReceiver(_Recordings):
    def __init__(
        self,
        secret: str | None = None,
        *,
        default: Reply | None = None,
        port: int = 0,
        on_receive: Callable[[Received], None] | None = None,
    ) -> None:
        super().__init__()
        self.secret = secret
        self.default = default or Reply()
        self._replies: deque[Reply] = deque()
        self._on_receive = on_receive
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.receiver = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str = "/hooks") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def respond(self, *replies: Reply) -> None:
        """Answer the next verified requests with these replies, in order, then the default."""
        with self._changed:
            self._replies.extend(replies)

    def _accept(self, path: str, headers: dict[str, str], body: bytes) -> Reply:
        verified, payload, error = False, None, None
        if self.secret is None:
            error = "no secret configured"
        else:
            try:
                payload = Webhook(self.secret).verify(body, headers)
                verified = True
            except WebhookVerificationError as exc:
                error = str(exc)
        received = Received(
            path=path,
            headers=headers,
            body=body,
            verified=verified,
            payload=payload,
            error=error,
            monotonic=time.monotonic(),
        )
        with self._changed:
            self.received.append(received)
            reply = (
                (self._replies.popleft() if self._replies else self.default)
                if verified
                else Reply(400, body=(error or "").encode())
            )
            self._changed.notify_all()
        if self._on_receive is not None:
            self._on_receive(received)
        return reply


def _serve_in_child(control: Connection, events: Connection) -> None:
    """The child process: a WebhookReceiver whose requests are streamed to the parent."""
    sending = threading.Lock()

    def forward(received: Received) -> None:
        with sending:
            events.send(received)

    receiver = WebhookReceiver(on_receive=forward).start()
    control.send(receiver.port)
    while True:
        command, argument = control.recv()
        if command == "close":
            break
        if command == "secret":
            receiver.secret = argument
        elif command == "respond":
            receiver.respond(*argument)
        control.send("ok")
    receiver.close()
    events.close()
    control.send("ok")


class SubprocessWebhookReceiver(_Recordings):
    """A WebhookReceiver in a child process; `received` fills in as requests arrive there."""

    def __init__(self, secret: str | None = None) -> None:
        super().__init__()
        self._initial_secret = secret
        self._port = 0

    def start(self) -> SubprocessWebhookReceiver:
        context = multiprocessing.get_context("spawn")  # no fork of a process full of threads
        self._control, child_control = context.Pipe()
        events, child_events = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_serve_in_child, args=(child_control, child_events), daemon=True
        )
        self._process.start()
        self._port = self._control.recv()
        self._reader = threading.Thread(target=self._read, args=(events,), daemon=True)
        self._reader.start()
        if self._initial_secret is not None:
            self.secret = self._initial_secret
        return self

    def _read(self, events: Connection) -> None:
        while True:
            try:
                self._append(events.recv())
            except (EOFError, OSError):
                return

    def _command(self, command: str, argument: Any = None) -> None:
        self._control.send((command, argument))
        self._control.recv()

    @property
    def secret(self) -> None:
        raise AttributeError("write-only")

    @secret.setter
    def secret(self, value: str) -> None:
        self._command("secret", value)

    def respond(self, *replies: Reply) -> None:
        self._command("respond", replies)

    @property
    def port(self) -> int:
        return self._port

    def url(self, path: str = "/hooks") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._command("close")
        self._process.join(timeout=5)
        self._reader.join(timeout=5)

    def __enter__(self) -> SubprocessWebhookReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
