"""The benchmark phases that are not plain HTTP load: the agent's turn overhead on the
ConversationRelay WebSocket, and webhook delivery through the worker."""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from bench.twiml_relay import relay_socket

ROOT = Path(__file__).resolve().parents[1]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50), 3),
        "p99_ms": round(percentile(values, 99), 3),
        "mean_ms": round(statistics.fmean(values), 3) if values else float("nan"),
    }


# --------------------------------------------------------------------------- relay


async def _relay_session(
    env: dict[str, str],
    base: str,
    number: str,
    llm: Any,
    index: int,
    turns: int,
    think_seconds: float,
) -> dict[str, float]:
    import httpx
    import websockets
    from twilio.request_validator import RequestValidator

    # Calls start and callers pause at their own times, as on a real line. Started together with
    # a fixed pause, the 20 sessions stayed in lockstep and every turn landed in one burst of 20:
    # the p99 then measured the burst's queue, not a turn's overhead. Seeded: runs compare.
    rng = random.Random(index)
    await asyncio.sleep(rng.uniform(0, think_seconds))
    validator = RequestValidator(env["TWILIO_AUTH_TOKEN"])
    call_sid = "CArl" + secrets.token_hex(15)
    params = {
        "CallSid": call_sid,
        "From": f"+1415{3000000 + index:07d}",
        "To": number,
        "Direction": "inbound",
        "AccountSid": env["TWILIO_ACCOUNT_SID"],
    }
    voice_url = env["PUBLIC_BASE_URL"] + "/telephony/twilio/voice"
    async with httpx.AsyncClient() as client:
        response = await client.post(
            base + "/telephony/twilio/voice",
            data=params,
            headers={"X-Twilio-Signature": validator.compute_signature(voice_url, params)},
        )
    twiml = response.text
    call_id = twiml.split('name="call_id" value="', 1)[1].split('"', 1)[0]
    ws_url, local_ws_url = relay_socket(twiml, base)
    signature = validator.compute_signature(ws_url, {})
    arrivals: dict[str, float] = {}
    async with websockets.connect(
        local_ws_url,
        additional_headers={"X-Twilio-Signature": signature},
    ) as ws:
        await ws.send(
            json.dumps(
                {
                    "type": "setup",
                    "sessionId": "VX" + secrets.token_hex(16),
                    "callSid": call_sid,
                    "from": params["From"],
                    "to": number,
                    "direction": "inbound",
                    "customParameters": {"call_id": call_id},
                }
            )
        )
        for turn in range(turns):
            # A caller speaks between turns: a closed loop with no pause would measure queueing
            # of 20 sessions on two cores, not the overhead a turn adds.
            await asyncio.sleep(think_seconds * rng.uniform(0.5, 1.5))
            marker = f"S{index}T{turn}"
            await ws.send(
                json.dumps({"type": "prompt", "voicePrompt": marker, "lang": "en-US", "last": True})
            )
            first_at: float | None = None
            while True:
                frame = json.loads(await ws.recv())
                if frame.get("type") != "text":
                    continue
                if first_at is None and frame.get("token"):
                    first_at = time.perf_counter()
                if frame.get("last"):
                    break
            if first_at is not None:
                arrivals[marker] = first_at
        await ws.send(
            json.dumps(
                {
                    "type": "interrupt",
                    "utteranceUntilInterrupt": "",
                    "durationUntilInterruptMs": "0",
                }
            )
        )
    return arrivals


def relay_overhead(
    env: dict[str, str],
    base: str,
    numbers: list[str],
    llm: Any,
    *,
    sessions: int,
    turns: int,
    think_seconds: float = 0.5,
) -> dict[str, Any]:
    """First text frame at the client minus the fake LLM's first token write, per turn."""

    async def run() -> dict[str, float]:
        results = await asyncio.gather(
            *(
                _relay_session(env, base, numbers[i % len(numbers)], llm, i, turns, think_seconds)
                for i in range(sessions)
            )
        )
        return {marker: at for session in results for marker, at in session.items()}

    arrivals = asyncio.run(run())
    llm.refresh()
    overheads = [
        (at - sent) * 1000
        for marker, at in arrivals.items()
        if (sent := llm.first_token_time(marker)) is not None
    ]
    return {
        "sessions": sessions,
        "turns_per_session": turns,
        "think_seconds": think_seconds,
        **summary(overheads),
    }


