//! `${VAR}` and `${VAR:-default}` inside string values, so secrets and ports come from the
//! environment. The environment is a closure, so tests bring their own.

use std::collections::HashMap;

use serde_yaml::Value;

use crate::error::Report;
use crate::positions::{KeyPath, PositionIndex};

/// How configuration reads the environment: `|name| std::env::var(name).ok()` in production.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Why a string could not be expanded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("environment variable `{0}` is not set (write `${{{0}:-}}` to make it optional)")]
    Unset(String),
    #[error("malformed environment reference `{0}`: write `${{NAME}}` or `${{NAME:-default}}`")]
    Malformed(String),
}

/// The result of expanding one string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expanded {
    pub text: String,
    /// The input was exactly one `${...}` reference, so the text may be re-read as a number etc.
    pub whole_reference: bool,
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Expands every reference in `text`. `${VAR:-default}` uses the default when VAR is unset or
/// empty, as shells do.
pub fn expand_str(text: &str, env: EnvLookup<'_>) -> Result<Expanded, EnvError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut references = 0;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(EnvError::Malformed(rest[start..].to_owned()));
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        if !valid_name(name) {
            return Err(EnvError::Malformed(format!("${{{inner}}}")));
        }
        let value = env(name);
        match (value, default) {
            (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => return Err(EnvError::Unset(name.to_owned())),
        }
        references += 1;
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    let whole_reference = references == 1
        && text.starts_with("${")
        && text.ends_with('}')
        && text[2..].find('}') == Some(text.len() - 3);
    Ok(Expanded {
        text: out,
        whole_reference,
    })
}

fn key_name(key: &Value) -> String {
    match key {
        Value::String(text) => text.clone(),
        other => serde_yaml::to_string(other)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
    }
}

/// Expands the whole tree in place. Unquoted single references are re-read as YAML scalars
/// (`port: ${PORT:-8080}` becomes a number); the returned map keeps their text so a field that
/// wants a string can still get one.
pub(crate) fn expand_tree(
    value: &mut Value,
    index: &PositionIndex,
    env: EnvLookup<'_>,
    report: &mut Report<'_>,
) -> HashMap<KeyPath, String> {
    let mut reread = HashMap::new();
    walk(value, &KeyPath::root(), index, env, report, &mut reread);
    reread
}

fn walk(
    value: &mut Value,
    path: &KeyPath,
    index: &PositionIndex,
    env: EnvLookup<'_>,
    report: &mut Report<'_>,
    reread: &mut HashMap<KeyPath, String>,
) {
    match value {
        Value::String(text) if text.contains("${") => match expand_str(text, env) {
            Ok(expanded) => {
                let unquoted = index.is_plain_scalar(path).unwrap_or(true);
                let scalar = (expanded.whole_reference && unquoted)
                    .then(|| serde_yaml::from_str::<Value>(&expanded.text).ok())
                    .flatten()
                    .filter(|v| matches!(v, Value::Null | Value::Bool(_) | Value::Number(_)));
                match scalar {
                    Some(scalar) => {
                        reread.insert(path.clone(), expanded.text);
                        *value = scalar;
                    }
                    None => *text = expanded.text,
                }
            }
            Err(err) => report.problem_and_silence(path, err.to_string()),
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, &path.index(i), index, env, report, reread);
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                walk(item, &path.key(key_name(key)), index, env, report, reread);
            }
        }
        Value::Tagged(tagged) => walk(&mut tagged.value, path, index, env, report, reread),
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("9000".into()),
            "KEY" => Some("sk-123".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn strings_expand_with_defaults() {
        let expand = |t: &str| expand_str(t, &env);
        assert_eq!(expand("${KEY}").unwrap().text, "sk-123");
        assert!(expand("${KEY}").unwrap().whole_reference);
        assert_eq!(expand("Bearer ${KEY}!").unwrap().text, "Bearer sk-123!");
        assert!(!expand("Bearer ${KEY}").unwrap().whole_reference);
        assert_eq!(expand("${NOPE:-fallback}").unwrap().text, "fallback");
        assert_eq!(expand("${EMPTY:-fallback}").unwrap().text, "fallback");
        assert_eq!(expand("${NOPE:-}").unwrap().text, "");
        assert_eq!(expand("${PORT}-${KEY}").unwrap().text, "9000-sk-123");
        assert!(!expand("${PORT}-${KEY}").unwrap().whole_reference);
        assert_eq!(expand("$HOME and $").unwrap().text, "$HOME and $");
    }

    #[test]
    fn unset_and_malformed_references_are_errors() {
        assert_eq!(
            expand_str("${NOPE}", &env),
            Err(EnvError::Unset("NOPE".into()))
        );
        assert_eq!(
            expand_str("x ${FOO", &env),
            Err(EnvError::Malformed("${FOO".into()))
        );
        assert_eq!(
            expand_str("${}", &env),
            Err(EnvError::Malformed("${}".into()))
        );
        assert_eq!(
            expand_str("${A B}", &env),
            Err(EnvError::Malformed("${A B}".into()))
        );
        let message = EnvError::Unset("NOPE".into()).to_string();
        assert!(message.contains("`${NOPE:-}`"), "{message}");
    }

    #[test]
    fn unquoted_single_references_become_scalars() {
        let text = "a: ${PORT}\nb: \"${PORT}\"\nc: ${NOPE:-}\nd: ${NOPE:-true}\ne: x${PORT}\n";
        let index = PositionIndex::build(text);
        let mut value: Value = serde_yaml::from_str(text).unwrap();
        let mut report = Report::new(&index);
        let reread = expand_tree(&mut value, &index, &env, &mut report);
        assert!(report.problems.is_empty());
        assert_eq!(value["a"], Value::Number(9000.into()));
        assert_eq!(value["b"], Value::String("9000".into()));
        assert_eq!(value["c"], Value::Null);
        assert_eq!(value["d"], Value::Bool(true));
        assert_eq!(value["e"], Value::String("x9000".into()));
        assert_eq!(
            reread.get(&KeyPath::parse("a")).map(String::as_str),
            Some("9000")
        );
    }
}
