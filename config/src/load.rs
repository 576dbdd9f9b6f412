//! Reading a configuration: YAML -> `${VAR}` expansion -> typed sections -> normalisation ->
//! validation. Each section (and each provider and API key) is read on its own so one mistake
//! never hides the next; every problem is collected and reported together.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::defaults;
use crate::env::{self, EnvLookup};
use crate::error::{ConfigErrors, ConfigNotice, ConfigProblem, Report};
use crate::normalize::{self, ProviderOrigin};
use crate::positions::{KeyPath, Position, PositionIndex, Seg};
use crate::schema::{AuthConfig, Config, ProviderConfig, ProviderKind};
use crate::validate;

/// A configuration ready to run, with the warnings worth showing at start-up.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    pub source: ConfigSource,
    pub notices: Vec<ConfigNotice>,
}

/// Where the configuration came from, for logs and `hapax validate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    File(PathBuf),
    Embedded,
}

/// Loads a file, expanding `${VAR}` from the process environment.
pub fn load_file(path: &Path) -> Result<LoadedConfig, ConfigErrors> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|err| ConfigErrors::single(&origin, format!("cannot read {origin}: {err}")))?;
    let process_env = |name: &str| std::env::var(name).ok();
    let mut loaded = load_str(&text, &origin, &process_env)?;
    loaded.source = ConfigSource::File(path.to_path_buf());
    Ok(loaded)
}

/// Loads configuration text; `origin` names it in messages (and becomes the source path).
pub fn load_str(
    text: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<LoadedConfig, ConfigErrors> {
    match parse(text, env) {
        Ok((config, notices)) => Ok(LoadedConfig {
            config,
            source: ConfigSource::File(PathBuf::from(origin)),
            notices,
        }),
        Err(problems) => Err(ConfigErrors {
            origin: origin.to_owned(),
            problems,
        }),
    }
}

/// The built-in configuration (mock provider on loopback); it needs no environment.
pub fn load_embedded() -> LoadedConfig {
    let no_env = |_: &str| None;
    match load_str(defaults::EMBEDDED_CONFIG, "<embedded>", &no_env) {
        Ok(mut loaded) => {
            loaded.source = ConfigSource::Embedded;
            loaded
        }
        // Unreachable while the embedded text is valid (a test checks it); still never panic.
        Err(errors) => {
            let mut config = Config::default();
            config.server.host = "127.0.0.1".to_owned();
            config.auth.enabled = Some(false);
            config
                .providers
                .insert("mock".to_owned(), ProviderConfig::new(ProviderKind::Mock));
            config.provider_preference = vec!["mock".to_owned()];
            let notices = errors
                .problems
                .into_iter()
                .map(|p| ConfigNotice {
                    path: p.path,
                    line: p.line,
                    column: p.column,
                    message: p.message,
                })
                .collect();
            LoadedConfig {
                config,
                source: ConfigSource::Embedded,
                notices,
            }
        }
    }
}

/// What reading the sections learned beyond the typed values; later stages need it to
/// avoid echoing problems already reported and to point at the right lines.
#[derive(Debug, Default)]
pub(crate) struct Facts {
    /// Top-level sections (canonical names) that failed to deserialize.
    pub(crate) failed_sections: HashSet<&'static str>,
    /// Declared providers whose entry failed to deserialize: they exist, just broken.
    pub(crate) failed_providers: HashSet<String>,
    /// Index in the file of each entry kept in `auth.api_keys` / `auth.admin_keys`.
    pub(crate) api_key_rows: Vec<usize>,
    pub(crate) admin_key_rows: Vec<usize>,
    pub(crate) auth_items_failed: bool,
    /// Keys written under `routing:` (explicit settings win over `llm.retry`).
    pub(crate) routing_keys: HashSet<String>,
    pub(crate) origins: HashMap<String, ProviderOrigin>,
}

fn parse(
    text: &str,
    env: EnvLookup<'_>,
) -> Result<(Config, Vec<ConfigNotice>), Vec<ConfigProblem>> {
    let index = PositionIndex::build(text);
    let mut report = Report::new(&index);
    let mut value = match serde_yaml::from_str::<Value>(text) {
        Ok(value) => value,
        Err(err) => {
            syntax_problem(&err, &index, &mut report);
            return Err(report.problems);
        }
    };
    if let Err(err) = value.apply_merge() {
        report.problem(
            &KeyPath::root(),
            format!("cannot apply `<<` merge keys: {err}"),
        );
        return Err(report.problems);
    }
    let reread = env::expand_tree(&mut value, &index, env, &mut report);
    let mut facts = Facts::default();
    let mut reader = Reader {
        reread: &reread,
        report: &mut report,
        facts: &mut facts,
    };
    let mut config = reader.config(value);
    normalize::normalize(&mut config, &mut facts, env, &mut report);
    validate::validate(&config, &facts, &mut report);
    let Report {
        mut problems,
        mut notices,
        ..
    } = report;
    problems.sort_by_key(|p| (p.line.is_none(), p.line, p.column));
    notices.sort_by_key(|n| (n.line.is_none(), n.line, n.column));
    if problems.is_empty() {
        Ok((config, notices))
    } else {
        Err(problems)
    }
}

fn syntax_problem(err: &serde_yaml::Error, index: &PositionIndex, report: &mut Report<'_>) {
    let mut message = err.to_string();
    let mut pos = err.location().map(|l| Position {
        line: l.line(),
        column: l.column(),
    });
    if let Some(p) = pos {
        message = message.replacen(&format!(" at line {} column {}", p.line, p.column), "", 1);
    }
    let mut path = KeyPath::root();
    let duplicate = index
        .duplicate()
        .filter(|_| message.contains("duplicate entry"));
    if let Some((dup_path, dup_pos)) = duplicate {
        path = dup_path.clone();
        pos = Some(*dup_pos);
        message = "this key is written twice in the same mapping".to_owned();
    }
    report.problem_at(&path, pos, format!("invalid YAML: {message}"));
}

/// Top-level sections, with the camelCase spellings Hapax configs use.
const SECTIONS: &[&str] = &[
    "server",
    "circuit_breaker",
    "provider_preference",
    "providers",
    "logging",
    "llm",
    "routing",
    "auth",
    "rate_limits",
    "dedup",
    "routes",
    "cache",
    "queue",
    "cluster",
];
const SECTION_ALIASES: &[(&str, &str)] = &[
    ("circuitBreaker", "circuit_breaker"),
    ("providerPreference", "provider_preference"),
    ("rateLimits", "rate_limits"),
];

fn section_name(key: &str) -> Option<&'static str> {
    SECTIONS.iter().copied().find(|s| *s == key).or_else(|| {
        SECTION_ALIASES
            .iter()
            .find(|(alias, _)| *alias == key)
            .map(|(_, canonical)| *canonical)
    })
}

