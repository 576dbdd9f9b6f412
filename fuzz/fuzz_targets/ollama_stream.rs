//! An Ollama NDJSON stream in arbitrary byte chunks: line splitting must not depend on how the
//! bytes were split, and every translated item is an OpenAI chunk.
#![no_main]

use hapax_fuzz::{Chunked, assert_chunk};
use hapax_node::fuzzing::{NdjsonDecoder, OllamaStream};
use libfuzzer_sys::fuzz_target;

fn decode<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<Vec<u8>> {
    let mut decoder = NdjsonDecoder::default();
    let mut lines = Vec::new();
    for chunk in chunks {
        decoder.push(chunk);
        while let Some(line) = decoder.next_line() {
            lines.push(line.to_vec());
        }
    }
    lines.extend(decoder.finish().map(|l| l.to_vec()));
    lines
}

fuzz_target!(|data: &[u8]| {
    let input = Chunked::new(data);
    let lines = decode(input.chunks());
    assert_eq!(
        lines,
        decode([input.payload]),
        "decoding depends on chunking"
    );
    let mut translator = OllamaStream::new(input.flags & 1 == 1);
    for line in &lines {
        match translator.translate(line) {
            Ok((items, done)) => {
                for item in items {
                    assert_chunk(&item.data);
                }
                if done {
                    break;
                }
            }
            Err(_) => break,
        }
    }
});
