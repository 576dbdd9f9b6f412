#!/usr/bin/env python3
"""Hapax benchmark harness (issue 4). Started by bench/run.sh, which installs the tools,
builds the binary and pins this script to core 1; see bench/README.md.

Three targets, measured side by side in one invocation so the machine's noise is shared:
  direct : the load generator -> `hapax mock-provider`
  nginx  : the load generator -> nginx (proxy_pass, upstream keepalive) -> the same mock
  hapax  : the load generator -> one hapax node (auth on, rate limits, metrics, info logs) -> the same mock
and, in the fixed-rate section only, hapax-no-busy-poll: a second node of the same binary and config
with busy polling off (`server.busy_poll: 0s`), so what the default's adaptive spinning buys is shown.
"Added latency" is a target's percentile minus direct's percentile in the same round; each cell
runs ROUNDS rounds (rotating order) and reports the median over them.
run_paced measures the same cells again with requests paced one by one (bench/h3load) instead
of oha's two per 1 ms timer tick at 2000 req/s; run_one_core measures them paced with every
process on one core: there a proxy's added latency is its own work, not the VM's cross-core
wake-ups. Then run_cluster (3 nodes: through one node, and through nginx round robin over all
three, beside the single node) and run_h3 (one node with HTTP/3 on, bench/h3load over HTTP/1.1 and
HTTP/3); all three skipped by --smoke.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
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
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import idle  # noqa: E402
import stream_client as sc  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KEY = "hapax-bench-key-0123456789"
GATEWAY_CORE = "0"   # the system under test (hapax or nginx, one at a time) owns core 0
CLIENT_CORE = "1"    # load generator, stream client and mock share core 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
ROUNDS = 5  # rounds per fixed-rate cell (--rounds; 1 in --smoke)
# The fixed-rate section's fourth target: the same binary and config with `server.busy_poll`
# (README) off, so the report shows what the default's adaptive spinning buys.
NO_BUSY_POLL = "hapax-no-busy-poll"
NO_BUSY_POLL_SETTING = "0s"
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


def keep_warnings(log_file: Path, most: int = 200) -> None:
    """Copies the first warning and error lines of a request log that is about to be deleted
    to `NAME.warnings`, so that a run's errors can still be explained afterwards."""
    kept = []
    with open(log_file, "rb") as f:
        for line in f:
            if b'"level":"WARN' in line or b'"level":"ERROR' in line:
                kept.append(line)
                if len(kept) >= most:
                    break
    if kept:
        log_file.with_suffix(".warnings").write_bytes(b"".join(kept))


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


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) seconds of a process tree (/proc/PID/stat fields 14 and 15)."""
    user = system = 0
    for p in pids_of_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return user / CLK_TCK, system / CLK_TCK


def busy_poll_line(stderr_path: Path) -> str:
    """What the gateway's own start-up log says of busy polling, as the report's sentence: the
    run's window, read rather than assumed from the default."""
    try:
        for line in stderr_path.read_text(errors="replace").splitlines():
            m = re.search(r'"window_us":(\d+)', line) if "busy polling" in line else None
            if m and "is off" in line:
                return (f"does not spin in this run: {m.group(1)} µs is set, but busy polling needs a "
                        "process with one core")
            if m:
                return (f"spins, instead of halting the vCPU, while a request waits for an upstream that lately "
                        f"answered within {m.group(1)} µs (its start-up log's window; the 0 ms mock answers "
                        "within it, the 20 ms one never)")
    except OSError:
        pass
    return "does not spin in this run (its log has no busy-polling line: `server.busy_poll: 0s`)"


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
    """direct, nginx and one hapax node in front of one mock. `core` is where the proxies run
    (the harness's layout: core 0, the mock and the load generator on core 1); `mock`, another
    rig's mock to share instead of starting one; `more`, further gateways beside the first on
    its core, by name: `PATH` runs that binary with the same config, `PATH+key=value,...` adds
    server settings to it (`+busy_poll=0s`)."""

    def __init__(self, hapax: str, workdir: Path, with_nginx: bool, core: str | None = None,
                 mock: Proc | None = None, more: dict[str, str] | None = None):
        core = core or GATEWAY_CORE  # read at call time: ab.py --one-core changes it
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.mock = mock or Proc("mock", taskset(CLIENT_CORE) + [hapax, "mock-provider", "--listen", "127.0.0.1:0"],
                                 workdir, r"mock-provider listening http=(\S+)", env={"RUST_LOG": "warn"})
        self.mock_addr = self.mock.match.group(1)  # type: ignore[union-attr]
        log(f"mock on {self.mock_addr}")
        cfg = workdir / "hapax.yaml"
        cfg.write_text(GATEWAY_CONFIG.format(mock=self.mock_addr, key=KEY))
        self.gw = Proc("hapax", taskset(core) + [hapax, "serve", "--config", str(cfg)], workdir,
                       r"hapax listening http=(\S+)")
        self.gw_addr = self.gw.match.group(1)  # type: ignore[union-attr]
        log(f"hapax on {self.gw_addr} (pid {self.gw.pid}, log: {self.gw.stderr_path})")
        self.more: dict[str, Proc] = {}
        for name, spec in (more or {}).items():
            path, _, settings = spec.partition("+")
            config = cfg
            if settings:
                config = workdir / f"hapax-{name}.yaml"
                fields = ", ".join(kv.replace("=", ": ", 1) for kv in settings.split(","))
                config.write_text(cfg.read_text().replace("server: {", f"server: {{{fields}, ", 1))
            self.more[name] = Proc(name, taskset(core) + [path, "serve", "--config", str(config)], workdir,
                                   r"hapax listening http=(\S+)")
            log(f"{name} on {self.more[name].match.group(1)} (pid {self.more[name].pid}{', ' + settings if settings else ''})")  # type: ignore[union-attr]
        self.nginx = None
        self.nginx_addr = None
        if with_nginx:
            port = free_port()
            conf = workdir / "nginx.conf"
            conf.write_text(NGINX_CONFIG.format(dir=workdir, port=port, mock=self.mock_addr))
            self.nginx = Proc("nginx", taskset(core) + [shutil.which("nginx") or "nginx", "-p", str(workdir),
                              "-c", str(conf), "-g", "daemon off;"], workdir, None)
            wait_port(port)
            self.nginx_addr = f"127.0.0.1:{port}"
            log(f"nginx on {self.nginx_addr} (pid {self.nginx.pid})")
        # a first request through each, so connections and pools exist
        for url in self.urls().values():
            asyncio.run(sc.plain_load(url, 1, 0.2, KEY))

    def gateways(self) -> dict[str, Proc]:
        return {"hapax": self.gw, **self.more}

    def urls(self) -> dict[str, str]:
        u = {"direct": f"http://{self.mock_addr}"}
        u.update({n: f"http://{p.match.group(1)}" for n, p in self.gateways().items()})  # type: ignore[union-attr]
        if self.nginx_addr:
            u["nginx"] = f"http://{self.nginx_addr}"
        return u

    def pid(self, target: str) -> int | None:
        if target == "nginx":
            return self.nginx.pid if self.nginx else None
        gateway = self.gateways().get(target)
        return gateway.pid if gateway else None

    def stop_more(self) -> None:
        """Stops the gateways beside the first: later sections measure hapax and nginx only."""
        for p in self.more.values():
            p.stop()
        self.more = {}

    def stop_proxies(self) -> None:
        """Stops this rig's gateways and nginx (a shared mock stays up)."""
        self.stop_more()
        for p in (self.gw, self.nginx):
            if p:
                p.stop()

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
    """oha (open and closed loop), else wrk (closed loop), else the Python fallback; with
    `paced` (bench/h3load), the open loop is h3load's over HTTP/1.1, which releases requests
    one by one at their due times instead of oha's two per 1 ms timer tick at 2000 req/s."""

    def __init__(self, oha: str | None, wrk: str | None, workdir: Path, paced: str | None = None):
        self.oha, self.wrk, self.workdir, self.paced = oha, wrk, workdir, paced
        self.body = json.dumps(sc.chat_body(5, False))
        self.name = "oha" if oha else "wrk" if wrk else "python-fallback"

    def run(self, url: str, duration: float, conns: int, rate: int | None = None, key: str | None = KEY) -> dict:
        if rate is not None and self.paced:
            return self._paced(url, duration, conns, rate, key)
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
        # What went wrong, by kind: oha's transport errors and every answer that was not a 200.
        kinds = dict(j.get("errorDistribution") or {})
        kinds.update({f"HTTP {code}": n for code, n in codes.items() if code != 200})
        return {"requests": total, "errors": total - ok, "rps": ok / max(summary.get("total") or duration, 1e-9),
                "p50": pcts.get("p50"), "p90": pcts.get("p90"), "p99": pcts.get("p99"),
                "error_kinds": kinds}

    def _paced(self, url: str, duration: float, conns: int, rate: int, key: str | None) -> dict:
        return run_h3load(self.paced, url + sc.CHAT, duration, conns, self.body, key, rate, ["--proto", "h1"])

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


