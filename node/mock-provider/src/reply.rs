//! The deterministic assistant replies every wire format serves.
//!
//! Shared with the gateway's in-process mock provider, so a request answered in-process and one
//! answered over the wire produce the same text, token counts and stream pieces.

/// How many characters of the user's message the default reply echoes.
const ECHO_CHARS: usize = 200;
/// Upper bound for the `words:N` directive.
const MAX_WORDS: usize = 10_000;
const WORDS_DIRECTIVE: &str = "words:";

/// Deterministic assistant reply for the given last user message text.
///
/// `"Hello from the Hapax mock provider. You said: <message, first 200 chars>"`, unless the
/// message contains `words:N` (N in 1..=10000, larger values are clamped): then the reply is the
/// N words `w1 w2 ... wN`, so tests can ask for long streams.
pub fn reply_text(last_user_message: &str) -> String {
    if let Some(words) = words_directive(last_user_message) {
        return numbered_words(words);
    }
    let echoed = match last_user_message.char_indices().nth(ECHO_CHARS) {
        Some((end, _)) => &last_user_message[..end],
        None => last_user_message,
    };
    format!("Hello from the Hapax mock provider. You said: {echoed}")
}

/// Crude token count used for `usage` blocks: the number of whitespace-separated words, at
/// least 1 for non-empty text.
pub fn count_tokens(text: &str) -> u32 {
    if text.is_empty() {
        return 0;
    }
    let words = text.split_whitespace().count();
    u32::try_from(words).unwrap_or(u32::MAX).max(1)
}

/// Splits a reply into stream pieces, one per word; each piece after the first carries the
/// whitespace that precedes its word, so the pieces concatenate back to the full text.
pub fn stream_pieces(text: &str) -> Vec<String> {
    piece_slices(text).map(str::to_owned).collect()
}

/// Borrowing form of [`stream_pieces`], used on the serving path to avoid copying each piece.
pub(crate) fn piece_slices(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        // A piece is: leading whitespace, then a word; it ends where the next whitespace run
        // that is followed by more text begins.
        let word_start = rest
            .find(|c: char| !c.is_whitespace())
            .unwrap_or(rest.len());
        let word_end = rest[word_start..]
            .find(char::is_whitespace)
            .map_or(rest.len(), |offset| word_start + offset);
        let end = if rest[word_end..].trim_start().is_empty() {
            rest.len()
        } else {
            word_end
        };
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

/// The N of the first `words:N` in the message, if any digits follow the directive.
fn words_directive(message: &str) -> Option<usize> {
    let mut search = message;
    while let Some(at) = search.find(WORDS_DIRECTIVE) {
        let after = &search[at + WORDS_DIRECTIVE.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            let n = after[..digits].parse::<usize>().unwrap_or(MAX_WORDS);
            return Some(n.clamp(1, MAX_WORDS));
        }
        search = after;
    }
    None
}

fn numbered_words(n: usize) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(n * 6);
    for i in 1..=n {
        if i > 1 {
            text.push(' ');
        }
        let _ = write!(text, "w{i}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_the_message_truncated_to_200_chars() {
        assert_eq!(
            reply_text("hi"),
            "Hello from the Hapax mock provider. You said: hi"
        );
        let long = "é".repeat(300);
        let reply = reply_text(&long);
        assert!(reply.ends_with(&"é".repeat(200)));
        assert!(!reply.ends_with(&"é".repeat(201)));
    }

    #[test]
    fn words_directive_makes_numbered_words() {
        assert_eq!(reply_text("give me words:3 please"), "w1 w2 w3");
        assert_eq!(count_tokens(&reply_text("words:99999")), 10_000);
        assert!(reply_text("words: none").starts_with("Hello"));
        assert_eq!(reply_text("words:x words:2"), "w1 w2");
    }

    #[test]
    fn counts_words_with_a_floor_of_one() {
        assert_eq!(count_tokens(""), 0);
        assert_eq!(count_tokens("   "), 1);
        assert_eq!(count_tokens("a b  c\n"), 3);
    }

    #[test]
    fn pieces_concatenate_back_to_the_text() {
        for text in [
            "",
            "one",
            "a b c",
            "  lead and trail  ",
            "x\n\ny",
            "Hello, world!",
        ] {
            let pieces = stream_pieces(text);
            assert_eq!(pieces.concat(), text);
        }
        assert_eq!(stream_pieces("a b  c"), ["a", " b", "  c"]);
        assert_eq!(stream_pieces(" a b "), [" a", " b "]);
    }
}
