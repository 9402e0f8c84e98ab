"""`make bench`: the hot paths at a million calls, against the ceilings of this machine.

One run: seed (or reuse) the data set, start the API as production would (uvicorn workers, uvloop,
httptools, no access log, the non-owner app role), drive load from a separate process (wrk), and
print every figure with its ratio to the matching ceiling measured in the same run: a no-op endpoint
and a one-primary-key-SELECT endpoint served the same way. Results: bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

warnings.filterwarnings("ignore", module="platformdirs")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402

from bench.load import LoadResult, ensure_wrk, run_get, run_signed_posts  # noqa: E402
from bench.seed import BIG_TENANT_SLUG, is_seeded, reset, seed  # noqa: E402
from scripts.devdb import provision, server_url_from_env  # noqa: E402

RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Profile:
    name: str
    tenants: int
    calls: int
    big_tenant_calls: int
    turn_sample: int
    seconds: float
    deep_page: int
    relay_sessions: int
    relay_turns: int
    webhook_events: int


FULL = Profile("full", 1000, 1_000_000, 100_000, 10_000, 10, 1000, 20, 50, 10_000)
QUICK = Profile("quick", 100, 10_000, 3_000, 500, 3, 100, 5, 10, 1_000)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback only
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready")


@contextmanager
def serve(app: str, port: int, env: dict[str, str], workers: int, log: Path):  # type: ignore[no-untyped-def]
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
    ]
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_ready(
                f"http://127.0.0.1:{port}/healthz"
                if app == "main:app"
                else f"http://127.0.0.1:{port}/noop"
            )
            yield process
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def migrate(env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )


def settle(server: str) -> None:
    """Flush dirty pages now (CHECKPOINT) so no phase pays for the writes of the one before.

    Seeding a million rows, or a load phase, leaves a checkpoint to spread over the next minutes;
    it fell on whichever phase came next (the webhook phase measured 450 deliveries/s after the
    HTTP phases and 860/s without them). Needs a role allowed to checkpoint; skipped otherwise.
    """
    from scripts.devdb import _connect

    try:
        conn = _connect(server)
    except Exception:
        return
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CHECKPOINT")
    except Exception as exc:
        print(f"  (no CHECKPOINT between phases: {str(exc).strip()[:80]})", flush=True)
    finally:
        conn.close()


def ratio(value: float, ceiling: float) -> float:
    return round(value / ceiling, 3) if ceiling else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10,000 calls and short runs")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--reseed", action="store_true", help="rebuild the data set")
    parser.add_argument(
        "--skip-http", action="store_true", help="only the relay and webhook phases (debugging)"
    )
    parser.add_argument(
        "--only", choices=["live", "billing"], help="run only this phase (paired runs)"
    )
    parser.add_argument(
        "--live-steps", help="live calls: the steps N to run, comma-separated (default: profile's)"
    )
    parser.add_argument(
        "--live-all-steps",
        action="store_true",
        help="live calls: run every step even after one fails (paired before/after runs)",
    )
    args = parser.parse_args()
    profile = QUICK if args.quick else FULL
    RESULTS.mkdir(parents=True, exist_ok=True)

    server = server_url_from_env("BENCH_DATABASE_URL")
    urls = provision(server, f"vca_bench_{profile.name}")
    port, ceiling_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "LC_ALL"}},
        "VCA_ENV_FILE": "",
        "APP_ENV": "staging",
        "DATABASE_URL": urls.app,
        "MIGRATION_DATABASE_URL": urls.owner,
        "DATABASE_POOL_SIZE": "10",
        "ADMIN_API_KEY": secrets.token_urlsafe(32),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "TWILIO_ACCOUNT_SID": "AC" + secrets.token_hex(16),
        "TWILIO_AUTH_TOKEN": secrets.token_hex(16),
        "ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "WEBHOOK_ALLOW_PRIVATE_URLS": "true",
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
        # The voice phase admits thousands of calls that never open a socket; the per-process
        # cap would refuse them with a cheap 503 and the row would measure refusals.
        "MAX_LIVE_CALLS_PER_PROCESS": "100000",
        # The limiter counts every request, as in production, at limits the load never reaches.
        "RATE_LIMIT_PER_MINUTE": "100000000",
        "RATE_LIMIT_TENANT_PER_MINUTE": "100000000",
        # For paired runs of the threadpool's size (API_THREADS=4 make bench-quick).
        **({"API_THREADS": os.environ["API_THREADS"]} if "API_THREADS" in os.environ else {}),
    }
    migrate(env)
    owner = create_engine(urls.owner)
    seed_seconds = None
    if args.reseed or not is_seeded(owner, profile.tenants, profile.calls):
        print(f"Seeding {profile.calls:,} calls over {profile.tenants:,} tenants…", flush=True)
        seed_seconds = seed(
            owner,
            tenants=profile.tenants,
            calls=profile.calls,
            big_tenant_calls=profile.big_tenant_calls,
            turn_sample=profile.turn_sample,
        )
        print(f"Seeded in {seed_seconds:.0f} s", flush=True)
    else:
        removed = reset(owner)
        print(f"Reusing the data set ({removed:,} calls of earlier runs removed)", flush=True)
    os.environ.update(env)  # the app's modules imported from here on read their settings from it
    fixtures = load_fixtures(owner, profile)
    env["BENCH_CEILING_TENANT_ID"] = fixtures["big_tenant_id"]
    wrk = ensure_wrk()
    api_key = issue_key(env)
    auth = {"Authorization": f"Bearer {api_key}"}
    results: list[LoadResult] = []
    extra: dict[str, Any] = {}

    def record(result: LoadResult, note: str = "") -> None:
        print(
            f"  {result.name}: {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
            f"p99 {result.p99_ms:.2f} ms{note}",
            flush=True,
        )
        results.append(result)

    def load(name: str, base: str, path: str) -> None:
        record(
            run_get(
                wrk, name, base + path, auth, connections=args.connections, seconds=profile.seconds
            )
        )

    def post(name: str, url: str, requests: list[tuple[str, str]], note: str = "") -> None:
        """POST form bodies (signature, body), each used once per pass."""
        result = run_signed_posts(
            wrk, name, url, requests, connections=args.connections, seconds=profile.seconds
        )
        record(result, note)

    settle(server)
    if args.only == "live":
        extra["live_calls"] = run_live_phase(env, fixtures, owner, profile, args)
        (RESULTS / "live.json").write_text(json.dumps(extra["live_calls"], indent=2))
        return 0
    if not args.skip_http and args.only is None:
        with ExitStack() as stack:
            logs = RESULTS
            stack.enter_context(
                serve("bench.ceiling:app", ceiling_port, env, args.workers, logs / "ceiling.log")
            )
            ceiling = f"http://127.0.0.1:{ceiling_port}"
            print("Ceilings:", flush=True)
            load("ceiling_noop", ceiling, "/noop")
            load("ceiling_select", ceiling, "/select")
            # The bodies carry nothing the endpoint reads.
            post("ceiling_insert", ceiling + "/insert", [("-", "n=1")] * 600)

    with ExitStack() as stack:
        from bench.phases import RemoteFakeLLM

        llm = stack.enter_context(RemoteFakeLLM(env))
        env.update(
            LLM_BASE_URL=llm.base_url,
            LLM_API_KEY="bench",
            LLM_MODEL="fake-model",
            LLM_TIMEOUT_SECONDS="5",
        )
        api = stack.enter_context(serve("main:app", port, env, args.workers, RESULTS / "api.log"))
        base = f"http://127.0.0.1:{port}"
        tenant = f"/api/v1/tenants/{fixtures['big_tenant_id']}"
        if args.only == "billing":
            billing = run_billing_phase(
                env, fixtures, owner, base, profile, post, by_name=lambda: results
            )
            (RESULTS / "billing.json").write_text(json.dumps(billing, indent=2))
            return 0
        if not args.skip_http:
            print("API:", flush=True)
            voice = signed_voice_requests(env, fixtures, count=int(3000 * profile.seconds))
            post("voice_webhook", base + "/telephony/twilio/voice", voice)
            settle(server)
            statuses = signed_status_requests(env, owner)
            post(
                "status_callback",
                base + "/telephony/twilio/status",
                statuses,
                f" ({len(statuses):,} distinct calls)",
            )
            settle(server)
            load("calls_page_1", base, f"{tenant}/calls?limit=20")
            load(
                f"calls_page_{profile.deep_page}",
                base,
                f"{tenant}/calls?limit=20&cursor={fixtures['deep_cursor']}",
            )
            load(
                "call_detail_with_transcript", base, f"{tenant}/calls/{fixtures['call_with_turns']}"
            )
            load("phone_numbers_list", base, f"{tenant}/phone-numbers?limit=20")
            settle(server)
            # The big tenant's timezone is UTC: its local days are UTC days.
            today = datetime.now(UTC).date()
            tomorrow, first = today + timedelta(days=1), today - timedelta(days=89)
            load("analytics_summary_30d", base, f"{tenant}/analytics/summary")
            load(
                "analytics_timeseries_90d",
                base,
                f"{tenant}/analytics/timeseries?interval=day&from={first}&to={tomorrow}",
            )
            settle(server)
            print("CSV export…", flush=True)
            from bench.phases import csv_export

            extra["csv_export"] = csv_export(
                f"{base}{tenant}/calls/export?format=csv", auth, api.pid, runs=3
            )
            print(f"  {extra['csv_export']}", flush=True)
            extra["billing_close"] = run_billing_phase(
                env, fixtures, owner, base, profile, post, by_name=lambda: results
            )
        extra.update(run_extra_phases(env, fixtures, profile, base, llm, lambda: settle(server)))
    settle(server)
    extra["live_calls"] = run_live_phase(env, fixtures, owner, profile, args)
    extra.setdefault("targets", {})["live_calls_ge_1000_one_process"] = (
        extra["live_calls"]["headline_n"] >= 1000
    )

    if args.skip_http:
        print(json.dumps(extra, indent=1))
        return 0
    report(profile, args, results, extra, seed_seconds)
    return 0


def run_live_phase(
    env: dict[str, str],
    fixtures: dict[str, Any],
    owner: Any,
    profile: Profile,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Live calls on one API process: its own server (one uvicorn worker, no cap) and fake LLM."""
    from bench.live import LIVE_FULL, LIVE_QUICK, live_calls, print_table
    from bench.phases import RemoteFakeLLM

    live_profile = LIVE_QUICK if profile.name == "quick" else LIVE_FULL
    steps = tuple(int(n) for n in args.live_steps.split(",")) if args.live_steps else None
    port = free_port()
    live_env = {**env, "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}"}
    live_env["MAX_LIVE_CALLS_PER_PROCESS"] = "100000"
    # For paired runs of the relay's tuning (e.g. RELAY_COALESCE_MS=0 make bench-quick).
    live_env.update({k: v for k, v in os.environ.items() if k.startswith("RELAY_")})
    print("Live calls (one API process)…", flush=True)
    with ExitStack() as stack:
        llm = stack.enter_context(RemoteFakeLLM(live_env))
        live_env.update(
            LLM_BASE_URL=llm.base_url,
            LLM_API_KEY="bench",
            LLM_MODEL="fake-model",
            LLM_TIMEOUT_SECONDS="5",
        )
        api = stack.enter_context(serve("main:app", port, live_env, 1, RESULTS / "api-live.log"))
        result = live_calls(
            live_env,
            f"http://127.0.0.1:{port}",
            fixtures["numbers"],
            llm,
            api.pid,
            owner,
            live_profile,
            steps,
            stop_at_failure=not args.live_all_steps,
        )
    print("\nLive calls per step:")
    print_table(result["steps"])
    print(f"Headline: {result['headline_n']:,} live calls on one process ({result['conditions']})")
    return result


