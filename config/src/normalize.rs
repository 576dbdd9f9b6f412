//! Turns what the user wrote into the one shape the node reads: legacy `llm:` becomes
//! providers, keys come from the environment, base URLs get their defaults, and
//! `provider_preference` is never empty.

use crate::env::EnvLookup;
use crate::error::Report;
use crate::load::{Facts, suggest};
use crate::positions::KeyPath;
use crate::schema::{Config, ProviderConfig, ProviderKind, Secret};

/// Where a provider was declared, so its problems point at the right lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ProviderOrigin {
    /// Under `providers:`.
    Declared,
    /// Created from `llm:` (the path of `llm` or of one `llm.backup_providers[i]`).
    Legacy(KeyPath),
    /// Named in `provider_preference` (at this item) without being declared.
    Implicit(KeyPath),
}

impl ProviderOrigin {
    pub(crate) fn field(&self, name: &str, field: &str) -> KeyPath {
        match self {
            Self::Declared => KeyPath::root().key("providers").key(name).key(field),
            Self::Legacy(at) => at.key(if field == "base_url" {
                "endpoint"
            } else {
                field
            }),
            Self::Implicit(at) => at.clone(),
        }
    }
}

/// Provider types that may be named in `provider_preference` without being declared.
const IMPLICIT_TYPES: &[(&str, ProviderKind)] = &[
    ("openai", ProviderKind::Openai),
    ("anthropic", ProviderKind::Anthropic),
    ("ollama", ProviderKind::Ollama),
];

pub(crate) fn normalize(
    config: &mut Config,
    facts: &mut Facts,
    env: EnvLookup<'_>,
    report: &mut Report<'_>,
) {
    let created = legacy(config, facts, report);
    legacy_cache(config, report);
    implicit_providers(config, facts, report);
    if config.provider_preference.is_empty() {
        let mut order = created.clone();
        order.extend(
            config
                .providers
                .keys()
                .filter(|name| !created.contains(name))
                .cloned(),
        );
        config.provider_preference = order;
    }
    for (name, provider) in config.providers.iter_mut() {
        let origin = facts
            .origins
            .get(name)
            .cloned()
            .unwrap_or(ProviderOrigin::Declared);
        keys(name, provider, &origin, env, report);
        base_urls(name, provider, &origin, report);
    }
    let nothing_failed = facts.failed_providers.is_empty()
        && !facts.failed_sections.contains("providers")
        && !facts.failed_sections.contains("llm");
    if config.providers.is_empty() && nothing_failed {
        report.problem(
            &KeyPath::root().key("providers"),
            "no providers are configured: declare at least one under `providers:` (or `llm:`)",
        );
    }
}

/// `llm:` (provider + backups) becomes providers named after their type; `llm.retry` maps
/// onto `routing`. Returns the names created, primary first.
fn legacy(config: &mut Config, facts: &mut Facts, report: &mut Report<'_>) -> Vec<String> {
    let Some(llm) = config.llm.clone() else {
        return Vec::new();
    };
    let at = KeyPath::root().key("llm");
    let mut entries = Vec::new();
    match llm.provider {
        Some(kind) => {
            let mut provider = ProviderConfig::new(kind);
            provider.model = llm.model;
            provider.api_key = llm.api_key;
            provider.base_url = llm.endpoint;
            entries.push((at.clone(), provider));
        }
        None if llm.model.is_some() || llm.api_key.is_some() || llm.endpoint.is_some() => {
            report.problem(
                &at.key("provider"),
                "`llm.provider` is missing: which provider type is this?",
            );
        }
        None => {}
    }
    for (i, backup) in llm.backup_providers.into_iter().enumerate() {
        let mut provider = ProviderConfig::new(backup.provider);
        provider.model = backup.model;
        provider.api_key = backup.api_key;
        provider.base_url = backup.endpoint;
        entries.push((at.key("backup_providers").index(i), provider));
    }
    let mut created: Vec<String> = Vec::new();
    for (path, mut provider) in entries {
        let name = provider.kind.as_str().to_owned();
        if created.contains(&name) {
            report.problem(
                &path.key("provider"),
                format!("`llm` already defines a `{name}` provider; declare differing ones under `providers:` with their own names"),
            );
            continue;
        }
        if config.providers.contains_key(&name) || facts.failed_providers.contains(&name) {
            report.notice(
                &path.key("provider"),
                format!("`providers.{name}` is also declared; that entry wins over this `llm` one"),
            );
            continue;
        }
        provider.health_check = llm.health_check.clone();
        facts
            .origins
            .insert(name.clone(), ProviderOrigin::Legacy(path));
        config.providers.insert(name.clone(), provider);
        created.push(name);
    }
    if let Some(retry) = &llm.retry {
        let r = &mut config.routing;
        let attempts = retry.max_retries.map(|n| n.saturating_add(1));
        retry_setting(
            attempts,
            &mut r.max_attempts,
            "max_attempts",
            "max_retries",
            facts,
            report,
        );
        retry_setting(
            retry.initial_delay,
            &mut r.backoff_initial,
            "backoff_initial",
            "initial_delay",
            facts,
            report,
        );
        retry_setting(
            retry.max_delay,
            &mut r.backoff_max,
            "backoff_max",
            "max_delay",
            facts,
            report,
        );
        retry_setting(
            retry.multiplier,
            &mut r.backoff_multiplier,
            "backoff_multiplier",
            "multiplier",
            facts,
            report,
        );
    }
    created
}

