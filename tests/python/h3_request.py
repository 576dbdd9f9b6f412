"""One HTTP/3 request from the command line, with aioquic (Debian's curl has no HTTP/3).

    pip install aioquic
    python3 tests/python/h3_request.py https://localhost:8443/v1/health --cacert certs/cert.pem
    python3 tests/python/h3_request.py https://localhost:8443/v1/chat/completions \\
        --cacert certs/cert.pem -H 'Authorization: Bearer KEY' \\
        -d '{"messages": [{"role": "user", "content": "Hi"}], "stream": true}'

Prints the status and headers on stderr and the body on stdout as its DATA frames arrive.
"""

import argparse
import asyncio
import ssl
import sys
from urllib.parse import urlsplit

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.http = H3Connection(self._quic)
        self.done = asyncio.get_running_loop().create_future()

    def quic_event_received(self, event):
        for e in self.http.handle_event(event):
            if isinstance(e, HeadersReceived):
                for name, value in e.headers:
                    print(f"{name.decode()}: {value.decode()}", file=sys.stderr)
            if isinstance(e, DataReceived):
                sys.stdout.write(e.data.decode("utf-8", "replace"))
                sys.stdout.flush()
            if isinstance(e, (HeadersReceived, DataReceived)) and e.stream_ended:
                self.done.set_result(None)


async def request(args):
    url = urlsplit(args.url)
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=url.hostname)
    if args.insecure:
        config.verify_mode = ssl.CERT_NONE
    elif args.cacert:
        config.load_verify_locations(cafile=args.cacert)
    body = args.data.encode() if args.data else b""
    headers = [
        (b":method", (args.request or ("POST" if body else "GET")).encode()),
        (b":scheme", b"https"),
        (b":authority", url.netloc.encode()),
        (b":path", (url.path or "/").encode() + (b"?" + url.query.encode() if url.query else b"")),
    ]
    if body:
        headers.append((b"content-type", b"application/json"))
    for header in args.header:
        name, value = header.split(":", 1)
        headers.append((name.strip().lower().encode(), value.strip().encode()))
    async with connect(url.hostname, url.port or 443, configuration=config, create_protocol=Client) as client:
        stream_id = client._quic.get_next_available_stream_id()
        client.http.send_headers(stream_id, headers, end_stream=not body)
        if body:
            client.http.send_data(stream_id, body, end_stream=True)
        client.transmit()
        await asyncio.wait_for(client.done, args.timeout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument("-d", "--data", help="JSON body (makes it a POST)")
    parser.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("-X", "--request", help="method (default GET, or POST with --data)")
    parser.add_argument("--cacert", help="PEM certificate to trust (e.g. from `hapax gen-cert`)")
    parser.add_argument("-k", "--insecure", action="store_true", help="skip certificate checks")
    parser.add_argument("--timeout", type=float, default=120.0)
    asyncio.run(request(parser.parse_args()))


if __name__ == "__main__":
    main()
