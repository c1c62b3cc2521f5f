"""Load generation: `hey` (installed with apt-get when missing), or a small asyncio client when it cannot be."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


@dataclass(frozen=True)
class Target:
    """One endpoint under load: the same sample in each system's own request format."""

    url: str
    body: bytes | None = None
    """POSTed as JSON when set; GET otherwise."""
    headers: tuple[tuple[str, str], ...] = ()
    """Sent with every request (hey's `-H`), e.g. an API key."""


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    requests: int
    """Responses received, any status."""
    ok: int
    """Responses with a 2xx status."""
    errors: int
    """Non-2xx responses plus requests that failed outright."""
    rps: float
    p50_ms: float
    p99_ms: float
    tool: str
    error_samples: list[str] = field(default_factory=list)
    client_cpu_s: float = float("nan")
    """CPU time the load generator itself spent (hey only)."""


def ensure_hey() -> str | None:
    """The path of `hey`, installing it with apt-get when missing and allowed to; None when it cannot be had."""
    if found := shutil.which("hey"):
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    print("installing hey with apt-get ...", flush=True)
    for args in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "hey"]):
        if subprocess.run(args, capture_output=True).returncode != 0:
            return None
    return shutil.which("hey")


_SUMMARY = {
    "rps": re.compile(r"Requests/sec:\s+([\d.]+)"),
    "total": re.compile(r"Total:\s+([\d.]+) secs"),
    "p50": re.compile(r"50%+ in ([\d.]+) secs"),
    "p99": re.compile(r"99%+ in ([\d.]+) secs"),
}
_STATUS = re.compile(r"\[(\d{3})\]\s+(\d+) responses")
_ERROR = re.compile(r"^\s+\[(\d+)\]\s+(.*)$", re.MULTILINE)


def parse_hey(text: str, concurrency: int) -> LoadResult:
    """Read hey's summary; its latency percentiles are quoted as hey prints them."""

    def number(key: str) -> float:
        match = _SUMMARY[key].search(text)
        return float(match.group(1)) if match else float("nan")

    statuses = {int(code): int(n) for code, n in _STATUS.findall(text)}
    ok = sum(n for code, n in statuses.items() if 200 <= code < 300)
    failed = 0
    samples = [f"HTTP {code}: {n}" for code, n in statuses.items() if not 200 <= code < 300]
    if "Error distribution:" in text:
        for n, message in _ERROR.findall(text.split("Error distribution:", 1)[1]):
            failed += int(n)
            samples.append(f"{n}x {message.strip()[:160]}")
    requests = sum(statuses.values())
    return LoadResult(
        concurrency=concurrency, seconds=number("total"), requests=requests, ok=ok,
        errors=requests - ok + failed, rps=number("rps"), p50_ms=number("p50") * 1000,
        p99_ms=number("p99") * 1000, tool="hey", error_samples=samples[:5],
    )  # fmt: skip


def run_hey(hey: str, target: Target, concurrency: int, seconds: float, body_file: Path) -> LoadResult:
    args = [hey, "-z", f"{seconds:g}s", "-c", str(concurrency), "-t", "30"]
    if target.body is not None:
        body_file.write_bytes(target.body)
        args += ["-m", "POST", "-T", "application/json", "-D", str(body_file)]
    for name, value in target.headers:
        args += ["-H", f"{name}: {value}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run([*args, target.url], capture_output=True, text=True, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    parsed = parse_hey(result.stdout, concurrency)
    parsed.client_cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return parsed


def _percentile(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


async def _python_load(target: Target, concurrency: int, seconds: float) -> LoadResult:
    latencies: list[float] = []
    statuses: list[int] = []
    failures: list[str] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
        started = time.perf_counter()
        deadline = started + seconds

        async def user() -> None:
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                try:
                    if target.body is None:
                        response = await client.get(target.url)
                    else:
                        response = await client.post(
                            target.url, content=target.body, headers={"Content-Type": "application/json"}
                        )
                except httpx.HTTPError as e:
                    failures.append(f"{type(e).__name__}: {e}")
                    continue
                latencies.append((time.perf_counter() - sent) * 1000)
                statuses.append(response.status_code)

        await asyncio.gather(*(user() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    ok = sum(1 for s in statuses if 200 <= s < 300)
    return LoadResult(
        concurrency=concurrency, seconds=elapsed, requests=len(statuses), ok=ok,
        errors=len(statuses) - ok + len(failures), rps=len(statuses) / elapsed,
        p50_ms=_percentile(latencies, 0.50), p99_ms=_percentile(latencies, 0.99), tool="python",
        error_samples=failures[:5],
    )  # fmt: skip


def run_python(target: Target, concurrency: int, seconds: float) -> LoadResult:
    """A fallback for machines without hey; it is slower than the servers it loads, so only for smoke runs."""
    return asyncio.run(_python_load(target, concurrency, seconds))


@dataclass
class LoadGenerator:
    hey: str | None
    work_dir: Path

    def run(self, target: Target, concurrency: int, seconds: float) -> LoadResult:
        if self.hey is not None:
            return run_hey(self.hey, target, concurrency, seconds, self.work_dir / "body.json")
        return run_python(target, concurrency, seconds)

    @property
    def name(self) -> str:
        return "hey" if self.hey else "python (httpx) fallback"