class RemoteFakeLLM:
    """tests/fakes/fake_llm.py's FakeLLM, run in its own process (bench/fake_llm_process.py)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.base_url = ""
        self._times: dict[str, float] = {}

    def __enter__(self) -> RemoteFakeLLM:
        import tempfile

        self._port_file = Path(tempfile.mkstemp()[1])
        self._port_file.write_text("")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.fake_llm_process", str(self._port_file)],
            cwd=ROOT,
            env={**self.env, "PYTHONPATH": str(ROOT)},
        )
        deadline = time.monotonic() + 30
        while not self._port_file.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.base_url = self._port_file.read_text()
        return self

    def __exit__(self, *_: object) -> None:
        self._process.terminate()
        self._process.wait(timeout=10)
        self._port_file.unlink(missing_ok=True)

    @property
    def pid(self) -> int:
        return int(self._process.pid)

    def refresh(self) -> None:
        url = self.base_url.rsplit("/v1", 1)[0] + "/_fake/first-tokens"
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
            self._times = json.loads(response.read())

    def first_token_time(self, token: str) -> float | None:
        return self._times.get(token)


def relay_responder(request: dict[str, Any]) -> Any:
    """Answer each prompt with its own marker as the first token, so turns can be matched."""
    from tests.fakes.fake_llm import Script

    last_user = next(
        (m for m in reversed(request.get("messages", [])) if m.get("role") == "user"), None
    )
    marker = str(last_user.get("content", "")).strip() if last_user else "?"
    if marker.startswith("L") and " " not in marker:
        return live_script(marker)
    if not marker.startswith("S"):
        return Script(tokens=["Summary."])
    return Script(tokens=[marker, "Sure,", " I", " can", " help", " with", " that", "."])


_WORDS = [
    "sure",
    "I",
    "can",
    "help",
    "with",
    "that",
    "the",
    "appointment",
    "is",
    "on",
    "Tuesday",
    "at",
    "ten",
    "and",
    "we",
    "will",
    "send",
    "you",
    "a",
    "confirmation",
    "by",
    "text",
    "message",
    "if",
    "anything",
    "changes",
    "please",
    "call",
    "us",
    "back",
    "any",
    "time",
]


def live_script(marker: str) -> Any:
    """A live caller's answer: the marker, then 30–60 tokens at ~50 tokens/s after 200–400 ms
    (seeded by the marker, so a run repeats)."""
    from tests.fakes.fake_llm import Script

    rng = random.Random(marker)
    count = rng.randint(30, 60)
    words = [" " + _WORDS[rng.randrange(len(_WORDS))] for _ in range(count - 1)]
    return Script(
        tokens=[marker, *words, "."],
        first_token_delay=rng.uniform(0.2, 0.4),
        inter_token_delay=0.02,
    )


# --------------------------------------------------------------------------- webhooks


def webhook_delivery(
    env: dict[str, str], tenant_id: str, *, events: int, paced_seconds: float, paced_rate: int
) -> dict[str, Any]:
    """Throughput of one worker over a backlog of `events`, then commit → received latency
    under a paced stream (the backlog measures queueing, not latency)."""
    os.environ.update(env)
    import uuid

    from sqlalchemy import delete

    from app.config.database import transaction
    from app.crypto import encrypt
    from app.models import WebhookEndpoint
    from app.services.events import emit_event
    from tests.fakes.receiver import SubprocessWebhookReceiver

    tid = uuid.UUID(tenant_id)
    secret = "whsec_" + __import__("base64").b64encode(secrets.token_bytes(32)).decode()
    receiver = SubprocessWebhookReceiver(secret=secret).start()
    try:
        with transaction(tid) as session:
            session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tid))
            session.add(
                WebhookEndpoint(
                    tenant_id=tid,
                    url=receiver.url(),
                    secret=encrypt(secret),  # stored encrypted, as the service stores it
                    event_types=[],
                    enabled=True,
                    description="bench",
                )
            )

        def emit(first: int, count: int) -> float:
            with transaction(tid) as session:
                for n in range(first, first + count):
                    emit_event(session, tid, "webhook.test", {"n": n})
            return time.monotonic()

        # Backlog: everything committed before the worker starts.
        committed = 0
        while committed < events:
            batch = min(500, events - committed)
            emit(committed, batch)
            committed += batch
        worker = subprocess.Popen(
            [sys.executable, "-m", "app.worker"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            receiver.wait_for(events, timeout=max(60.0, events / 50), verified=True)
            received = receiver.verified()
            # From the first delivery to the last: the worker's start-up (imports, connecting)
            # is not delivery time.
            arrivals = sorted(r.monotonic for r in received)
            throughput = (
                (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else 0.0
            )
            # Paced stream with the worker idle and listening.
            commits: dict[int, float] = {}
            base_n = events
            interval = 1 / paced_rate
            deadline = time.monotonic() + paced_seconds
            n = base_n
            while time.monotonic() < deadline:
                commits[n] = emit(n, 1)
                n += 1
                time.sleep(interval)
            receiver.wait_for(events + len(commits), timeout=30, verified=True)
            latencies = []
            for item in receiver.verified():
                number = (
                    item.payload.get("data", {}).get("n")
                    if isinstance(item.payload, dict)
                    else None
                )
                if number in commits:
                    latencies.append((item.monotonic - commits[number]) * 1000)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
        duplicates = sum(1 for count in receiver.counts_by_id().values() if count > 1)
        return {
            "backlog_events": events,
            "delivered": len(received),
            "deliveries_per_second_one_worker": round(throughput, 1),
            "duplicates": duplicates,
            "paced_rate_per_second": paced_rate,
            "commit_to_received": summary(latencies),
        }
    finally:
        receiver.close()


def quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


# --------------------------------------------------------------------------- CSV export


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    """The uvicorn workers (and multiprocessing's resource tracker) under the server process."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    # The command may hold spaces: the parent pid is the 2nd field after ')'.
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if parent == pid:
                found.append(int(entry))
    return found


