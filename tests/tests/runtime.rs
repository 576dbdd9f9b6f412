//! The async runtime the binary picks: a gateway given one core (here by `taskset -c 0`) runs
//! on tokio's current-thread scheduler and still serves plain, streamed and concurrent
//! requests and shuts down cleanly; given more cores, the multi-thread scheduler.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use hapax_tests::{Gateway, MockUpstream, chat_body, client, eventually, sse_data};
use serde_json::{Value, json};

fn config(mock: &MockUpstream) -> String {
    format!(
        "server: {{host: 127.0.0.1, port: 0}}\nauth: {{enabled: false}}\nproviders:\n  primary: {{type: openai_compatible, base_url: \"{}\", model: mock-1, health_check: {{enabled: false}}}}\nprovider_preference: [primary]\n",
        mock.openai_base()
    )
}

/// The `scheduler` field of the gateway's `async runtime` log line (stderr is read by another
/// thread than the ready line, so it may arrive a little later).
async fn scheduler(gateway: &Gateway) -> String {
    eventually(
        Duration::from_secs(10),
        "the async runtime log line",
        || async {
            let logs = gateway.logs();
            let line = logs
                .lines()
                .find(|l| l.contains("async runtime"))?
                .to_owned();
            ["current_thread", "multi_thread"]
                .into_iter()
                .find(|name| line.contains(name))
                .map(str::to_owned)
        },
    )
    .await
}

fn taskset_available() -> bool {
    std::process::Command::new("taskset")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn a_gateway_on_one_core_runs_the_current_thread_scheduler_and_serves_everything() {
    assert!(
        taskset_available(),
        "taskset (util-linux) is needed to give the gateway one core"
    );
    let mock = MockUpstream::start();
    let mut gateway = Gateway::start_via(&["taskset", "-c", "0"], &config(&mock), &[]);
    assert_eq!(scheduler(&gateway).await, "current_thread");
    let url = gateway.url("/v1/chat/completions");

    // Concurrent requests on an upstream that takes 300 ms each: interleaved on the one
    // thread, so together they take about one delay, not 32 of them (9.6 s).
    mock.set_fault(json!({"route": "/v1/chat/completions", "latency_ms": 300}))
        .await;
    let started = Instant::now();
    let answers = futures_util::future::join_all((0..32).map(|i| {
        let url = url.clone();
        async move {
            let response = client()
                .post(&url)
                .json(&chat_body(&format!("request {i}")))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.unwrap();
            body["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    }))
    .await;
    let took = started.elapsed();
    for (i, content) in answers.iter().enumerate() {
        assert!(content.ends_with(&format!("request {i}")), "{content}");
    }
    assert!(
        took < Duration::from_secs(5),
        "32 concurrent requests took {took:?}: served one after another?"
    );
    mock.clear_faults().await;

    let mut body = chat_body("stream me words:6");
    body["stream"] = json!(true);
    let response = client().post(&url).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let payloads = sse_data(&response.text().await.unwrap());
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));

    let exit = gateway.process.terminate(Duration::from_secs(10));
    assert!(
        exit.is_some_and(|status| status.success()),
        "exit {exit:?}; logs:\n{}",
        gateway.logs()
    );
}

#[tokio::test]
async fn a_gateway_with_several_cores_runs_the_multi_thread_scheduler() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mock = MockUpstream::start();
    let gateway = Gateway::start(&config(&mock));
    let expected = if cores > 1 {
        "multi_thread"
    } else {
        "current_thread"
    };
    assert_eq!(scheduler(&gateway).await, expected, "{cores} cores");
}

/// User and system CPU ticks (1/100 s) the process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which ends at the last ')': utime and stime are 14 and 15.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test]
async fn busy_polling_runs_on_one_core_sleeps_when_idle_and_is_off_on_several() {
    assert!(
        taskset_available(),
        "taskset (util-linux) is needed to give the gateway one core"
    );
    let mock = MockUpstream::start();
    // The default config: busy polling is on, with a 200 µs window.
    let config = config(&mock);
    assert!(!config.contains("busy_poll"));
    let gateway = Gateway::start_via(&["taskset", "-c", "0"], &config, &[]);
    eventually(Duration::from_secs(10), "the busy-polling log line", || {
        let logs = gateway.logs();
        let on = logs.lines().any(|line| {
            line.contains("busy polling while waiting for upstreams")
                && line.contains("\"window_us\":200")
        });
        async move { on.then_some(()) }
    })
    .await;
    let url = gateway.url("/v1/chat/completions");
    for i in 0..50 {
        let response = client()
            .post(&url)
            .json(&chat_body(&format!("spin {i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // Idle: the spinner sleeps. Spinning would use the whole 2 s (200 ticks).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = cpu_ticks(gateway.process.pid());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(gateway.process.pid()) - before;
    eprintln!("idle gateway with busy polling: {used} ticks in 2 s");
    assert!(used <= 10, "{used} CPU ticks in 2 s of idling");

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores > 1 {
        let several = Gateway::start(&config);
        eventually(Duration::from_secs(10), "the busy-poll refusal", || {
            let refused = several
                .logs()
                .contains("busy polling is off: it needs a process with one core");
            async move { refused.then_some(()) }
        })
        .await;
        let response = client()
            .post(several.url("/v1/chat/completions"))
            .json(&chat_body("no spinning"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}
