"""A small closed-loop HTTP load generator for benchmarks on this 2-core machine.

Threads with keep-alive connections (http.client) send GETs as fast as the server answers; the
client is deliberately light, so most of the CPU goes to the server. Returns throughput and
latency percentiles. Used by the bench/*.py scripts, which interleave the variants they compare
in the same run.
"""

from __future__ import annotations

import http.client
import random
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass
class Result:
    requests: int
    seconds: float
    latencies_ms: list[float]
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        data = sorted(self.latencies_ms)
        if not data:
            return float("nan")
        k = min(len(data) - 1, max(0, round(p / 100 * (len(data) - 1))))
        return data[k]


def run(
    port: int,
    paths: Sequence[str] | Callable[[random.Random], str],
    *,
    seconds: float,
    connections: int,
    headers: dict[str, str] | None = None,
) -> Result:
    """Hammer 127.0.0.1:`port` for `seconds` with `connections` keep-alive clients."""
    stop = time.monotonic() + seconds
    lock = threading.Lock()
    latencies: list[float] = []
    errors = 0
    count = 0

    def worker(seed: int) -> None:
        nonlocal errors, count
        rng = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine: list[float] = []
        bad = 0
        while time.monotonic() < stop:
            path = paths(rng) if callable(paths) else rng.choice(paths)
            started = time.perf_counter()
            try:
                conn.request("GET", path, headers=headers or {})
                response = conn.getresponse()
                response.read()
                if response.status >= 400:
                    bad += 1
            except (OSError, http.client.HTTPException):
                bad += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                continue
            mine.append((time.perf_counter() - started) * 1000)
        conn.close()
        with lock:
            latencies.extend(mine)
            errors += bad
            count += len(mine)

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Result(count, time.monotonic() - started, latencies, errors)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")
