//! An Anthropic event stream in arbitrary byte chunks: SSE decoding must not depend on how
//! the bytes were split, and every translated item is an OpenAI chunk.
#![no_main]

use hapax_fuzz::{Chunked, assert_chunk};
use hapax_node::fuzzing::{AnthropicStream, SseDecoder, SseEvent};
use libfuzzer_sys::fuzz_target;

fn decode<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<SseEvent> {
    let mut decoder = SseDecoder::default();
    let mut events = Vec::new();
    for chunk in chunks {
        decoder.push(chunk);
        while let Some(event) = decoder.next_event() {
            events.push(event);
        }
    }
    events.extend(decoder.finish());
    events
}

fuzz_target!(|data: &[u8]| {
    let input = Chunked::new(data);
    let events = decode(input.chunks());
    assert_eq!(
        events,
        decode([input.payload]),
        "decoding depends on chunking"
    );
    let mut translator = AnthropicStream::new(input.flags & 1 == 1);
    for event in &events {
        match translator.translate(event.event.as_deref(), &event.data) {
            Ok(Some(items)) => {
                for item in items {
                    assert_chunk(&item.data);
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
});
