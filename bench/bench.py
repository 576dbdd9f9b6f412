#!/usr/bin/env python3
"""Hapax benchmark harness (issue 4). Started by bench/run.sh, which installs the tools,
builds the binary and pins this script to core 1; see bench/README.md.

Three targets, measured side by side in one invocation so the machine's noise is shared:
  direct : the load generator -> `hapax mock-provider`
  nginx  : the load generator -> nginx (proxy_pass, upstream keepalive) -> the same mock
  hapax  : the load generator -> one hapax node (auth on, rate limits, metrics, info logs) -> the same mock
"Added latency" is a target's percentile minus direct's percentile in the same round.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stream_client as sc  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KEY = "hapax-bench-key-0123456789"
GATEWAY_CORE = "0"   # the system under test (hapax or nginx, one at a time) owns core 0
CLIENT_CORE = "1"    # load generator, stream client and mock share core 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

RUNNING: list["Proc"] = []


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def taskset(core: str) -> list[str]:
    return ["taskset", "-c", core] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


# ---------------------------------------------------------------- processes


class Proc:
    """A child process we started; optional ready line parsed from its stdout."""

    def __init__(self, name: str, cmd: list[str], workdir: Path, ready: str | None, env: dict | None = None,
                 timeout: float = 60.0):
        self.name = name
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self._err = open(self.stderr_path, "wb")
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._err, cwd=workdir,
                                  env={**os.environ, **(env or {})}, start_new_session=True)
        RUNNING.append(self)
        self.match: re.Match | None = None
        found = threading.Event()
        out = open(self.stdout_path, "wb")

        def drain() -> None:
            for line in self.p.stdout:  # type: ignore[union-attr]
                out.write(line)
                out.flush()
                if ready and not found.is_set():
                    m = re.search(ready, line.decode(errors="replace"))
                    if m:
                        self.match = m
                        found.set()
            found.set()

        threading.Thread(target=drain, daemon=True).start()
        if ready:
            found.wait(timeout)
            if not self.match:
                self.stop()
                tail = self.stderr_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} did not print its ready line ({ready!r}); stderr tail:\n{tail}")

    @property
    def pid(self) -> int:
        return self.p.pid

    def stop(self) -> None:
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(5)
        if self in RUNNING:
            RUNNING.remove(self)


def stop_all() -> None:
    for p in list(reversed(RUNNING)):
        try:
            p.stop()
        except Exception as e:  # noqa: BLE001
            log(f"stopping {p.name}: {e}")


def pids_of_tree(pid: int) -> list[int]:
    """pid and its direct children (nginx master + workers)."""
    out = [pid]
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            kids = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
            out += [int(k) for k in kids]
    except OSError:
        pass
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process tree (/proc/PID/stat fields 14 and 15)."""
    total = 0
    for p in pids_of_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def rss_mib(pid: int) -> float:
    total = 0
    for p in pids_of_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


def http(method: str, url: str, body: dict | None = None) -> bytes:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read()


# ---------------------------------------------------------------- the three targets


