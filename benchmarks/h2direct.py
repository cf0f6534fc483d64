"""HTTP/2 direct writes against HTTP/1.1's and against h2's task path, in one run: ``python -m benchmarks.h2direct``.

Each round starts the gateway afresh for every variant — h1 (direct writes, the reference), h2 with
``sse.h2_direct_writes`` on, h2 with it off (every h2 event through the stream's task and Hypercorn's send task) —
and runs the comparison's broadcast (10,000 streams, 100 per h2 connection) and burst (1,000 streams) scenarios
on each; the medians over ``--rounds`` rounds are printed as JSON and written to ``--out``. Server on CPU 0,
generator on CPU 1, as in ``python -m benchmarks``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import RESULTS_DIR, write_json
from benchmarks import scenarios as sc
from benchmarks.loadgen import pin_to_cpu, raise_fd_limit
from benchmarks.loadgen.fleet import run
from benchmarks.peers import GatewayPeer

VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "h1": ("h1", {}),
    "h2-direct": ("h2", {"GATEWAY_SSE_H2_DIRECT_WRITES": "true"}),
    "h2-task": ("h2", {"GATEWAY_SSE_H2_DIRECT_WRITES": "false"}),
}


async def _rounds(args: argparse.Namespace) -> dict[str, Any]:
    peer, work = GatewayPeer(), Path(tempfile.mkdtemp(prefix="gateway-h2direct-"))
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for n in range(args.rounds):
        for name in args.variants.split(","):
            protocol, env = VARIANTS[name]
            for scenario in args.scenarios.split(","):
                with peer.start(work, cpu=0, env=env) as target:
                    try:
                        if scenario == "broadcast":
                            result = await sc.broadcast(target, args.broadcast_n, args.publishes, protocol=protocol)
                        else:
                            result = await sc.burst(target, args.burst_n, args.burst_publishes, protocol=protocol)
                    except Exception as exc:  # recorded and left out of the medians; the other runs go on
                        result = {"error": f"{type(exc).__name__}: {exc}"}
                raw.setdefault(scenario, {}).setdefault(name, []).append(result)
                print(f"round {n} {scenario} {name}: {_brief(result)}", flush=True)
    return {"rounds": raw, "medians": {s: {v: _medians(rs) for v, rs in by.items()} for s, by in raw.items()}}


def _brief(result: dict[str, Any]) -> str:
    if "error" in result:
        return str(result["error"])
    lat = result.get("latency", {})
    return (f"{result.get('delivered')}/{result.get('expected')} delivered, "
            f"{result.get('server_cpu_us_per_event')} us/event, p50 {lat.get('p50_ms')} ms, p99 {lat.get('p99_ms')} ms")


def _medians(results: list[dict[str, Any]]) -> dict[str, Any]:
    failed = len([r for r in results if "error" in r])
    results = [r for r in results if "error" not in r]

    def median(values: list[Any]) -> float | None:
        numbers = [v for v in values if isinstance(v, int | float)]
        return round(statistics.median(numbers), 2) if numbers else None

    return {"runs": len(results), "failed": failed, "complete": all(r.get("complete") for r in results),
            "out_of_order": sum(r.get("out_of_order", 0) for r in results),
            "server_cpu_us_per_event": median([r.get("server_cpu_us_per_event") for r in results]),
            "p50_ms": median([r.get("latency", {}).get("p50_ms") for r in results]),
            "p99_ms": median([r.get("latency", {}).get("p99_ms") for r in results]),
            "delivered_per_s": median([r.get("delivered_per_s") for r in results])}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.h2direct", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scenarios", default="broadcast,burst")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"a subset of {', '.join(VARIANTS)}")
    parser.add_argument("--broadcast-n", type=int, default=10_000)
    parser.add_argument("--publishes", type=int, default=20)
    parser.add_argument("--burst-n", type=int, default=1000)
    parser.add_argument("--burst-publishes", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "h2direct.json")
    args = parser.parse_args()
    pin_to_cpu(1)
    raise_fd_limit()
    results = run(_rounds(args))
    write_json(args.out, results)
    print(results["medians"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
