"""One load process of the "live calls" phase: keeps its share of N calls live, as callers do.

`python -m bench.live_client CONFIG_JSON RESULT_PATH`. Each slot places a call through the signed
voice webhook, opens the relay WebSocket, sends `setup`, then a final `prompt` every 4–8 s (seeded),
sometimes preceded by a keypress or cut short by an `interrupt`, hangs up after 1–3 minutes with a
`completed` status callback, and places the next call. Turns whose prompt leaves inside the
measurement window are recorded: marker → when the first text frame arrived (perf_counter, the
CLOCK_MONOTONIC the fake LLM stamps its first token with, so the two compare across processes).
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.twiml_relay import relay_socket


@dataclass
class Counters:
    calls_started: int = 0
    calls_completed: int = 0
    rejected: int = 0  # the voice webhook did not hand the call to the agent
    dropped: int = 0  # a socket that failed or closed while the call was live
    turn_timeouts: int = 0  # no `last` frame within the bound
    status_failures: int = 0  # a completed callback that could not be posted
    frames: int = 0
    turns: int = 0
    interrupts: int = 0
    # What this side said and heard, per call: compared with the stored transcript afterwards.
    expected: dict[str, list[int]] = field(default_factory=dict)  # sid -> [caller, agent]
    first_frames: dict[str, float] = field(default_factory=dict)  # marker -> perf_counter
    # This process's own event-loop lag in the window: a late loop here stamps frames late.
    loop_lag_ms: list[float] = field(default_factory=list)


class Call:
    def __init__(self) -> None:
        self.frames = 0
        self.first_at: float | None = None
        self.heard: list[str] = []
        self.done = asyncio.Event()
        self.progress = asyncio.Event()


async def _call(
    cfg: dict[str, Any],
    slot: int,
    serial: int,
    rng: random.Random,
    http: Any,
    validator: Any,
    stats: Counters,
    stop_at: float,
) -> None:
    import websockets

    number = cfg["numbers"][rng.randrange(len(cfg["numbers"]))]
    sid = "CAlv" + secrets.token_hex(15)
    params = {
        "CallSid": sid,
        "AccountSid": cfg["account_sid"],
        "From": f"+1415{rng.randrange(10_000_000):07d}",
        "To": number,
        "Direction": "inbound",
        "CallStatus": "ringing",
    }
    public = cfg["public_base"]
    try:
        response = await http.post(
            cfg["base"] + "/telephony/twilio/voice",
            data=params,
            headers={
                "X-Twilio-Signature": validator.compute_signature(
                    public + "/telephony/twilio/voice", params
                )
            },
        )
    except Exception:
        stats.dropped += 1
        return
    if 'name="call_id" value="' not in response.text:
        stats.rejected += 1
        await asyncio.sleep(1.0)  # Twilio would try another box; this slot waits a little
        return
    call_id = response.text.split('name="call_id" value="', 1)[1].split('"', 1)[0]
    stats.calls_started += 1
    expected = stats.expected.setdefault(sid, [0, 0])
    answered_at = time.time()
    ws_url, local_ws_url = relay_socket(response.text, cfg["base"])
    length = rng.uniform(*cfg["call_seconds"])
    hang_up_at = min(time.perf_counter() + length, stop_at)
    current: Call | None = None
    live = True

    async def reader(ws: Any) -> None:
        nonlocal live
        try:
            async for raw in ws:
                frame = json.loads(raw)
                if frame.get("type") != "text" or current is None:
                    continue
                stats.frames += 1
                token = frame.get("token") or ""
                if token and current.first_at is None:
                    current.first_at = time.perf_counter()
                if token:
                    current.frames += 1
                    current.heard.append(token)
                    current.progress.set()
                if frame.get("last"):
                    current.done.set()
        except Exception:  # the socket failed: counted as dropped below if the call was live
            stats.dropped += int(live)
            live = False
        if live:
            stats.dropped += 1
            live = False
        if current is not None:
            current.done.set()
            current.progress.set()

    try:
        async with websockets.connect(
            local_ws_url,
            additional_headers={"X-Twilio-Signature": validator.compute_signature(ws_url, {})},
            open_timeout=30,
            ping_interval=None,
            compression=None,
        ) as ws:
            task = asyncio.create_task(reader(ws))
            await ws.send(
                json.dumps(
                    {
                        "type": "setup",
                        "sessionId": "VX" + secrets.token_hex(16),
                        "callSid": sid,
                        "from": params["From"],
                        "to": number,
                        "direction": "inbound",
                        "customParameters": {"call_id": call_id},
                    }
                )
            )
            turn = 0
            while live:
                pause = rng.uniform(*cfg["prompt_seconds"])
                if time.perf_counter() + pause >= hang_up_at:
                    break
                await asyncio.sleep(pause)
                if not live:
                    break
                marker = f"L{cfg['proc']}x{slot}x{serial}x{turn}"
                turn += 1
                current = Call()
                if rng.random() < cfg["dtmf_probability"]:
                    await ws.send(json.dumps({"type": "dtmf", "digit": str(rng.randrange(10))}))
                    expected[0] += 1
                sent_at = time.perf_counter()
                await ws.send(
                    json.dumps(
                        {"type": "prompt", "voicePrompt": marker, "lang": "en-US", "last": True}
                    )
                )
                expected[0] += 1
                interrupt = rng.random() < cfg["interrupt_probability"]
                try:
                    if interrupt:
                        while live and current.frames < 5 and not current.done.is_set():
                            current.progress.clear()
                            await asyncio.wait_for(current.progress.wait(), 15)
                        if not current.done.is_set():
                            stats.interrupts += 1
                            await ws.send(
                                json.dumps(
                                    {
                                        "type": "interrupt",
                                        "utteranceUntilInterrupt": "".join(current.heard),
                                        "durationUntilInterruptMs": "900",
                                    }
                                )
                            )
                    else:
                        await asyncio.wait_for(current.done.wait(), 15)
                except TimeoutError:
                    stats.turn_timeouts += 1
                if current.first_at is not None:
                    expected[1] += 1
                    stats.turns += 1
                    if cfg["window"][0] <= sent_at < cfg["window"][1]:
                        stats.first_frames[marker] = current.first_at
                # Let an interrupted stream's last frames arrive before the next prompt.
                await asyncio.sleep(0)
            live = False
            await ws.close()
            task.cancel()
    except Exception:
        if live:
            stats.dropped += 1
    status = {
        "CallSid": sid,
        "AccountSid": cfg["account_sid"],
        "CallStatus": "completed",
        "CallDuration": str(max(1, round(time.time() - answered_at))),
    }
    try:
        await http.post(
            cfg["base"] + "/telephony/twilio/status",
            data=status,
            headers={
                "X-Twilio-Signature": validator.compute_signature(
                    public + "/telephony/twilio/status", status
                )
            },
        )
        stats.calls_completed += 1
    except Exception:
        stats.status_failures += 1


async def _slot(
    cfg: dict[str, Any],
    slot: int,
    http: Any,
    validator: Any,
    stats: Counters,
    start: float,
    stop_at: float,
) -> None:
    rng = random.Random(f"{cfg['seed']}-{cfg['proc']}-{slot}")
    await asyncio.sleep(max(0.0, start + rng.uniform(0, cfg["ramp_seconds"]) - time.perf_counter()))
    serial = 0
    while time.perf_counter() < stop_at - 1:
        await _call(cfg, slot, serial, rng, http, validator, stats, stop_at)
        serial += 1


LAG_INTERVAL = 0.01


async def _sample_lag(stats: Counters, window: tuple[float, float]) -> None:
    while (now := time.perf_counter()) < window[1]:
        await asyncio.sleep(LAG_INTERVAL)
        if now >= window[0]:
            stats.loop_lag_ms.append((time.perf_counter() - now - LAG_INTERVAL) * 1000)


async def main(cfg: dict[str, Any], result_path: Path) -> None:
    import httpx
    from twilio.request_validator import RequestValidator

    validator = RequestValidator(cfg["auth_token"])
    stats = Counters()
    start = cfg["start"]
    stop_at = cfg["window"][1]
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:
        await asyncio.gather(
            _sample_lag(stats, tuple(cfg["window"])),
            *(
                _slot(cfg, slot, http, validator, stats, start, stop_at)
                for slot in range(cfg["sessions"])
            ),
        )
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = dict(stats.__dict__.items())
    result["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    result_path.write_text(json.dumps(result))


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(json.loads(sys.argv[1]), Path(sys.argv[2])))