def load_fixtures(owner: Any, profile: Profile) -> dict[str, Any]:
    from app.services.pagination import encode_cursor

    with owner.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        big = conn.scalar(text("SELECT id FROM tenants WHERE slug = :s"), {"s": BIG_TENANT_SLUG})
        deep = conn.execute(
            text(
                "SELECT created_at, id FROM calls WHERE tenant_id = :t ORDER BY created_at DESC, id DESC"
                " OFFSET :o LIMIT 1"
            ),
            {"t": big, "o": profile.deep_page * 20 - 1},
        ).one()
        call_with_turns = conn.scalar(
            text("SELECT call_id FROM call_turns WHERE tenant_id = :t LIMIT 1"), {"t": big}
        )
        numbers = list(
            conn.scalars(
                text(
                    "SELECT number FROM phone_numbers p JOIN tenants t ON t.id = p.tenant_id"
                    " WHERE t.slug LIKE 'bench-%' AND p.status = 'active'"
                )
            )
        )
    return {
        "big_tenant_id": str(big),
        "deep_cursor": encode_cursor(deep.created_at, deep.id),
        "call_with_turns": str(call_with_turns),
        "numbers": numbers,
    }


def issue_key(env: dict[str, str]) -> str:
    output = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "create-api-key",
            "--tenant",
            BIG_TENANT_SLUG,
            "--name",
            "bench",
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return output.strip().splitlines()[-1]


