//! Keeps secrets out of anything a client or a log sees.

/// Replaces the given secrets, and anything shaped like a provider key, with `[redacted]`.
pub fn redact(message: &str, secrets: &[&str]) -> String {
    let mut out = message.to_owned();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        if out.contains(secret) {
            out = out.replace(secret, "[redacted]");
        }
    }
    redact_key_shapes(&out)
}

/// `sk-...`, `sk-ant-...` and similar prefixed tokens, even partly masked ones.
fn redact_key_shapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("sk-") {
        let starts_word = pos == 0 || !rest.as_bytes()[pos - 1].is_ascii_alphanumeric();
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '*' | '.')))
            .unwrap_or(tail.len());
        if starts_word && len >= 8 {
            out.push_str("[redacted]");
            rest = &tail[len..];
        } else {
            // Only past `sk-`: a key may start later in this token (`task-sk-...`).
            out.push_str("sk-");
            rest = &tail[3..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn configured_secrets_and_key_shapes_are_removed() {
        let msg = "Incorrect API key provided: sk-abc12***************xyz9. key mysecretvalue used";
        let out = redact(msg, &["mysecretvalue"]);
        assert_eq!(
            out,
            "Incorrect API key provided: [redacted] key [redacted] used"
        );
        assert_eq!(redact("task-runner ok", &[]), "task-runner ok");
    }

    /// Found by the `redact` fuzz target: a key right after a word ending in `sk-` was kept.
    #[test]
    fn a_key_after_a_word_ending_in_sk_is_removed() {
        assert_eq!(
            redact("task-sk-12345678 disk-sk- sk-shrt", &[]),
            "task-[redacted] disk-sk- sk-shrt"
        );
        assert_eq!(redact("xsk-abcdefghij", &[]), "xsk-abcdefghij");
    }
}
