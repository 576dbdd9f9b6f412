//! Keeps secrets out of anything a client or a log sees.

/// Replaces the given secrets, and anything shaped like a provider key, with `[redacted]`.
pub fn redact(message: &str, secrets: &[&str]) -> String {
    // Every secret is looked for in the message as it came, and the places found (merged where
    // they overlap) are replaced in one pass: replacing one secret after another would let a
    // later secret match inside an earlier `[redacted]` (a secret `cted`, say) and leave
    // pieces of it behind that read like a secret.
    let mut places: Vec<(usize, usize)> = Vec::new();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        places.extend(
            message
                .match_indices(secret)
                .map(|(at, found)| (at, at + found.len())),
        );
    }
    if places.is_empty() {
        return redact_key_shapes(message);
    }
    places.sort_unstable();
    let mut out = String::with_capacity(message.len());
    let mut copied = 0;
    let mut current: Option<(usize, usize)> = None;
    for (start, end) in places {
        match current {
            Some((from, to)) if start <= to => current = Some((from, to.max(end))),
            _ => {
                if let Some((from, to)) = current {
                    out.push_str(&message[copied..from]);
                    out.push_str("[redacted]");
                    copied = to;
                }
                current = Some((start, end));
            }
        }
    }
    if let Some((from, to)) = current {
        out.push_str(&message[copied..from]);
        out.push_str("[redacted]");
        copied = to;
    }
    out.push_str(&message[copied..]);
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
    fn secrets_inside_the_marker_or_overlapping_each_other_leave_nothing_behind() {
        // Found by the fuzz target: one secret after another, `cted` matched inside the
        // `[redacted]` that `reda` had left and split it into pieces.
        let out = redact("a reda b cted c", &["reda", "cted"]);
        assert_eq!(out, "a [redacted] b [redacted] c");
        let out = redact("xxabcdefyy abcabcd", &["abcd", "cdef", "bcab"]);
        assert_eq!(out, "xx[redacted]yy a[redacted]");
        for piece in out.split("[redacted]") {
            for secret in ["abcd", "cdef", "bcab"] {
                assert!(!piece.contains(secret), "{out}");
            }
        }
    }

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
