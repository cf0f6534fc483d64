"""``python -m benchmarks [comparison|report|scaleout|compression|encoder_memory|stalled] [--quick]``.

``comparison`` (the default, what ``make bench`` runs) starts every peer in turn on CPU 0, drives it from this
process pinned to CPU 1, writes ``benchmarks/results/comparison.json`` and then the table and plots of
``docs/benchmarks.md``. ``report`` redraws the docs from the last JSON. The other names run the older single-topic
benchmarks (each has its own ``--help``).

Single scenarios: ``python -m benchmarks comparison --peers gateway,nchan --scenarios burst``. The gateway's burst
(identity), broadcast and idle memory also run over h2 and HTTP/3 (100 streams a connection): ``--protocols h1,h3``
picks which.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks import RESULTS_DIR, ROOT, machine_info, write_json
from benchmarks import scenarios as sc
from benchmarks.loadgen import pin_to_cpu, raise_fd_limit
from benchmarks.loadgen.fleet import PROTOCOLS, run
from benchmarks.medians import combine
from benchmarks.peers import PEERS, GatewayPeer, Peer, Target

SERVER_CPU, GENERATOR_CPU = 0, 1
ALL_SCENARIOS = ("burst", "ticker", "broadcast", "idle", "bytes", "view", "profile")


def _plan(quick: bool) -> dict[str, Any]:
    if quick:
        return {"burst_n": (100, 300), "burst_publishes": 200, "broadcast_n": 1000, "broadcast_publishes": 5,
                "idle_br_n": 100, "view_n": 20, "view_commands": 40, "profile_seconds": 4, "repeats": 1,
                "ticker_n": 100, "ticker_rate": 50, "ticker_events": 50}
    # repeats: every burst and broadcast is run this many times and its figures are the medians (benchmarks/medians).
    return {"burst_n": (100, 1000), "burst_publishes": 1000, "broadcast_n": 10_000, "broadcast_publishes": 20,
            "idle_br_n": 500, "view_n": 1000, "view_commands": 200, "profile_seconds": 8, "repeats": 3,
            # 25 events a second to 1,000 streams: 25,000 deliveries a second, which the generator reads and
            # decodes, Brotli included, well within its core (at 50 a second Brotli took 0.9 of it and fell behind)
            "ticker_n": 1000, "ticker_rate": 25, "ticker_events": 300}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("gateway", "hypercorn", "quart", "h11", "uvicorn", "sse-starlette", "starlette", "uvloop"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    nginx = shutil.which("nginx")
    if nginx:
        out = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False).stderr.strip()
        found["nginx"] = out.split("/")[-1]
        dpkg = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "libnginx-mod-nchan"], capture_output=True,
                              text=True, check=False)
        found["nchan"] = dpkg.stdout.strip() or "unknown"
    return found


@contextlib.contextmanager
def _started(peer: Peer, workdir: Path, env: dict[str, str] | None = None) -> Iterator[Target]:
    with peer.start(workdir, cpu=SERVER_CPU, env=env) as target:
        yield target


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


async def _guard(name: str, coro: Any) -> dict[str, Any]:
    """A scenario that fails is recorded as such; the rest of the comparison still runs."""
    try:
        result: dict[str, Any] = await coro
        return result
    except Exception as exc:  # recorded in the results, never hidden
        _log(f"  {name} failed: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"}


async def _repeated(plan: dict[str, Any], name: str,
                    scenario: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """``plan["repeats"]`` runs of one scenario on the same server, one after the other, as their medians."""
    runs = [await _guard(name, scenario()) for _ in range(plan.get("repeats", 1))]
    return combine(runs)


Run = Callable[[], Awaitable[dict[str, Any]]]  # one run of a scenario, its result


async def _alternating(plan: dict[str, Any], name: str, runs: dict[str, tuple[str, Run]]) -> dict[str, dict[str, Any]]:
    """``plan["repeats"]`` repeats of every run in ``runs`` (by key: the line logged, the run itself), the runs
    taking turns within a repeat so that their ratios compare runs made side by side, not minutes apart; each
    key's medians."""
    done: dict[str, list[dict[str, Any]]] = {key: [] for key in runs}
    for _ in range(plan.get("repeats", 1)):
        for key, (title, run_once) in runs.items():
            _log(title)
            done[key].append(await _guard(name, run_once()))
            _log(f"  -> {_brief(done[key][-1])}")
    return {key: combine(results) for key, results in done.items()}


