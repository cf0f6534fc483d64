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
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks import RESULTS_DIR, ROOT, machine_info, write_json
from benchmarks import scenarios as sc
from benchmarks.loadgen import pin_to_cpu, raise_fd_limit
from benchmarks.loadgen.fleet import run
from benchmarks.peers import GatewayPeer, Target
from benchmarks.redis_server import RedisServer

SERVER_CPU, GENERATOR_CPU = 0, 1


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
    with RedisServer(cpu=SERVER_CPU) as broker, \
            peer.start(work, cpu=SERVER_CPU, env={"GATEWAY_BUS_URL": broker.url}) as target:
        assert broker.proc is not None
        yield dataclasses.replace(target, pids=(*target.pids, broker.proc.pid))


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


async def _scaleout(quick: bool, repeat: int) -> dict[str, Any]:
    plan = {"burst_n": 200 if quick else 1000, "burst_publishes": 200 if quick else 1000,
            "broadcast_n": 500 if quick else 4000, "broadcast_publishes": 5 if quick else 20, "repeat": repeat}
    results: dict[str, Any] = {"machine": machine_info(), "plan": plan, "quick": quick, "setups": {}}
    for name, (peer, _redis) in SETUPS.items():
        results["setups"][name] = {"description": peer.description, "runs": []}
    work = Path(tempfile.mkdtemp(prefix="gateway-scaleout-"))
    try:
        for round_ in range(repeat):  # set-ups interleaved round by round, so a drift hits them all alike
            for name, entry in results["setups"].items():
                run_: dict[str, Any] = {}
                with _started(name, work) as target:
                    _log(f"{name} (round {round_ + 1}/{repeat}): burst N={plan['burst_n']}")
                    run_["burst"] = await sc.burst(target, plan["burst_n"], plan["burst_publishes"])
                    _log(f"  -> {run_['burst']['server_cpu_us_per_event']} µs/event, "
                         f"{run_['burst']['delivered_per_s']}/s, complete={run_['burst']['complete']}")
                with _started(name, work) as target:
                    _log(f"{name} (round {round_ + 1}/{repeat}): broadcast N={plan['broadcast_n']}")
                    run_["broadcast"] = await sc.broadcast(target, plan["broadcast_n"], plan["broadcast_publishes"])
                    _log(f"  -> p50 {run_['broadcast']['latency'].get('p50_ms')} ms, "
                         f"p99 {run_['broadcast']['latency'].get('p99_ms')} ms")
                entry["runs"].append(run_)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for entry in results["setups"].values():
        entry["median"] = summary(entry["runs"])
    return results


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds, and whether every round delivered everything in order."""
    def med(pick: Any) -> float:
        return round(float(statistics.median(pick(r) for r in runs)), 2)

    return {
        "burst_us_per_event": med(lambda r: r["burst"]["server_cpu_us_per_event"]),
        "burst_delivered_per_s": med(lambda r: r["burst"]["delivered_per_s"]),
        "broadcast_p50_ms": med(lambda r: r["broadcast"]["latency"]["p50_ms"]),
        "broadcast_p99_ms": med(lambda r: r["broadcast"]["latency"]["p99_ms"]),
        "broadcast_us_per_event": med(lambda r: r["broadcast"]["server_cpu_us_per_event"]),
        "all_complete_in_order": all(r[s]["complete"] and not r[s]["out_of_order"]
                                     for r in runs for s in ("burst", "broadcast")),
        "burst_us_per_event_runs": [r["burst"]["server_cpu_us_per_event"] for r in runs],
        "broadcast_p99_ms_runs": [r["broadcast"]["latency"]["p99_ms"] for r in runs],
    }


# The page's second half is not measured: what an app must do about its own state once it runs on several
# processes, with the demo as the worked example. It lives here because a bench run rewrites the page.
STATE_SECTION = """\
## The application's state

The bus moves commands and notifications between processes; it does not move the application's state. A command
runs in whichever process took it from the command Stream, and the views it changes re-render in every process, each
from what *it* can read. So once an app runs on more than one process, whatever its views render must live where
every process reads it (a database, Redis), never in a module-level object: the demo's list used to live in each
process's memory, and a todo added through one worker never appeared in a view held by another.

The demo keeps its list where its bus is. `todos_for(bus_url)` (`gateway/demo/store.py`) returns `MemoryTodos`, a
`TodoStore` in the process, for `memory://`, and `RedisTodos` (`gateway/demo/redis_store.py`) in the same Redis
for any Redis bus URL (plain, `rediss://`, `unix://`, Sentinel or Cluster); the app opens it in a `@gw.lifespan`
from the effective settings and closes it at shutdown. Both keep one `Todos` contract
(`tests/support/todos.py`, run on each):

