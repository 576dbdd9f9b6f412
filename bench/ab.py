#!/usr/bin/env python3
"""Side by side: several hapax binaries and nginx against one mock, at fixed rates.

For before/after comparisons of a change: every binary runs the harness's realistic config on
the gateway core, and the harness's `fixed_rate` measures them in alternating rounds with
`direct` and nginx, so the machine's noise is shared. Prints, per cell and target, the median
added p50 / p99 over the rounds (each round: target minus direct), every round's added p50,
and the CPU per 1000 requests.

    python3 bench/ab.py before=/tmp/hapax-old after=target/release/hapax
    python3 bench/ab.py a=BIN b=BIN --rates 500,2000 --latencies 0,20 --duration 20 --rounds 5

Needs oha and nginx (bench/run.sh installs them). Writes nothing.
"""
import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as b  # noqa: E402
import stream_client as sc  # noqa: E402


class SideBySide:
    """bench.fixed_rate's rig: direct, one gateway per binary, nginx."""

    def __init__(self, binaries: dict[str, str]):
        self.workdir = Path(tempfile.mkdtemp(prefix="hapax-ab-"))
        first = next(iter(binaries.values()))
        self.mock = b.Proc("mock", b.taskset(b.CLIENT_CORE) + [first, "mock-provider", "--listen", "127.0.0.1:0"],
                           self.workdir, r"mock-provider listening http=(\S+)", env={"RUST_LOG": "warn"})
        self.mock_addr = self.mock.match.group(1)  # type: ignore[union-attr]
        cfg = self.workdir / "hapax.yaml"
        cfg.write_text(b.GATEWAY_CONFIG.format(mock=self.mock_addr, key=b.KEY))
        self.gateways = {
            name: b.Proc(name, b.taskset(b.GATEWAY_CORE) + [path, "serve", "--config", str(cfg)], self.workdir,
                         r"hapax listening http=(\S+)")
            for name, path in binaries.items()
        }
        port = b.free_port()
        conf = self.workdir / "nginx.conf"
        conf.write_text(b.NGINX_CONFIG.format(dir=self.workdir, port=port, mock=self.mock_addr))
        self.nginx = b.Proc("nginx", b.taskset(b.GATEWAY_CORE) + [shutil.which("nginx") or "nginx", "-p",
                            str(self.workdir), "-c", str(conf), "-g", "daemon off;"], self.workdir, None)
        b.wait_port(port)
        self.nginx_addr = f"127.0.0.1:{port}"
        for url in self.urls().values():
            asyncio.run(sc.plain_load(url, 1, 0.2, b.KEY))

    def urls(self) -> dict[str, str]:
        u = {"direct": f"http://{self.mock_addr}"}
        u.update({n: f"http://{p.match.group(1)}" for n, p in self.gateways.items()})  # type: ignore[union-attr]
        u["nginx"] = f"http://{self.nginx_addr}"
        return u

    def pid(self, target: str) -> int | None:
        if target == "nginx":
            return self.nginx.pid
        return self.gateways[target].pid if target in self.gateways else None

    def fault(self, **fields) -> None:
        b.http("DELETE", f"http://{self.mock_addr}/_mock/faults")
        if fields:
            b.http("POST", f"http://{self.mock_addr}/_mock/faults", {"route": "/v1/chat/completions", **fields})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binaries", nargs="+", help="NAME=PATH, one per gateway binary")
    ap.add_argument("--rates", default="2000")
    ap.add_argument("--latencies", default="0,20", help="mock latencies in ms")
    ap.add_argument("--duration", type=float, default=20, help="seconds per cell and target, split over the rounds")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    binaries = dict(a.split("=", 1) for a in args.binaries)
    oha = shutil.which("oha")
    if not oha or not shutil.which("nginx"):
        sys.exit("bench/ab.py needs oha and nginx (bash bench/run.sh installs both)")
    rig = SideBySide(binaries)
    try:
        rows = b.fixed_rate(rig, b.Loader(oha, None, rig.workdir), [int(x) for x in args.rates.split(",")],
                            [int(x) for x in args.latencies.split(",")], args.duration, args.rounds)
    finally:
        b.stop_all()
    for row in rows:
        results = row["results"]
        direct = results["direct"]["rounds"]
        for target, r in results.items():
            if target == "direct":
                continue
            added50 = [(x["p50"] - y["p50"]) * 1e6 for x, y in zip(r["rounds"], direct)]
            added99 = [(x["p99"] - y["p99"]) * 1e6 for x, y in zip(r["rounds"], direct)]
            print(f"{row['latency_ms']:>2} ms mock {row['rate']:>5} req/s {target:<10} "
                  f"added p50 {statistics.median(added50):5.0f} µs (rounds: {' '.join(f'{v:.0f}' for v in added50)})  "
                  f"added p99 {statistics.median(added99):5.0f} µs  "
                  f"CPU {r.get('cpu_ms_per_1k') or 0:.0f} ms / 1000 req (user {r.get('cpu_user_ms_per_1k') or 0:.0f})")


if __name__ == "__main__":
    main()