async def _in_turns(plan: dict[str, Any], peer: Peer, work: Path, name: str,
                    variants: dict[str, Callable[[Target], Awaitable[dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """Every variant of a scenario ``_alternating``, each run on a fresh server (so a figure read before any
    event, such as the RSS per idle stream, is always a fresh server's)."""

    def fresh(scenario: Callable[[Target], Awaitable[dict[str, Any]]]) -> Run:
        async def run_once() -> dict[str, Any]:
            with _started(peer, work) as target:
                return await scenario(target)

        return run_once

    return await _alternating(plan, name, {key: (f"{peer.name}: {name}, {key}", fresh(scenario))
                                           for key, scenario in variants.items()})


async def _side_by_side(plan: dict[str, Any], peers: list[Peer], work: Path, name: str,
                        scenario: Callable[[Target], Awaitable[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """One scenario ``_alternating`` between ``peers``, whose servers run at once (each pinned to the server CPU;
    the one not driven sits idle): a ratio between peers then compares runs made seconds apart, not the minutes
    between one peer's turn and the next, over which this VM's speed was seen to drift by a third. Each peer's
    medians."""
    with contextlib.ExitStack() as stack:
        targets = [stack.enter_context(_started(peer, work)) for peer in peers]
        return await _alternating(plan, name, {
            peer.name: (f"{peer.name}: {name} (side by side with "
                        f"{', '.join(p.name for p in peers if p is not peer)})", functools.partial(scenario, target))
            for peer, target in zip(peers, targets, strict=True)})


async def _comparison(args: argparse.Namespace) -> dict[str, Any]:
    plan = _plan(args.quick)
    if args.repeats is not None:
        plan["repeats"] = args.repeats
    wanted = args.scenarios.split(",") if args.scenarios else list(ALL_SCENARIOS)
    peers = [PEERS[name] for name in args.peers.split(",")] if args.peers else list(PEERS.values())
    uvloop_peer = GatewayPeer(args=("--loop", "uvloop"), name="gateway-uvloop",
                              description="this gateway on uvloop (--loop uvloop)")
    results: dict[str, Any] = {"machine": machine_info(), "versions": _versions(), "plan": plan,
                               "quick": args.quick, "pinning": {"server_cpu": SERVER_CPU,
                                                                "generator_cpu": GENERATOR_CPU},
                               "peers": {}, "skipped": {}}
    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    started = time.perf_counter()
    try:
        run_peers: list[Peer] = list(peers)
        if not args.peers or "gateway" in args.peers.split(","):
            run_peers.insert(1, uvloop_peer)
        # The burst to few streams, where the target compares the gateway with nchan: both at once, in turns.
        n_small = plan["burst_n"][0]
        duel = [peer for peer in run_peers if peer.name in ("gateway", "nchan") and peer.missing() is None]
        small: dict[str, dict[str, Any]] = {}
        if "burst" in wanted and len(duel) == 2:
            small = await _side_by_side(plan, duel, work, f"burst N={n_small} identity", functools.partial(
                sc.burst, subscribers=n_small, publishes=plan["burst_publishes"]))
            results["side_by_side"] = {"burst": [f"identity-{n_small}", [peer.name for peer in duel]]}
        for peer in run_peers:
            why = peer.missing()
            if why is not None:
                results["skipped"][peer.name] = why
                _log(f"{peer.name}: skipped ({why})")
                continue
            entry: dict[str, Any] = {"description": peer.description}
            results["peers"][peer.name] = entry
            is_gateway = peer.name == "gateway"
            if "burst" in wanted:
                entry["burst"] = {}
                encodings = {"gateway": ["identity", "br", "zstd"], "naive-quart-br": ["br"]}.get(peer.name,
                                                                                                 ["identity"])
                for encoding in encodings:
                    for n in plan["burst_n"]:
                        if encoding == "identity" and n == n_small and peer.name in small:
                            entry["burst"][f"identity-{n}"] = small[peer.name]
                            continue
                        with _started(peer, work) as target:
                            _log(f"{peer.name}: burst N={n} {encoding}")
                            entry["burst"][f"{encoding}-{n}"] = await _repeated(plan, "burst", functools.partial(
                                sc.burst, target, n, plan["burst_publishes"], encoding=encoding))
                            _log(f"  -> {_brief(entry['burst'][f'{encoding}-{n}'])}")
                for protocol in _multiplexed(args) if is_gateway else ():
                    runs = entry[f"burst_{protocol}"] = {}
                    for n in plan["burst_n"]:
                        with _started(peer, work) as target:
                            _log(f"{peer.name}: burst N={n} identity over {protocol}")
                            runs[f"identity-{n}"] = await _repeated(plan, "burst", functools.partial(
                                sc.burst, target, n, plan["burst_publishes"], protocol=protocol))
                            _log(f"  -> {_brief(runs[f'identity-{n}'])}")
            if is_gateway and "ticker" in wanted:
                ticker = f"ticker N={plan['ticker_n']} at {plan['ticker_rate']}/s"
                entry["ticker"] = await _in_turns(plan, peer, work, ticker, {
                    encoding: functools.partial(sc.ticker, subscribers=plan["ticker_n"],
                                                events=plan["ticker_events"], rate=plan["ticker_rate"],
                                                encoding=encoding)
                    for encoding in ("identity", "br", "zstd")})
            if "broadcast" in wanted and peer.name not in ("naive-quart-br", "gateway-uvloop"):
                protocols = ["h1", *_multiplexed(args)] if is_gateway else ["h1"]
                done = await _in_turns(plan, peer, work, f"broadcast N={plan['broadcast_n']}", {
                    protocol: functools.partial(sc.broadcast, subscribers=plan["broadcast_n"],
                                                publishes=plan["broadcast_publishes"], protocol=protocol)
                    for protocol in protocols})
                for protocol, result in done.items():
                    entry["broadcast" if protocol == "h1" else f"broadcast_{protocol}"] = result
            if "idle" in wanted and peer.name in ("gateway", "naive-quart-br"):
                with _started(peer, work) as target:
                    _log(f"{peer.name}: idle memory, br")
                    entry["idle_br"] = await _guard("idle", sc.idle_memory(target, plan["idle_br_n"],
                                                                           encoding="br"))
            for protocol in _multiplexed(args) if is_gateway and "idle" in wanted else ():
                with _started(peer, work) as target:
                    _log(f"{peer.name}: idle memory, br over {protocol}")
                    entry[f"idle_br_{protocol}"] = await _guard("idle", sc.idle_memory(
                        target, plan["idle_br_n"], encoding="br", protocol=protocol))
            if is_gateway and "bytes" in wanted:
                with _started(peer, work) as target:
                    _log("gateway: bytes per event by encoding")
                    entry["bytes"] = await _guard("bytes", sc.bytes_per_event(target))
            if is_gateway and "view" in wanted:
                entry["view"] = {}
                # br: compression cohorts (the default); br_own: every stream compressing for itself, the baseline
                for key, encoding, env in (("identity", "identity", None), ("br", "br", None),
                                           ("br_own", "br", {"GATEWAY_COMPRESSION_COHORTS": "false"})):
                    with _started(peer, work, env) as target:
                        _log(f"gateway: view re-render, {key}")
                        entry["view"][key] = await _guard("view", sc.view_rerender(
                            target, plan["view_n"], plan["view_commands"], encoding=encoding))
                        _log(f"  -> {entry['view'][key]}")
                    with _started(peer, work, env) as target:
                        _log(f"gateway: idle view streams, {key}")
                        entry["view"][key]["idle"] = await _guard("idle", sc.idle_view_memory(
                            target, plan["view_n"], encoding=encoding))
                        _log(f"  -> {entry['view'][key]['idle']}")
            if is_gateway and "profile" in wanted:
                n_small, n_big = plan["burst_n"]
                # The burst to N=1,000 (identity and Brotli), the small fan-out (N=100: the per-publish cost), and
                # HTTP/3 (N=1,000: where its time goes beside HTTP/1.1's). Each burst is sized to outlast the
                # sampling: at N=100 a publish is ~0.3 ms, so forty times the publishes.
                for key, encoding, n, publishes, protocol in (
                        ("profile", "identity", n_big, plan["burst_publishes"] * 3, "h1"),
                        ("profile_br", "br", n_big, plan["burst_publishes"] * 3, "h1"),
                        ("profile_small", "identity", n_small, plan["burst_publishes"] * 40, "h1"),
                        ("profile_h3", "identity", n_big, plan["burst_publishes"], "h3")):
                    if protocol != "h1" and protocol not in _multiplexed(args):
                        continue
                    _log(f"gateway: py-spy during a burst to {n} streams, {encoding}, {protocol}")
                    entry[key] = await _guard("profile", _profile(peer, work, plan, encoding, n, publishes, protocol))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["elapsed_seconds"] = round(time.perf_counter() - started, 1)
    return results


def _multiplexed(args: argparse.Namespace) -> list[str]:
    """The protocols besides HTTP/1.1 that the gateway's scenarios also run over (``--protocols``)."""
    return [p for p in args.protocols.split(",") if p != "h1"]


def _brief(result: dict[str, Any]) -> str:
    if "error" in result:
        return str(result["error"])
    lat = result.get("latency", {})
    return (f"delivered {result.get('delivered')}/{result.get('expected')}, "
            f"{result.get('server_cpu_us_per_event')} us/event, p50 {lat.get('p50_ms')} ms, "
            f"p99 {lat.get('p99_ms')} ms, gen {result.get('generator_cpu_share')}")


async def _profile(peer: Peer, work: Path, plan: dict[str, Any], encoding: str, subscribers: int, publishes: int,
                   protocol: str) -> dict[str, Any]:
    """py-spy on the gateway during a burst: the functions where the server's time goes."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.access(spy, os.X_OK):
        return {"error": "py-spy is not installed (pip install '.[bench]')"}
    out = work / "profile.txt"
    with _started(peer, work) as target:
        proc = None
        task = asyncio.ensure_future(sc.burst(target, subscribers, publishes, encoding=encoding,
                                              protocol=protocol))
        await asyncio.sleep(3.0)  # the streams are open and publishing has begun: sample the steady state
        proc = await asyncio.create_subprocess_exec(
            spy, "record", "-p", str(target.pids[0]), "-d", str(plan["profile_seconds"]), "-r", "250", "-f", "raw",
            "-o", str(out), "--nonblocking", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), plan["profile_seconds"] + 30)
        burst = await task
    try:
        raw = out.read_text()  # a small local file, read once after the run
    except OSError:
        return {"error": f"py-spy wrote nothing: {err.decode(errors='replace')[-300:]}"}
    return {"burst": burst, **_summarize_profile(raw)}


def _summarize_profile(raw: str, top: int = 18) -> dict[str, Any]:
    """Inclusive and self shares of the sampled functions (``function (file)``), highest first."""
    total = 0
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        for name in set(frames):
            inclusive[name] = inclusive.get(name, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
    skip = ("<module>", "_run_module_as_main", "_run_code", "run (", "Runner.run", "run_until_complete",
            "run_forever", "main (", "_run_once", "Handle._run")

    def ranked(table: dict[str, int]) -> list[tuple[str, float]]:
        rows = [(k, round(v / total * 100, 1)) for k, v in sorted(table.items(), key=lambda kv: -kv[1])]
        return [r for r in rows if not any(s in r[0] for s in skip)][:top]

    return {"samples": total, "inclusive": ranked(inclusive), "self": ranked(own)}


def _frame(text: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py)``."""
    name, _, where = text.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1].split(':')[0]})" if where else name


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and not argv[0].startswith("-") else "comparison"
    if command == "scaleout":
        from benchmarks import scaleout

        return scaleout.main(argv)
    if command in ("compression", "encoder_memory", "stalled"):
        module = importlib.import_module(f"benchmarks.{command}")
        sys.argv = [f"benchmarks.{command}", *argv]
        result: int | None = module.main()
        return result or 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every scenario")
    parser.add_argument("--repeats", type=int, choices=range(1, 10), metavar="1-9",
                        help="runs of each burst and broadcast, reported as medians (default: 3, or 1 with --quick)")
    parser.add_argument("--peers", help=f"comma-separated subset of {', '.join(PEERS)}")
    parser.add_argument("--scenarios", help=f"comma-separated subset of {', '.join(ALL_SCENARIOS)}")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS),
                        help=f"comma-separated subset of {', '.join(PROTOCOLS)}: besides HTTP/1.1 (every peer), the "
                             "gateway's burst, broadcast and idle memory also run over these (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "comparison.json")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = parser.parse_args(argv)
    if unknown := set(args.protocols.split(",")) - set(PROTOCOLS):
        parser.error(f"--protocols: {', '.join(sorted(unknown))} is not one of {', '.join(PROTOCOLS)}")
    from benchmarks import report

    if command == "report":
        report.write(args.out, args.docs)
        return 0
    if command != "comparison":
        parser.error(f"unknown command {command!r}")
    if (os.cpu_count() or 1) < 2:
        print("warning: fewer than 2 CPUs: server and load generator share one", file=sys.stderr)
    else:
        pin_to_cpu(GENERATOR_CPU)
    raise_fd_limit()
    results = run(_comparison(args))  # on uvloop when installed: the generator's reads cost less
    write_json(args.out, results)
    _log(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    report.write(args.out, args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