def _sign(env: dict[str, str], path: str, params: dict[str, str]) -> tuple[str, str]:
    from twilio.request_validator import RequestValidator

    url = env["PUBLIC_BASE_URL"] + path
    signature = RequestValidator(env["TWILIO_AUTH_TOKEN"]).compute_signature(url, params)
    return str(signature), urllib.parse.urlencode(params)


def signed_voice_requests(
    env: dict[str, str], fixtures: dict[str, Any], *, count: int
) -> list[tuple[str, str]]:
    numbers = fixtures["numbers"]
    requests = []
    for i in range(count):
        params = {
            "CallSid": "CAvb" + secrets.token_hex(15),
            "AccountSid": env["TWILIO_ACCOUNT_SID"],
            "From": f"+1415{2000000 + i % 7000000:07d}",
            "To": numbers[secrets.randbelow(len(numbers))],
            "Direction": "inbound",
            "CallStatus": "ringing",
        }
        requests.append(_sign(env, "/telephony/twilio/voice", params))
    return requests


def signed_status_requests(env: dict[str, str], owner: Any) -> list[tuple[str, str]]:
    """Completion callbacks for the calls the voice phase left ringing (each completes once)."""
    with owner.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        sids = list(
            conn.scalars(
                text(
                    "SELECT provider_call_sid FROM calls WHERE status = 'ringing' AND provider_call_sid LIKE 'CAvb%'"
                )
            )
        )
    requests = []
    for sid in sids:
        params = {
            "CallSid": sid,
            "AccountSid": env["TWILIO_ACCOUNT_SID"],
            "CallStatus": "completed",
            "CallDuration": str(30 + secrets.randbelow(300)),
        }
        requests.append(_sign(env, "/telephony/twilio/status", params))
    return requests