- **One atomic step per command.** Each operation is one Lua script: `add` checks the `MAX_ITEMS` bound and takes
  its id from `INCR` in the same script, so two processes racing for the last place never overfill the list nor
  share an id; `toggle`, `delete` and `clear_completed` change the id -> text hash and the done set together.
- **One consistent read per render.** `snapshot()` reads the hash and the done set in one script; the view renders
  that snapshot and nothing else (no clock, pid or per-process counter), so two processes holding the same state
  send the same bytes. A render reads the state when it runs: a change whose own notification is still on its way
  may already show in the render of the version before it, and that version then renders it everywhere, so every
  view converges on the same bytes.
- **At least once is made once.** The Redis bus runs a command again, with the same command id, when the process
  running it died before acknowledging it. `add` and `toggle` take `command_id=ctx.command_id` and remember it
  for a day (`{prefix}:once:<id>`, written by the same script), so a second run changes nothing; every handler
  publishes again when `ctx.delivery > 1`, since the first run may have died between the change and its publish.
- **Keys follow the bus's namespace**: `{<namespace>:demo:todos}:next`, `:text`, `:done` (`gateway:demo:todos`
  without `?namespace=`), one hash tag, so a Cluster keeps them in one slot and gateways kept apart by namespace
  keep their lists apart. Every call is bounded by `bus.timeout`; an unreachable Redis fails it with
  `Unavailable` (the view keeps serving its last good render until the next change).

The cost is one Redis round trip per command and one snapshot read per version *per process* (not per subscriber:
a view still renders once per version in each process). `make run ARGS="--workers 4 --bus redis://127.0.0.1:6379/0"`
behaves like one process. `tests/test_demo_workers.py` proves it on the shipped demo with `--workers 2`: 40 adds,
then toggles, deletes and a clear, POSTed at once over fresh connections, accepted and run by both workers
(read from each worker's own metric files); two view streams held by different workers end on the same version
with byte-identical HTML, equal to the render of the expected list; ids 1 to 40 each once, so no command was lost
or ran twice.
"""


def render(results: dict[str, Any]) -> str:
    """The docs page: medians over the rounds, ratios against the in-memory baseline of the same run."""
    setups = results["setups"]
    base = setups["memory-1"]["median"]["burst_us_per_event"]
    plan = results["plan"]
    lines = [
        "# Scale-out on Redis: the cost of a shared bus",
        "",
        "Written by `python -m benchmarks scaleout` (part of `make bench`); "
        f"{'a quick run' if results['quick'] else 'a full run'}, medians of {plan['repeat']} rounds (set-ups "
        "interleaved round by round).",
        "",
        "The gateway processes and a private `redis-server` share CPU 0 (Redis's CPU is counted in the server's); "
        "the load generator runs on CPU 1. On two cores this measures what the shared bus costs per delivered "
        "event and that nothing is lost or reordered across processes, not how far more cores carry it: with "
        "`--workers 2` a publish enters one worker, goes through Redis, and every worker fans it out to its own "
        "streams, on the same core here.",
        "",
        f"- burst: {plan['burst_n']} subscribers, {plan['burst_publishes']} events from 8 concurrent publishers;",
        f"- broadcast: {plan['broadcast_n']} idle subscribers, {plan['broadcast_publishes']} events 0.5 s apart.",
        "",
        "| set-up | burst µs CPU / event | vs memory-1 | delivered / s | broadcast p50 / p99 ms | "
        "every event, in order | burst µs per round | broadcast p99 per round |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in setups.items():
        m = entry["median"]
        lines.append(
            f"| {name} ({entry['description']}) | {m['burst_us_per_event']} | "
            f"{m['burst_us_per_event'] / base:.2f}× | {m['burst_delivered_per_s']:,.0f} | "
            f"{m['broadcast_p50_ms']} / {m['broadcast_p99_ms']} | {'yes' if m['all_complete_in_order'] else 'NO'} | "
            f"{', '.join(map(str, m['burst_us_per_event_runs']))} | "
            f"{', '.join(map(str, m['broadcast_p99_ms_runs']))} |")
    lines += ["", "Raw numbers: `benchmarks/results/scaleout.json`.", "", STATE_SECTION]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks scaleout")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, help="rounds of every set-up (default 3, 1 with --quick)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "scaleout.json")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    args, _comparison_only = parser.parse_known_args(argv)  # make bench passes the comparison's BENCH_ARGS too
    pin_to_cpu(GENERATOR_CPU)
    raise_fd_limit()
    results = run(_scaleout(args.quick, args.repeat or (1 if args.quick else 3)))
    write_json(args.out, results)
    (args.docs / "scaleout.md").write_text(render(results))
    _log(f"wrote {args.out} and {args.docs / 'scaleout.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
