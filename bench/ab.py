#!/usr/bin/env python3
"""Side by side: several hapax binaries and nginx against one mock, at fixed rates.

For before/after comparisons of a change: every binary runs the harness's realistic config on
the gateway core, and the harness's `fixed_rate` measures them in alternating rounds with
`direct` and nginx, so the machine's noise is shared. Prints, per cell and target, the median
added p50 / p99 over the rounds (each round: target minus direct), every round's added p50,
and the CPU per 1000 requests.

    python3 bench/ab.py before=/tmp/hapax-old after=target/release/hapax
    python3 bench/ab.py a=BIN b=BIN --rates 500,2000 --latencies 0,20 --duration 20 --rounds 5
    python3 bench/ab.py a=BIN b=BIN --closed-loop --duration 40 --rounds 8
    python3 bench/ab.py spin=BIN nospin=BIN+busy_poll=0s   (server settings for a binary but the first)
    python3 bench/ab.py a=BIN --halt-poll 1000000   (the guest's halt polling at 1 ms for the run)
    python3 bench/ab.py a=BIN b=BIN --h3 H3LOAD   (over HTTP/3: the harness's HTTP/3 node config)

`--closed-loop` measures throughput instead: every other binary against the first, closed loop
at c=16 (the harness's paired rounds, order flipped every round), 0 ms mock.

`--h3 H3LOAD` runs every binary with `server.http3` on (the harness's HTTP/3 run's config) and
drives each over HTTP/3 by bench/h3load, beside `direct` (h3load over HTTP/1.1 to the mock)
and the first binary over HTTP/1.1; no nginx (its config here has no HTTP/3). The first
binary's targets are `hapax-h1` and `hapax-h3`, every other's `NAME-h3`.

Needs oha and nginx (bench/run.sh installs them), except with `--h3`. Writes nothing.
"""
import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as b  # noqa: E402
import idle  # noqa: E402


class SideBySide(b.Rig):
    """The harness's rig (mock, nginx, the first binary's gateway) plus a gateway for each
    further binary, on the same core with the same config (`Rig`'s `more`)."""

    def __init__(self, binaries: dict[str, str]):
        names = list(binaries)
        self.first = names[0]
        super().__init__(binaries[self.first], Path(tempfile.mkdtemp(prefix="hapax-ab-")), with_nginx=True,
                         more={name: binaries[name] for name in names[1:]})

    def gateways(self) -> dict[str, b.Proc]:
        return {self.first: self.gw, **self.more}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binaries", nargs="+", help="NAME=PATH, one per gateway binary")
    ap.add_argument("--rates", default="2000")
    ap.add_argument("--latencies", default="0,20", help="mock latencies in ms")
    ap.add_argument("--duration", type=float, default=20, help="seconds per cell and target, split over the rounds")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--closed-loop", action="store_true", help="throughput against the first binary instead")
    ap.add_argument("--concurrency", type=int, default=b.PAIRED_CONCURRENCY,
                    help="connections of the closed loop (default: the cluster comparison's)")
    ap.add_argument("--one-core", action="store_true",
                    help="every process on the client's core (no cross-core wake-up on any path)")
    ap.add_argument("--paced", metavar="H3LOAD",
                    help="open loop by bench/h3load (requests released one by one) instead of oha")
    ap.add_argument("--h3", metavar="H3LOAD",
                    help="every binary with server.http3 on, each driven over HTTP/3 by bench/h3load")
    ap.add_argument("--halt-poll", type=int, metavar="NS",
                    help="the guest's halt-polling window for the run (cpuidle-haltpoll, root), restored after")
    args = ap.parse_args()
    if args.one_core:
        b.GATEWAY_CORE = b.CLIENT_CORE
    binaries = dict(a.split("=", 1) for a in args.binaries)
    if "+" in binaries[next(iter(binaries))]:
        sys.exit("bench/ab.py: the first binary runs the harness's config as is; give settings to the others")
    if {"direct", "nginx"} & binaries.keys():
        sys.exit("bench/ab.py: 'direct' and 'nginx' name the harness's own targets; pick other names")
    if "hapax" in list(binaries)[1:]:
        sys.exit("bench/ab.py: 'hapax' names the first binary's targets; pick another name")
    oha = shutil.which("oha")
    if args.h3:
        if args.closed_loop or args.paced or any("+" in path for path in binaries.values()):
            sys.exit("bench/ab.py: --h3 takes neither --closed-loop, --paced nor settings (BIN+key=value)")
    elif not oha or not shutil.which("nginx"):
        sys.exit("bench/ab.py needs oha and nginx (bash bench/run.sh installs both)")
    with idle.HaltPolling(args.halt_poll) if args.halt_poll is not None else contextlib.nullcontext():
        print(idle.describe(idle.policy(), None) or "- guest idle: not known", flush=True)
        run(args, binaries, oha)


