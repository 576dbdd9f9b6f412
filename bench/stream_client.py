#!/usr/bin/env python3
"""Tiny HTTP/1.1 clients for the benchmark, standard library only (asyncio, raw sockets).

* `stream_run`: SSE streams (`stream: true`) — measures time to first token (TTFT: request
  written -> first `data:` event read) and the gaps between consecutive events.
* `hold_streams`: opens many streams at once and keeps them open (for the RSS figure).
* `plain_load`: a closed-loop keep-alive load generator, the fallback when neither oha nor
  wrk is installed (used by `--smoke` on a fresh machine). Not a precise tool: its figures
  are only a check that the harness works.

Run alone:  python3 bench/stream_client.py http://127.0.0.1:PORT --streams 50 --concurrency 5
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit

CHAT = "/v1/chat/completions"


def request_bytes(url: str, body: dict, key: str | None, keep_alive: bool, extra: dict | None = None) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = CHAT
    payload = json.dumps(body).encode()
    headers = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        "X-Hapax-Dedup: off",
        "Connection: keep-alive" if keep_alive else "Connection: close",
    ]
    if key:
        headers.append(f"Authorization: Bearer {key}")
    for k, v in (extra or {}).items():
        headers.append(f"{k}: {v}")
    return host, port, ("\r\n".join(headers) + "\r\n\r\n").encode() + payload


def chat_body(words: int, stream: bool) -> dict:
    body = {"model": "mock-1", "messages": [{"role": "user", "content": f"bench words:{words}"}]}
    if stream:
        body["stream"] = True
    return body


async def one_stream(url: str, words: int, key: str | None, started: asyncio.Event | None = None,
                     hold_ready: list | None = None) -> dict:
    """One SSE stream on a fresh connection; returns timings in seconds."""
    host, port, req = request_bytes(url, chat_body(words, True), key, keep_alive=False)
    t_connect = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    connect = time.perf_counter() - t_connect
    t0 = time.perf_counter()
    writer.write(req)
    await writer.drain()
    head = b""
    status = 0
    events: list[float] = []
    done = False
    error = None
    buf = b""
    try:
        while True:
            data = await reader.read(65536)
            now = time.perf_counter()
            if not data:
                break
            if not status:
                head += data
                if b"\r\n\r\n" not in head:
                    continue
                line = head.split(b"\r\n", 1)[0].split()
                status = int(line[1]) if len(line) > 1 else 0
                data = head.split(b"\r\n\r\n", 1)[1]
                if status != 200:
                    error = f"status {status}"
                    break
            buf += data
            n = buf.count(b"data:")
            if n:
                if hold_ready is not None and not events:
                    hold_ready.append(now)
                    if started is not None:
                        started.set()
                events.extend([now] * n)
                if b"[DONE]" in buf:
                    done = True
                    break
                buf = buf[buf.rfind(b"data:") + 5:]
    except (ConnectionError, OSError) as e:  # noqa: PERF203
        error = str(e)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass
    ok = status == 200 and done and error is None
    return {
        "ok": ok,
        "error": error if not ok else None,
        "connect": connect,
        "ttft": (events[0] - t0) if events else None,
        "gaps": [b - a for a, b in zip(events, events[1:])],
        "total": (events[-1] - t0) if events else None,
        "events": len(events),
    }


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = min(len(v) - 1, max(0, int(round(p / 100 * (len(v) - 1)))))
    return v[k]


async def stream_run(url: str, streams: int, concurrency: int, words: int, key: str | None) -> dict:
    sem = asyncio.Semaphore(concurrency)
    results: list[dict] = []

    async def worker() -> None:
        async with sem:
            try:
                results.append(await one_stream(url, words, key))
            except (ConnectionError, OSError) as e:
                results.append({"ok": False, "error": str(e), "gaps": []})

    await asyncio.gather(*(worker() for _ in range(streams)))
    good = [r for r in results if r["ok"]]
    ttft = [r["ttft"] for r in good]
    gaps = [g for r in good for g in r["gaps"]]
    errors = [r["error"] for r in results if not r["ok"]]
    return {
        "streams": streams,
        "ok": len(good),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "ttft_p50": pct(ttft, 50), "ttft_p90": pct(ttft, 90), "ttft_p99": pct(ttft, 99),
        "gap_p50": pct(gaps, 50), "gap_p99": pct(gaps, 99),
        "gap_mean": (sum(gaps) / len(gaps)) if gaps else None,
        "events_mean": (sum(r["events"] for r in good) / len(good)) if good else None,
    }


async def hold_streams(url: str, n: int, words: int, key: str | None, on_all_open, open_timeout: float = 30.0) -> dict:
    """Opens `n` streams at once; calls `on_all_open()` once every stream has its first event
    (or after `open_timeout`), then waits for all of them to finish."""
    ready: list[float] = []
    tasks = [asyncio.create_task(one_stream(url, words, key, hold_ready=ready)) for _ in range(n)]
    deadline = time.monotonic() + open_timeout
    while len(ready) < n and time.monotonic() < deadline and not all(t.done() for t in tasks):
        await asyncio.sleep(0.05)
    opened = len(ready)
    sample = on_all_open()
    results = []
    for t in tasks:
        try:
            results.append(await t)
        except (ConnectionError, OSError) as e:
            results.append({"ok": False, "error": str(e)})
    errors = [r["error"] for r in results if not r["ok"]]
    return {"streams": n, "opened": opened, "ok": n - len(errors), "errors": len(errors),
            "first_error": errors[0] if errors else None, "sample": sample}


async def plain_load(url: str, connections: int, duration: float, key: str | None, words: int = 5) -> dict:
    """Closed-loop keep-alive load; latencies in seconds."""
    host, port, req = request_bytes(url, chat_body(words, False), key, keep_alive=True)
    lat: list[float] = []
    errors = 0
    end = time.perf_counter() + duration

    async def conn() -> None:
        nonlocal errors
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            errors += 1
            return
        try:
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                writer.write(req)
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                status = int(lines[0].split()[1])
                hdr = {l.split(":", 1)[0].strip().lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}
                if "content-length" in hdr:
                    await reader.readexactly(int(hdr["content-length"]))
                elif hdr.get("transfer-encoding", "").lower() == "chunked":
                    while True:
                        size = int((await reader.readline()).strip() or b"0", 16)
                        await reader.readexactly(size + 2)
                        if size == 0:
                            break
                lat.append(time.perf_counter() - t0)
                if status != 200:
                    errors += 1
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            errors += 1
        finally:
            writer.close()

    t_start = time.perf_counter()
    await asyncio.gather(*(conn() for _ in range(connections)))
    elapsed = time.perf_counter() - t_start
    total = len(lat)
    return {
        "requests": total,
        "errors": errors,
        "rps": total / elapsed if elapsed else 0.0,
        "p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url", help="base URL, e.g. http://127.0.0.1:8080")
    ap.add_argument("--streams", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=5)
    ap.add_argument("--words", type=int, default=20)
    ap.add_argument("--key", default=None, help="API key (Authorization: Bearer)")
    a = ap.parse_args()
    print(json.dumps(asyncio.run(stream_run(a.url, a.streams, a.concurrency, a.words, a.key)), indent=2))


if __name__ == "__main__":
    main()