def measured(rig, target: str, fn):
    """Runs fn() and adds the target's CPU time to its result (rig.pid(target): one pid, a
    list of pids whose CPU is summed, or None)."""
    pid = rig.pid(target)
    pids = [] if not pid else [pid] if isinstance(pid, int) else list(pid)
    def times() -> tuple[float, float]:
        user_system = [cpu_times(p) for p in pids]
        return sum(u for u, _ in user_system), sum(u + s for u, s in user_system)

    u0, c0 = times()
    t0 = time.monotonic()
    res = fn()
    if pids:
        u1, c1 = times()
        res["cpu_s"] = c1 - c0
        user_s = u1 - u0
        res["cpu_pct"] = 100 * res["cpu_s"] / max(time.monotonic() - t0, 1e-9)
        ok = res.get("requests", 0) - res.get("errors", 0)
        res["cpu_ms_per_1k"] = res["cpu_s"] * 1000 / ok * 1000 if ok else None
        res["cpu_user_ms_per_1k"] = user_s * 1000 / ok * 1000 if ok else None
    return res


def fixed_rate(rig, loader, rates: list[int], latencies: list[int], duration: float,
               rounds: int | None = None) -> list[dict]:
    """rig: urls() / pid(target) / fault(); loader: .run(url, duration, conns, rate) or, per
    target, rig.load(target, duration, conns, rate) when rig has one.

    Each (mock latency, rate) cell is measured in `rounds` rounds of duration / rounds seconds,
    every target once per round in rotating order; a figure is the median over the rounds and
    an added latency the median of (target - direct) within each round, so that one noisy
    second on the shared machine moves one round, not the result."""
    rounds = rounds or ROUNDS
    per_round = duration if rounds == 1 else max(2.0, duration / rounds)
    rows = []
    targets = list(rig.urls())
    round_no = 0
    for lat in latencies:
        if lat:
            rig.fault(latency_ms=lat)
        else:
            rig.fault()
        for rate in rates:
            conns = max(50, rate * (lat + 5) // 1000 * 4)
            per_target: dict[str, list] = {t: [] for t in targets}
            for _ in range(rounds):
                order = targets[round_no % len(targets):] + targets[:round_no % len(targets)]
                round_no += 1
                for t in order:
                    per_target[t].append(measured(rig, t, lambda t=t: load_via(rig, loader, t, per_round, conns, rate)))
            res = {t: merge_rounds(rs) for t, rs in per_target.items()}
            for t in targets:
                log(f"  {lat:>2} ms mock, {rate} rps, {t:<6}: p50 {us(res[t]['p50'])} p90 {us(res[t]['p90'])} "
                    f"p99 {us(res[t]['p99'])} errors {res[t]['errors']}/{res[t]['requests']} ({rounds} rounds)"
                    + (f" {res[t]['error_kinds']}" if res[t]["errors"] else ""))
            rows.append({"latency_ms": lat, "rate": rate, "results": res})
    rig.fault()
    return rows


def merge_rounds(rs: list[dict]) -> dict:
    """Medians of the rounds' percentiles and CPU cost; counts summed; the rounds kept."""
    def med(key):
        vals = [r[key] for r in rs if r.get(key) is not None]
        return statistics.median(vals) if vals else None
    out = {k: med(k) for k in ("p50", "p90", "p99", "cpu_ms_per_1k", "cpu_user_ms_per_1k", "cpu_pct", "rps")}
    out["errors"] = sum(r.get("errors", 0) for r in rs)
    out["requests"] = sum(r.get("requests", 0) for r in rs)
    kinds: dict[str, int] = {}
    for r in rs:
        for kind, n in (r.get("error_kinds") or {}).items():
            kinds[kind] = kinds.get(kind, 0) + n
    out["error_kinds"] = kinds
    out["rounds"] = rs
    return out


def load_via(rig, loader, target: str, duration: float, conns: int, rate: int | None = None) -> dict:
    if hasattr(rig, "load"):
        return rig.load(target, duration, conns, rate)
    return loader.run(rig.urls()[target], duration, conns, rate)


def run_h3load(h3load: str, url: str, duration: float, conns: int, body: str, key: str | None,
               rate: int | None, extra: list[str]) -> dict:
    """One bench/h3load run on the client core: its JSON result."""
    cmd = taskset(CLIENT_CORE) + [h3load, "--url", url, "--duration", str(duration), "--concurrency", str(conns),
                                  "--body", body, "-H", "x-hapax-dedup: off", *extra]
    if key:
        cmd += ["-H", f"authorization: Bearer {key}"]
    if rate is not None:
        cmd += ["--rate", str(rate)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    if r.returncode != 0:
        raise RuntimeError(f"h3load failed: {r.stderr[-1000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def no_h3load(h3load: str | None) -> str:
    """Why a run that needs bench/h3load cannot have it, or "" when it can."""
    if h3load and os.access(h3load, os.X_OK):
        return ""
    return "no h3load binary (bench/h3load not built: run without --no-build, or it failed to build)"


def paced_fixed_rate(rig: Rig, h3load: str, workdir: Path, rates: list[int], latencies: list[int],
                     duration: float) -> list[dict]:
    """The fixed-rate cells on `rig`, driven by h3load's paced open loop, after a warm-up that
    opens the proxies' upstream connections (as the main rig's warm-up does)."""
    loader = Loader(None, None, workdir, paced=h3load)
    for url in rig.urls().values():
        loader.run(url, 2, 16, rate=1000)
    return fixed_rate(rig, loader, rates, latencies, duration)


def run_paced(rig: Rig, h3load: str | None, workdir: Path, rates: list[int], latencies: list[int],
              duration: float, skip: str = "") -> dict:
    """The fixed rates again in the same layout and rig, each request released alone at its
    due time by h3load's pacing thread (wrk2's constant-rate model) instead of by oha, whose
    `-q` wakes on tokio's 1 ms timer ticks and so releases two requests at once at 2000 rps:
    the second of each pair then waits at every hop for the proxy's work on the first."""
    skip = skip or no_h3load(h3load)
    if skip:
        print(f"run_paced: skipped ({skip})", flush=True)
        return {"available": False, "why": skip}
    log("fixed rates again, paced open loop (h3load over HTTP/1.1)")
    try:
        rows = paced_fixed_rate(rig, h3load, workdir, rates, latencies, duration)
    except Exception as e:  # noqa: BLE001 - the rest of the run still reports
        log(f"paced run failed: {e}")
        return {"available": False, "why": f"failed: {e}"}
    return {"available": True, "rows": rows}


def run_one_core(rig: Rig, hapax: str, h3load: str | None, workdir: Path, rates: list[int],
                 latencies: list[int], duration: float, skip: str = "") -> dict:
    """The fixed rates again with every process on the client's core and requests paced one
    by one (bench/h3load); why, in `one_core_section`'s text."""
    skip = skip or no_h3load(h3load)
    if skip:
        print(f"run_one_core: skipped ({skip})", flush=True)
        return {"available": False, "why": skip}
    log("fixed rates, every process on one core, paced open loop (h3load over HTTP/1.1)")
    one = None
    try:
        one = Rig(hapax, workdir / "one-core", with_nginx=rig.nginx is not None, core=CLIENT_CORE, mock=rig.mock)
        rows = paced_fixed_rate(one, h3load, workdir, rates, latencies, duration)
    except Exception as e:  # noqa: BLE001 - the rest of the run still reports
        log(f"one-core run failed: {e}")
        return {"available": False, "why": f"failed: {e}"}
    finally:
        if one:
            one.stop_proxies()
    return {"available": True, "rows": rows}


def max_throughput(rig, loader, levels: list[int], duration: float) -> dict:
    rig.fault()
    out: dict[str, list] = {t: [] for t in rig.urls()}
    for i, c in enumerate(levels):
        targets = list(rig.urls())
        for t in targets[i % len(targets):] + targets[:i % len(targets)]:
            r = measured(rig, t, lambda t=t: load_via(rig, loader, t, duration, c))
            r["concurrency"] = c
            out[t].append(r)
            log(f"  closed loop c={c:<4} {t:<6}: {r['rps']:.0f} rps, errors {r['errors']}/{r['requests']}, "
                f"p99 {us(r['p99'])}")
    return out


def best(runs: list[dict]) -> dict | None:
    good = [r for r in runs if r["requests"] and r["errors"] / r["requests"] < 0.001]
    return max(good, key=lambda r: r["rps"]) if good else None


PAIRED_CONCURRENCY = 16


def paired_throughput(rig, loader, a: str, b: str, duration: float, rounds: int | None = None) -> dict:
    """Closed loop at PAIRED_CONCURRENCY, `a` and `b` alternating for `rounds` rounds of
    duration / rounds seconds (order flipped every round): the loss of b against a is the
    median over rounds of 1 - rps(b) / rps(a), so a noisy stretch of the shared machine moves
    one round, not the figure (the best single runs of a max-throughput sweep, taken minutes
    apart, moved the loss by 20 points between identical runs)."""
    rounds = rounds or ROUNDS
    per_round = duration if rounds == 1 else max(2.0, duration / rounds)
    pairs = []
    for i in range(rounds):
        got = {}
        for t in ([a, b] if i % 2 == 0 else [b, a]):
            got[t] = measured(rig, t, lambda t=t: load_via(rig, loader, t, per_round, PAIRED_CONCURRENCY))
        pairs.append(got)
    losses = [1 - p[b]["rps"] / p[a]["rps"] for p in pairs if p[a]["rps"]]
    cpu = [p[b]["cpu_ms_per_1k"] / p[a]["cpu_ms_per_1k"] for p in pairs
           if p[a].get("cpu_ms_per_1k") and p[b].get("cpu_ms_per_1k")]
    return {
        "loss": statistics.median(losses) if losses else None,
        "loss_range": [min(losses), max(losses)] if losses else None,
        "cpu_ratio": statistics.median(cpu) if cpu else None,
        a: merge_rounds([p[a] for p in pairs]),
        b: merge_rounds([p[b] for p in pairs]),
        "rounds": rounds,
        "concurrency": PAIRED_CONCURRENCY,
    }


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


CLUSTER_SECRET = "hapax-bench-cluster-secret-0123456789"

CLUSTER_BLOCK = """\
cluster:
  node_id: {name}
  cluster_id: bench
  gossip_listen: "127.0.0.1:0"
  grpc_listen: "127.0.0.1:0"
  data_dir: "{data}"
  seeds: [{seeds}]
  bootstrap_expect: 3
  secret: "{secret}"
"""

LB_CONFIG = """\
# round robin over the three nodes, keepalive to each (the load balancer in front of a cluster)
worker_processes 1;
pid {dir}/lb.pid;
error_log {dir}/lb-error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {dir}/lb-body;
  proxy_temp_path {dir}/lb-proxy;
  fastcgi_temp_path {dir}/lb-fastcgi;
  uwsgi_temp_path {dir}/lb-uwsgi;
  scgi_temp_path {dir}/lb-scgi;
  keepalive_requests 1000000;
  upstream hapax {{
{servers}
    keepalive 512;
    keepalive_requests 1000000;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://hapax;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""


def cluster_health(addr: str) -> dict:
    req = urllib.request.Request(f"http://{addr}/v1/health", headers={"Authorization": f"Bearer {KEY}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:  # 503 still carries the body
        return json.loads(e.read())


def cluster_ready(h: dict, n: int) -> tuple[bool, str]:
    """n members alive, a Raft leader and n voters, as /v1/health shows them."""
    c = h.get("cluster") or {}
    alive = [m.get("node_id") for m in c.get("members") or [] if m.get("liveness") == "alive"]
    raft = (c.get("raft") or {}).get("status") or {}
    leader = raft.get("leader_id")
    voters = raft.get("voters") or []
    ok = len(alive) >= n and leader is not None and len(voters) >= n
    return ok, f"alive {len(alive)}/{n}, leader {leader}, voters {len(voters)}"


class Cluster:
    """Three `hapax serve` nodes on loopback, the same config as the single node plus a
    `cluster:` block, in front of the rig's mock; optionally nginx round robin over them.
    Targets: direct and the single node (the rig's, for the same-round comparison),
    `cluster-node` (node 1 alone) and `cluster-lb` (nginx -> all three)."""

    def __init__(self, rig: Rig, hapax: str, workdir: Path, with_lb: bool, patience: float = 90.0):
        self.rig = rig
        self.dir = Path(tempfile.mkdtemp(prefix="cluster-", dir=workdir))  # fresh Raft data every time
        self.nodes: list[Proc] = []
        self.addrs: list[str] = []
        self.lb: Proc | None = None
        self.lb_addr: str | None = None
        gossip1 = None
        t_start = time.monotonic()
        for i in range(3):
            name = f"node{i + 1}"
            data = self.dir / f"{name}-data"
            data.mkdir(exist_ok=True)
            cfg = self.dir / f"{name}.yaml"
            cfg.write_text(GATEWAY_CONFIG.format(mock=rig.mock_addr, key=KEY) + CLUSTER_BLOCK.format(
                name=name, data=data, seeds=f'"{gossip1}"' if gossip1 else "", secret=CLUSTER_SECRET))
            # the node under test (node1) gets core 0; the other two share core 1 with the mock
            core = GATEWAY_CORE if i == 0 else CLIENT_CORE
            proc = Proc(f"cluster-{name}", taskset(core) + [hapax, "serve", "--config", str(cfg)], self.dir,
                        r"hapax listening http=(\S+).*?gossip=(\S+) grpc=(\S+)")
            self.nodes.append(proc)
            self.addrs.append(proc.match.group(1))  # type: ignore[union-attr]
            if i == 0:
                gossip1 = proc.match.group(2)  # type: ignore[union-attr]
            log(f"cluster {name} http={self.addrs[-1]} gossip={proc.match.group(2)} "  # type: ignore[union-attr]
                f"grpc={proc.match.group(3)} (pid {proc.pid}, core {core})")
        end = time.monotonic() + patience
        state = ""
        while True:
            ok_all, states = True, []
            for a in self.addrs:
                try:
                    ok, st = cluster_ready(cluster_health(a), 3)
                except (OSError, ValueError) as e:
                    ok, st = False, str(e)
                ok_all &= ok
                states.append(st)
            state = "; ".join(states)
            if ok_all:
                break
            if time.monotonic() > end:
                raise RuntimeError(f"cluster did not converge in {patience:.0f} s: {state}")
            time.sleep(0.5)
        self.formed_s = time.monotonic() - t_start
        self.formed = state.split(";")[0]
        log(f"cluster formed in {self.formed_s:.1f} s: {self.formed}")
        if with_lb:
            port = free_port()
            conf = self.dir / "lb.conf"
            servers = "\n".join(f"    server {a};" for a in self.addrs)
            conf.write_text(LB_CONFIG.format(dir=self.dir, port=port, servers=servers))
            # the load balancer shares core 0 with node1: then each core carries a share of the nodes
            self.lb = Proc("cluster-lb", taskset(GATEWAY_CORE) + [shutil.which("nginx") or "nginx", "-p", str(self.dir),
                           "-c", str(conf), "-g", "daemon off;"], self.dir, None)
            wait_port(port)
            self.lb_addr = f"127.0.0.1:{port}"
            log(f"nginx load balancer on {self.lb_addr} (pid {self.lb.pid}) -> {', '.join(self.addrs)}")
        for url in self.urls().values():
            asyncio.run(sc.plain_load(url, 3, 0.3, KEY))

    def urls(self) -> dict[str, str]:
        u = {"direct": f"http://{self.rig.mock_addr}", "hapax": f"http://{self.rig.gw_addr}",
             "cluster-node": f"http://{self.addrs[0]}"}
        if self.lb_addr:
            u["cluster-lb"] = f"http://{self.lb_addr}"
        return u

    def pid(self, target: str):
        return {"hapax": self.rig.gw.pid, "cluster-node": self.nodes[0].pid,
                # the cluster's cost per request: the three nodes (not nginx)
                "cluster-lb": [n.pid for n in self.nodes]}.get(target)

    def fault(self, **fields) -> None:
        self.rig.fault(**fields)

    def stop(self) -> None:
        for p in [self.lb, *reversed(self.nodes)]:
            if p:
                p.stop()


def run_cluster(rig: Rig | None = None, loader: Loader | None = None, hapax: str = "", workdir: Path | None = None,
                rates: list[int] | None = None, latencies: list[int] | None = None, levels: list[int] | None = None,
                duration: float = 10, with_lb: bool = True, skip: str = "") -> dict:
    """3-node cluster: the same fixed-rate and closed-loop runs as the single node, through
    node 1 alone and through nginx round robin over the three, side by side with the single
    node and direct (same rounds, rotating order)."""
    if skip or rig is None or loader is None or workdir is None:
        print(f"run_cluster: skipped ({skip or 'no rig'})", flush=True)
        return {"available": False, "why": skip or "no rig"}
    log("3-node cluster")
    cl = None
    try:
        cl = Cluster(rig, hapax, workdir, with_lb=with_lb)
        out: dict = {"available": True, "lb": "nginx" if cl.lb else None, "formed": cl.formed,
                     "formed_s": cl.formed_s}
        time.sleep(1.0)
        out["rss_node_idle"] = rss_mib(cl.nodes[0].pid)
        log("cluster: warm-up")
        for t in cl.urls():
            loader.run(cl.urls()[t], min(duration, 2), 16)
        log("cluster: fixed rates (open loop)")
        out["fixed_rate"] = fixed_rate(cl, loader, rates or [2000], latencies or [0], duration)
        log("cluster: max throughput (closed loop)")
        runs = max_throughput(cl, loader, levels or [64], duration)
        out["max"] = {"runs": runs, **{f"best_{t}": best(v) for t, v in runs.items()}}
        log(f"cluster: single node vs cluster node, alternating rounds at c={PAIRED_CONCURRENCY}")
        paired = paired_throughput(cl, loader, "hapax", "cluster-node", duration)
        out["paired"] = paired
        out["loss"] = paired["loss"]
        # the same comparison by CPU cost per request (independent of what capped the rate)
        out["cpu_node_vs_single"] = paired["cpu_ratio"]
        out["after"] = cluster_ready(cluster_health(cl.addrs[0]), 3)[1]
        for i, n in enumerate(cl.nodes):
            if n.p.poll() is not None:
                raise RuntimeError(f"cluster node{i + 1} exited during the run")
        if out["loss"] is not None:
            log(f"cluster: node {paired['cluster-node']['rps']:.0f} rps vs single {paired['hapax']['rps']:.0f} rps "
                f"(medians of {paired['rounds']} alternating rounds): loss {100 * out['loss']:.1f}%")
        return out
    except Exception as e:  # noqa: BLE001
        log(f"run_cluster failed: {e}")
        return {"available": False, "why": f"failed: {e}"}
    finally:
        if cl:
            cl.stop()


H3_CONFIG_EXTRA = """\
  http3:
    enabled: true
    port: 0
    tls_cert_file: "{cert}"
    tls_key_file: "{key}"
"""


class H3Rig:
    """One node with `server.http3` on (same config as the single node otherwise), measured
    by bench/h3load over HTTP/1.1 (TCP) and HTTP/3 (QUIC), beside direct (h3load HTTP/1.1 ->
    the mock). The same tool for all three, so the difference is the protocol's. `more`:
    further binaries with the same config on the same core, by name, each a target `NAME-h3`
    over HTTP/3 (`bench/ab.py --h3`)."""

    H3_MAX_CONNS = 16  # QUIC connections per run: min(concurrency, 16), requests multiplexed on them

    def __init__(self, rig: Rig, hapax: str, h3load: str, workdir: Path, more: dict[str, str] | None = None):
        self.rig, self.h3load = rig, h3load
        self.dir = Path(tempfile.mkdtemp(prefix="h3-", dir=workdir))
        certs = self.dir / "certs"
        r = subprocess.run([hapax, "gen-cert", "--out", str(certs)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"hapax gen-cert failed: {r.stderr[-500:]}")
        self.cacert = certs / "cert.pem"
        base = GATEWAY_CONFIG.format(mock=rig.mock_addr, key=KEY).replace(
            "server: {host: 127.0.0.1, port: 0, shutdown_timeout: 2s}\n",
            "server:\n  host: 127.0.0.1\n  port: 0\n  shutdown_timeout: 2s\n"
            + H3_CONFIG_EXTRA.format(cert=self.cacert, key=certs / "key.pem"))
        assert "http3" in base
        cfg = self.dir / "hapax-h3.yaml"
        cfg.write_text(base)
        if "hapax" in (more or {}):
            raise ValueError("H3Rig: 'hapax' names the first node; give the others other names")
        self.nodes: dict[str, Proc] = {}
        for name, path in {"hapax": hapax, **(more or {})}.items():
            node = Proc(f"{name}-h3", taskset(GATEWAY_CORE) + [path, "serve", "--config", str(cfg)], self.dir,
                        r"hapax listening http=(\S+) h3=(\S+)")
            self.nodes[name] = node
            log(f"{name} with HTTP/3: http={node.match.group(1)} h3={node.match.group(2)} (pid {node.pid})")  # type: ignore[union-attr]
        self.gw = self.nodes["hapax"]
        self.http_addr, self.h3_addr = self.gw.match.group(1), self.gw.match.group(2)  # type: ignore[union-attr]
        self.body = json.dumps(sc.chat_body(5, False))

    def urls(self) -> dict[str, str]:
        u = {"direct": f"http://{self.rig.mock_addr}", "hapax-h1": f"http://{self.http_addr}",
             "hapax-h3": f"https://{self.h3_addr}"}
        u.update({f"{name}-h3": f"https://{node.match.group(2)}"  # type: ignore[union-attr]
                  for name, node in self.nodes.items() if name != "hapax"})
        return u

    def pid(self, target: str):
        node = self.nodes.get(target.rsplit("-", 1)[0])
        return node.pid if node else None

    def fault(self, **fields) -> None:
        self.rig.fault(**fields)

    def load(self, target: str, duration: float, conns: int, rate: int | None = None, stream: bool = False,
             words: int = 5) -> dict:
        url = self.urls()[target] + sc.CHAT
        body = self.body if not stream else json.dumps(sc.chat_body(words, True))
        if target.endswith("h3"):
            extra = ["--proto", "h3", "--cacert", str(self.cacert), "--connections", str(min(conns, self.H3_MAX_CONNS))]
        else:
            extra = ["--proto", "h1"]
        if stream:
            extra.append("--stream")
        j = run_h3load(self.h3load, url, duration, conns, body, KEY, rate, extra)
        if j.get("errors") and j.get("error_kinds"):
            log(f"    {target}: errors {j['error_kinds']}")
        return j

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


def run_h3(rig: Rig | None = None, loader: Loader | None = None, hapax: str = "", h3load: str | None = None,
           workdir: Path | None = None, rates: list[int] | None = None, latencies: list[int] | None = None,
           levels: list[int] | None = None, duration: float = 10, stream_conc: int = 20, skip: str = "") -> dict:
    """HTTP/3 beside HTTP/1.1 through one node with `server.http3` on: added latency at fixed
    rates, closed-loop throughput, CPU per 1000 requests, and stream TTFT."""
    skip = skip or no_h3load(h3load)
    if skip or rig is None or workdir is None:
        print(f"run_h3: skipped ({skip or 'no rig'})", flush=True)
        return {"available": False, "why": skip or "no rig"}
    log("HTTP/3 vs HTTP/1.1 (bench/h3load for both)")
    h = None
    try:
        h = H3Rig(rig, hapax, h3load, workdir)  # type: ignore[arg-type]
        out: dict = {"available": True, "h3_max_conns": H3Rig.H3_MAX_CONNS}
        log("h3: warm-up")
        for t in h.urls():
            h.load(t, min(duration, 2), 16)
        log("h3: fixed rates (open loop)")
        out["fixed_rate"] = fixed_rate(h, loader, rates or [2000], latencies or [0], duration)
        log("h3: max throughput (closed loop)")
        runs = max_throughput(h, loader, levels or [64], duration)
        out["max"] = {"runs": runs, **{f"best_{t}": best(v) for t, v in runs.items()}}
        log("h3: stream TTFT (closed loop, mock chunk_delay_ms 5, words:20)")
        h.fault(chunk_delay_ms=5)
        out["streams"] = {}
        for t in h.urls():
            r = measured(h, t, lambda t=t: h.load(t, duration, stream_conc, stream=True, words=20))
            out["streams"][t] = r
            log(f"  streams {t:<8}: {r['rps']:.0f} streams/s, TTFT p50 {us(r.get('ttft_p50'))} "
                f"p99 {us(r.get('ttft_p99'))}, errors {r['errors']}/{r['requests']}")
        h.fault()
        out["stream_conc"] = stream_conc
        if h.gw.p.poll() is not None:
            raise RuntimeError("the HTTP/3 node exited during the run")
        return out
    except Exception as e:  # noqa: BLE001
        log(f"run_h3 failed: {e}")
        return {"available": False, "why": f"failed: {e}"}
    finally:
        if h:
            h.stop()


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
            "loadavg": " ".join(load), "idle": idle.policy()}


def cpu_ticks() -> tuple[int, int] | None:
    """(steal, all) jiffies of every CPU from /proc/stat: steal is time the hypervisor gave
    this VM's vCPUs to others, which no pinning on the guest can avoid."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    return (fields[7], sum(fields[:8])) if len(fields) >= 8 else None


def steal_share(start: tuple[int, int] | None) -> float | None:
    """The share of the vCPUs' time stolen since `start`, in %."""
    end = cpu_ticks()
    if not start or not end or end[1] <= start[1]:
        return None
    return 100.0 * (end[0] - start[0]) / (end[1] - start[1])


def verdict(value, target, lower_is_better=True) -> str:
    if value is None:
        return "not measured"
    ok = value <= target if lower_is_better else value >= target
    return "meets" if ok else "misses"


def added_verdict(value, target) -> str:
    """`verdict` for an added latency: a median below zero says only that the direct call's
    own spread is larger than what the proxy adds, not that a target is met."""
    if value is not None and value < 0:
        return "inconclusive (the median added latency is below zero: the direct call's spread exceeds the difference)"
    return verdict(value, target)


def round_diffs(results: dict, t: str, p: str) -> list[float]:
    """Per round of one cell's `results`, target `t` minus direct at percentile `p` (a cell
    without rounds counts as one round)."""
    if t not in results or "direct" not in results:
        return []
    pairs = zip(results[t].get("rounds", [results[t]]), results["direct"].get("rounds", [results["direct"]]))
    return [a[p] - b[p] for a, b in pairs if a.get(p) is not None and b.get(p) is not None]


def added_fn(fixed_rows: list[dict]):
    """added(lat, rate, target, percentile): the median over the rounds of target minus direct."""
    fr = {(x["latency_ms"], x["rate"]): x["results"] for x in fixed_rows}

    def added(lat, rate, t, p):
        diffs = round_diffs(fr.get((lat, rate), {}), t, p)
        return statistics.median(diffs) if diffs else None
    return added


def with_spread(value: str, spread: str, *notes: str) -> str:
    """'85 µs (1.8x; rounds 55 µs to 117 µs)'."""
    inside = "; ".join(x for x in (*notes, spread) if x)
    return f"{value} ({inside})" if inside else value


def round_spread_fn(fixed_rows: list[dict]):
    """spread(lat, rate, target, percentile): 'rounds A to B', the lowest and highest
    per-round added latency, or '' with fewer than two rounds. On a VM a cell's rounds can
    differ by more than the gap between two proxies: the reader should see that."""
    fr = {(x["latency_ms"], x["rate"]): x["results"] for x in fixed_rows}

    def spread(lat, rate, t, p):
        diffs = round_diffs(fr.get((lat, rate), {}), t, p)
        return f"rounds {us(min(diffs))} to {us(max(diffs))}" if len(diffs) > 1 else ""
    return spread


def cpu_cell(v: dict) -> str:
    """CPU per 1000 requests, with the user-space part: the kernel's (TCP, epoll) is the floor
    every proxy pays; the user-space part is what the proxy's own code costs."""
    cpu, user = v.get("cpu_ms_per_1k"), v.get("cpu_user_ms_per_1k")
    if cpu is None:
        return "—"
    return f"{cpu:.0f} ({user:.0f})" if user is not None else f"{cpu:.0f}"


def fixed_rate_table(L: list[str], fixed_rows: list[dict]) -> None:
    added = added_fn(fixed_rows)
    L.append("| mock latency | rate | target | p50 | p90 | p99 | added p50 | added p90 | added p99 | errors | CPU ms / 1000 req (user) |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for x in fixed_rows:
        for t, v in x["results"].items():
            ad = ["—"] * 3 if t == "direct" else [us(added(x["latency_ms"], x["rate"], t, p)) for p in ("p50", "p90", "p99")]
            L.append(f"| {x['latency_ms']} ms | {x['rate']} | {t} | {us(v['p50'])} | {us(v['p90'])} | {us(v['p99'])} | "
                     f"{' | '.join(ad)} | {v['errors']}/{v['requests']} | {cpu_cell(v)} |")
    L.append("")


def throughput_table(L: list[str], runs: dict[str, list]) -> None:
    L.append("| target | concurrency | req/s | errors | p50 | p99 | CPU ms / 1000 req (user) | CPU % | one-core ceiling |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for t, rs in runs.items():
        for v in rs:
            cpu = v.get("cpu_ms_per_1k")
            pct_ = v.get("cpu_pct")
            ceil = f"{1e6 / cpu:.0f} rps" if cpu else "—"
            L.append(f"| {t} | {v['concurrency']} | {v['rps']:.0f} | {v['errors']}/{v['requests']} | {us(v['p50'])} | "
                     f"{us(v['p99'])} | {cpu_cell(v)} | "
                     f"{f'{pct_:.0f}%' if pct_ is not None else '—'} | {ceil} |")
    L.append("")


def cluster_target_rows(c: dict) -> list[str]:
    if not c.get("available"):
        return [f"| 3-node cluster throughput loss | <= 10% | n/a | not measured ({c.get('why', 'not run')}) |"]
    rows = []
    bs, bl = (c["max"].get(k) for k in ("best_hapax", "best_cluster-lb"))
    loss = c.get("loss")
    cpu = c.get("cpu_node_vs_single")
    paired = c.get("paired") or {}
    if loss is not None:
        pn, ps = paired["cluster-node"], paired["hapax"]
        got = (f"{100 * loss:.1f}% (median over {paired['rounds']} alternating rounds at c={paired['concurrency']}: "
               f"node {pn['rps']:.0f} rps vs single {ps['rps']:.0f} rps"
               + (f"; one round's loss from {100 * paired['loss_range'][0]:.1f}% to {100 * paired['loss_range'][1]:.1f}%"
                  if paired.get("loss_range") else "")
               + (f"; CPU per request {cpu:.2f}x the single node's)" if cpu else ")"))
        stand = verdict(loss, 0.10) + " (2 cores for 3 nodes + mock + load generator: see the cluster section)"
        if loss < 0:
            stand += "; negative: the cluster node was faster in this run, i.e. within the noise"
    else:
        got, stand = "n/a", "not measured (no run under 0.1% errors)"
    rows.append(f"| 3-node cluster throughput loss, through one node vs the single node | <= 10% | {got} | {stand} |")
    if bl and bs:
        rows.append(f"| 3-node cluster behind nginx round robin, max throughput | — | {bl['rps']:.0f} rps "
                    f"(single node {bs['rps']:.0f} rps) | measured (no target; all 3 nodes share the 2 cores) |")
    return rows


def h3_target_rows(h: dict) -> list[str]:
    if not h.get("available"):
        return [f"| HTTP/3 | — | n/a | not measured ({h.get('why', 'not run')}) |"]
    rows = []
    added = added_fn(h["fixed_rate"])
    rates = sorted({x["rate"] for x in h["fixed_rate"]})
    lats = sorted({x["latency_ms"] for x in h["fixed_rate"]})
    if rates and lats:
        rate, lat = rates[-1], lats[0]
        for p in ("p50", "p99"):
            a3, a1 = added(lat, rate, "hapax-h3", p), added(lat, rate, "hapax-h1", p)
            rows.append(f"| HTTP/3 vs HTTP/1.1 added latency {p}, {rate} rps, {lat} ms mock | — | "
                        f"h3 {us(a3)}, h1 {us(a1)} | measured (no target) |")
    b3, b1 = h["max"].get("best_hapax-h3"), h["max"].get("best_hapax-h1")
    if b3 and b1:
        c3, c1 = b3.get("cpu_ms_per_1k"), b1.get("cpu_ms_per_1k")
        cpu = f"; hapax CPU ms / 1000 req {c3:.0f} vs {c1:.0f}" if c3 and c1 else ""
        rows.append(f"| HTTP/3 vs HTTP/1.1 max throughput, one node | — | h3 {b3['rps']:.0f} rps (c={b3['concurrency']}), "
                    f"h1 {b1['rps']:.0f} rps (c={b1['concurrency']}){cpu} | measured (no target) |")
    s = h.get("streams") or {}
    if s.get("hapax-h3") and s.get("hapax-h1"):
        rows.append(f"| HTTP/3 vs HTTP/1.1 stream TTFT p50 | — | h3 {us(s['hapax-h3'].get('ttft_p50'))}, "
                    f"h1 {us(s['hapax-h1'].get('ttft_p50'))} | measured (no target) |")
    return rows


def cluster_section(L: list[str], c: dict) -> None:
    if not c.get("available"):
        return
    L.append("## 3-node cluster (gossip + Raft, nginx round robin in front)\n")
    L.append("Three `hapax serve` nodes with the single node's config plus a `cluster:` block (gossip and gRPC on "
             "127.0.0.1:0, node 1 started first and the seed of the others, `bootstrap_expect: 3`, HMAC `secret`, "
             "Raft data in a temp dir; rate limits become cluster-wide leases), measured once every node's "
             "`/v1/health` showed 3 alive members and a Raft leader with 3 voters "
             f"({c.get('formed_s', 0):.1f} s after node 1 started). Targets, in the same rounds (rotating order): `direct` (mock), `hapax` (the "
             "single node above), `cluster-node` (node 1 alone), `cluster-lb` (nginx, 1 worker, round robin, "
             "upstream keepalive -> the 3 nodes). CPU of `cluster-lb` is the three nodes' together (not nginx).\n")
    L.append("**Pinning, and what it costs on 2 cores:** node 1 (the node under test) and the single node (idle "
             "while not measured) on core 0; nodes 2 and 3 on core 1 with the mock and the load generator; "
             "nginx in front on core 0. Through one node, nodes 2 and 3 only gossip and replicate; through nginx, "
             "two thirds of the requests are served on the client's core, so `cluster-lb` shows what 3 nodes "
             "squeezed onto 2 shared cores do, not what 3 machines would. The throughput loss compares "
             f"`cluster-node` with `hapax`: same core, same load generator, closed loop at c={PAIRED_CONCURRENCY} "
             "in alternating rounds (below), the loss being the median over rounds of 1 - node / single.\n")
    L.append("### Added latency (open loop)\n")
    fixed_rate_table(L, c["fixed_rate"])
    L.append("### Throughput (closed loop, 0 ms mock)\n")
    throughput_table(L, c["max"]["runs"])
    paired = c.get("paired")
    if paired:
        L.append(f"### Single node vs cluster node ({paired['rounds']} alternating rounds, c={paired['concurrency']})\n")
        L.append("| round | single req/s | node req/s | loss | single CPU ms / 1000 req | node CPU ms / 1000 req |")
        L.append("|---|---|---|---|---|---|")
        for i, (s_, n_) in enumerate(zip(paired["hapax"]["rounds"], paired["cluster-node"]["rounds"]), 1):
            loss_ = f"{100 * (1 - n_['rps'] / s_['rps']):.1f}%" if s_["rps"] else "—"
            cs_, cn_ = s_.get("cpu_ms_per_1k"), n_.get("cpu_ms_per_1k")
            L.append(f"| {i} | {s_['rps']:.0f} | {n_['rps']:.0f} | {loss_} | "
                     f"{f'{cs_:.0f}' if cs_ else '—'} | {f'{cn_:.0f}' if cn_ else '—'} |")
        L.append("")


def h3_section(L: list[str], h: dict) -> None:
    if not h.get("available"):
        return
    L.append("## HTTP/3 vs HTTP/1.1 (one node, `server.http3` on)\n")
    L.append("One more node, the single node's config plus `server.http3` (certificate from `hapax gen-cert`), on "
             "core 0; every target is driven by `bench/h3load` (oha as installed has no HTTP/3), so the "
             "difference is the protocol's, not the tool's: `direct` (h3load HTTP/1.1 -> mock), `hapax-h1` "
             "(HTTP/1.1 over TCP, one connection per in-flight request), `hapax-h3` (HTTP/3 over QUIC, "
             f"min(concurrency, {h.get('h3_max_conns', 16)}) connections, requests multiplexed on them; TLS "
             "1.3 is part of QUIC, the TCP side is plain). Open loop: request i is due at start + i/rate and its "
             "latency counts from then (latency correction, as oha's). Note that h3load is not oha: compare "
             "these rows with each other, not with the oha tables above.\n")
    L.append("### Added latency (open loop, h3load `--rate`)\n")
    fixed_rate_table(L, h["fixed_rate"])
    L.append("### Throughput (closed loop, 0 ms mock)\n")
    throughput_table(L, h["max"]["runs"])
    s = h.get("streams") or {}
    if s:
        L.append(f"### Streams (closed loop, {h.get('stream_conc')} at a time, mock `chunk_delay_ms: 5`, `words:20`)\n")
        L.append("TTFT: request sent to the first body frame (DATA frame / chunk).\n")
        L.append("| target | streams | streams/s | TTFT p50 | TTFT p90 | TTFT p99 | added TTFT p50 | added TTFT p99 | CPU ms / 1000 streams |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        d = s.get("direct") or {}
        for t, v in s.items():
            def diff(k):
                return None if v.get(k) is None or d.get(k) is None else v[k] - d[k]
            ad = ["—", "—"] if t == "direct" else [us(diff("ttft_p50")), us(diff("ttft_p99"))]
            cpu = v.get("cpu_ms_per_1k")
            L.append(f"| {t} | {v['requests'] - v['errors']}/{v['requests']} | {v['rps']:.0f} | {us(v.get('ttft_p50'))} | "
                     f"{us(v.get('ttft_p90'))} | {us(v.get('ttft_p99'))} | {ad[0]} | {ad[1]} | "
                     f"{f'{cpu:.0f}' if cpu is not None else '—'} |")
        L.append("")


def section_heading(L: list[str], part: dict, title: str, how: str) -> bool:
    """A measured section's heading, or why the section was not measured; whether it was."""
    if not part.get("available"):
        L.append(f"## {title}: not measured ({part.get('why', 'not run')})\n")
        return False
    L.append(f"## {title} ({how})\n")
    return True


def one_core_section(L: list[str], one: dict, halt_polling: bool = False) -> None:
    if not section_heading(L, one, "Added latency on one core", "paced open loop, bench/h3load over HTTP/1.1"):
        return
    L.append("The same cells with every process on core 1 (mock, load generator, and the proxy: a hapax node or "
             "nginx of their own, same configs) and each request released at its due time by h3load's pacing "
             "thread instead of oha's 1 ms timer ticks. In the layout above a proxied request wakes the other vCPU "
             "four times where the direct call wakes none, and on a VM each of those can cost tens of µs when the "
             "vCPU has halted"
             + (" (in this run the halt polling keeps the cores polling at 2000 rps, so those wake-ups are cheap, "
                "while here the processes take turns on one core)" if halt_polling
                else " (nginx's added latency above is mostly that)")
             + "; here nothing crosses cores, so a proxy's added latency is its own CPU time on the request's path plus two "
             "context switches. Latency counts from each request's due time (a request held up by a proxy "
             "busy on the shared core is charged for it).\n")
    fixed_rate_table(L, one["rows"])


def absolute_target_rows(rows: list[dict], latencies: list[int], target: str, layout: str) -> list[str]:
    """The targets table's p50 <= 50 µs and p99 <= 1 ms rows at 2000 rps for one target."""
    added = added_fn(rows)
    spread = round_spread_fn(rows)
    L = []
    for lat in latencies:
        a50, a99 = added(lat, 2000, target, "p50"), added(lat, 2000, target, "p99")
        L.append(f"| added latency p50, 2000 rps, {lat} ms mock{layout} | <= 50 µs | {with_spread(us(a50), spread(lat, 2000, target, 'p50'))} | "
                 f"{added_verdict(a50, 50e-6)}{floor_note(added(lat, 2000, 'nginx', 'p50'), 50e-6, a50)} |")
        L.append(f"| added latency p99, 2000 rps, {lat} ms mock{layout} | <= 1 ms | {with_spread(us(a99), spread(lat, 2000, target, 'p99'))} | "
                 f"{added_verdict(a99, 1e-3)}{floor_note(added(lat, 2000, 'nginx', 'p99'), 1e-3, a99)} |")
    return L


def floor_note(nginx_added, target: float, added) -> str:
    """Beside an absolute miss: what nginx, the cheapest hop, added in the same rounds, when it
    misses the line too (then the miss is the layout's, not only the gateway's)."""
    if added is None or nginx_added is None or added <= target or nginx_added <= target:
        return ""
    return f" (nginx, the plain hop, adds {us(nginx_added)} in the same rounds)"


def hop_cost_line(r: dict) -> str:
    """What the two-core layout itself costs a proxied request: nginx's added p50 there minus
    its added p50 on one core (2000 rps, 0 ms mock), when both sections ran; paced in both
    when the paced run did, so that only the layout differs."""
    one = r.get("one_core") or {}
    if not one.get("available"):
        return ""
    paced = r.get("paced") or {}
    two_rows, loaders = ((paced["rows"], "paced in both") if paced.get("available")
                         else (r["fixed_rate"], f"{r['loader']} there, h3load's paced loop on one core"))
    two_core = added_fn(two_rows)(0, 2000, "nginx", "p50")
    one_core = added_fn(one["rows"])(0, 2000, "nginx", "p50")
    if two_core is None or one_core is None:
        return ""
    if two_core <= one_core:
        return (f"What the two-core layout costs a hop on this machine: nothing measurable. nginx adds "
                f"{us(two_core)} there and {us(one_core)} on one core (2000 rps, 0 ms mock; {loaders}): its "
                "four cross-core wake-ups cost no more here than the context switches they replace.\n")
    return (f"What the two-core layout costs a hop on this machine: nginx adds {us(two_core)} there and "
            f"{us(one_core)} on one core (2000 rps, 0 ms mock; {loaders}), so "
            f"~{us(two_core - one_core)} of a proxied request's added latency in that layout is the "
            "layout's: its four cross-core wake-ups, which any proxy that sleeps between requests pays (hapax's "
            "busy polling spares one of them: README, busy polling). The one-core rows measure what a proxy's "
            "own work adds.\n")


def pairs_cost_line(r: dict) -> str:
    """What oha's paired releases do to a proxied request: the added p50 with oha beside
    paced, in the same layout and rig (2000 rps), when the paced run did."""
    paced = r.get("paced") or {}
    if not paced.get("available") or r["loader"] != "oha":
        return ""
    with_oha, alone = added_fn(r["fixed_rate"]), added_fn(paced["rows"])
    parts = []
    for lat in r["latencies"]:
        figures = [f(lat, 2000, t, "p50") for t in ("nginx", "hapax") for f in (with_oha, alone)]
        if None in figures:
            continue
        parts.append(f"{lat} ms mock: nginx {us(figures[0])} with oha and {us(figures[1])} paced, "
                     f"hapax {us(figures[2])} and {us(figures[3])}")
    if not parts:
        return ""
    return ("What oha's two-at-a-time releases do to a proxied request's added p50 (2000 rps, the same layout "
            "and rig): " + "; ".join(parts) + ". A pair works both ways: its second request waits at each hop for "
            "the proxy's work on the first (a cost in proportion to the proxy's time a request), and finds the "
            "cores the first one woke still awake (a saving where waking a halted vCPU is dear). The paced rows "
            "measure the proxy at the rate the cell names, one request at a time.\n")


def paced_section(L: list[str], paced: dict) -> None:
    if not section_heading(L, paced, "Added latency, paced", "open loop, bench/h3load over HTTP/1.1"):
        return
    L.append("The cells above again, in the same layout with the same processes, each request released alone "
             "at its due time by h3load's pacing thread (the kernel's high-resolution timer, 1 µs slack; latency "
             "counted from the due time) instead of by oha. oha's `-q` sleeps on tokio's timer, which fires once "
             "a millisecond, so at 2000 rps it sends its requests two at a time (and counts both from the tick "
             "that released them): the second of each pair waits at every hop of a proxied path for the proxy's "
             "work on the first, where on the direct path both go to the mock on the client's own core. Paced, "
             "2000 rps is one request every 500 µs (wrk2's constant-rate model).\n")
    fixed_rate_table(L, paced["rows"])


def added_latency_target_rows(rows: list[dict], rates: list[int], latencies: list[int], layout: str = "") -> list[str]:
    """The added-latency rows of the targets table for one layout's fixed-rate cells (and, where
    the layout measured it, the absolute rows of the gateway without busy polling)."""
    spread = round_spread_fn(rows)
    added = added_fn(rows)
    cells = {(x["latency_ms"], x["rate"]): x["results"] for x in rows}
    L = absolute_target_rows(rows, latencies, "hapax", layout)
    if any(NO_BUSY_POLL in x["results"] for x in rows):
        L.extend(absolute_target_rows(rows, latencies, NO_BUSY_POLL,
                                      f"{layout}, busy polling off (`server.busy_poll: {NO_BUSY_POLL_SETTING}`)"))
    for lat in latencies:
        for rate in rates:
            for p in ("p50", "p99"):
                h, n = added(lat, rate, "hapax", p), added(lat, rate, "nginx", p)
                if h is None or n is None:
                    continue
                cell = cells.get((lat, rate), {})
                below_zero = any(min(round_diffs(cell, t, p), default=0) < 0 for t in ("hapax", "nginx"))
                if n < 5e-6 or below_zero:
                    # nginx's added latency is ~0, or a round's added latency is negative (the direct
                    # call's own round-to-round spread is larger than the difference): no meaningful ratio
                    why = ("a round's added latency is below zero: the direct call's spread exceeds the difference"
                           if below_zero else "nginx's added latency is in the noise")
                    L.append(f"| added latency {p} vs nginx, {rate} rps, {lat} ms mock{layout} | <= 1.5x nginx "
                             f"{with_spread(us(n), spread(lat, rate, 'nginx', p))} | "
                             f"{with_spread(us(h), spread(lat, rate, 'hapax', p))} | "
                             f"inconclusive ({why}) |")
                    continue
                ratio = h / n
                L.append(f"| added latency {p} vs nginx, {rate} rps, {lat} ms mock{layout} | <= 1.5x nginx "
                         f"{with_spread(us(n), spread(lat, rate, 'nginx', p))} | "
                         f"{with_spread(us(h), spread(lat, rate, 'hapax', p), f'{ratio:.1f}x')} | "
                         f"{verdict(ratio, 1.5)} |")
    return L


def report(r: dict) -> str:
    m = r["machine"]
    L = []
    L.append("# Hapax benchmarks\n")
    L.append("Generated by `bench/run.sh` (do not edit by hand; re-run it). "
             "How the harness works: [bench/README.md](bench/README.md).\n")
    L.append(f"- command: `{r['command']}`")
    L.append(f"- machine: {m['nproc']} cores, {m['cpu']}, {m['ram']} RAM, Linux {m['kernel']}")
    L.append(f"- date: {m['date']}; commit {m['commit']}; load average at start {m['loadavg']}")
    idle_line = idle.describe(m.get("idle") or {}, r.get("halt_poll_ns"))
    if idle_line:
        L.append(idle_line)
    steal = m.get("steal_pct")
    if steal is not None:
        L.append(f"- CPU steal during the run: {steal:.1f} % of the vCPUs' time (taken by the hypervisor for "
                 "other guests; pinning cannot avoid it)"
                 + ("; **above 5 %: every latency here carries the host's contention, nginx's and the "
                    "direct call's too**" if steal > 5 else ""))
    L.append(f"- load generator: {r['loader']}; nginx: {r.get('nginx_version', 'absent')}; "
             f"{r['duration']} s per run; pinning: hapax / nginx on core {GATEWAY_CORE}, "
             f"mock + load generator + stream client on core {CLIENT_CORE}"
             + (f" (the one-core section: everything on core {CLIENT_CORE})" if (r.get("one_core") or {}).get("available")
                else ""))
    if r.get("noisy"):
        L.append(f"- **{r['noisy']}**")
    L.append("")

    # targets
    L.append("## Against the targets\n")
    L.append("Added latencies are medians over the cell's rounds (see below), with the lowest and highest "
             "single round beside them (nginx's in the target column).\n")
    L.append("| figure | target | measured | where we stand |")
    L.append("|---|---|---|---|")
    L.extend(added_latency_target_rows(r["fixed_rate"], r["rates"], r["latencies"]))
    paced = r.get("paced") or {}
    if paced.get("available"):
        L.extend(added_latency_target_rows(paced["rows"], r["rates"], r["latencies"], ", paced"))
    one = r.get("one_core") or {}
    if one.get("available"):
        L.extend(added_latency_target_rows(one["rows"], r["rates"], r["latencies"], ", one core, paced"))
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
    L.append(f"| RSS idle (3 s after the load) | <= 30 MiB | {r['rss_idle_after']:.1f} MiB | {verdict(r['rss_idle_after'], 30)} |")
    h = r["hold"]
    L.append(f"| RSS with {h['streams']} open streams ({h['opened']} open at the sample) | <= 150 MiB | "
             f"{h['sample']:.1f} MiB (peak {h['peak']:.1f}) | "
             f"{verdict(h['sample'], 150) if h['streams'] >= 1000 else 'not measured (fewer streams)'} |")
    L.extend(cluster_target_rows(r.get("cluster") or {}))
    L.extend(h3_target_rows(r.get("h3") or {}))
    L.append("")
    for line in (pairs_cost_line(r), hop_cost_line(r)):
        if line:
            L.append(line)

    if r["loader"] == "oha":
        L.append("## Added latency (open loop, oha `-q RATE --latency-correction`)\n")
    else:
        L.append(f"## Added latency ({r['loader']}: closed loop, one connection — no open-loop tool installed)\n")
    L.append(f"Each cell: {ROUNDS} rounds of every target (rotating order, duration / {ROUNDS} each); "
             "percentiles are the median over the rounds, added = the median over the rounds of "
             "(target minus direct in the same round).\n")
    L.append("CPU ms / 1000 req: the target's CPU time (user + system) per 1000 answered requests; in brackets its "
             "user-space part. The system part (loopback TCP, epoll) is what any proxy pays for the extra hop; the "
             "user-space part is the proxy's own code.\n")
    if any(NO_BUSY_POLL in x["results"] for x in r["fixed_rate"]):
        L.append(f"`{NO_BUSY_POLL}`: a second node of the same binary and config on the same core, with "
                 f"`server.busy_poll: {NO_BUSY_POLL_SETTING}` (README: busy polling). The default (`hapax`) "
                 f"{r.get('busy_poll', 'spins within the default window')}; this node never does, so the two show "
                 "what the spinning buys and costs. The targets are judged on `hapax`.\n")
    fixed_rate_table(L, r["fixed_rate"])
    paced_section(L, r.get("paced") or {})
    one_core_section(L, r.get("one_core") or {}, halt_polling=bool(r.get("halt_poll_ns")))

    L.append("## Throughput (closed loop, 0 ms mock)\n")
    L.append("CPU % is the share of one core the target used during the run (100% = its core saturated; "
             "less means the limit was elsewhere: the client core, or other processes on the machine). "
             "One-core ceiling = 1000 / (CPU ms per request): the rate one fully used core would sustain at this cost.\n")
    throughput_table(L, r["max"]["runs"])

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
    cluster_section(L, r.get("cluster") or {})
    h3_section(L, r.get("h3") or {})
    L.append("## Notes\n")
    L.append("- Pinning: on 2 cores the system under test (hapax, or nginx with one worker) gets core 0 to itself; "
             "the mock, the load generator and the stream client share core 1, the same for every target, "
             "so the direct baseline carries the same client-side cost and the difference is the proxy's. "
             "The one-core section puts the proxies on core 1 too, so that no path crosses cores.")
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
    ap.add_argument("--h3load", help="bench/h3load binary (HTTP/3 load generator), for run_h3")
    ap.add_argument("--no-cluster", action="store_true", help="skip the 3-node cluster run")
    ap.add_argument("--no-h3", action="store_true", help="skip the HTTP/3 run")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--command", default="bash bench/run.sh")
    ap.add_argument("--noisy", default="")
    ap.add_argument("--rounds", type=int, default=5, help="rounds per fixed-rate cell (medians reported)")
    ap.add_argument("--halt-poll", type=int, metavar="NS",
                    help="the guest's halt-polling window for the run (cpuidle-haltpoll, root), restored after")
    a = ap.parse_args()
    global ROUNDS
    ROUNDS = 1 if a.smoke else max(1, a.rounds)

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
                 "latencies": latencies, "noisy": a.noisy, "machine": machine(), "halt_poll_ns": a.halt_poll}
    halt_polling = idle.HaltPolling(a.halt_poll) if a.halt_poll is not None else None
    ticks_at_start = cpu_ticks()
    try:
        if halt_polling:
            halt_polling.apply()
            log(f"guest halt polling {idle.window(a.halt_poll)} for the run (was {halt_polling.old} ns)")
        rig = Rig(a.hapax, workdir, with_nginx=not a.no_nginx and shutil.which("nginx") is not None,
                  more={NO_BUSY_POLL: f"{a.hapax}+busy_poll={NO_BUSY_POLL_SETTING}"})
        if rig.nginx:
            v = subprocess.run(["nginx", "-v"], capture_output=True, text=True)
            res["nginx_version"] = (v.stderr or v.stdout).strip().replace("nginx version: ", "")
        time.sleep(0.5)
        res["busy_poll"] = busy_poll_line(rig.gw.stderr_path)
        res["rss_idle_start"] = rss_mib(rig.gw.pid)
        log(f"hapax idle RSS {res['rss_idle_start']:.1f} MiB")

        log("warm-up")
        for url in rig.urls().values():
            loader.run(url, min(d, 2), 16)

        log("fixed rates (open loop)")
        res["fixed_rate"] = fixed_rate(rig, loader, rates, latencies, d)
        res["paced"] = run_paced(rig, a.h3load, workdir, rates, latencies, d,
                                 skip="skipped in --smoke" if smoke else "")
        rig.stop_more()

        res["one_core"] = run_one_core(rig, a.hapax, a.h3load, workdir, rates, latencies, d,
                                       skip="skipped in --smoke" if smoke else "")

        log("max throughput (closed loop)")
        runs = max_throughput(rig, loader, levels, d)
        res["max"] = {"runs": runs, "best_hapax": best(runs["hapax"]), "best_direct": best(runs["direct"])}

        log("streams: TTFT and inter-chunk gaps")
        res["stream_delay"], res["stream_words"], res["stream_conc"] = 5, 20, s_conc
        res["streams"] = streams(rig, n_streams, s_conc, 20, 5)

        # Idle = 3 s without requests: the node returns freed heap after 1-2 quiet seconds.
        time.sleep(3.0)
        res["rss_idle_after"] = rss_mib(rig.gw.pid)
        log(f"hapax idle RSS after the load {res['rss_idle_after']:.1f} MiB")

        log(f"holding {hold_n} streams open")
        res["hold"] = hold(rig, hold_n, 30, 200 if not smoke else 50)

        skip = "skipped in --smoke" if smoke else ""
        res["cluster"] = run_cluster(rig, loader, a.hapax, workdir, rates, latencies, levels, d,
                                     with_lb=shutil.which("nginx") is not None and not a.no_nginx,
                                     skip=skip or ("--no-cluster" if a.no_cluster else ""))
        res["h3"] = run_h3(rig, loader, a.hapax, a.h3load, workdir, rates, latencies, levels, d, s_conc,
                           skip=skip or ("--no-h3" if a.no_h3 else ""))

        if rig.gw.p.poll() is not None:
            raise RuntimeError("hapax exited during the run")
    finally:
        stop_all()
        if halt_polling:
            halt_polling.restore()
    res["machine"]["steal_pct"] = steal_share(ticks_at_start)

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
    for part in ("paced", "one_core", "cluster", "h3"):
        why = res[part].get("why", "")
        if not res[part].get("available") and why.startswith("failed"):
            problems.append(f"{part} run {why}")
    for pattern in ("**/*.stderr", "**/nginx-access.log"):
        for f in workdir.glob(pattern):
            if f.is_file() and f.stat().st_size > 1 << 20:
                keep_warnings(f)
                f.unlink()  # request logs: only their cost mattered
    if smoke:
        if problems:
            log(f"smoke: logs and raw results kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    elif not a.no_write:
        # The optimisation log is kept by hand (before/after of each change) and carried along.
        log_file = ROOT / "bench" / "OPTIMISATIONS.md"
        if log_file.is_file():
            text = text.rstrip("\n") + "\n\n" + log_file.read_text()
        Path(a.out).write_text(text)
        log(f"wrote {a.out}; raw results in {workdir}/results.json")
    if problems:
        log("harness problems: " + "; ".join(problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
