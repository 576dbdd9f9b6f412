//! Durations written the way people write them (`30s`, `250ms`, `1h30m`), never bare numbers:
//! a bare `30` is ambiguous between seconds and milliseconds, so it is rejected with a hint.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A `std::time::Duration` that deserializes from a humantime string such as `"30s"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ConfigDuration(Duration);

impl ConfigDuration {
    /// For defaults written as constants.
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    /// For defaults written as constants.
    pub const fn from_millis(millis: u64) -> Self {
        Self(Duration::from_millis(millis))
    }

    /// For defaults written as constants.
    pub const fn from_micros(micros: u64) -> Self {
        Self(Duration::from_micros(micros))
    }

    /// The duration to hand to timers.
    pub fn get(&self) -> Duration {
        self.0
    }

    /// Zero is a valid parse but meaningless for timeouts; validation uses this.
    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

impl From<Duration> for ConfigDuration {
    fn from(duration: Duration) -> Self {
        Self(duration)
    }
}

impl From<ConfigDuration> for Duration {
    fn from(duration: ConfigDuration) -> Self {
        duration.0
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return f.write_str("0s");
        }
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// Parses `30s`, `100ms`, `1h30m`, `2m 30s`; the error says what to write instead.
pub fn parse_duration(text: &str) -> Result<ConfigDuration, String> {
    let trimmed = text.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(bare_number(trimmed));
    }
    let duration = humantime::parse_duration(trimmed).map_err(|err| {
        format!("invalid duration \"{text}\": {err}; write e.g. \"30s\", \"250ms\" or \"1m30s\"")
    })?;
    if duration > MAX_DURATION {
        return Err(format!(
            "duration \"{text}\" is longer than the most any setting takes (100 years)"
        ));
    }
    Ok(ConfigDuration(duration))
}

/// Longer than any sensible setting, far below what deadlines computed from it (an `Instant`
/// plus the duration) can hold: past it a value is a typo, and would overflow them.
const MAX_DURATION: Duration = Duration::from_secs(3_155_760_000); // 100 × 365.25 days

fn bare_number(number: impl fmt::Display) -> String {
    format!("invalid duration {number}: write it with a unit, e.g. \"30s\" or \"250ms\"")
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = ConfigDuration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as \"30s\" or \"250ms\"")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<ConfigDuration, E> {
        parse_duration(text).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<ConfigDuration, E> {
        Err(E::custom(bare_number(number)))
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<ConfigDuration, E> {
        Err(E::custom(bare_number(number)))
    }

    fn visit_f64<E: de::Error>(self, number: f64) -> Result<ConfigDuration, E> {
        Err(E::custom(bare_number(number)))
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ConfigDuration, String> {
        serde_yaml::from_str::<ConfigDuration>(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn human_forms_parse() {
        assert_eq!(parse("30s").unwrap(), ConfigDuration::from_secs(30));
        assert_eq!(parse("100ms").unwrap(), ConfigDuration::from_millis(100));
        assert_eq!(parse("1m").unwrap(), ConfigDuration::from_secs(60));
        assert_eq!(parse("1h30m").unwrap(), ConfigDuration::from_secs(5400));
        assert_eq!(parse("2m30s").unwrap(), ConfigDuration::from_secs(150));
        assert_eq!(parse("\"2m 30s\"").unwrap(), ConfigDuration::from_secs(150));
    }

    #[test]
    fn durations_past_a_century_are_refused_before_they_overflow_a_deadline() {
        assert!(parse("100y").is_ok());
        let error = parse("300000000000y").unwrap_err();
        assert!(error.contains("longer than"), "{error}");
    }

    #[test]
    fn bare_numbers_are_rejected_with_a_hint() {
        let err = parse("30").unwrap_err();
        assert!(
            err.contains("invalid duration 30: write it with a unit"),
            "{err}"
        );
        let err = parse("\"30\"").unwrap_err();
        assert!(
            err.contains("invalid duration 30: write it with a unit"),
            "{err}"
        );
        assert!(parse("1.5").unwrap_err().contains("with a unit"));
    }

    #[test]
    fn garbage_is_rejected() {
        let err = parse("thirty seconds").unwrap_err();
        assert!(err.contains("invalid duration \"thirty seconds\""), "{err}");
    }

    #[test]
    fn displays_as_humantime() {
        assert_eq!(ConfigDuration::from_secs(150).to_string(), "2m 30s");
        assert_eq!(ConfigDuration::from_millis(250).to_string(), "250ms");
        assert_eq!(ConfigDuration::from_secs(0).to_string(), "0s");
    }
}
