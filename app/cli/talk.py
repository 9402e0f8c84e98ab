"""`python -m app.cli talk --number +1…`: call a number of a running server as Twilio would.

The signed voice webhook, the ConversationRelay socket named by its TwiML (`setup`, a final `prompt`
per line typed, `interrupt` when a line is typed while the agent speaks, `dtmf` for `/dtmf 12#`),
`/hangup` or Ctrl-D to hang up, then the `<Connect action>` and the status callback. The agent's
answer is printed as it streams; at the end, the call as the API shows it, and its webhook events.

Signatures are made with TWILIO_AUTH_TOKEN over PUBLIC_BASE_URL, as Twilio makes them; the report is
read with ADMIN_API_KEY. Beside `make dev` all three come from .data/dev.env. Lines read from a
pipe (a scripted caller) wait for the agent's answer; typed lines may cut it short.
"""

from __future__ import annotations

import argparse
import json
import queue
import secrets
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import httpx
from twilio.request_validator import RequestValidator
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import ClientConnection, connect

from app.cli import CliError
from app.config.settings import settings

VOICE_PATH = "/telephony/twilio/voice"
STATUS_PATH = "/telephony/twilio/status"
# A scripted caller waits this long for an answer before saying its next line, and once the
# answer is over pauses before speaking, as people do (the agent may still hang up).
ANSWER_TIMEOUT_SECONDS = 30.0
PAUSE_SECONDS = 0.3
HELP = "Type to speak; /dtmf 12# presses keys; /hangup or Ctrl-D hangs up."
LLM_HINT = (
    "hint: the server has no LLM, so the agent can only apologise. Restart `make dev` with an "
    "OpenAI-compatible API, e.g. LLM_BASE_URL=http://localhost:11434/v1 LLM_MODEL=llama3.2 "
    "(Ollama) or LLM_BASE_URL=https://api.openai.com/v1 LLM_MODEL=gpt-4o-mini LLM_API_KEY=…"
)


@dataclass
class Twilio:
    """Twilio's side of the conversation: where it calls, and how it signs."""

    public_base_url: str
    server: str
    account_sid: str
    auth_token: str
    http: httpx.Client

    def _sign(self, url: str, form: dict[str, str]) -> str:
        return str(RequestValidator(self.auth_token).compute_signature(url, form))

    def post(self, url: str, form: dict[str, str]) -> httpx.Response:
        """POST `form` to our public `url` (signed over it), delivered to the server."""
        signature = self._sign(url, form)
        try:
            return self.http.post(
                self._on_server(url), data=form, headers={"X-Twilio-Signature": signature}
            )
        except httpx.TransportError as error:
            raise CliError(f"cannot reach the server at {self.server}: is it running?") from error

    @contextmanager
    def open_relay(self, url: str) -> Iterator[ClientConnection]:
        try:
            relay = connect(
                self._on_server(url),
                additional_headers={"X-Twilio-Signature": self._sign(url, {})},
                open_timeout=10,
                close_timeout=2,
                proxy=None,
            )
            ws = relay.__enter__()
        except (OSError, WebSocketException) as error:
            raise CliError(f"the relay socket refused the call: {error}") from None
        with relay:
            yield ws

    def _on_server(self, url: str) -> str:
        """`url` (public) with the scheme and host of where the server really listens."""
        public, server = urlsplit(url), urlsplit(self.server)
        scheme = server.scheme
        if public.scheme in ("ws", "wss"):
            scheme = "wss" if server.scheme == "https" else "ws"
        base_path = urlsplit(self.public_base_url).path.rstrip("/")
        path = server.path.rstrip("/") + public.path.removeprefix(base_path)
        return urlunsplit((scheme, server.netloc, path, public.query, ""))


@dataclass
class Answer:
    """The agent's answer being spoken: what was heard so far, and since when."""

    started: float = field(default_factory=time.monotonic)
    heard: list[str] = field(default_factory=list)