def run_billing_phase(
    env: dict[str, str],
    fixtures: dict[str, Any],
    owner: Any,
    base: str,
    profile: Profile,
    post: Any,
    by_name: Any,
) -> dict[str, Any]:
    """Close a month for every tenant (tenants/s), then the voice webhook's p99 alone and while
    closes run as the worker runs them, resting after each as long as it took (each round closes
    an earlier month, so every close in it is a real one)."""
    import threading
    from datetime import UTC, datetime

    from app.services.billing import close_period, close_periods, previous_period

    with owner.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        tenant_ids = list(conn.scalars(text("SELECT id FROM tenants ORDER BY id")))
    month = previous_period(datetime.now(UTC).strftime("%Y-%m"))
    print(f"Billing close of {month} for {len(tenant_ids):,} tenants…", flush=True)
    started = time.perf_counter()
    invoices = sum(1 for t in tenant_ids if close_period(t, month) is not None)
    elapsed = time.perf_counter() - started
    result: dict[str, Any] = {
        "tenants": len(tenant_ids),
        "invoices": invoices,
        "seconds": round(elapsed, 2),
        "tenants_per_second": round(len(tenant_ids) / elapsed, 1),
    }
    print(f"  {result}", flush=True)

    def voice_p99(name: str) -> float:
        post(name, base + "/telephony/twilio/voice", voice_requests())
        return float(by_name()[-1].p99_ms)

    def voice_requests() -> list[tuple[str, str]]:
        return signed_voice_requests(env, fixtures, count=int(3000 * profile.seconds))

    alone = voice_p99("voice_webhook_before_close")
    stop = threading.Event()
    closed = [0]

    def close_earlier_months() -> None:
        period = month
        while not stop.is_set():
            period = previous_period(period)
            closed[0] += close_periods(((t, period) for t in tenant_ids), pause=stop.wait)

    closer = threading.Thread(target=close_earlier_months, daemon=True)
    closer.start()
    during = voice_p99("voice_webhook_during_close")
    stop.set()
    closer.join(timeout=120)
    result.update(
        voice_p99_alone_ms=alone,
        voice_p99_during_close_ms=during,
        voice_p99_ratio=round(during / alone, 2) if alone else None,
        closes_during_voice_load=closed[0],
    )
    result["targets"] = {"voice_p99_during_close_le_1.5x": during <= 1.5 * alone}
    print(f"  {result}", flush=True)
    return result