def csv_export(url: str, headers: dict[str, str], server_pid: int, *, runs: int) -> dict[str, Any]:
    """Download the export `runs` times (one at a time), reading it as fast as the loopback goes,
    while the API workers' RSS is sampled from /proc every 10 ms.

    Rows are the lines after the header (the seeded calls carry no summary, so no line breaks
    inside a field). RSS growth: the highest any worker reached minus what it held before the
    first export.
    """
    import threading

    workers = _children(server_pid)
    baseline = {pid: _rss_kb(pid) for pid in workers}
    peak = dict(baseline)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for pid in workers:
                peak[pid] = max(peak[pid], _rss_kb(pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    timings = []
    rows = 0
    try:
        for _ in range(runs):
            request = urllib.request.Request(url, headers=headers)  # noqa: S310 - loopback
            started = time.perf_counter()
            lines = 0
            with urllib.request.urlopen(request, timeout=300) as response:  # noqa: S310
                while chunk := response.read(1 << 16):
                    lines += chunk.count(b"\n")
            timings.append(time.perf_counter() - started)
            rows = lines - 1
    finally:
        done.set()
        sampler.join()
    best = min(timings)
    growth_mb = max((peak[pid] - baseline[pid]) / 1024 for pid in workers) if workers else 0.0
    return {
        "rows": rows,
        "runs": runs,
        "seconds_best": round(best, 3),
        "seconds_median": round(statistics.median(timings), 3),
        "rows_per_second": round(rows / statistics.median(timings)),
        "api_worker_rss_growth_mb": round(growth_mb, 1),
        "api_workers": len(workers),
    }