class Conversation:
    """The caller's side of one ConversationRelay session."""

    def __init__(self, ws: ClientConnection, out: TextIO, *, scripted: bool) -> None:
        self.ws = ws
        self.out = out
        self.scripted = scripted
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.answer: Answer | None = None  # the agent is speaking
        self.awaiting_answer = False  # a prompt or keys were sent, no answer finished yet
        self.ended_by_agent: dict[str, Any] | None = None
        self.answered_at = 0.0  # when the last answer ended

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def run(self, call_sid: str, setup: dict[str, Any], lines: TextIO) -> None:
        self.send({"type": "setup", **setup, "callSid": call_sid})
        threading.Thread(target=self._read_frames, daemon=True).start()
        threading.Thread(target=self._read_lines, args=(lines,), daemon=True).start()
        waiting: list[str] = []  # a scripted caller's lines, said once the agent has answered
        deadline = 0.0
        while True:
            try:
                kind, value = self.events.get(timeout=0.2)
            except queue.Empty:
                kind, value = "tick", None
            if kind == "frame":
                self._on_frame(value)
            elif kind == "closed":
                self._finish_answer()
                if self.ended_by_agent is None:
                    self.say("[the call was closed by the server]")
                return
            elif kind in ("line", "eof"):
                waiting.append(value)
            if self.ended_by_agent is not None:
                return
            now = time.monotonic()
            busy = self.answer is not None or self.awaiting_answer
            if (
                self.scripted
                and now < deadline
                and (busy or now < self.answered_at + PAUSE_SECONDS)
            ):
                continue
            while waiting:
                line = waiting.pop(0)
                if line is None or line.strip() in ("/hangup", "/bye"):
                    self.say("[you hung up]")
                    return
                self._on_line(line.strip())
                deadline = time.monotonic() + ANSWER_TIMEOUT_SECONDS
                if self.scripted and self.awaiting_answer:
                    break

    def send(self, message: dict[str, Any]) -> None:
        self.ws.send(json.dumps(message))

    def _read_frames(self) -> None:
        try:
            for frame in self.ws:
                self.events.put(("frame", json.loads(frame)))
        except (ConnectionClosed, ValueError):
            pass
        self.events.put(("closed", None))

    def _read_lines(self, lines: TextIO) -> None:
        for line in lines:
            self.events.put(("line", line.rstrip("\n")))
        self.events.put(("eof", None))

    def _on_line(self, line: str) -> None:
        if not line:
            return
        if line in ("/help", "/?"):
            self.say(HELP)
            return
        if self.answer is not None:
            # Typing over the agent: Twilio reports what the caller heard before cutting in.
            heard = "".join(self.answer.heard)
            elapsed_ms = int((time.monotonic() - self.answer.started) * 1000)
            self.send(
                {
                    "type": "interrupt",
                    "utteranceUntilInterrupt": heard,
                    "durationUntilInterruptMs": str(elapsed_ms),
                }
            )
            self.out.write(" [interrupted]\n")
            self.answer = None
        if line.startswith("/dtmf"):
            digits = line.removeprefix("/dtmf").strip().replace(" ", "")
            if self.scripted:
                self.say(f"you pressed: {digits}")
            for digit in digits:
                self.send({"type": "dtmf", "digit": digit})
        elif line.startswith("/"):
            self.say(f"unknown command {line.split()[0]}. {HELP}")
            return
        else:
            if self.scripted:
                self.say(f"you: {line}")
            self.send({"type": "prompt", "voicePrompt": line, "lang": "en-US", "last": True})
        self.awaiting_answer = True

    def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "text":
            token = str(frame.get("token", ""))
            if self.answer is None:
                self.answer = Answer()
                self.out.write("agent: ")
            self.answer.heard.append(token)
            self.out.write(token)
            self.out.flush()
            if frame.get("last"):
                self._finish_answer()
        elif kind == "end":
            self._finish_answer()
            handoff = frame.get("handoffData") or "{}"
            try:
                self.ended_by_agent = json.loads(handoff)
            except ValueError:
                self.ended_by_agent = {"handoffData": handoff}
            self.ended_by_agent["raw"] = handoff
            self.say(f"[the agent ended the call: {self.ended_by_agent.get('reason', handoff)}]")
        elif kind == "sendDigits":
            self.say(f"[the agent pressed {frame.get('digits')}]")
        elif kind == "play":
            self.say(f"[the agent played {frame.get('source')}]")
        else:
            self.say(f"[{kind}: {json.dumps(frame)}]")

    def _finish_answer(self) -> None:
        if self.answer is not None:
            self.out.write("\n")
            self.out.flush()
            self.answered_at = time.monotonic()
        self.answer = None
        self.awaiting_answer = False


