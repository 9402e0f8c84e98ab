"""Closed-loop HTTP load from a separate process: wrk when available, else a Python async client."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

LUA_REQUESTS = r"""
local counter = 0
local lines = {}
local idx = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
function init(args)
  local nthreads = tonumber(args[2])
  local n = 0
  for line in io.lines(args[1]) do
    if n % nthreads == tid then
      local sig, body = line:match("^([^\t]*)\t(.*)$")
      lines[#lines + 1] = {sig, body}
    end
    n = n + 1
  end
end
function request()
  idx = idx % #lines + 1
  local item = lines[idx]
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["X-Twilio-Signature"] = item[1],
  }, item[2])
end
"""


@dataclass
class LoadResult:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    tool: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def ensure_wrk() -> str | None:
    """wrk from Debian when possible (installed on demand as root); None means use the fallback."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for attempt in (["apt-get", "install", "-y", "-qq", "wrk"],):
            if subprocess.run(attempt, env=env, capture_output=True).returncode == 0:
                return shutil.which("wrk")
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], env=env, capture_output=True)
    return shutil.which("wrk")


WARMUP_SECONDS = 2.0

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value.strip())
    if not match:
        raise ValueError(value)
    return float(match.group(1)) * _UNITS[match.group(2)]


def _parse_wrk(name: str, output: str) -> LoadResult:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    socket = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket:
        errors += sum(int(g) for g in socket.groups())
    return LoadResult(name, rps, p50, p99, total, errors, "wrk")


def run_get(
    wrk: str | None,
    name: str,
    url: str,
    headers: dict[str, str],
    *,
    connections: int,
    seconds: float,
    warmup_seconds: float = WARMUP_SECONDS,
) -> LoadResult:
    """Closed-loop GETs for `seconds`, after `warmup_seconds` of the same load (discarded: pools
    fill and the server's plans and caches warm up)."""
    if wrk is None:
        asyncio.run(_python_load(name, url, headers, None, connections, warmup_seconds))
        return asyncio.run(_python_load(name, url, headers, None, connections, seconds))
    args = [wrk, "-t2", f"-c{connections}", "--latency", "--timeout", "10s"]
    for key, value in headers.items():
        args += ["-H", f"{key}: {value}"]
    subprocess.run([*args, f"-d{warmup_seconds:g}s", url], capture_output=True, check=True)
    output = subprocess.run(
        [*args, f"-d{seconds:g}s", url], capture_output=True, text=True, check=True
    ).stdout
    return _parse_wrk(name, output)


def run_signed_posts(
    wrk: str | None,
    name: str,
    url: str,
    requests: list[tuple[str, str]],
    *,
    connections: int,
    seconds: float,
    warmup_seconds: float = WARMUP_SECONDS,
) -> LoadResult:
    """POST pre-signed form bodies (signature, body); the first sixth warms up (discarded), the
    rest is measured, each used once per pass."""
    split = max(1, len(requests) // 6)
    warmup, requests = requests[:split], requests[split:]
    if wrk is None:
        asyncio.run(_python_load(name, url, {}, warmup, connections, warmup_seconds))
        return asyncio.run(_python_load(name, url, {}, requests, connections, seconds))
    _wrk_posts(wrk, url, warmup, connections, warmup_seconds)
    return _parse_wrk(name, _wrk_posts(wrk, url, requests, connections, seconds))


def _wrk_posts(
    wrk: str, url: str, requests: list[tuple[str, str]], connections: int, seconds: float
) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "signed.lua"
        script.write_text(LUA_REQUESTS)
        data = Path(tmp) / "requests.tsv"
        data.write_text("".join(f"{sig}\t{body}\n" for sig, body in requests))
        args = [
            wrk,
            "-t2",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
            "--",
            str(data),
            "2",
        ]
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout


async def _python_load(
    name: str,
    url: str,
    headers: dict[str, str],
    posts: list[tuple[str, str]] | None,
    connections: int,
    seconds: float,
) -> LoadResult:
    import httpx

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    counter = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors, counter
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            if posts is None:
                response = await client.get(url, headers=headers)
            else:
                sig, body = posts[counter % len(posts)]
                counter += 1
                response = await client.post(
                    url,
                    content=body,
                    headers={
                        "Content-Type": "application/x-www-form-urlencoded",
                        "X-Twilio-Signature": sig,
                    },
                )
            latencies.append((time.perf_counter() - started) * 1000)
            if response.status_code >= 400:
                errors += 1

    limits = httpx.Limits(max_connections=connections)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return LoadResult(
        name,
        len(latencies) / elapsed,
        statistics.median(latencies),
        p99,
        len(latencies),
        errors,
        "python-httpx",
    )


if __name__ == "__main__":
    print(json.dumps({"wrk": ensure_wrk()}))