class Rig:
    def __init__(self, hapax: str, workdir: Path, with_nginx: bool):
        self.workdir = workdir
        self.mock = Proc("mock", taskset(CLIENT_CORE) + [hapax, "mock-provider", "--listen", "127.0.0.1:0"],
                         workdir, r"mock-provider listening http=(\S+)", env={"RUST_LOG": "warn"})
        self.mock_addr = self.mock.match.group(1)  # type: ignore[union-attr]
        log(f"mock on {self.mock_addr}")
        cfg = workdir / "hapax.yaml"
        cfg.write_text(GATEWAY_CONFIG.format(mock=self.mock_addr, key=KEY))
        self.gw = Proc("hapax", taskset(GATEWAY_CORE) + [hapax, "serve", "--config", str(cfg)], workdir,
                       r"hapax listening http=(\S+)")
        self.gw_addr = self.gw.match.group(1)  # type: ignore[union-attr]
        log(f"hapax on {self.gw_addr} (pid {self.gw.pid}, log: {self.gw.stderr_path})")
        self.nginx = None
        self.nginx_addr = None
        if with_nginx:
            port = free_port()
            conf = workdir / "nginx.conf"
            conf.write_text(NGINX_CONFIG.format(dir=workdir, port=port, mock=self.mock_addr))
            self.nginx = Proc("nginx", taskset(GATEWAY_CORE) + [shutil.which("nginx") or "nginx", "-p", str(workdir),
                              "-c", str(conf), "-g", "daemon off;"], workdir, None)
            wait_port(port)
            self.nginx_addr = f"127.0.0.1:{port}"
            log(f"nginx on {self.nginx_addr} (pid {self.nginx.pid})")
        # a first request through each, so connections and pools exist
        for url in self.urls().values():
            asyncio.run(sc.plain_load(url, 1, 0.2, KEY))

    def urls(self) -> dict[str, str]:
        u = {"direct": f"http://{self.mock_addr}", "hapax": f"http://{self.gw_addr}"}
        if self.nginx_addr:
            u["nginx"] = f"http://{self.nginx_addr}"
        return u

    def pid(self, target: str) -> int | None:
        return {"hapax": self.gw.pid, "nginx": self.nginx.pid if self.nginx else None}.get(target)

    def fault(self, **fields) -> None:
        http("DELETE", f"http://{self.mock_addr}/_mock/faults")
        if fields:
            http("POST", f"http://{self.mock_addr}/_mock/faults", {"route": "/v1/chat/completions", **fields})


GATEWAY_CONFIG = """\
# one node, a realistic production shape: auth on, rate limits high enough not to trigger,
# metrics (always on), JSON logs at info (stderr, sent to a file by the harness)
server: {{host: 127.0.0.1, port: 0, shutdown_timeout: 2s}}
auth:
  api_keys:
    - {{name: bench, key: "{key}"}}
rate_limits:
  global: {{requests_per_minute: 100000000}}
  per_key: {{requests_per_minute: 100000000}}
providers:
  upstream:
    type: openai_compatible
    base_url: "http://{mock}/v1"
    model: mock-1
    timeout: 30s
provider_preference: [upstream]
logging: {{level: info, format: json}}
"""