def _twiml(text: str) -> ET.Element:
    try:
        return ET.fromstring(text)  # noqa: S314 - our own server's TwiML
    except ET.ParseError:
        raise CliError(f"the voice webhook did not answer with TwiML: {text[:200]!r}") from None


def _check_server(http: httpx.Client, server: str) -> dict[str, str]:
    try:
        response = http.get("/healthz")
    except httpx.TransportError:
        raise CliError(f"cannot reach the server at {server}: is `make dev` running?") from None
    checks: dict[str, str] = response.json().get("checks", {})
    if checks.get("telephony") == "not_configured":
        raise CliError(
            f"the server at {server} has no Twilio settings; start it with `make dev`, "
            "which plays a development Twilio account"
        )
    return checks


def talk(args: argparse.Namespace) -> int:
    if not (settings.PUBLIC_BASE_URL and settings.TWILIO_AUTH_TOKEN):
        raise CliError(
            "PUBLIC_BASE_URL and TWILIO_AUTH_TOKEN are needed to sign as Twilio; "
            "`make dev` provides both"
        )
    public = settings.PUBLIC_BASE_URL
    server = (args.server or public).rstrip("/")
    with httpx.Client(base_url=server, timeout=15) as http:
        checks = _check_server(http, server)
        account_sid = settings.TWILIO_ACCOUNT_SID or "AC" + "0" * 32
        twilio = Twilio(public, server, account_sid, settings.TWILIO_AUTH_TOKEN, http)
        return _call(twilio, args, checks)


def _call(twilio: Twilio, args: argparse.Namespace, checks: dict[str, str]) -> int:
    out = sys.stdout
    call_sid = "CA" + secrets.token_hex(16)
    base_form = {
        "AccountSid": twilio.account_sid,
        "ApiVersion": "2010-04-01",
        "CallSid": call_sid,
        "Direction": "inbound",
        "From": args.caller,
        "Caller": args.caller,
        "To": args.number,
        "Called": args.number,
    }
    voice = twilio.post(twilio.public_base_url + VOICE_PATH, {**base_form, "CallStatus": "ringing"})
    if voice.status_code == 403:
        raise CliError(
            "the server refused the Twilio signature: it was not started with this "
            "TWILIO_AUTH_TOKEN and PUBLIC_BASE_URL (start both from the same `make dev`)"
        )
    if voice.status_code != 200:
        raise CliError(f"the voice webhook answered {voice.status_code}: {voice.text[:200]}")
    twiml = _twiml(voice.text)
    relay = twiml.find("Connect/ConversationRelay")
    if relay is None:
        said = " ".join(e.text or "" for e in twiml.iter("Say")).strip()
        reason = twiml.find("Reject")
        why = f"<Reject reason={reason.get('reason')!r}>" if reason is not None else said
        raise CliError(
            f"the call to {args.number} was refused ({why}): is it an active number of a tenant "
            "with an AI profile? (POST …/phone-numbers, …/ai-profiles)"
        )
    parameters = {p.get("name", ""): p.get("value", "") for p in relay.iter("Parameter")}
    action = twiml.find("Connect")
    answered_at = time.monotonic()
    print(f"Calling {args.number} from {args.caller} (CallSid {call_sid}). {HELP}", file=out)
    if checks.get("llm") == "not_configured":
        print(LLM_HINT, file=out)
    if relay.get("welcomeGreeting"):
        print(f"agent: {relay.get('welcomeGreeting')}", file=out)
    out.flush()

    setup = {
        "sessionId": "VX" + secrets.token_hex(16),
        "accountSid": twilio.account_sid,
        "from": args.caller,
        "to": args.number,
        "direction": "inbound",
        "customParameters": parameters,
    }
    with twilio.open_relay(relay.get("url", "")) as ws:
        conversation = Conversation(ws, out, scripted=not sys.stdin.isatty())
        conversation.run(call_sid, setup, sys.stdin)
    duration = max(1, round(time.monotonic() - answered_at))

    if action is not None and action.get("action"):
        # After the session, Twilio asks the <Connect action> URL what to do with the call.
        handoff = (conversation.ended_by_agent or {}).get("raw")
        form = {**base_form, "CallStatus": "in-progress", "SessionStatus": "ended"}
        if handoff:
            form["HandoffData"] = handoff
        then = _twiml(twilio.post(action.get("action", ""), form).text)
        dial = then.find("Dial")
        if dial is not None:
            print(
                f"[Twilio transfers the call to {(dial.findtext('Number') or dial.text or '').strip()}]",
                file=out,
            )
    status = twilio.post(
        twilio.public_base_url + STATUS_PATH,
        {**base_form, "CallStatus": "completed", "CallDuration": str(duration)},
    )
    if status.status_code != 200:
        raise CliError(f"the status callback answered {status.status_code}: {status.text[:200]}")
    _report(twilio.http, parameters.get("call_id"), out)
    return 0


