"""Many devices, one server: 16 client processes train at once; each equals its local run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests import zygote
from tests.helpers import ROOT, ServeProcess

pytestmark = pytest.mark.slow
CLIENTS = 16


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def run_clients(url: str, seeds: list[int]) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [zygote.shared().spawn(["-m", "tests.loadclient", url, str(seed)], cwd=ROOT, env=env) for seed in seeds]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def closed_sessions_held(server: ServeProcess) -> list[int]:
    """How many sessions the server still held after each close, from its log."""
    return [int(line.split("(")[1].split()[0]) for line in server.stderr if " closed (" in line]


def wait_until_no_session_is_held(server: ServeProcess, closes: int) -> None:
    deadline = time.monotonic() + 120  # an event to wait for (the server's log line), not a guessed duration
    while len(closed_sessions_held(server)) < closes or closed_sessions_held(server)[-1] != 0:
        assert time.monotonic() < deadline, f"sessions still held: {closed_sessions_held(server)}"
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads server memory from /proc")
def test_sixteen_concurrent_devices_each_equal_local_and_every_session_is_released(record_property):
    """Each of 16 concurrent devices equals its local run; afterwards the server holds no session.

    The server's memory is reported (a figure, not a verdict: what an allocator returns to the
    operating system depends on the machine); that nothing is held is checked from its log.
    """
    server = ServeProcess("--model", "tests.models:DagNet", "--threads", "1", verbose=True)
    pid = server.proc.pid
    try:
        (warm,) = run_clients(server.url, [100])  # the first session loads what every session needs
        assert warm["max_abs_diff"] <= 1e-5
        wait_until_no_session_is_held(server, 1)
        baseline = memory_kib(pid, "VmRSS")
        started = time.perf_counter()
        results = run_clients(server.url, list(range(CLIENTS)))
        duration = time.perf_counter() - started
        wait_until_no_session_is_held(server, 1 + CLIENTS)
        after = memory_kib(pid, "VmRSS")
        peak = memory_kib(pid, "VmHWM")
    finally:
        server.stop()
    assert len(results) == CLIENTS
    for result in results:
        assert result["max_abs_diff"] <= 1e-5, result
    assert len(closed_sessions_held(server)) == 1 + CLIENTS
    figures = {
        "clients": CLIENTS,
        "duration_s": round(duration, 1),
        "server_rss_baseline_mib": round(baseline / 1024, 1),
        "server_rss_peak_mib": round(peak / 1024, 1),
        "server_rss_after_mib": round(after / 1024, 1),
        "split_fit_s_max": round(max(r["split_s"] for r in results), 1),
    }
    record_property("load", figures)
    print("load test:", figures)