def run(args: argparse.Namespace, binaries: dict[str, str], oha: str | None) -> None:
    if args.h3:
        names = list(binaries)
        try:  # every process the rig starts is stopped, whatever fails
            h3 = b.H3Rig(b.Rig(binaries[names[0]], Path(tempfile.mkdtemp(prefix="hapax-ab-")), with_nginx=False),
                         binaries[names[0]], args.h3, Path(tempfile.mkdtemp(prefix="hapax-ab-h3-")),
                         more={name: binaries[name] for name in names[1:]})
            print(f"{names[0]}: targets hapax-h1 and hapax-h3", flush=True)
            for target in h3.urls():  # connections, pools and QUIC handshakes before the rounds
                h3.load(target, 1, 16)
            loader = b.Loader(None, None, Path(tempfile.mkdtemp(prefix="hapax-ab-")))
            report(b.fixed_rate(h3, loader, [int(x) for x in args.rates.split(",")],
                                [int(x) for x in args.latencies.split(",")], args.duration, args.rounds))
        finally:
            b.stop_all()
        return
    rig = SideBySide(binaries)
    if args.closed_loop:
        b.PAIRED_CONCURRENCY = args.concurrency
        try:
            closed_loop(rig, b.Loader(oha, None, rig.workdir), list(binaries), args.duration, args.rounds)
        finally:
            b.stop_all()
        return
    try:
        rows = b.fixed_rate(rig, b.Loader(oha, None, rig.workdir, paced=args.paced), [int(x) for x in args.rates.split(",")],
                            [int(x) for x in args.latencies.split(",")], args.duration, args.rounds)
    finally:
        b.stop_all()
    report(rows)


def report(rows: list[dict]) -> None:
    for row in rows:
        results = row["results"]
        for target, r in results.items():
            if target == "direct":
                continue
            added50 = [v * 1e6 for v in b.round_diffs(results, target, "p50")]
            added99 = [v * 1e6 for v in b.round_diffs(results, target, "p99")]
            print(f"{row['latency_ms']:>2} ms mock {row['rate']:>5} req/s {target:<10} "
                  f"added p50 {statistics.median(added50):5.0f} µs (rounds: {' '.join(f'{v:.0f}' for v in added50)})  "
                  f"added p99 {statistics.median(added99):5.0f} µs  "
                  f"CPU {r.get('cpu_ms_per_1k') or 0:.0f} ms / 1000 req (user {r.get('cpu_user_ms_per_1k') or 0:.0f})")


def closed_loop(rig: SideBySide, loader: b.Loader, names: list[str], duration: float, rounds: int) -> None:
    rig.fault()
    first = names[0]
    for other in names[1:]:
        paired = b.paired_throughput(rig, loader, first, other, duration, rounds)
        for name in (first, other):
            r = paired[name]
            print(f"closed loop c={paired['concurrency']} {name:<10} {r['rps']:8.0f} req/s (median of {rounds} rounds)  "
                  f"CPU {r.get('cpu_ms_per_1k') or 0:.0f} ms / 1000 req (user {r.get('cpu_user_ms_per_1k') or 0:.0f})")
        low, high = paired["loss_range"] or (0, 0)
        print(f"{other} against {first}: {-paired['loss'] * 100:+.1f} % req/s (rounds {-high * 100:+.1f} to "
              f"{-low * 100:+.1f} %), CPU a request x{paired['cpu_ratio'] or 0:.2f}")


if __name__ == "__main__":
    main()