# ------------------------------------------------------------------------------------ the report


def _report(http: httpx.Client, call_id: str | None, out: TextIO) -> None:
    """The call as the API shows it, then the webhook events it caused."""
    if not call_id:
        return
    http.headers["Authorization"] = f"Bearer {settings.ADMIN_API_KEY}"
    found = _find_call(http, call_id)
    if found is None:
        print(f"(call {call_id} is not visible with ADMIN_API_KEY)", file=out)
        return
    tenant_id, call = found
    minutes = call.get("billable_minutes")
    print(
        f"\nCall {call['id']}: {call['status']}, end_reason {call.get('end_reason')}, "
        f"{call.get('duration_seconds')} s, {minutes} billable minute{'s' if minutes != 1 else ''}",
        file=out,
    )
    print(f"  GET /api/v1/tenants/{tenant_id}/calls/{call_id}", file=out)
    for turn in call.get("turns", []):
        notes = [f"{turn['latency_ms']} ms"] if turn.get("latency_ms") is not None else []
        if turn.get("interrupted"):
            notes.append("interrupted")
        suffix = f"  ({', '.join(notes)})" if notes else ""
        print(f"  {turn['role']:>6}: {turn['text']}{suffix}", file=out)
    if call.get("summary"):
        print(f"  summary: {call['summary']}", file=out)
    _report_webhooks(http, tenant_id, call_id, out)


def _find_call(http: httpx.Client, call_id: str) -> tuple[str, dict[str, Any]] | None:
    # Every call lives under its tenant and no route finds a call's tenant from its id (by
    # design), so the operator's key looks in each tenant, newest first: a handful in development.
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        page = http.get("/api/v1/tenants", params=params)
        if page.status_code != 200:
            return None
        for tenant in page.json()["items"]:
            response = http.get(f"/api/v1/tenants/{tenant['id']}/calls/{call_id}")
            if response.status_code == 200:
                return tenant["id"], response.json()
        cursor = page.json().get("next_cursor")
        if not cursor:
            return None


def _report_webhooks(http: httpx.Client, tenant_id: str, call_id: str, out: TextIO) -> None:
    base = f"/api/v1/tenants/{tenant_id}/webhooks"
    endpoints = http.get(base, params={"limit": 100}).json().get("items", [])
    if not endpoints:
        print(
            "Webhook events: none sent, no endpoint is subscribed "
            f"(POST {base} with a url to receive call.started and call.ended).",
            file=out,
        )
        return
    print("Webhook events:", file=out)
    for endpoint in endpoints:
        deliveries = http.get(f"{base}/{endpoint['id']}/deliveries", params={"limit": 20})
        for delivery in deliveries.json().get("items", []):
            detail = http.get(f"{base}/{endpoint['id']}/deliveries/{delivery['id']}").json()
            data = detail.get("payload", {}).get("data", {})
            if data.get("call", {}).get("id") != call_id:
                continue
            code = detail.get("last_status_code")
            print(
                f"  {detail['event_type']} -> {endpoint['url']}: {detail['status']}"
                + (f" (HTTP {code})" if code else ""),
                file=out,
            )