def run_extra_phases(
    env: dict[str, str],
    fixtures: dict[str, Any],
    profile: Profile,
    base: str,
    llm: Any,
    settle_database: Any,
) -> dict[str, Any]:
    """Relay turn overhead (fake streaming LLM) and webhook delivery (one worker process)."""
    from bench.phases import relay_overhead, webhook_delivery

    settle_database()
    print("Relay turn overhead…", flush=True)
    relay = relay_overhead(
        env,
        base,
        fixtures["numbers"],
        llm,
        sessions=profile.relay_sessions,
        turns=profile.relay_turns,
    )
    print(f"  {relay}", flush=True)
    settle_database()
    print("Webhook delivery…", flush=True)
    hooks = webhook_delivery(
        env,
        fixtures["big_tenant_id"],
        events=profile.webhook_events,
        paced_seconds=profile.seconds,
        paced_rate=50,
    )
    print(f"  {hooks}", flush=True)
    return {
        "relay_turn_overhead": relay,
        "webhook_delivery": hooks,
        "targets": {
            "relay_overhead_p99_lt_5ms": relay["p99_ms"] < 5,
            "webhook_ge_500_per_s_per_worker": hooks["deliveries_per_second_one_worker"] >= 500,
            "webhook_commit_to_received_p99_lt_1s": hooks["commit_to_received"]["p99_ms"] < 1000,
        },
    }


def report(
    profile: Profile,
    args: argparse.Namespace,
    results: list[LoadResult],
    extra: dict[str, Any],
    seed_seconds: float | None,
) -> None:
    by_name = {r.name: r for r in results}
    noop, select = by_name["ceiling_noop"], by_name["ceiling_select"]
    insert = by_name["ceiling_insert"]
    rows = []
    for result in results:
        ceiling = noop if result.name == "ceiling_noop" else select
        rows.append(
            {
                **result.as_dict(),
                "rps_vs_select_ceiling": ratio(result.rps, select.rps),
                "p99_vs_select_ceiling": ratio(result.p99_ms, select.p99_ms),
                "rps_vs_noop_ceiling": ratio(result.rps, noop.rps),
                "rps_vs_insert_ceiling": ratio(result.rps, insert.rps),
                "ceiling": ceiling.name,
            }
        )
    print()
    print(
        f"{'endpoint':34} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'rps/select':>11} {'p99/select':>11} "
        f"{'rps/insert':>11} {'errors':>7}"
    )
    for row in rows:
        print(
            f"{row['name']:34} {row['rps']:9,.0f} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} "
            f"{row['rps_vs_select_ceiling']:11.2f} {row['p99_vs_select_ceiling']:11.2f} "
            f"{row['rps_vs_insert_ceiling']:11.2f} {row['errors']:7d}"
        )
    deep = by_name.get(f"calls_page_{profile.deep_page}")
    first = by_name.get("calls_page_1")
    targets: dict[str, Any] = {}
    if "voice_webhook" in by_name:
        voice = by_name["voice_webhook"]
        targets["voice_rps_ge_0.5x_select"] = voice.rps >= 0.5 * select.rps
        targets["voice_p99_le_2x_select_p99"] = voice.p99_ms <= 2 * select.p99_ms
    if deep and first:
        targets[f"page_{profile.deep_page}_within_1.2x_page_1"] = deep.p50_ms <= 1.2 * first.p50_ms
        targets["calls_page_ge_0.5x_select"] = first.rps >= 0.5 * select.rps
    for name in ("analytics_summary_30d", "analytics_timeseries_90d"):
        if name in by_name:
            targets[f"{name}_ge_0.2x_select"] = by_name[name].rps >= 0.2 * select.rps
    export = extra.get("csv_export")
    if export and first:
        # The list delivers 20 rows a page; the export must beat that rate five times over.
        list_rows = 20 * first.rps
        export["vs_list_rows_per_second"] = ratio(export["rows_per_second"], list_rows)
        targets["export_rows_ge_5x_list_rows"] = export["rows_per_second"] >= 5 * list_rows
        targets["export_rss_growth_lt_50mb"] = export["api_worker_rss_growth_mb"] < 50
    for key, value in extra.items():
        print(f"{key}: {value}")
    targets.update(extra.get("targets", {}))
    targets.update(extra.get("billing_close", {}).get("targets", {}))
    print("targets:", json.dumps(targets, indent=1))
    payload = {
        "profile": profile.name,
        "workers": args.workers,
        "connections": args.connections,
        "seconds": profile.seconds,
        "seed_seconds": seed_seconds,
        "results": rows,
        "extra": extra,
        "targets": targets,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (RESULTS / "latest.json").write_text(json.dumps(payload, indent=2))
    print(f"\nWritten {RESULTS / 'latest.json'}")


if __name__ == "__main__":
    sys.exit(main())
