"""``python -m benchmarks scaleout [--quick]``: the same load on one process and on two processes sharing Redis.

Three set-ups of the gateway, each driven by the same burst and broadcast scenarios as the comparison:

- ``memory-1``: one process, the in-memory bus (the baseline);
- ``redis-1``: one process on a Redis bus (what the Redis round trips cost);
- ``redis-2``: ``--workers 2`` on the Redis bus (a publish enters one worker, every worker fans it out).

The gateway processes *and* a private ``redis-server`` are pinned to CPU 0 and the generator to CPU 1, and Redis's
CPU is counted in the server's: the question on this two-core machine is what the shared bus costs per delivered
event, not how far more cores would carry it (each worker would take its own core there). Results go to
``benchmarks/results/scaleout.json`` and ``docs/scaleout.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from benchmarks import RESULTS_DIR, ROOT, machine_info, write_json
from benchmarks import scenarios as sc
from benchmarks.loadgen import pin_to_cpu, raise_fd_limit
from benchmarks.loadgen.fleet import run
from benchmarks.peers import GatewayPeer, Target
from benchmarks.peers.process import free_port

SERVER_CPU, GENERATOR_CPU = 0, 1


@contextlib.contextmanager
def private_redis(workdir: Path) -> Iterator[tuple[str, int]]:
    """A redis-server on a free port pinned to the server CPU; yields (url, pid)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    taskset = shutil.which("taskset")
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(workdir), "--logfile", str(workdir / "redis.log")]
    if taskset:
        argv = [taskset, "-c", str(SERVER_CPU), *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:  # another process's readiness: asked for, bounded
            try:
                with redis.Redis(port=port, socket_timeout=1) as client:
                    client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0", proc.pid
    finally:
        proc.kill()
        proc.wait(10)


SETUPS: dict[str, tuple[GatewayPeer, bool]] = {
    "memory-1": (GatewayPeer(name="memory-1", description="one process, in-memory bus"), False),
    "redis-1": (GatewayPeer(name="redis-1", description="one process, Redis bus"), True),
    "redis-2": (GatewayPeer(args=("--workers", "2"), name="redis-2", workers=2,
                            description="--workers 2 on the Redis bus"), True),
}


@contextlib.contextmanager
def _started(name: str, work: Path) -> Iterator[Target]:
    peer, uses_redis = SETUPS[name]
    if not uses_redis:
        with peer.start(work, cpu=SERVER_CPU) as target:
            yield target
        return
    with private_redis(work) as (url, redis_pid), \
            peer.start(work, cpu=SERVER_CPU, env={"GATEWAY_BUS_URL": url}) as target:
        yield dataclasses.replace(target, pids=(*target.pids, redis_pid))


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


async def _scaleout(quick: bool) -> dict[str, Any]:
    plan = {"burst_n": 200 if quick else 1000, "burst_publishes": 200 if quick else 1000,
            "broadcast_n": 500 if quick else 4000, "broadcast_publishes": 5 if quick else 20}
    results: dict[str, Any] = {"machine": machine_info(), "plan": plan, "quick": quick, "setups": {}}
    work = Path(tempfile.mkdtemp(prefix="gateway-scaleout-"))
    try:
        for name in SETUPS:
            entry: dict[str, Any] = {"description": SETUPS[name][0].description}
            results["setups"][name] = entry
            with _started(name, work) as target:
                _log(f"{name}: burst N={plan['burst_n']}")
                entry["burst"] = await sc.burst(target, plan["burst_n"], plan["burst_publishes"])
                _log(f"  -> {entry['burst']['server_cpu_us_per_event']} µs/event, "
                     f"{entry['burst']['delivered_per_s']}/s, complete={entry['burst']['complete']}")
            with _started(name, work) as target:
                _log(f"{name}: broadcast N={plan['broadcast_n']}")
                entry["broadcast"] = await sc.broadcast(target, plan["broadcast_n"], plan["broadcast_publishes"])
                _log(f"  -> p50 {entry['broadcast']['latency'].get('p50_ms')} ms, "
                     f"p99 {entry['broadcast']['latency'].get('p99_ms')} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def render(results: dict[str, Any]) -> str:
    """The docs page: one table, ratios against the in-memory baseline of the same run."""
    setups = results["setups"]
    base = setups["memory-1"]
    base_cpu = base["burst"]["server_cpu_us_per_event"]
    plan = results["plan"]
    lines = [
        "# Scale-out on Redis: the cost of a shared bus",
        "",
        "Written by `python -m benchmarks scaleout` (part of `make bench`); "
        f"{'a quick run' if results['quick'] else 'a full run'} on {results['machine'].get('cpu', 'this machine')}.",
        "",
        "The gateway processes and a private `redis-server` share CPU 0 (Redis's CPU is counted in the server's); "
        "the load generator runs on CPU 1. On two cores this measures what the shared bus costs per delivered "
        "event and that nothing is lost or reordered across processes, not how far more cores carry it.",
        "",
        f"- burst: {plan['burst_n']} subscribers, {plan['burst_publishes']} events from 8 concurrent publishers;",
        f"- broadcast: {plan['broadcast_n']} idle subscribers, {plan['broadcast_publishes']} events 0.5 s apart.",
        "",
        "| set-up | burst µs CPU / event | vs memory-1 | delivered / s | complete, in order | broadcast p50 / p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in setups.items():
        burst, cast = entry["burst"], entry["broadcast"]
        ordered = burst["complete"] and not burst["out_of_order"] and cast["complete"] and not cast["out_of_order"]
        lines.append(
            f"| {name} ({entry['description']}) | {burst['server_cpu_us_per_event']} | "
            f"{burst['server_cpu_us_per_event'] / base_cpu:.2f}× | {burst['delivered_per_s']:,} | "
            f"{'yes' if ordered else 'NO'} | {cast['latency'].get('p50_ms')} / {cast['latency'].get('p99_ms')} |")
    lines += ["", "Raw numbers: `benchmarks/results/scaleout.json`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks scaleout")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "scaleout.json")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    args, _comparison_only = parser.parse_known_args(argv)  # make bench passes the comparison's BENCH_ARGS too
    pin_to_cpu(GENERATOR_CPU)
    raise_fd_limit()
    results = run(_scaleout(args.quick))
    write_json(args.out, results)
    (args.docs / "scaleout.md").write_text(render(results))
    _log(f"wrote {args.out} and {args.docs / 'scaleout.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
