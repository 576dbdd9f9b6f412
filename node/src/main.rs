//! The `hapax` binary: parses the command line and starts things; the work lives in the
//! library modules.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hapax_config::{ConfigSource, LoadedConfig};
use hapax_node::app::App;
use hapax_node::server::{self, ListenerSettings};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command.unwrap_or(Command::Serve { config: None }) {
        Command::Validate { config } => validate(&config),
        Command::Serve { config } => run(serve(config)),
        Command::MockProvider { listen } => run(mock_provider(listen)),
    }
}

fn run(future: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("hapax: could not start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
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
async fn serve(flag: Option<PathBuf>) -> anyhow::Result<()> {
    let loaded = load_config(flag)?;
    let config = &loaded.config;
    hapax_node::logging::init(&config.logging);
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
    let address = format!("{}:{}", config.server.host, config.server.port);
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .with_context(|| format!("binding the HTTP listener on {address}"))?;
    let bound = listener.local_addr()?;
    let settings = ListenerSettings {
        header_read_timeout: config.server.read_timeout.get(),
        max_header_bytes: config.server.max_header_bytes,
        shutdown_timeout: config.server.shutdown_timeout.get(),
    };
    tracing::info!(http = %bound, providers = app.dispatcher.providers().len(), "hapax listening");
    println!("hapax listening http={bound}");
    server::serve(listener, server::router(app), settings, shutdown_signal()).await?;
    for task in background {
        task.abort();
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
async fn mock_provider(listen: SocketAddr) -> anyhow::Result<()> {
    hapax_node::logging::init(&hapax_config::LoggingConfig::default());
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