NGINX_CONFIG = """\
# the floor: a plain reverse proxy with upstream keepalive, one worker on the gateway's core
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 8192; }}
http {{
  access_log {dir}/nginx-access.log;
  client_body_temp_path {dir}/nginx-body;
  proxy_temp_path {dir}/nginx-proxy;
  fastcgi_temp_path {dir}/nginx-fastcgi;
  uwsgi_temp_path {dir}/nginx-uwsgi;
  scgi_temp_path {dir}/nginx-scgi;
  keepalive_requests 1000000;
  upstream mock {{ server {mock}; keepalive 512; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""

# ---------------------------------------------------------------- load generators


class Loader:
    """oha (open and closed loop), else wrk (closed loop), else the Python fallback."""

    def __init__(self, oha: str | None, wrk: str | None, workdir: Path):
        self.oha, self.wrk, self.workdir = oha, wrk, workdir
        self.body = json.dumps(sc.chat_body(5, False))
        self.name = "oha" if oha else "wrk" if wrk else "python-fallback"

    def run(self, url: str, duration: float, conns: int, rate: int | None = None, key: str | None = KEY) -> dict:
        if self.oha:
            return self._oha(url, duration, conns, rate, key)
        if rate is not None:
            # no open-loop tool: a closed loop with few connections (smoke only)
            conns = 1
        if self.wrk:
            return self._wrk(url, duration, conns, key)
        return asyncio.run(sc.plain_load(url, conns, duration, key))

    def _oha(self, url: str, duration: float, conns: int, rate: int | None, key: str | None) -> dict:
        cmd = taskset(CLIENT_CORE) + [self.oha, "--no-tui", "--output-format", "json", "-z", f"{duration}s",
                                      "-c", str(conns), "-w", "-m", "POST",
                                      "-H", "Content-Type: application/json", "-H", "X-Hapax-Dedup: off",
                                      "-d", self.body]
        if key:
            cmd += ["-H", f"Authorization: Bearer {key}"]
        if rate is not None:
            cmd += ["-q", str(rate), "--latency-correction"]
        cmd.append(url + sc.CHAT)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
        if r.returncode != 0:
            raise RuntimeError(f"oha failed: {r.stderr[-1000:]}")
        j = json.loads(r.stdout)
        codes = {int(k): v for k, v in (j.get("statusCodeDistribution") or {}).items()}
        errs = sum((j.get("errorDistribution") or {}).values())
        ok = codes.get(200, 0)
        total = sum(codes.values()) + errs
        pcts = j.get("latencyPercentiles") or {}
        summary = j.get("summary") or {}
        return {"requests": total, "errors": total - ok, "rps": ok / max(summary.get("total") or duration, 1e-9),
                "p50": pcts.get("p50"), "p90": pcts.get("p90"), "p99": pcts.get("p99"),
                "error_kinds": j.get("errorDistribution") or {}}

    def _wrk(self, url: str, duration: float, conns: int, key: str | None) -> dict:
        script = self.workdir / "wrk.lua"
        auth = f'wrk.headers["Authorization"] = "Bearer {key}"\n' if key else ""
        script.write_text(
            'wrk.method = "POST"\n'
            f"wrk.body = [[{self.body}]]\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
            'wrk.headers["X-Hapax-Dedup"] = "off"\n' + auth +
            "done = function(s, lat, req)\n"
            "  local e = s.errors\n"
            '  io.write(string.format("WRKJSON {\\"requests\\":%d,\\"errors\\":%d,\\"duration_us\\":%d,'
            '\\"p50\\":%d,\\"p90\\":%d,\\"p99\\":%d}\\n", s.requests, e.connect + e.read + e.write + e.status + e.timeout,'
            " s.duration, lat:percentile(50), lat:percentile(90), lat:percentile(99)))\n"
            "end\n")
        cmd = taskset(CLIENT_CORE) + [self.wrk, "-t1", f"-c{conns}", f"-d{max(1, int(duration))}s", "-s", str(script),
                                      url + sc.CHAT]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
        m = re.search(r"WRKJSON (\{.*\})", r.stdout)
        if not m:
            raise RuntimeError(f"wrk failed: {r.stdout[-500:]} {r.stderr[-500:]}")
        j = json.loads(m.group(1))
        return {"requests": j["requests"], "errors": j["errors"],
                "rps": (j["requests"] - j["errors"]) / (j["duration_us"] / 1e6),
                "p50": j["p50"] / 1e6, "p90": j["p90"] / 1e6, "p99": j["p99"] / 1e6}


# ---------------------------------------------------------------- measurements


def measured(rig: Rig, target: str, fn):
    """Runs fn() and adds the target process's CPU time to its result."""
    pid = rig.pid(target)
    c0 = cpu_seconds(pid) if pid else None
    t0 = time.monotonic()
    res = fn()
    if pid:
        res["cpu_s"] = cpu_seconds(pid) - c0
        res["cpu_pct"] = 100 * res["cpu_s"] / max(time.monotonic() - t0, 1e-9)
        ok = res.get("requests", 0) - res.get("errors", 0)
        res["cpu_ms_per_1k"] = res["cpu_s"] * 1000 / ok * 1000 if ok else None
    return res