/// The candidate closest to `word`, if it is close enough to be a plausible typo.
pub(crate) fn suggest<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    candidates
        .into_iter()
        .map(|c| {
            (
                strsim::jaro_winkler(&word.to_lowercase(), &c.to_lowercase()),
                c,
            )
        })
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// Rewrites serde's messages into ours; unknown keys point at the key itself with a hint.
fn describe(path: KeyPath, message: String) -> (KeyPath, String) {
    let hint = |word: &str, expected: Vec<&str>| match suggest(word, expected.iter().copied()) {
        Some(best) => format!("; did you mean `{best}`?"),
        None if expected.is_empty() => ": nothing is allowed here".to_owned(),
        None => {
            let shown: Vec<String> = expected
                .iter()
                .filter(|e| !e.chars().any(char::is_uppercase))
                .map(|e| format!("`{e}`"))
                .collect();
            format!("; expected one of {}", shown.join(", "))
        }
    };
    let quoted = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split_once('`'))
    };
    if let Some((field, tail)) = quoted("unknown field `") {
        let text = format!("unknown key `{field}`{}", hint(field, backticked(tail)));
        // serde_path_to_error usually ends the path with the unknown key already.
        let path = match path.0.last() {
            Some(Seg::Key(last)) if last == field => path,
            _ => path.key(field),
        };
        return (path, text);
    }
    if let Some((variant, tail)) = quoted("unknown variant `") {
        let text = format!(
            "unknown value `{variant}`{}",
            hint(variant, backticked(tail))
        );
        return (path, text);
    }
    (path, message)
}

fn error_path(path: &serde_path_to_error::Path) -> KeyPath {
    let segs = path
        .iter()
        .filter_map(|seg| match seg {
            serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
            _ => None,
        })
        .collect();
    KeyPath(segs)
}

fn slot<'v>(value: &'v mut Value, path: &KeyPath) -> Option<&'v mut Value> {
    path.0.iter().try_fold(value, |value, seg| match seg {
        Seg::Key(key) => value.get_mut(key.as_str()),
        Seg::Index(index) => value.get_mut(*index),
    })
}

fn key_text(key: &Value) -> Option<&str> {
    key.as_str()
}

// === impl Reader ===

struct Reader<'r, 'a> {
    reread: &'r HashMap<KeyPath, String>,
    report: &'r mut Report<'a>,
    facts: &'r mut Facts,
}

impl Reader<'_, '_> {
    /// Deserializes `value` found at `at`, reporting the first error inside it.
    fn typed<T: DeserializeOwned>(&mut self, mut value: Value, at: &KeyPath) -> Option<T> {
        // A `${VAR}` re-read as a number may sit where a string belongs: put the text back, retry.
        for _ in 0..=self.reread.len() {
            let err = match serde_path_to_error::deserialize::<_, T>(&value) {
                Ok(typed) => return Some(typed),
                Err(err) => err,
            };
            let relative = error_path(err.path());
            let message = err.inner().to_string();
            let raw = self
                .reread
                .get(&at.join(&relative))
                .filter(|_| message.starts_with("invalid type:"));
            let target = raw
                .and_then(|_| slot(&mut value, &relative))
                .filter(|target| !matches!(target, Value::String(_)));
            if let (Some(raw), Some(target)) = (raw, target) {
                *target = Value::String(raw.clone());
                continue;
            }
            let (path, message) = describe(at.join(&relative), message);
            self.report.problem(&path, message);
            return None;
        }
        None
    }

