//! h3load: a small HTTP/3 load generator for the Hapax benchmark (oha as installed has no
//! HTTP/3), with an HTTP/1.1 mode so both protocols are measured by the same tool.
//!
//! Closed loop (no `--rate`): `--concurrency` workers, each sends its next request when the
//! previous one is answered. Open loop (`--rate R`): request i is due at start + i/R, released
//! at that time by a pacing thread on the kernel's high-resolution timer (not tokio's 1 ms
//! ticks, which would release requests in bursts); it takes a free worker slot (at most
//! `--concurrency` in flight) and its latency is counted from when it was due, not when it
//! left: waiting for a free slot counts (latency correction, like `oha -q R --latency-correction`).
//!
//! HTTP/3: `--connections` QUIC connections, slots spread round robin over them (several
//! requests in flight per connection). HTTP/1.1: one keep-alive TCP connection per slot.
//! Prints one JSON object: requests, errors, rps (successes per second), latency percentiles
//! in seconds, and with `--stream` the time to the first body frame (TTFT).
//!
//!   h3load --url https://127.0.0.1:PORT/v1/chat/completions --cacert cert.pem \
//!          --connections 4 --concurrency 64 --duration 5 [--rate 2000] [--proto h1|h3] \
//!          -H 'authorization: Bearer KEY' --body '{"messages":[...]}' [--stream]

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::{Mutex, mpsc};

#[derive(Clone, Copy, PartialEq)]
enum Proto {
    H1,
    H3,
}

struct Args {
    url: Uri,
    proto: Proto,
    cacert: Option<String>,
    server_name: String,
    connections: usize,
    concurrency: usize,
    duration: f64,
    rate: Option<f64>,
    headers: Vec<(String, String)>,
    body: Bytes,
    method: Method,
    stream: bool,
    timeout: f64,
}

