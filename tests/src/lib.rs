//! Test harness: starts real `hapax` processes (gateway and mock provider) on loopback with
//! ports chosen at run time, waits for their ready line, and collects their logs so a failing
//! test prints them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod cluster;
pub mod h3_client;
pub mod netns;
pub mod raw_http;
pub mod redis_server;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A reqwest client; installs the ring crypto provider first (reqwest has none built in).
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("client")
}

/// The `hapax` binary next to the test executable (target/<profile>/hapax).
pub fn hapax_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("HAPAX_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let bin = dir.join("hapax");
    assert!(
        bin.is_file(),
        "{} not found: run `cargo build --bins` first (or set HAPAX_BIN)",
        bin.display()
    );
    bin
}

/// A child process whose output is collected; killed on drop, logs printed if the test failed.
/// `ip netns exec NS` when a namespace is given, else no launcher.
fn netns_launcher(netns: Option<&str>) -> Vec<&str> {
    netns.map_or_else(Vec::new, |ns| vec!["ip", "netns", "exec", ns])
}

pub struct Process {
    name: String,
    child: Child,
    output: Arc<Mutex<String>>,
    pub addr: String,
    /// Every `key=value` of the ready line (`http`, `gossip`, `h3`, ...).
    pub ready: HashMap<String, String>,
}

impl Process {
    /// Spawns `hapax ARGS` and waits for its ready line, `... listening http=ADDR [key=value ...]`.
    pub fn spawn(name: &str, args: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::spawn_in(None, name, args, envs)
    }

    /// Like `spawn`, inside network namespace `netns` when given (`ip netns exec` execs the binary,
    /// so the pid is still hapax's own).
    pub fn spawn_in(netns: Option<&str>, name: &str, args: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::spawn_via(&netns_launcher(netns), name, args, envs)
    }

    /// Like `spawn`, through a launcher that execs the binary (`ip netns exec NS`, `taskset -c 0`),
    /// so the pid is still hapax's own.
    pub fn spawn_via(launcher: &[&str], name: &str, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut command = match launcher.split_first() {
            Some((program, launcher_args)) => {
                let mut c = Command::new(program);
                c.args(launcher_args).arg(hapax_bin());
                c
            }
            None => Command::new(hapax_bin()),
        };
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command.env_remove("CONFIG_PATH").env_remove("RUST_LOG");
        for (k, v) in envs {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn hapax");
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let out = Arc::clone(&output);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line
                    .split("listening ")
                    .nth(1)
                    .filter(|r| r.starts_with("http="))
                {
                    let fields: HashMap<String, String> = rest
                        .split_whitespace()
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect();
                    let _ = tx.send(fields);
                }
                out.lock().unwrap().push_str(&format!("[stdout] {line}\n"));
            }
        });
        let stderr = child.stderr.take().expect("stderr");
        let err = Arc::clone(&output);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                err.lock().unwrap().push_str(&line);
                line.clear();
            }
            let mut rest = String::new();
            let _ = reader.read_to_string(&mut rest);
        });
        let mut process = Self {
            name: name.to_owned(),
            child,
            output,
            addr: String::new(),
            ready: HashMap::new(),
        };
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(fields) => {
                process.addr = fields.get("http").cloned().unwrap_or_default();
                process.ready = fields;
            }
            Err(_) => {
                std::thread::sleep(Duration::from_millis(200));
                panic!("{name} did not report ready; output:\n{}", process.logs());
            }
        }
        process
    }

    pub fn logs(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The HTTP/3 (UDP) address of the ready line's `h3=`, when HTTP/3 is on.
    pub fn h3_addr(&self) -> Option<std::net::SocketAddr> {
        self.ready
            .get("h3")
            .map(|a| a.parse().expect("h3= address"))
    }

    /// SIGKILL: the process gets no chance to say goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit status (bounded).
    pub fn terminate(&mut self, patience: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("===== logs of {} =====\n{}", self.name, self.logs());
        }
    }
}

/// A `hapax mock-provider` process and a client for its `/_mock/` control API.
pub struct MockUpstream {
    pub process: Process,
    client: reqwest::Client,
}

impl MockUpstream {
    pub fn start() -> Self {
        Self::start_at("127.0.0.1", None)
    }

