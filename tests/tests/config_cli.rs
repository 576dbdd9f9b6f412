//! The command line: `hapax validate` on good and broken files, `hapax serve` refusing a broken
//! configuration, unknown subcommands, `CONFIG_PATH`, and secrets kept out of the output.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use hapax_tests::{Process, client, hapax_bin};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../config/tests/fixtures")
        .join(name)
}

/// Runs `hapax ARGS` to completion in an empty temporary directory, with no config-related
/// environment inherited; panics if it runs for more than a minute.
async fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let cwd = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(hapax_bin());
    command
        .args(args)
        .current_dir(cwd.path())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for var in [
        "CONFIG_PATH",
        "RUST_LOG",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
    ] {
        command.env_remove(var);
    }
    for (k, v) in envs {
        command.env(k, v);
    }
    tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .unwrap_or_else(|_| panic!("hapax {args:?} did not exit"))
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write_config(yaml: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::io::Write::write_all(&mut file, yaml.as_bytes()).unwrap();
    file
}

#[tokio::test]
async fn validate_accepts_the_seed_example_once_its_certificate_paths_exist() {
    // Verbatim, the seed points HTTP/3 at `/path/to/cert.pem`: the only problems are those files.
    let path = fixture("seed-example.yaml");
    let output = run(&["validate", "--config", path.to_str().unwrap()], &[]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let problems: Vec<&str> = stderr.lines().filter(|l| l.contains("(line ")).collect();
    assert!(!problems.is_empty(), "{stderr}");
    assert!(
        problems.iter().all(|l| l.contains("server.http3.tls_")),
        "only the certificate files are missing: {stderr}"
    );

    // With a real (generated) certificate and key the seed example is valid as is.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let made = run(&["gen-cert", "--out", out], &[]).await;
    assert!(made.status.success(), "{}", text(&made.stderr));
    let seed = std::fs::read_to_string(&path).unwrap();
    let with_certs = seed
        .replace("/path/to/cert.pem", &format!("{out}/cert.pem"))
        .replace("/path/to/key.pem", &format!("{out}/key.pem"));
    let file = write_config(&with_certs);
    let output = run(
        &["validate", "--config", file.path().to_str().unwrap()],
        &[],
    )
    .await;
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&output.stderr)
    );
    assert!(stdout.contains("valid"), "{stdout}");
    assert!(
        stdout.contains("providers, in preference order"),
        "{stdout}"
    );
}

#[tokio::test]
async fn validate_accepts_the_hapax_style_config_and_prints_a_summary() {
    let path = fixture("hapax-style.yaml");
    let output = run(&["validate", "--config", path.to_str().unwrap()], &[]).await;
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&output.stderr)
    );
    assert!(stdout.contains(": valid"), "{stdout}");
    // The summary: listen address, the llm block's provider plus its backups in order,
    // routing, auth and breaker settings.
    for expected in [
        "listen: 0.0.0.0:8080",
        "1. ollama",
        "model=llama2",
        "2. anthropic",
        "3. openai",
        "routing:",
        "auth: off",
        "circuit breaker:",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    // Keys that are present are reported as set, never shown.
    assert!(stdout.contains("api key set"), "{stdout}");
    for secret in ["test-anthropic-key", "test-openai-key"] {
        assert!(!stdout.contains(secret), "{secret} leaked:\n{stdout}");
    }
}

#[tokio::test]
async fn validate_lists_every_problem_of_a_broken_config_with_line_and_column() {
    let path = fixture("broken.yaml");
    let output = run(&["validate", "--config", path.to_str().unwrap()], &[]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(
        !text(&output.stdout).contains("valid"),
        "nothing claims success"
    );
    let expected = [
        ("server.port", "line 3:3"),
        ("circuitBreaker.timeout", "line 6:3"),
        ("providers.openai.api_key", "line 8:3"),
        ("providers.local.tiemout", "line 13:5"),
        ("provider_preference[2]", "line 17:5"),
        ("logging.level", "line 19:3"),
    ];
    for (path, position) in expected {
        let line = stderr
            .lines()
            .find(|l| l.trim_start().starts_with(path))
            .unwrap_or_else(|| panic!("no problem reported for {path}:\n{stderr}"));
        assert!(line.contains(position), "{path} at {position}: {line}");
    }
    assert!(stderr.contains("6 problems"), "{stderr}");
    // Each problem says what is wrong, not only where.
    assert!(stderr.contains("eighty"), "{stderr}");
    assert!(stderr.contains("did you mean `timeout`"), "{stderr}");
    assert!(stderr.contains("mistral"), "{stderr}");
    assert!(stderr.contains("loud"), "{stderr}");
}

#[tokio::test]
async fn serve_with_a_broken_config_exits_non_zero_listing_problems_without_binding() {
    let path = fixture("broken.yaml");
    let output = run(&["serve", "--config", path.to_str().unwrap()], &[]).await;
    let stderr = text(&output.stderr);
    let stdout = text(&output.stdout);
    assert!(
        !output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        !stdout.contains("listening"),
        "it must never bind:\n{stdout}"
    );
    for path in [
        "server.port",
        "circuitBreaker.timeout",
        "providers.local.tiemout",
        "provider_preference[2]",
        "logging.level",
    ] {
        assert!(stderr.contains(path), "missing {path}:\n{stderr}");
    }
    assert!(stderr.contains("line 13:5"), "{stderr}");
}

#[tokio::test]
async fn validate_of_a_missing_file_fails() {
    let output = run(
        &["validate", "--config", "/nonexistent/hapax/config.yaml"],
        &[],
    )
    .await;
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("/nonexistent/hapax/config.yaml"),
        "{}",
        text(&output.stderr)
    );
}

