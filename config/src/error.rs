//! What loading reports: problems (the file is refused) and notices (it loads, but read this).

use std::fmt;

use crate::positions::{KeyPath, Position, PositionIndex};

/// One reason the configuration is refused, located as precisely as the text allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key path as written in the file, e.g. `providers.openai.timeout`; empty for the file itself.
    pub path: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

/// A warning that does not stop loading (unused keys, providers without keys, auth with no keys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigNotice {
    pub path: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

fn write_located(
    f: &mut fmt::Formatter<'_>,
    path: &str,
    line: Option<usize>,
    column: Option<usize>,
    message: &str,
) -> fmt::Result {
    let location = match (line, column) {
        (Some(line), Some(column)) => format!("line {line}:{column}"),
        (Some(line), None) => format!("line {line}"),
        _ => String::new(),
    };
    match (path.is_empty(), location.is_empty()) {
        (true, true) => f.write_str(message),
        (true, false) => write!(f, "{location}: {message}"),
        (false, true) => write!(f, "{path}: {message}"),
        (false, false) => write!(f, "{path} ({location}): {message}"),
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_located(f, &self.path, self.line, self.column, &self.message)
    }
}

impl fmt::Display for ConfigNotice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("warning: ")?;
        write_located(f, &self.path, self.line, self.column, &self.message)
    }
}

/// Every problem found in one configuration, so users fix them all in one round.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", ErrorsDisplay(self))]
pub struct ConfigErrors {
    /// The file (or `<embedded>`) the problems are in.
    pub origin: String,
    pub problems: Vec<ConfigProblem>,
}

struct ErrorsDisplay<'e>(&'e ConfigErrors);

impl fmt::Display for ErrorsDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        display_errors(self.0, f)
    }
}

fn display_errors(errors: &ConfigErrors, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let count = errors.problems.len();
    let noun = if count == 1 { "problem" } else { "problems" };
    write!(
        f,
        "invalid configuration {} ({count} {noun}):",
        errors.origin
    )?;
    for problem in &errors.problems {
        write!(f, "\n  {problem}")?;
    }
    Ok(())
}

impl ConfigErrors {
    /// A single problem about the file as a whole (e.g. it cannot be read).
    pub fn single(origin: impl Into<String>, message: impl Into<String>) -> Self {
        let problem = ConfigProblem {
            path: String::new(),
            line: None,
            column: None,
            message: message.into(),
        };
        Self {
            origin: origin.into(),
            problems: vec![problem],
        }
    }
}

/// Collects problems and notices, turning canonical key paths into located, as-written ones.
pub(crate) struct Report<'a> {
    index: &'a PositionIndex,
    pub(crate) problems: Vec<ConfigProblem>,
    pub(crate) notices: Vec<ConfigNotice>,
    /// Paths already reported (e.g. an unset `${VAR}`); problems under them are echoes.
    silenced: Vec<KeyPath>,
}

impl<'a> Report<'a> {
    pub(crate) fn new(index: &'a PositionIndex) -> Self {
        Self {
            index,
            problems: Vec::new(),
            notices: Vec::new(),
            silenced: Vec::new(),
        }
    }

    fn locate(&self, path: &KeyPath) -> (KeyPath, Option<Position>) {
        let resolved = self.index.resolve(path);
        (resolved.spelled, resolved.pos)
    }

    pub(crate) fn problem(&mut self, path: &KeyPath, message: impl Into<String>) {
        let (spelled, pos) = self.locate(path);
        if self.silenced.iter().any(|s| spelled.starts_with(s)) {
            return;
        }
        self.problems.push(ConfigProblem {
            path: spelled.to_string(),
            line: pos.map(|p| p.line),
            column: pos.map(|p| p.column),
            message: message.into(),
        });
    }

    /// A problem at an explicit position (YAML syntax errors).
    pub(crate) fn problem_at(&mut self, path: &KeyPath, pos: Option<Position>, message: String) {
        self.problems.push(ConfigProblem {
            path: path.to_string(),
            line: pos.map(|p| p.line),
            column: pos.map(|p| p.column),
            message,
        });
    }

    /// Reports a problem and silences later ones at or under the same path.
    pub(crate) fn problem_and_silence(&mut self, path: &KeyPath, message: impl Into<String>) {
        self.problem(path, message);
        let (spelled, _) = self.locate(path);
        self.silenced.push(spelled);
    }

    pub(crate) fn notice(&mut self, path: &KeyPath, message: impl Into<String>) {
        let (spelled, pos) = self.locate(path);
        self.notices.push(ConfigNotice {
            path: spelled.to_string(),
            line: pos.map(|p| p.line),
            column: pos.map(|p| p.column),
            message: message.into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_display_path_and_position() {
        let problem = ConfigProblem {
            path: "providers.openai.tiemout".into(),
            line: Some(12),
            column: Some(5),
            message: "unknown key `tiemout`; did you mean `timeout`?".into(),
        };
        assert_eq!(
            problem.to_string(),
            "providers.openai.tiemout (line 12:5): unknown key `tiemout`; did you mean `timeout`?"
        );
        let errors = ConfigErrors {
            origin: "hapax.yaml".into(),
            problems: vec![problem.clone(), problem],
        };
        let text = errors.to_string();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(
            text.starts_with("invalid configuration hapax.yaml (2 problems):"),
            "{text}"
        );
    }

    #[test]
    fn notices_are_warnings() {
        let notice = ConfigNotice {
            path: "providers.x.models".into(),
            line: Some(4),
            column: Some(5),
            message: "m".into(),
        };
        assert_eq!(
            notice.to_string(),
            "warning: providers.x.models (line 4:5): m"
        );
    }
}
