//! Redaction of upstream error messages: after `redact`, no configured secret (alphanumeric,
//! 4+ bytes, as keys are) and no word-initial `sk-` token of 8+ characters is left.
#![no_main]

use hapax_node::providers::redact::redact;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // `message \0 secret \0 secret ...`
    let mut parts = text.split('\0');
    let message = parts.next().unwrap_or_default();
    let secrets: Vec<&str> = parts
        .filter(|s| s.len() >= 4 && s.bytes().all(|b| b.is_ascii_alphanumeric()))
        .collect();
    let out = redact(message, &secrets);
    // Split on the replacements, so a secret inside the word "redacted" does not count.
    for piece in out.split("[redacted]") {
        for secret in &secrets {
            assert!(!piece.contains(secret), "secret {secret:?} left in {out:?}");
        }
        let bytes = piece.as_bytes();
        for (i, _) in piece.match_indices("sk-") {
            let starts_word = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
            let len = piece[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '*' | '.')))
                .unwrap_or(piece.len() - i);
            assert!(
                !(starts_word && len >= 8),
                "key-shaped token left in {out:?}"
            );
        }
    }
});
