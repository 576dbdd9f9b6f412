"""A Hapax gateway over HTTP/3, driven by an independent client: Python's `aioquic`.

The fixture makes a development certificate with `$HAPAX_BIN gen-cert` (default binary:
/var/cache/hapax/target/debug/hapax), starts `hapax serve` with HTTP/3 on a free UDP port
and the in-process mock provider, waits for its `hapax listening http=ADDR h3=ADDR` line,
and kills it at teardown. The client verifies the server against the generated certificate.

Run: python3 -m venv /tmp/hapax-venv && /tmp/hapax-venv/bin/pip install aioquic pytest
     /tmp/hapax-venv/bin/pytest tests/python/test_http3_aioquic.py
"""

import asyncio
import json
import os
import subprocess

import pytest
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration

from hapax_process import hapax_bin, running_gateway

API_KEY = "hk-aioquic-key"
REQUEST_TIMEOUT_S = 15


def _config(cert, key):
    return f"""\
server:
  host: 127.0.0.1
  port: 0
  http3: {{enabled: true, port: 0, tls_cert_file: "{cert}", tls_key_file: "{key}"}}
auth:
  api_keys:
    - {{name: aioquic, key: {API_KEY}}}
providers:
  mock: {{type: mock, model: mock-1}}
provider_preference: [mock]
"""


@pytest.fixture(scope="module")
def gateway():
    """Yields (h3 host, h3 port, path of the certificate to trust)."""

    def make_config(tmp):
        certs = os.path.join(tmp, "certs")
        subprocess.run([hapax_bin(), "gen-cert", "--out", certs], check=True, capture_output=True)
        return _config(os.path.join(certs, "cert.pem"), os.path.join(certs, "key.pem"))

    with running_gateway(make_config, require=("http", "h3")) as (fields, tmp):
        host, port = fields["h3"].rsplit(":", 1)
        yield host, int(port), os.path.join(tmp, "certs", "cert.pem")


class H3Client(QuicConnectionProtocol):
    """Minimal HTTP/3 requests on one aioquic connection; DATA frames are kept apart."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._http = H3Connection(self._quic)
        self._events = {}
        self._waiters = {}

    def quic_event_received(self, event):
        for h3_event in self._http.handle_event(event):
            if isinstance(h3_event, (HeadersReceived, DataReceived)):
                stream_id = h3_event.stream_id
                self._events.setdefault(stream_id, []).append(h3_event)
                if h3_event.stream_ended:
                    waiter = self._waiters.pop(stream_id, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(self._events.pop(stream_id))

    async def request(self, method, path, headers=(), body=b""):
        stream_id = self._quic.get_next_available_stream_id()
        self._http.send_headers(
            stream_id,
            [
                (b":method", method.encode()),
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                (b":path", path.encode()),
            ]
            + [(k.encode(), v.encode()) for k, v in headers],
            end_stream=not body,
        )
        if body:
            self._http.send_data(stream_id, body, end_stream=True)
        waiter = self._loop.create_future()
        self._waiters[stream_id] = waiter
        self.transmit()
        events = await asyncio.wait_for(waiter, REQUEST_TIMEOUT_S)
        head = dict(next(e.headers for e in events if isinstance(e, HeadersReceived)))
        frames = [e.data for e in events if isinstance(e, DataReceived) and e.data]
        return int(head[b":status"]), head, frames


def _h3(gateway, exchange):
    host, port, cert = gateway
    configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name="localhost")
    configuration.load_verify_locations(cafile=cert)

    async def run():
        async with connect(host, port, configuration=configuration, create_protocol=H3Client) as client:
            return await exchange(client)

    return asyncio.run(run())


def _chat(content, stream=False):
    body = {"model": "mock-1", "messages": [{"role": "user", "content": content}]}
    if stream:
        body["stream"] = True
    headers = [("content-type", "application/json"), ("authorization", f"Bearer {API_KEY}")]
    return headers, json.dumps(body).encode()


def test_chat_completion_over_http3(gateway):
    headers, body = _chat("hello over quic")
    status, head, frames = _h3(gateway, lambda c: c.request("POST", "/v1/chat/completions", headers, body))
    assert status == 200, b"".join(frames)
    reply = json.loads(b"".join(frames))
    assert reply["object"] == "chat.completion"
    assert reply["choices"][0]["message"]["content"].endswith("hello over quic")
    assert head[b"x-hapax-provider"] == b"mock"
    assert head[b"x-request-id"]


def test_streamed_chat_completion_over_http3_ends_with_done(gateway):
    headers, body = _chat("stream words:5", stream=True)
    status, head, frames = _h3(gateway, lambda c: c.request("POST", "/v1/chat/completions", headers, body))
    assert status == 200
    assert head[b"content-type"].startswith(b"text/event-stream")
    events = [e[len("data: "):] for e in b"".join(frames).decode().split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    words = "".join(
        json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]
    )
    assert words == "w1 w2 w3 w4 w5"


def test_missing_key_is_401_over_http3(gateway):
    _, body = _chat("no key")
    status, _, frames = _h3(
        gateway,
        lambda c: c.request("POST", "/v1/chat/completions", [("content-type", "application/json")], body),
    )
    assert status == 401
    assert json.loads(b"".join(frames))["error"]["type"] == "authentication_error"