    /// On address `ip`, optionally inside a network namespace.
    pub fn start_at(ip: &str, netns: Option<&str>) -> Self {
        let listen = format!("{ip}:0");
        let process = Process::spawn_in(
            netns,
            "mock-provider",
            &["mock-provider", "--listen", &listen],
            &[],
        );
        Self {
            process,
            client: client(),
        }
    }

    /// Base URL for an OpenAI-style provider entry (`.../v1`).
    pub fn openai_base(&self) -> String {
        self.process.url("/v1")
    }

    /// Base URL for Anthropic and Ollama provider entries (no path).
    pub fn base(&self) -> String {
        self.process.url("")
    }

    pub async fn set_fault(&self, fault: Value) {
        let response = self
            .client
            .post(self.process.url("/_mock/faults"))
            .json(&fault)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "set fault: {}",
            response.status()
        );
    }

    pub async fn clear_faults(&self) {
        self.client
            .delete(self.process.url("/_mock/faults"))
            .send()
            .await
            .unwrap();
    }

    pub async fn reset(&self) {
        self.client
            .post(self.process.url("/_mock/reset"))
            .send()
            .await
            .unwrap();
    }

    /// Requests received on `route` (e.g. `/v1/chat/completions`).
    pub async fn count(&self, route: &str) -> u64 {
        let counters: Value = self
            .client
            .get(self.process.url("/_mock/counters"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        counters["routes"][route].as_u64().unwrap_or(0)
    }

    pub async fn last_request(&self, route: &str) -> Value {
        self.client
            .get(format!(
                "{}?route={route}",
                self.process.url("/_mock/last_request")
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// A `hapax serve` process with its own temporary config file.
pub struct Gateway {
    pub process: Process,
    _config: tempfile::NamedTempFile,
}

impl Gateway {
    /// Starts a gateway on an ephemeral port; the config's `server.port` should be 0.
    pub fn start(config_yaml: &str) -> Self {
        Self::start_with_env(config_yaml, &[])
    }

    pub fn start_with_env(config_yaml: &str, envs: &[(&str, &str)]) -> Self {
        Self::start_in(None, config_yaml, envs)
    }

    /// Optionally inside a network namespace.
    pub fn start_in(netns: Option<&str>, config_yaml: &str, envs: &[(&str, &str)]) -> Self {
        Self::start_via(&netns_launcher(netns), config_yaml, envs)
    }

    /// Started through a launcher that execs the binary (see [`Process::spawn_via`]).
    pub fn start_via(launcher: &[&str], config_yaml: &str, envs: &[(&str, &str)]) -> Self {
        let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        std::io::Write::write_all(&mut file, config_yaml.as_bytes()).unwrap();
        let path = file.path().to_str().unwrap().to_owned();
        let process = Process::spawn_via(launcher, "gateway", &["serve", "--config", &path], envs);
        Self {
            process,
            _config: file,
        }
    }

    pub fn url(&self, path: &str) -> String {
        self.process.url(path)
    }

    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// `/metrics` once no request but the scrape is in flight (see [`settled_metrics`]).
    pub async fn metrics(&self) -> String {
        settled_metrics(&client(), &self.url("/metrics")).await
    }
}

/// The requests the gateway is serving, other than the scrape itself, by its
/// `hapax_http_active_requests` gauge.
pub fn requests_in_flight(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with("hapax_http_active_requests{"))
        .filter(|line| !line.contains("endpoint=\"/metrics\""))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A scrape of `url` with `client`, taken once the requests a test made are recorded. The
/// gateway records a request's figures once its answer is written, so a client can read its
/// answer a moment before the counters move; this scrapes until no other request is in flight
/// (at most 2 s, then the last scrape is returned as it is).
pub async fn settled_metrics(client: &reqwest::Client, url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let response = client.get(url).send().await.unwrap();
        let metrics = response.text().await.unwrap();
        if requests_in_flight(&metrics) == 0.0 || Instant::now() >= deadline {
            return metrics;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of one sample in Prometheus text, matched by name and all given labels.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric_name, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric_name != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
            if all { value.parse().ok() } else { None }
        })
}

/// Polls `check` until it returns `Some`, or panics with `what` after `patience`.
pub async fn eventually<T, F, Fut>(patience: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + patience;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A minimal OpenAI chat body.
pub fn chat_body(text: &str) -> Value {
    serde_json::json!({"model": "mock-1", "messages": [{"role": "user", "content": text}]})
}

/// Parses an SSE body into its `data:` payloads.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| {
            event
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_owned)
        })
        .collect()
}