def fixed_rate(rig: Rig, loader: Loader, rates: list[int], latencies: list[int], duration: float) -> list[dict]:
    rows = []
    targets = list(rig.urls())
    round_no = 0
    for lat in latencies:
        if lat:
            rig.fault(latency_ms=lat)
        else:
            rig.fault()
        for rate in rates:
            order = targets[round_no % len(targets):] + targets[:round_no % len(targets)]
            round_no += 1
            conns = max(50, rate * (lat + 5) // 1000 * 4)
            res = {}
            for t in order:
                res[t] = measured(rig, t, lambda t=t: loader.run(rig.urls()[t], duration, conns, rate))
                log(f"  {lat:>2} ms mock, {rate} rps, {t:<6}: p50 {us(res[t]['p50'])} p90 {us(res[t]['p90'])} "
                    f"p99 {us(res[t]['p99'])} errors {res[t]['errors']}/{res[t]['requests']}")
            rows.append({"latency_ms": lat, "rate": rate, "results": res})
    rig.fault()
    return rows


def max_throughput(rig: Rig, loader: Loader, levels: list[int], duration: float) -> dict:
    rig.fault()
    out: dict[str, list] = {t: [] for t in rig.urls()}
    for c in levels:
        for t in rig.urls():
            r = measured(rig, t, lambda t=t: loader.run(rig.urls()[t], duration, c))
            r["concurrency"] = c
            out[t].append(r)
            log(f"  closed loop c={c:<4} {t:<6}: {r['rps']:.0f} rps, errors {r['errors']}/{r['requests']}, "
                f"p99 {us(r['p99'])}")
    return out


def best(runs: list[dict]) -> dict | None:
    good = [r for r in runs if r["requests"] and r["errors"] / r["requests"] < 0.001]
    return max(good, key=lambda r: r["rps"]) if good else None


def streams(rig: Rig, n: int, conc: int, words: int, chunk_delay: int) -> dict:
    rig.fault(chunk_delay_ms=chunk_delay)
    out = {}
    for t, url in rig.urls().items():
        out[t] = asyncio.run(sc.stream_run(url, n, conc, words, KEY))
        r = out[t]
        log(f"  streams {t:<6}: {r['ok']}/{r['streams']} ok, TTFT p50 {us(r['ttft_p50'])} p99 {us(r['ttft_p99'])}, "
            f"gap p50 {us(r['gap_p50'])} p99 {us(r['gap_p99'])}")
    rig.fault()
    return out


def hold(rig: Rig, n: int, words: int, chunk_delay: int) -> dict:
    rig.fault(chunk_delay_ms=chunk_delay)
    pid = rig.gw.pid
    peak = [0.0]
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mib(pid))
            time.sleep(0.1)

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    res = asyncio.run(sc.hold_streams(f"http://{rig.gw_addr}", n, words, KEY, lambda: rss_mib(pid)))
    stop.set()
    th.join()
    res["peak"] = peak[0]
    rig.fault()
    log(f"  {res['opened']}/{n} streams open: hapax RSS {res['sample']:.1f} MiB (peak {res['peak']:.1f}), "
        f"{res['ok']} finished ok")
    return res


def run_cluster() -> dict:
    """Hook: 3-node cluster throughput loss vs one node (issue: cluster + docker-compose)."""
    print("run_cluster: not yet available (needs the 3-node cluster)", flush=True)
    return {"available": False}


def run_h3() -> dict:
    """Hook: the same fixed-rate and stream runs over HTTP/3 (issue: HTTP/3)."""
    print("run_h3: not yet available (needs HTTP/3 on the front and an h3 load generator)", flush=True)
    return {"available": False}


# ---------------------------------------------------------------- report


