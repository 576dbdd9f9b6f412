//! A throwaway `redis-server` on loopback (no persistence), killed on drop; it can be stopped
//! and started again on the same port to play an outage.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Certificate and key (PEM files) when the server speaks only TLS.
    tls: Option<(PathBuf, PathBuf)>,
}

impl RedisServer {
    /// Starts on a free port and waits until it answers PING.
    pub fn start() -> Self {
        Self::on(free_port()).started()
    }

    /// Starts a TLS-only server with this certificate and key (PEM); clients must trust the
    /// certificate (e.g. `SSL_CERT_FILE`).
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Self {
        let mut server = Self::on(free_port());
        let cert = server.dir.path().join("redis-cert.pem");
        let key = server.dir.path().join("redis-key.pem");
        std::fs::write(&cert, cert_pem).expect("write the certificate");
        std::fs::write(&key, key_pem).expect("write the key");
        server.tls = Some((cert, key));
        server.started()
    }

    /// The certificate file of a TLS server.
    pub fn cert_file(&self) -> Option<&std::path::Path> {
        self.tls.as_ref().map(|(cert, _)| cert.as_path())
    }

    /// A server for a free port that is not started yet (e.g. to start a gateway first).
    pub fn unstarted() -> Self {
        Self::on(free_port())
    }

    fn on(port: u16) -> Self {
        Self {
            port,
            child: None,
            dir: tempfile::tempdir().expect("temp dir for redis"),
            tls: None,
        }
    }

    fn started(mut self) -> Self {
        self.resume();
        self
    }

    /// `host:port`, as the cache's `redis.address`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port, empty, and waits until it answers PING.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let mut command = Command::new("redis-server");
        match &self.tls {
            None => command.args(["--port", &self.port.to_string()]),
            Some((cert, key)) => command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .args(["--tls-auth-clients", "no"]),
        };
        let child = command
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--enable-debug-command", "local"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run redis-server ({e}): install it, e.g. `apt-get install redis-server`"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers_ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL: no goodbye to its clients) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Makes the (plain) server unresponsive for `duration` (`DEBUG SLEEP`); returns once a
    /// PING goes unanswered, so the stall is certainly in effect.
    pub fn stall(&self, duration: Duration) {
        let mut sleeper = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        write!(sleeper, "DEBUG SLEEP {}\r\n", duration.as_secs_f64()).expect("send DEBUG SLEEP");
        std::thread::spawn(move || {
            let mut reply = [0u8; 16];
            let _ = sleeper.read(&mut reply);
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.answers_ping() {
            assert!(Instant::now() < deadline, "redis-server did not stall");
        }
    }

    /// PING in plain text; a TLS server only has to accept connections.
    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        if self.tls.is_some() {
            return true;
        }
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nobody listens on right now (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
