"""The "live calls" phase: how many ConversationRelay calls one API process (one core) holds.

For each step N, load processes (bench/live_client.py) keep N calls live against an API served
by one uvicorn worker, through the signed voice webhook, the relay WebSocket and the status
callback; the fake LLM (its own process) streams 30–60 tokens at ~50 tokens/s after 200–400 ms.
Measured over a window that starts once the calls have ramped up and every caller has spoken:

* turn overhead: first text frame at the caller minus the fake LLM's first token write;
* event-loop lag p99 (the API's own sampler, /healthz), API CPU and RSS per live call;
* sockets dropped, calls refused, turns lost (stored transcript rows against those spoken);
* the load generator's and the fake LLM's CPU, and how busy the machine was.

The headline is the largest N with overhead p99 < 10 ms, loop lag p99 < 20 ms and nothing
dropped or lost; steps stop after the first that fails.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.phases import summary

ROOT = Path(__file__).resolve().parents[1]

OVERHEAD_P99_MS = 10.0
LOOP_LAG_P99_MS = 20.0


@dataclass(frozen=True)
class LiveProfile:
    steps: tuple[int, ...]
    ramp_seconds: float
    warm_seconds: float
    window_seconds: float
    call_seconds: tuple[float, float]
    # More callers per process and the generator's own collections and lag enter the overhead:
    # with 250, overhead p99 at N = 250 was 35-70 ms against 13-19 ms with 50 (one core's API).
    sessions_per_process: int = 50


LIVE_FULL = LiveProfile((100, 250, 500, 1000, 2000), 20, 10, 60, (60, 180))
# Short calls so the quick run still sees calls end and new ones arrive.
LIVE_QUICK = LiveProfile((50, 100), 5, 5, 30, (15, 30))


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def _health(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(base + "/healthz", timeout=10) as response:  # noqa: S310
        return dict(json.loads(response.read()))


def _stored_turns(owner: Any, sids: list[str]) -> tuple[int, int]:
    """(caller rows, agent rows other than the greeting) of the calls with these CallSids."""
    from sqlalchemy import text

    with owner.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        row = conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE t.role = 'caller'),"
                " count(*) FILTER (WHERE t.role = 'agent' AND t.seq > 1)"
                " FROM calls c JOIN call_turns t ON t.tenant_id = c.tenant_id AND t.call_id = c.id"
                " WHERE c.provider_call_sid = ANY(:sids)"
            ),
            {"sids": sids},
        ).one()
    return int(row[0]), int(row[1])


def run_step(
    n: int,
    profile: LiveProfile,
    env: dict[str, str],
    base: str,
    numbers: list[str],
    llm: Any,
    api_pid: int,
    owner: Any,
    seed: int,
) -> dict[str, Any]:
    processes = max(1, math.ceil(n / profile.sessions_per_process))
    start = time.perf_counter() + 2.0  # the load processes' imports
    window = (
        start + profile.ramp_seconds + profile.warm_seconds,
        start + profile.ramp_seconds + profile.warm_seconds + profile.window_seconds,
    )
    idle_rss = _rss_mb(api_pid)
    results_dir = Path(tempfile.mkdtemp(prefix="vca-live-"))
    children = []
    for proc in range(processes):
        share = n // processes + (1 if proc < n % processes else 0)
        cfg = {
            "proc": proc,
            "seed": seed,
            "sessions": share,
            "base": base,
            "public_base": env["PUBLIC_BASE_URL"],
            "auth_token": env["TWILIO_AUTH_TOKEN"],
            "account_sid": env["TWILIO_ACCOUNT_SID"],
            "numbers": numbers,
            "start": start,
            "window": window,
            "ramp_seconds": profile.ramp_seconds,
            "call_seconds": profile.call_seconds,
            "prompt_seconds": (4.0, 8.0),
            "interrupt_probability": 0.1,
            "dtmf_probability": 0.05,
        }
        children.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.live_client",
                    json.dumps(cfg),
                    str(results_dir / f"{proc}.json"),
                ],
                cwd=ROOT,
                env={**env, "PYTHONPATH": str(ROOT)},
            )
        )
    time.sleep(max(0.0, window[0] - time.perf_counter()))
    cpu0, llm_cpu0, busy0 = _cpu_seconds(api_pid), _cpu_seconds(llm.pid), _machine_busy()
    live_at_start = _health(base)["relay"]["live_sessions"]
    time.sleep(max(0.0, window[1] - time.perf_counter()))
    cpu1, llm_cpu1, busy1 = _cpu_seconds(api_pid), _cpu_seconds(llm.pid), _machine_busy()
    health = _health(base)["relay"]
    rss = _rss_mb(api_pid)
    elapsed = profile.window_seconds
    for child in children:
        child.wait(timeout=120)
    outcomes = [json.loads((results_dir / f"{p}.json").read_text()) for p in range(processes)]
    # The sessions are closed; their last transcript writes drain within a moment.
    deadline = time.monotonic() + 30
    while _health(base)["relay"]["live_sessions"] and time.monotonic() < deadline:
        time.sleep(0.5)
    expected_caller = sum(c for o in outcomes for c, _ in o["expected"].values())
    expected_agent = sum(a for o in outcomes for _, a in o["expected"].values())
    sids = [sid for o in outcomes for sid in o["expected"]]
    stored_caller, stored_agent = _stored_turns(owner, sids)
    llm.refresh()
    overheads = [
        (at - sent) * 1000
        for o in outcomes
        for marker, at in o["first_frames"].items()
        if (sent := llm.first_token_time(marker)) is not None
    ]
    live = (live_at_start + health["live_sessions"]) / 2
    api_cpu = (cpu1 - cpu0) / elapsed
    load_cpu = sum(o["cpu_seconds"] for o in outcomes)
    run_seconds = profile.ramp_seconds + profile.warm_seconds + profile.window_seconds
    turns = summary(overheads)
    lost = max(0, expected_caller - stored_caller) + max(0, expected_agent - stored_agent)
    result = {
        "n": n,
        "live_sessions_measured": round(live),
        "turns_measured": turns["n"],
        "overhead_p50_ms": turns["p50_ms"],
        "overhead_p99_ms": turns["p99_ms"],
        "loop_lag_p99_ms": health["event_loop_lag"].get("p99_ms"),
        "loop_lag_max_ms": health["event_loop_lag"].get("max_ms"),
        "api_cpu_cores": round(api_cpu, 3),
        "api_cpu_ms_per_live_call_per_s": round(api_cpu * 1000 / max(live, 1), 3),
        "api_rss_mb": round(rss, 1),
        "rss_kb_per_live_call": round((rss - idle_rss) * 1024 / max(live, 1), 1),
        "calls_started": sum(o["calls_started"] for o in outcomes),
        "refused": sum(o["rejected"] for o in outcomes),
        "dropped": sum(o["dropped"] for o in outcomes),
        "turn_timeouts": sum(o["turn_timeouts"] for o in outcomes),
        "turns_spoken": expected_agent,
        "turns_lost": lost,
        "frames_per_turn": round(
            sum(o["frames"] for o in outcomes) / max(1, sum(o["turns"] for o in outcomes)), 1
        ),
        "load_processes": processes,
        # The callers' own loops: a late one stamps frames late (its share of the overhead).
        "load_lag_p99_ms": max(
            (summary(o["loop_lag_ms"])["p99_ms"] for o in outcomes if o["loop_lag_ms"]),
            default=None,
        ),
        # Over the whole step (ramp included): the generator's share of a core.
        "load_generator_cpu_cores": round(load_cpu / run_seconds, 3),
        "fake_llm_cpu_cores": round((llm_cpu1 - llm_cpu0) / elapsed, 3),
        "machine_busy_cores": round(
            (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]) * (os.cpu_count() or 1), 2
        ),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    result["holds"] = bool(
        turns["n"]
        and result["overhead_p99_ms"] < OVERHEAD_P99_MS
        and (result["loop_lag_p99_ms"] or 0) < LOOP_LAG_P99_MS
        and result["dropped"] == 0
        and result["turn_timeouts"] == 0
        and lost == 0
    )
    return result


COLUMNS = (
    ("n", "N", 6),
    ("overhead_p50_ms", "ovh p50", 8),
    ("overhead_p99_ms", "ovh p99", 8),
    ("loop_lag_p99_ms", "lag p99", 8),
    ("api_cpu_cores", "API cpu", 8),
    ("api_cpu_ms_per_live_call_per_s", "ms/s/call", 10),
    ("rss_kb_per_live_call", "KB/call", 8),
    ("dropped", "dropped", 8),
    ("turns_lost", "lost", 5),
    ("turns_measured", "turns", 6),
    ("frames_per_turn", "fr/turn", 8),
    ("load_generator_cpu_cores", "gen cpu", 8),
    ("load_lag_p99_ms", "gen lag", 8),
    ("fake_llm_cpu_cores", "llm cpu", 8),
    ("machine_busy_cores", "box busy", 9),
    ("holds", "holds", 6),
)


def print_table(rows: list[dict[str, Any]]) -> None:
    print(" ".join(f"{title:>{width}}" for _, title, width in COLUMNS))
    for row in rows:
        print(" ".join(f"{row.get(key)!s:>{width}}" for key, _, width in COLUMNS), flush=True)


def live_calls(
    env: dict[str, str],
    base: str,
    numbers: list[str],
    llm: Any,
    api_pid: int,
    owner: Any,
    profile: LiveProfile,
    steps: tuple[int, ...] | None = None,
    *,
    stop_at_failure: bool = True,
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for index, n in enumerate(steps or profile.steps):
        print(f"  live calls: N = {n}…", flush=True)
        row = run_step(n, profile, env, base, numbers, llm, api_pid, owner, seed=index)
        rows.append(row)
        print_table([row])
        if not row["holds"] and stop_at_failure:
            break
    # Steps that hold up to the first that fails (a later step holding by luck does not count).
    held = [row["n"] for row in itertools.takewhile(lambda row: row["holds"], rows)]
    return {
        "steps": rows,
        "headline_n": max(held) if held else 0,
        "conditions": (
            "one API process (uvicorn, uvloop, one worker); a final prompt every 4–8 s, "
            f"calls of {profile.call_seconds[0]:g}–{profile.call_seconds[1]:g} s, 10% interrupted, "
            "5% with a keypress; fake LLM 30–60 tokens at 50/s after 200–400 ms; holds = "
            f"overhead p99 < {OVERHEAD_P99_MS:g} ms, loop lag p99 < {LOOP_LAG_P99_MS:g} ms, "
            "nothing dropped, timed out or lost"
        ),
    }
