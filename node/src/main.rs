//! The `hapax` binary: parses the command line and starts things; the work lives in the
//! library modules.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hapax_config::{ConfigSource, LoadedConfig};
use hapax_node::app::App;
use hapax_node::cluster_link::ClusterRuntime;
use hapax_node::server::front::Front;
use hapax_node::server::{self, tls};

#[derive(Parser)]
#[command(
    name = "hapax",
    version,
    about = "Hapax: the clustered reliability layer between your code and LLM providers"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default). Config: --config, else $CONFIG_PATH, else ./config.yaml, else the embedded default.
    Serve {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file: exit 0 with a summary, or 2 listing every problem.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the fault-injecting mock upstream (OpenAI, Anthropic and Ollama formats).
    MockProvider {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Write a self-signed development certificate: DIR/cert.pem and DIR/key.pem.
    GenCert {
        #[arg(long)]
        out: PathBuf,
        /// DNS name or IP address the certificate is for (repeatable; default localhost, 127.0.0.1, ::1).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command.unwrap_or(Command::Serve { config: None }) {
        Command::Validate { config } => validate(&config),
        Command::Serve { config } => run(|scheduler, cores| serve(config, scheduler, cores)),
        Command::MockProvider { listen } => run(|_, _| mock_provider(listen)),
        Command::GenCert { out, hosts, force } => gen_cert(&out, &hosts, force),
    }
}

/// Scheduler ticks between two looks at tokio's shared run queue (tokio's default: about 31,
/// adapted to poll times). A worker's own queue holds 256 tasks; with a few hundred busy
/// connections per worker it overflows into the shared queue, from which a worker whose own
/// queue never empties takes one task per interval: at the default, ~9 % of requests waited
/// 20-50 ms there (c=256 on one core: p99 47 ms); at 4, p99 22-25 ms (`BENCHMARKS.md`).
/// The current-thread scheduler (one core) takes the same setting for its queue of wake-ups
/// from other threads.
const GLOBAL_QUEUE_INTERVAL: u32 = 4;

/// Which tokio scheduler runs the process.
///
/// With one core to run on (a CPU affinity mask or a cgroup quota of one CPU), a work-stealing
/// pool has nobody to steal from: its single worker still pays for cross-thread queues and
/// wake-ups, and `block_on`'s thread runs beside it. The current-thread scheduler runs every
/// task on the one thread instead. Measured on a 2-core VM with the gateway pinned to one core,
/// 2000 req/s: p99 630-760 µs against 910-1000 µs, the same CPU per request
/// (`bench/OPTIMISATIONS.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheduler {
    CurrentThread,
    MultiThread,
}

impl Scheduler {
    /// The scheduler for the cores this process may run on (0: unknown), and that count.
    fn for_this_process() -> (Self, usize) {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let scheduler = if cores == 1 {
            Self::CurrentThread
        } else {
            Self::MultiThread
        };
        (scheduler, cores)
    }

    fn name(self) -> &'static str {
        match self {
            Self::CurrentThread => "current_thread",
            Self::MultiThread => "multi_thread",
        }
    }
}

fn run<F: Future<Output = anyhow::Result<()>>>(
    future: impl FnOnce(Scheduler, usize) -> F,
) -> ExitCode {
    let (scheduler, cores) = Scheduler::for_this_process();
    let mut builder = match scheduler {
        Scheduler::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        Scheduler::MultiThread => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder
        .global_queue_interval(GLOBAL_QUEUE_INTERVAL)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("hapax: could not start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let future = future(scheduler, cores);
    match runtime.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hapax: {error:#}");
            ExitCode::from(2)
        }
    }
}

#[allow(clippy::print_stdout)]
fn validate(path: &std::path::Path) -> ExitCode {
    match hapax_config::load_file(path) {
        Ok(loaded) => {
            let problems = tls::check(&loaded.config);
            if !problems.is_empty() {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let origin = path.display().to_string();
                eprintln!("{}", tls::as_config_errors(&origin, &text, &problems));
                return ExitCode::from(2);
            }
            println!("{}: valid", path.display());
            for notice in &loaded.notices {
                println!("{notice}");
            }
            println!("{}", loaded.summary());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::from(2)
        }
    }
}

/// `--config`, else `$CONFIG_PATH`, else `./config.yaml` if present, else the embedded default.
fn load_config(flag: Option<PathBuf>) -> anyhow::Result<LoadedConfig> {
    let path = flag
        .or_else(|| {
            std::env::var_os("CONFIG_PATH")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .or_else(|| {
            let local = PathBuf::from("config.yaml");
            local.is_file().then_some(local)
        });
    match path {
        Some(path) => hapax_config::load_file(&path).map_err(|errors| anyhow::anyhow!("{errors}")),
        None => Ok(hapax_config::load_embedded()),
    }
}

#[allow(clippy::print_stdout)]
async fn serve(flag: Option<PathBuf>, scheduler: Scheduler, cores: usize) -> anyhow::Result<()> {
    let loaded = load_config(flag)?;
    let config = &loaded.config;
    let _log_guard = hapax_node::logging::init(&config.logging);
    tracing::info!(scheduler = scheduler.name(), cores, "async runtime");
    match &loaded.source {
        ConfigSource::File(path) => tracing::info!(path = %path.display(), "configuration loaded"),
        ConfigSource::Embedded => tracing::info!(
            "no configuration file given: using the embedded default (in-process mock provider)"
        ),
    }
    for notice in &loaded.notices {
        tracing::warn!(notice = %notice, "configuration notice");
    }
    if !config.auth.enabled.unwrap_or(true) {
        tracing::warn!(host = %config.server.host, "authentication is OFF: any client that reaches this address can use the gateway");
    }
    let app = App::build(config).context("building the gateway")?;
    let background = app.start_background();
    let front = Front::bind(config)
        .await?
        .limit_connections(app.connections.clone());
    let bound = front.http_addr()?;
    let cluster = ClusterRuntime::start(
        &app,
        config,
        bound.to_string(),
        front.h3_addr().map(|a| a.to_string()),
    )
    .await
    .context("starting clustering")?;
    let gossip = cluster
        .as_ref()
        .map(ClusterRuntime::ready_fields)
        .unwrap_or_default();
    tracing::info!(
        http = %bound,
        tls = front.is_tls(),
        h3 = front.h3_addr().map(|a| a.to_string()).unwrap_or_default(),
        providers = app.dispatcher.providers().len(),
        "hapax listening"
    );
    println!("{}{gossip}", front.ready_line()?);
    front.serve(server::router(app), shutdown_signal()).await?;
    if let Some(cluster) = cluster {
        cluster.shutdown(Duration::from_secs(2)).await;
    }
    for task in background {
        task.abort();
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
fn gen_cert(out: &std::path::Path, hosts: &[String], force: bool) -> ExitCode {
    let written = tls::DevCertificate::generate(hosts)
        .map_err(anyhow::Error::from)
        .and_then(|cert| cert.write(out, force));
    match written {
        Ok((cert, key)) => {
            println!("wrote {} and {}", cert.display(), key.display());
            println!(
                "self-signed, for development only: clients must trust cert.pem or skip verification"
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("hapax gen-cert: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout)]
async fn mock_provider(listen: SocketAddr) -> anyhow::Result<()> {
    let _log_guard = hapax_node::logging::init(&hapax_config::LoggingConfig::default());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the mock provider on {listen}"))?;
    let bound = listener.local_addr()?;
    println!("hapax mock-provider listening http={bound}");
    hapax_mock_provider::serve(listener, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