    fn section<T: DeserializeOwned + Default>(
        &mut self,
        name: &'static str,
        value: Value,
        at: &KeyPath,
    ) -> T {
        self.typed(value, at).unwrap_or_else(|| {
            self.facts.failed_sections.insert(name);
            T::default()
        })
    }

    fn config(&mut self, value: Value) -> Config {
        let mut config = Config::default();
        let root = KeyPath::root();
        let map = match value {
            Value::Mapping(map) => map,
            Value::Null => return config,
            _ => {
                self.report.problem(&root, "the configuration must be a mapping of sections (`server:`, `providers:`, ...)");
                return config;
            }
        };
        let mut seen: HashMap<&'static str, String> = HashMap::new();
        for (key, value) in map {
            let Some(key) = key_text(&key).map(str::to_owned) else {
                self.report.problem(&root, "top-level keys must be strings");
                continue;
            };
            let at = root.key(&key);
            let Some(name) = section_name(&key) else {
                let all = SECTIONS
                    .iter()
                    .chain(SECTION_ALIASES.iter().map(|(a, _)| a))
                    .copied();
                let hint = suggest(&key, all)
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                self.report
                    .problem(&at, format!("unknown key `{key}`{hint}"));
                continue;
            };
            if let Some(first) = seen.insert(name, key.clone()) {
                self.report
                    .problem(&at, format!("`{key}` repeats `{first}`; keep one of them"));
                continue;
            }
            if value.is_null() {
                continue;
            }
            match name {
                "server" => config.server = self.section(name, value, &at),
                "circuit_breaker" => config.circuit_breaker = self.section(name, value, &at),
                "provider_preference" => {
                    config.provider_preference = self.section(name, value, &at)
                }
                "providers" => self.providers(&mut config, value, &at),
                "logging" => config.logging = self.section(name, value, &at),
                "llm" => config.llm = self.section(name, value, &at),
                "routing" => {
                    if let Value::Mapping(routing) = &value {
                        let keys = routing.keys().filter_map(key_text).map(str::to_owned);
                        self.facts.routing_keys.extend(keys);
                    }
                    config.routing = self.section(name, value, &at);
                }
                "auth" => config.auth = self.auth(value, &at),
                "rate_limits" => config.rate_limits = self.section(name, value, &at),
                "dedup" => config.dedup = self.section(name, value, &at),
                "routes" => config.routes = Some(value),
                "cache" => config.cache = Some(self.section(name, value, &at)),
                "queue" => config.queue = Some(self.section(name, value, &at)),
                _ => config.cluster = Some(self.section(name, value, &at)),
            }
        }
        config
    }

    fn providers(&mut self, config: &mut Config, value: Value, at: &KeyPath) {
        let Value::Mapping(map) = value else {
            self.report.problem(
                at,
                "`providers` must be a mapping from provider name to its settings",
            );
            self.facts.failed_sections.insert("providers");
            return;
        };
        for (key, value) in map {
            let Some(name) = key_text(&key).map(str::to_owned) else {
                self.report.problem(at, "provider names must be strings");
                continue;
            };
            let entry_at = at.key(&name);
            if value.is_null() {
                self.report.problem(
                    &entry_at,
                    format!("provider `{name}` is empty: give it at least `type:`"),
                );
                self.facts.failed_providers.insert(name);
                continue;
            }
            match self.typed::<ProviderConfig>(value, &entry_at) {
                Some(provider) => {
                    self.facts
                        .origins
                        .insert(name.clone(), ProviderOrigin::Declared);
                    config.providers.insert(name, provider);
                }
                None => {
                    self.facts.failed_providers.insert(name);
                }
            }
        }
    }

    fn auth(&mut self, value: Value, at: &KeyPath) -> AuthConfig {
        let Value::Mapping(mut map) = value else {
            return self.section("auth", value, at);
        };
        let api_keys = map.remove("api_keys");
        let admin_keys = map.remove("admin_keys");
        let mut auth: AuthConfig = self.section("auth", Value::Mapping(map), at);
        for (list, value, rows) in [
            ("api_keys", api_keys, true),
            ("admin_keys", admin_keys, false),
        ] {
            let list_at = at.key(list);
            let items = match value {
                None | Some(Value::Null) => continue,
                Some(Value::Sequence(items)) => items,
                Some(_) => {
                    self.report
                        .problem(&list_at, format!("`{list}` must be a list of keys"));
                    self.facts.auth_items_failed = true;
                    continue;
                }
            };
            for (row, item) in items.into_iter().enumerate() {
                match self.typed(item, &list_at.index(row)) {
                    Some(key) if rows => {
                        auth.api_keys.push(key);
                        self.facts.api_key_rows.push(row);
                    }
                    Some(key) => {
                        auth.admin_keys.push(key);
                        self.facts.admin_key_rows.push(row);
                    }
                    None => self.facts.auth_items_failed = true,
                }
            }
        }
        auth
    }
}