/// Hapax's `llm.cache` is off unless `enable: true`; a top-level `cache` wins over it.
fn legacy_cache(config: &mut Config, report: &mut Report<'_>) {
    let top_level = config.cache.is_some();
    let Some(cache) = config.llm.as_mut().and_then(|l| l.cache.as_mut()) else {
        return;
    };
    cache.enabled.get_or_insert(false);
    if top_level {
        report.notice(
            &KeyPath::root().key("llm").key("cache"),
            "`cache` is also set and wins over `llm.cache`",
        );
    }
}

fn retry_setting<T>(
    value: Option<T>,
    slot: &mut T,
    routing_key: &str,
    retry_key: &str,
    facts: &Facts,
    report: &mut Report<'_>,
) {
    let Some(value) = value else { return };
    if facts.routing_keys.contains(routing_key) {
        report.notice(
            &KeyPath::root().key("llm").key("retry").key(retry_key),
            format!("`routing.{routing_key}` is also set and wins over `llm.retry.{retry_key}`"),
        );
    } else {
        *slot = value;
    }
}

/// Names in `provider_preference` that are provider types become providers with defaults.
fn implicit_providers(config: &mut Config, facts: &mut Facts, report: &mut Report<'_>) {
    let at = KeyPath::root().key("provider_preference");
    let mut seen = Vec::new();
    let preference = config.provider_preference.clone();
    let structure_failed =
        facts.failed_sections.contains("providers") || facts.failed_sections.contains("llm");
    for (i, name) in preference.iter().enumerate() {
        let item = at.index(i);
        if seen.contains(name) {
            report.problem(&item, format!("provider `{name}` is listed twice"));
            continue;
        }
        seen.push(name.clone());
        if config.providers.contains_key(name) || facts.failed_providers.contains(name) {
            continue;
        }
        if let Some((_, kind)) = IMPLICIT_TYPES
            .iter()
            .find(|(type_name, _)| type_name == name)
        {
            facts
                .origins
                .insert(name.clone(), ProviderOrigin::Implicit(item));
            config
                .providers
                .insert(name.clone(), ProviderConfig::new(*kind));
            continue;
        }
        if structure_failed {
            continue;
        }
        let declared: Vec<&str> = config.providers.keys().map(String::as_str).collect();
        let candidates = declared
            .iter()
            .copied()
            .chain(IMPLICIT_TYPES.iter().map(|(t, _)| *t));
        let hint = suggest(name, candidates)
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_default();
        report.problem(
            &item,
            format!("unknown provider `{name}`: declare it under `providers:` (only openai, anthropic and ollama may be named without a declaration){hint}"),
        );
    }
}

fn missing(key: &Option<Secret>) -> bool {
    key.as_ref().is_none_or(|k| k.expose().is_empty())
}

/// Keys: empty counts as missing; openai/anthropic fall back to their environment variable;
/// deployments inherit the provider's key.
fn keys(
    name: &str,
    provider: &mut ProviderConfig,
    origin: &ProviderOrigin,
    env: EnvLookup<'_>,
    report: &mut Report<'_>,
) {
    let var = provider.kind.api_key_env();
    if missing(&provider.api_key) {
        provider.api_key = var.and_then(env).filter(|k| !k.is_empty()).map(Secret);
    }
    for deployment in &mut provider.deployments {
        if missing(&deployment.api_key) {
            deployment.api_key = provider.api_key.clone();
        }
    }
    let Some(var) = var else { return };
    let usable = if provider.deployments.is_empty() {
        provider.api_key.is_some()
    } else {
        provider.deployments.iter().all(|d| d.api_key.is_some())
    };
    if usable {
        return;
    }
    let kind = provider.kind;
    match origin {
        ProviderOrigin::Implicit(at) => report.notice(
            at,
            format!("provider `{name}` is not declared and has no API key: it is unusable until {var} is set"),
        ),
        _ => report.problem(
            &origin.field(name, "api_key"),
            format!("provider `{name}` ({kind}) has no API key: set `api_key` or the {var} environment variable"),
        ),
    }
}

fn check_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    rest.is_some_and(|rest| {
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        !host.is_empty() && !url.chars().any(char::is_whitespace)
    })
}

fn clean_url(url: &mut Option<String>, path: &KeyPath, report: &mut Report<'_>) {
    if url.as_deref().is_some_and(str::is_empty) {
        *url = None;
    }
    if let Some(text) = url {
        let trimmed = text.trim_end_matches('/').to_owned();
        if !check_url(&trimmed) {
            report.problem(
                path,
                format!("invalid base_url `{text}`: expected an http:// or https:// URL"),
            );
        }
        *text = trimmed;
    }
}

/// Base URLs: defaults per type, no trailing `/`, http(s) only; deployments inherit.
fn base_urls(
    name: &str,
    provider: &mut ProviderConfig,
    origin: &ProviderOrigin,
    report: &mut Report<'_>,
) {
    clean_url(
        &mut provider.base_url,
        &origin.field(name, "base_url"),
        report,
    );
    if provider.base_url.is_none() {
        provider.base_url = provider.kind.default_base_url().map(str::to_owned);
    }
    for (i, deployment) in provider.deployments.iter_mut().enumerate() {
        let at = origin.field(name, "deployments").index(i).key("base_url");
        clean_url(&mut deployment.base_url, &at, report);
        if deployment.base_url.is_none() {
            deployment.base_url = provider.base_url.clone();
        }
    }
    let some_endpoint_unknown = provider.base_url.is_none()
        && (provider.deployments.is_empty()
            || provider.deployments.iter().any(|d| d.base_url.is_none()));
    if provider.kind == ProviderKind::OpenaiCompatible && some_endpoint_unknown {
        report.problem(
            &origin.field(name, "base_url"),
            format!("provider `{name}` is `openai_compatible` and needs a `base_url`"),
        );
    }
}