#[tokio::test]
async fn unknown_subcommand_fails() {
    let output = run(&["frobnicate"], &[]).await;
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("frobnicate"), "{stderr}");
    assert!(text(&output.stdout).is_empty(), "{}", text(&output.stdout));
}

#[tokio::test]
async fn config_path_env_is_honoured_and_the_flag_wins_over_it() {
    let good = write_config(
        "server: {host: 127.0.0.1, port: 0}
auth: {enabled: false}
providers:
  mock: {type: mock, model: from-config-path}
provider_preference: [mock]
",
    );
    let good_path = good.path().to_str().unwrap();
    let gateway = Process::spawn("gateway", &["serve"], &[("CONFIG_PATH", good_path)]);
    let models: Value = client()
        .get(gateway.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "from-config-path", "{models}");
    hapax_tests::eventually(Duration::from_secs(30), "the log names the file", || {
        let found = gateway.logs().contains(good_path);
        async move { found.then_some(()) }
    })
    .await;
    drop(gateway);

    // --config beats CONFIG_PATH: a broken CONFIG_PATH is not even read.
    let broken = fixture("broken.yaml");
    let gateway = Process::spawn(
        "gateway",
        &["serve", "--config", good_path],
        &[("CONFIG_PATH", broken.to_str().unwrap())],
    );
    let response = client().get(gateway.url("/health")).send().await.unwrap();
    assert_eq!(response.status(), 200);

    // And a broken CONFIG_PATH with no flag is refused.
    let output = run(&["serve"], &[("CONFIG_PATH", broken.to_str().unwrap())]).await;
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("server.port"));
}

#[tokio::test]
async fn validate_never_prints_an_api_key() {
    let secret = "sk-test-VISIBLE-NEVER";
    let valid = write_config(&format!(
        "server: {{host: 127.0.0.1, port: 0}}
auth:
  enabled: true
  api_keys:
    - {{name: client-a, key: {secret}-client}}
  admin_keys:
    - {{name: admin, key: {secret}-admin}}
providers:
  upstream: {{type: openai_compatible, base_url: \"http://127.0.0.1:9/v1\", model: m, api_key: {secret}}}
  claude: {{type: anthropic, api_key: {secret}, model: c}}
provider_preference: [upstream, claude]
"
    ));
    let output = run(
        &["validate", "--config", valid.path().to_str().unwrap()],
        &[],
    )
    .await;
    let stdout = text(&output.stdout);
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(!stdout.contains("VISIBLE-NEVER"), "key leaked:\n{stdout}");
    assert!(!stderr.contains("VISIBLE-NEVER"), "key leaked:\n{stderr}");

    // A broken file holding a key: the problems are listed, the key is not.
    let broken = write_config(&format!(
        "server: {{host: 127.0.0.1, port: 0}}
providers:
  upstream: {{type: openai_compatible, base_url: \"http://127.0.0.1:9/v1\", model: m, api_key: {secret}, tiemout: 3s}}
provider_preference: [upstream]
"
    ));
    let output = run(
        &["validate", "--config", broken.path().to_str().unwrap()],
        &[],
    )
    .await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("tiemout"), "{stderr}");
    assert!(!stderr.contains("VISIBLE-NEVER"), "key leaked:\n{stderr}");
    assert!(!text(&output.stdout).contains("VISIBLE-NEVER"));
}

#[tokio::test]
async fn serve_never_logs_an_api_key() {
    let secret = "sk-test-VISIBLE-NEVER";
    let config = write_config(&format!(
        "server: {{host: 127.0.0.1, port: 0}}
auth:
  enabled: true
  api_keys:
    - {{name: client-a, key: {secret}-client}}
providers:
  mock: {{type: mock, model: mock-1}}
  upstream: {{type: openai_compatible, base_url: \"http://127.0.0.1:9/v1\", model: m, api_key: {secret}, health_check: {{enabled: false}}}}
provider_preference: [mock, upstream]
logging: {{level: debug}}
"
    ));
    let gateway = Process::spawn(
        "gateway",
        &["serve", "--config", config.path().to_str().unwrap()],
        &[],
    );
    let ok = client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(format!("{secret}-client"))
        .json(&hapax_tests::chat_body("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let denied = client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(format!("{secret}-wrong"))
        .json(&hapax_tests::chat_body("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    let health = client()
        .get(gateway.url("/v1/health"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!health.contains("VISIBLE-NEVER"), "{health}");
    let logs = hapax_tests::eventually(Duration::from_secs(30), "both requests are logged", || {
        let logs = gateway.logs();
        async move { (logs.matches("request finished").count() >= 2).then_some(logs) }
    })
    .await;
    assert!(
        !logs.contains("VISIBLE-NEVER"),
        "key leaked into logs:\n{logs}"
    );
}