def us(seconds) -> str:
    if seconds is None:
        return "n/a"
    v = seconds * 1e6
    return f"{v:.0f} µs" if abs(v) < 10000 else f"{v / 1000:.1f} ms"


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, AttributeError):
        pass

    def sh(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    commit = sh("git", "rev-parse", "--short", "HEAD")
    if sh("git", "status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    load = Path("/proc/loadavg").read_text().split()[:3]
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram": mem, "kernel": os.uname().release,
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit,
            "loadavg": " ".join(load)}


def verdict(value, target, lower_is_better=True) -> str:
    if value is None:
        return "not measured"
    ok = value <= target if lower_is_better else value >= target
    return "meets" if ok else "misses"


def report(r: dict) -> str:
    m = r["machine"]
    L = []
    L.append("# Hapax benchmarks\n")
    L.append("Generated by `bench/run.sh` (do not edit by hand; re-run it). "
             "How the harness works: [bench/README.md](bench/README.md).\n")
    L.append(f"- command: `{r['command']}`")
    L.append(f"- machine: {m['nproc']} cores, {m['cpu']}, {m['ram']} RAM, Linux {m['kernel']}")
    L.append(f"- date: {m['date']}; commit {m['commit']}; load average at start {m['loadavg']}")
    L.append(f"- load generator: {r['loader']}; nginx: {r.get('nginx_version', 'absent')}; "
             f"{r['duration']} s per run; pinning: hapax / nginx on core {GATEWAY_CORE}, "
             f"mock + load generator + stream client on core {CLIENT_CORE}")
    if r.get("noisy"):
        L.append(f"- **{r['noisy']}**")
    L.append("")

    # targets
    fr = {(x["latency_ms"], x["rate"]): x["results"] for x in r["fixed_rate"]}

    def added(lat, rate, t, p):
        res = fr.get((lat, rate), {})
        if t not in res or res[t].get(p) is None or res["direct"].get(p) is None:
            return None
        return res[t][p] - res["direct"][p]

    L.append("## Against the targets\n")
    L.append("| figure | target | measured | where we stand |")
    L.append("|---|---|---|---|")
    for lat in r["latencies"]:
        a50, a99 = added(lat, 2000, "hapax", "p50"), added(lat, 2000, "hapax", "p99")
        L.append(f"| added latency p50, 2000 rps, {lat} ms mock | <= 50 µs | {us(a50)} | {verdict(a50, 50e-6)} |")
        L.append(f"| added latency p99, 2000 rps, {lat} ms mock | <= 1 ms | {us(a99)} | {verdict(a99, 1e-3)} |")
    for lat in r["latencies"]:
        for rate in r["rates"]:
            for p in ("p50", "p99"):
                h, n = added(lat, rate, "hapax", p), added(lat, rate, "nginx", p)
                if h is None or n is None:
                    continue
                if n < 5e-6:
                    # nginx's added latency is within the noise (~0 or negative): no meaningful ratio
                    L.append(f"| added latency {p} vs nginx, {rate} rps, {lat} ms mock | <= 1.5x nginx ({us(n)}) | "
                             f"{us(h)} | inconclusive (nginx's added latency is in the noise) |")
                    continue
                ratio = h / n
                L.append(f"| added latency {p} vs nginx, {rate} rps, {lat} ms mock | <= 1.5x nginx ({us(n)}) | "
                         f"{us(h)} ({ratio:.1f}x) | {verdict(ratio, 1.5)} |")
    bt = r["max"].get("best_hapax")
    bd = r["max"].get("best_direct")
    if bt:
        got = "%.0f rps (c=%d, errors %d/%d, hapax at %.0f%% of its core)" % (
            bt["rps"], bt["concurrency"], bt["errors"], bt["requests"], bt.get("cpu_pct") or 0)
    else:
        got = "n/a"
    stand = verdict(bt["rps"] if bt else None, 15000, lower_is_better=False)
    if bt and bd:
        stand += " (rig ceiling, direct to mock: %.0f rps)" % bd["rps"]
    L.append(f"| max throughput, one node, 0 ms mock, errors < 0.1% | >= 15000 rps | {got} | {stand} |")
    L.append(f"| RSS idle (after start) | <= 30 MiB | {r['rss_idle_start']:.1f} MiB | {verdict(r['rss_idle_start'], 30)} |")
    L.append(f"| RSS idle (after the load) | <= 30 MiB | {r['rss_idle_after']:.1f} MiB | {verdict(r['rss_idle_after'], 30)} |")
    h = r["hold"]
    L.append(f"| RSS with {h['streams']} open streams ({h['opened']} open at the sample) | <= 150 MiB | "
             f"{h['sample']:.1f} MiB (peak {h['peak']:.1f}) | "
             f"{verdict(h['sample'], 150) if h['streams'] >= 1000 else 'not measured (fewer streams)'} |")
    L.append("| 3-node cluster throughput loss | <= 10% | n/a | not yet available (`run_cluster`) |")
    L.append("| HTTP/3 | — | n/a | not yet available (`run_h3`) |")
    L.append("")

    if r["loader"] == "oha":
        L.append("## Added latency (open loop, oha `-q RATE --latency-correction`)\n")
    else:
        L.append(f"## Added latency ({r['loader']}: closed loop, one connection — no open-loop tool installed)\n")
    L.append("Percentiles of each target; added = target minus direct in the same round.\n")
    L.append("| mock latency | rate | target | p50 | p90 | p99 | added p50 | added p90 | added p99 | errors | CPU ms / 1000 req |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for x in r["fixed_rate"]:
        for t, v in x["results"].items():
            cpu = v.get("cpu_ms_per_1k")
            ad = ["—"] * 3 if t == "direct" else [us(added(x["latency_ms"], x["rate"], t, p)) for p in ("p50", "p90", "p99")]
            L.append(f"| {x['latency_ms']} ms | {x['rate']} | {t} | {us(v['p50'])} | {us(v['p90'])} | {us(v['p99'])} | "
                     f"{' | '.join(ad)} | {v['errors']}/{v['requests']} | {f'{cpu:.0f}' if cpu is not None else '—'} |")
    L.append("")

    L.append("## Throughput (closed loop, 0 ms mock)\n")
    L.append("CPU % is the share of one core the target used during the run (100% = its core saturated; "
             "less means the limit was elsewhere: the client core, or other processes on the machine). "
             "One-core ceiling = 1000 / (CPU ms per request): the rate one fully used core would sustain at this cost.\n")
    L.append("| target | concurrency | req/s | errors | p50 | p99 | CPU ms / 1000 req | CPU % | one-core ceiling |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for t, runs in r["max"]["runs"].items():
        for v in runs:
            cpu = v.get("cpu_ms_per_1k")
            pct_ = v.get("cpu_pct")
            ceil = f"{1e6 / cpu:.0f} rps" if cpu else "—"
            L.append(f"| {t} | {v['concurrency']} | {v['rps']:.0f} | {v['errors']}/{v['requests']} | {us(v['p50'])} | "
                     f"{us(v['p99'])} | {f'{cpu:.0f}' if cpu is not None else '—'} | "
                     f"{f'{pct_:.0f}%' if pct_ is not None else '—'} | {ceil} |")
    L.append("")

    s = r["streams"]
    L.append(f"## Streams (mock `chunk_delay_ms: {r['stream_delay']}`, `words:{r['stream_words']}`, "
             f"{s['direct']['streams']} streams, {r['stream_conc']} at a time, Python asyncio client)\n")
    L.append("TTFT: request written to first `data:` event. Gap: time between consecutive events. "
             "Per-chunk overhead: mean gap minus direct's mean gap.\n")
    L.append("| target | ok | TTFT p50 | TTFT p99 | added TTFT p50 | added TTFT p99 | gap p50 | gap p99 | per-chunk overhead |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    d = s["direct"]
    for t, v in s.items():
        def diff(k):
            return None if v.get(k) is None or d.get(k) is None else v[k] - d[k]
        extra = ["—", "—", "—"] if t == "direct" else [us(diff("ttft_p50")), us(diff("ttft_p99")), None]
        extra[2] = "—" if t == "direct" else us(diff("gap_mean"))
        L.append(f"| {t} | {v['ok']}/{v['streams']} | {us(v['ttft_p50'])} | {us(v['ttft_p99'])} | {extra[0]} | {extra[1]} | "
                 f"{us(v['gap_p50'])} | {us(v['gap_p99'])} | {extra[2]} |")
    L.append("")
    L.append("## Notes\n")
    L.append("- Pinning: on 2 cores the system under test (hapax, or nginx with one worker) gets core 0 to itself; "
             "the mock, the load generator and the stream client share core 1, the same for every target, "
             "so the direct baseline carries the same client-side cost and the difference is the proxy's.")
    L.append("- The closed-loop ceiling of this rig is what the mock + load generator can do on one core "
             "(the `direct` rows): one node cannot be shown faster than that here.")
    L.append("- Requests carry `X-Hapax-Dedup: off` (identical bodies would otherwise be shared by singleflight) "
             "and `Authorization: Bearer` (auth is on).")
    L.append("- CPU time from `/proc/PID/stat` utime+stime (10 ms ticks) of hapax, or nginx master + worker.")
    L.append("- Pinning keeps our processes apart, not other work on the machine: on a busy machine other processes "
             "share core 0 with the target (then its CPU % stays well under 100% while throughput is capped).")
    return "\n".join(L) + "\n"


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hapax", required=True)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--oha")
    ap.add_argument("--wrk")
    ap.add_argument("--no-nginx", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--command", default="bash bench/run.sh")
    ap.add_argument("--noisy", default="")
    a = ap.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="hapax-bench-"))
    smoke = a.smoke
    d = a.duration
    rates = [50] if smoke else [500, 2000]
    latencies = [0, 20] if not smoke else [0]
    levels = [8] if smoke else [16, 64, 256]
    loader = Loader(a.oha, a.wrk, workdir)
    n_streams, s_conc, hold_n = (10, 5, 20) if smoke else (200, 20, 1000)
    log(f"workdir {workdir}; load generator {loader.name}; {d} s per run{' (smoke)' if smoke else ''}")

    def on_signal(signum, frame):  # noqa: ARG001
        stop_all()
        sys.exit(130)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    res: dict = {"command": a.command, "loader": loader.name, "duration": d, "rates": rates,
                 "latencies": latencies, "noisy": a.noisy, "machine": machine()}
    try:
        rig = Rig(a.hapax, workdir, with_nginx=not a.no_nginx and shutil.which("nginx") is not None)
        if rig.nginx:
            v = subprocess.run(["nginx", "-v"], capture_output=True, text=True)
            res["nginx_version"] = (v.stderr or v.stdout).strip().replace("nginx version: ", "")
        time.sleep(0.5)
        res["rss_idle_start"] = rss_mib(rig.gw.pid)
        log(f"hapax idle RSS {res['rss_idle_start']:.1f} MiB")

        log("warm-up")
        for url in rig.urls().values():
            loader.run(url, min(d, 2), 16)

        log("fixed rates (open loop)")
        res["fixed_rate"] = fixed_rate(rig, loader, rates, latencies, d)

        log("max throughput (closed loop)")
        runs = max_throughput(rig, loader, levels, d)
        res["max"] = {"runs": runs, "best_hapax": best(runs["hapax"]), "best_direct": best(runs["direct"])}

        log("streams: TTFT and inter-chunk gaps")
        res["stream_delay"], res["stream_words"], res["stream_conc"] = 5, 20, s_conc
        res["streams"] = streams(rig, n_streams, s_conc, 20, 5)

        time.sleep(1.0)
        res["rss_idle_after"] = rss_mib(rig.gw.pid)
        log(f"hapax idle RSS after the load {res['rss_idle_after']:.1f} MiB")

        log(f"holding {hold_n} streams open")
        res["hold"] = hold(rig, hold_n, 30, 200 if not smoke else 50)

        res["cluster"] = run_cluster()
        res["h3"] = run_h3()

        if rig.gw.p.poll() is not None:
            raise RuntimeError("hapax exited during the run")
    finally:
        stop_all()

    (workdir / "results.json").write_text(json.dumps(res, indent=2, default=str))
    text = report(res)
    print()
    print(text)
    problems = []
    if res["max"]["best_hapax"] is None:
        problems.append("no closed-loop hapax run under 0.1% errors")
    if any(v["ok"] == 0 for v in res["streams"].values()):
        problems.append("a target completed no stream")
    if res["hold"]["ok"] == 0:
        problems.append("no held stream completed")
    for big in ("hapax.stderr", "nginx-access.log"):
        f = workdir / big
        if f.exists() and f.stat().st_size > 1 << 20:
            f.unlink()  # request logs: only their cost mattered
    if smoke:
        if problems:
            log(f"smoke: logs and raw results kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    elif not a.no_write:
        Path(a.out).write_text(text)
        log(f"wrote {a.out}; raw results in {workdir}/results.json")
    if problems:
        log("harness problems: " + "; ".join(problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