fn usage() -> ! {
    eprintln!(
        "usage: h3load --url URL [--proto h3|h1] [--cacert PEM] [--server-name localhost] \
         [--connections N] [--concurrency K] [--duration S] [--rate R] [-H 'name: value']... \
         [--body JSON] [--method POST] [--stream] [--timeout S]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let mut url = None;
    let mut a = Args {
        url: Uri::from_static("/"),
        proto: Proto::H3,
        cacert: None,
        server_name: "localhost".into(),
        connections: 1,
        concurrency: 0,
        duration: 5.0,
        rate: None,
        headers: Vec::new(),
        body: Bytes::new(),
        method: Method::GET,
        stream: false,
        timeout: 30.0,
    };
    let mut method = None;
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--url" => url = Some(val()),
            "--proto" => {
                a.proto = match val().as_str() {
                    "h1" | "1.1" | "http1" => Proto::H1,
                    "h3" | "3" | "http3" => Proto::H3,
                    _ => usage(),
                }
            }
            "--cacert" => a.cacert = Some(val()),
            "--server-name" => a.server_name = val(),
            "--connections" | "-C" => a.connections = val().parse().unwrap_or_else(|_| usage()),
            "--concurrency" | "-c" => a.concurrency = val().parse().unwrap_or_else(|_| usage()),
            "--duration" | "-z" => {
                a.duration = val()
                    .trim_end_matches('s')
                    .parse()
                    .unwrap_or_else(|_| usage())
            }
            "--rate" | "-q" => a.rate = Some(val().parse().unwrap_or_else(|_| usage())),
            "-H" | "--header" => {
                let h = val();
                let (n, v) = h.split_once(':').unwrap_or_else(|| usage());
                a.headers
                    .push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
            "--body" | "-d" => a.body = Bytes::from(val()),
            "--method" | "-m" => method = Some(val()),
            "--stream" => a.stream = true,
            "--timeout" => a.timeout = val().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    a.url = url
        .unwrap_or_else(|| usage())
        .parse()
        .unwrap_or_else(|_| usage());
    a.method = match method {
        Some(m) => m.parse().unwrap_or_else(|_| usage()),
        None if a.body.is_empty() => Method::GET,
        None => Method::POST,
    };
    a.connections = a.connections.max(1);
    if a.concurrency == 0 {
        a.concurrency = a.connections;
    }
    if a.proto == Proto::H1 {
        a.connections = a.concurrency; // one request at a time per HTTP/1.1 connection
    }
    a
}

fn target_addr(url: &Uri) -> SocketAddr {
    let host = url.host().unwrap_or("127.0.0.1");
    let port = url
        .port_u16()
        .unwrap_or(if url.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| {
            eprintln!("cannot resolve {host}:{port}");
            std::process::exit(2)
        })
}

// ------------------------------------------------------------------ connections

type H3Send = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;
type H1Send = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn h3_connect(args: &Args, addr: SocketAddr) -> Result<H3Send, String> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &args.cacert {
        for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{ca}: {e}"))? {
            roots
                .add(cert.map_err(|e| format!("{ca}: {e}"))?)
                .map_err(|e| e.to_string())?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(transport));
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    }
    .parse()
    .expect("addr");
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| e.to_string())?;
    endpoint.set_default_client_config(client);
    let conn = endpoint
        .connect(addr, &args.server_name)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| format!("QUIC handshake: {e}"))?;
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .map_err(|e| format!("h3 setup: {e}"))?;
    tokio::spawn(async move {
        let _keep = endpoint;
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    Ok(send)
}

async fn h1_connect(addr: SocketAddr) -> Result<H1Send, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(|e| format!("h1 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// What one worker slot sends on.
enum Slot {
    H3(H3Send),
    H1(Option<H1Send>),
}

struct Outcome {
    ok: bool,
    error: Option<String>,
    /// first body frame, for TTFT
    first: Option<Instant>,
}

fn request_head(args: &Args) -> http::request::Builder {
    let mut b = Request::builder().method(args.method.clone());
    b = match args.url.path_and_query() {
        Some(pq) => b.uri(match (args.url.scheme_str(), args.url.authority()) {
            (Some("https"), Some(_)) => format!("https://{}{}", args.server_name, pq),
            _ => pq.to_string(),
        }),
        None => b.uri("/"),
    };
    for (n, v) in &args.headers {
        b = b.header(n.as_str(), v.as_str());
    }
    if !args.body.is_empty() && !args.headers.iter().any(|(n, _)| n == "content-type") {
        b = b.header("content-type", "application/json");
    }
    b
}

async fn h3_request(send: &H3Send, args: &Args) -> Result<Option<Instant>, String> {
    let req = request_head(args).body(()).map_err(|e| e.to_string())?;
    let mut send = send.clone();
    let mut stream = send
        .send_request(req)
        .await
        .map_err(|e| format!("send: {e}"))?;
    if !args.body.is_empty() {
        stream
            .send_data(args.body.clone())
            .await
            .map_err(|e| format!("send body: {e}"))?;
    }
    stream.finish().await.map_err(|e| format!("finish: {e}"))?;
    let resp = stream
        .recv_response()
        .await
        .map_err(|e| format!("response: {e}"))?;
    let status = resp.status().as_u16();
    let mut first = None;
    while let Some(mut chunk) = stream.recv_data().await.map_err(|e| format!("body: {e}"))? {
        if first.is_none() && chunk.has_remaining() {
            first = Some(Instant::now());
        }
        chunk.advance(chunk.remaining());
    }
    if status != 200 {
        return Err(format!("status {status}"));
    }
    Ok(first)
}

async fn h1_request(send: &mut H1Send, args: &Args) -> Result<Option<Instant>, String> {
    let host = args
        .url
        .authority()
        .map(|a| a.as_str())
        .unwrap_or("localhost");
    let req = request_head(args)
        .header("host", host)
        .body(Full::new(args.body.clone()))
        .map_err(|e| e.to_string())?;
    send.ready().await.map_err(|e| format!("ready: {e}"))?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut first = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        if first.is_none() && frame.data_ref().is_some_and(|d| !d.is_empty()) {
            first = Some(Instant::now());
        }
    }
    if status != 200 {
        return Err(format!("status {status}"));
    }
    Ok(first)
}

async fn one(slot: &mut Slot, args: &Args, addr: SocketAddr) -> Outcome {
    let timeout = Duration::from_secs_f64(args.timeout);
    let res = match slot {
        Slot::H3(send) => tokio::time::timeout(timeout, h3_request(send, args)).await,
        Slot::H1(conn) => {
            if conn.is_none() {
                match h1_connect(addr).await {
                    Ok(c) => *conn = Some(c),
                    Err(e) => {
                        return Outcome {
                            ok: false,
                            error: Some(e),
                            first: None,
                        };
                    }
                }
            }
            let send = conn.as_mut().expect("connected");
            let r = tokio::time::timeout(timeout, h1_request(send, args)).await;
            if !matches!(r, Ok(Ok(_))) || send.is_closed() {
                *conn = None; // reconnect next time
            }
            r
        }
    };
    match res {
        Ok(Ok(first)) => Outcome {
            ok: true,
            error: None,
            first,
        },
        Ok(Err(e)) => Outcome {
            ok: false,
            error: Some(e),
            first: None,
        },
        Err(_) => Outcome {
            ok: false,
            error: Some("timeout".into()),
            first: None,
        },
    }
}

// ------------------------------------------------------------------ measurement

#[derive(Default)]
struct Stats {
    latencies: Vec<f64>,
    ttfts: Vec<f64>,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
}

impl Stats {
    fn record(&mut self, due: Instant, sent: Instant, o: Outcome) {
        let end = Instant::now();
        if o.ok {
            self.latencies.push((end - due).as_secs_f64());
            if let Some(f) = o.first {
                self.ttfts.push((f - sent).as_secs_f64());
            }
        } else {
            self.errors += 1;
            let kind = o.error.unwrap_or_default();
            let kind: String = kind.chars().take(120).collect();
            *self.error_kinds.entry(kind).or_default() += 1;
        }
    }
}

fn pct(sorted: &[f64], p: f64) -> serde_json::Value {
    if sorted.is_empty() {
        return serde_json::Value::Null;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    serde_json::json!(sorted[i.clamp(1, sorted.len()) - 1])
}

async fn run(args: Arc<Args>) -> serde_json::Value {
    let addr = target_addr(&args.url);
    // connections first, outside the measured time
    let mut slots = Vec::with_capacity(args.concurrency);
    match args.proto {
        Proto::H3 => {
            let mut conns = Vec::new();
            for _ in 0..args.connections {
                match h3_connect(&args, addr).await {
                    Ok(c) => conns.push(c),
                    Err(e) => {
                        eprintln!("h3load: {e}");
                        std::process::exit(1)
                    }
                }
            }
            for i in 0..args.concurrency {
                slots.push(Slot::H3(conns[i % conns.len()].clone()));
            }
        }
        Proto::H1 => {
            for _ in 0..args.concurrency {
                match h1_connect(addr).await {
                    Ok(c) => slots.push(Slot::H1(Some(c))),
                    Err(e) => {
                        eprintln!("h3load: {e}");
                        std::process::exit(1)
                    }
                }
            }
        }
    }
    let stats = Arc::new(Mutex::new(Stats::default()));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.duration);
    let mut tasks = tokio::task::JoinSet::new();
    match args.rate {
        None => {
            for mut slot in slots {
                let (args, stats) = (args.clone(), stats.clone());
                tasks.spawn(async move {
                    while Instant::now() < deadline {
                        let t0 = Instant::now();
                        let o = one(&mut slot, &args, addr).await;
                        stats.lock().await.record(t0, t0, o);
                    }
                });
            }
        }
        Some(rate) => {
            let (free_tx, mut free_rx) = mpsc::channel::<Slot>(slots.len());
            for s in slots {
                let _ = free_tx.try_send(s);
            }
            let mut due_rx = pacer(start, deadline, Duration::from_secs_f64(1.0 / rate));
            while let Some(due) = due_rx.recv().await {
                // Counted from when the request was due, whatever delayed it after that (the
                // pacer's wake-up, the wait for a free slot, a server hogging a shared core):
                // latency correction, as `oha -q R --latency-correction` does.
                let Some(mut slot) = free_rx.recv().await else {
                    break;
                };
                let (args, stats, free_tx) = (args.clone(), stats.clone(), free_tx.clone());
                tasks.spawn(async move {
                    let sent = Instant::now();
                    let o = one(&mut slot, &args, addr).await;
                    stats.lock().await.record(due, sent, o);
                    let _ = free_tx.send(slot).await;
                });
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed().as_secs_f64();
    let mut s = stats.lock().await;
    s.latencies.sort_by(f64::total_cmp);
    s.ttfts.sort_by(f64::total_cmp);
    let ok = s.latencies.len() as u64;
    let mean = if ok > 0 {
        s.latencies.iter().sum::<f64>() / ok as f64
    } else {
        0.0
    };
    let mut out = serde_json::json!({
        "proto": if args.proto == Proto::H3 { "h3" } else { "h1" },
        "mode": if args.rate.is_some() { "open" } else { "closed" },
        "connections": args.connections,
        "concurrency": args.concurrency,
        "requests": ok + s.errors,
        "errors": s.errors,
        "elapsed": elapsed,
        "rps": ok as f64 / elapsed.max(1e-9),
        "mean": mean,
        "p50": pct(&s.latencies, 50.0),
        "p90": pct(&s.latencies, 90.0),
        "p99": pct(&s.latencies, 99.0),
        "max": s.latencies.last().copied(),
        "error_kinds": s.error_kinds,
    });
    if args.stream {
        out["ttft_p50"] = pct(&s.ttfts, 50.0);
        out["ttft_p90"] = pct(&s.ttfts, 90.0);
        out["ttft_p99"] = pct(&s.ttfts, 99.0);
    }
    out
}

/// Request i is due at `start + i * interval`: a thread of its own sleeps until each due time
/// on the kernel's high-resolution timer (1 µs timer slack) and hands it to the runtime. tokio's
/// timer has 1 ms ticks, so at 2000 req/s it would release requests two at a time every
/// millisecond (as `oha -q` does), and the second of each pair would wait for the first in
/// whatever is measured; paced this way they arrive one every 500 µs, as the rate says.
fn pacer(
    start: Instant,
    deadline: Instant,
    interval: Duration,
) -> mpsc::UnboundedReceiver<Instant> {
    let (due_tx, due_rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        // SAFETY: prctl(PR_SET_TIMERSLACK) takes a plain integer and changes only this thread.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong) };
        let mut i: u32 = 0;
        loop {
            let due = start + interval * i;
            if due >= deadline {
                break;
            }
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if due_tx.send(due).is_err() {
                break;
            }
            i += 1;
        }
    });
    due_rx
}

fn main() {
    let args = Arc::new(parse_args());
    // one thread: the harness pins the load generator to one core
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let out = rt.block_on(run(args));
    println!("{out}");
}
