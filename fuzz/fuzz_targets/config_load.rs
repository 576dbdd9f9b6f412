//! Configuration loading: YAML -> `${VAR}` expansion (with a fake environment) -> typed
//! sections -> normalisation -> validation. Never panics; reported lines are in the text; neither the
//! `hapax validate` summary nor `Debug` of the loaded config depends on a secret's value.
#![no_main]

use hapax_config::{Config, Secret, load_str};
use libfuzzer_sys::fuzz_target;

fn fake_env(name: &str) -> Option<String> {
    let value = match name {
        "EMPTY" => "",
        "PORT" => "8080",
        "HOST" => "0.0.0.0",
        "COUNT" => "3",
        "FLAG" => "true",
        "DURATION" => "30s",
        "URL" => "http://127.0.0.1:11434",
        n if n.ends_with("KEY") || n.ends_with("SECRET") || n.ends_with("PASSWORD") => {
            "fuzz-secret-value"
        }
        _ => return None,
    };
    Some(value.to_owned())
}

/// Every secret the loaded configuration holds, for replacing.
fn secrets(config: &mut Config) -> Vec<&mut Secret> {
    let mut out: Vec<&mut Secret> = Vec::new();
    for provider in config.providers.values_mut() {
        out.extend(provider.api_key.as_mut());
        out.extend(
            provider
                .deployments
                .iter_mut()
                .filter_map(|d| d.api_key.as_mut()),
        );
    }
    for key in config
        .auth
        .api_keys
        .iter_mut()
        .chain(config.auth.admin_keys.iter_mut())
    {
        out.extend(key.key.as_mut());
    }
    if let Some(cluster) = config.cluster.as_mut() {
        out.extend(cluster.secret.as_mut());
    }
    if let Some(redis) = config.cache.as_mut().and_then(|c| c.redis.as_mut()) {
        out.extend(redis.password.as_mut());
    }
    if let Some(llm) = config.llm.as_mut() {
        out.extend(llm.api_key.as_mut());
        out.extend(
            llm.backup_providers
                .iter_mut()
                .filter_map(|b| b.api_key.as_mut()),
        );
        if let Some(redis) = llm.cache.as_mut().and_then(|c| c.redis.as_mut()) {
            out.extend(redis.password.as_mut());
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // YAML breaks lines on `\n`, `\r\n`, a lone `\r`, NEL, LS and PS; at the end of a text
    // without a final line break libyaml reports one line further (a "forced" line break).
    let breaks = ['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}'];
    let lines = text.replace("\r\n", "\n").matches(breaks).count() + 2;
    match load_str(text, "fuzz.yaml", &fake_env) {
        Ok(loaded) => {
            for notice in &loaded.notices {
                assert!(
                    notice.line.is_none_or(|l| (1..=lines).contains(&l)),
                    "{notice}"
                );
                let _ = notice.to_string();
            }
            let summary = loaded.summary();
            let debug = format!("{:?}", loaded.config);
            let mut other = loaded.clone();
            for secret in secrets(&mut other.config) {
                *secret = Secret(format!("{}-other", secret.expose()));
            }
            assert_eq!(summary, other.summary(), "the summary shows a secret");
            assert_eq!(debug, format!("{:?}", other.config), "Debug shows a secret");
        }
        Err(errors) => {
            assert!(!errors.problems.is_empty());
            for problem in &errors.problems {
                assert!(
                    problem.line.is_none_or(|l| (1..=lines).contains(&l)),
                    "{problem}"
                );
            }
            let _ = errors.to_string();
        }
    }
});
