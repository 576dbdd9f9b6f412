//! An upstream's HTTP/1.1 answer in arbitrary byte chunks, read as a pooled connection reads
//! it: never a panic, and the status, body or error do not depend on how the bytes arrived.
#![no_main]

use hapax_fuzz::Chunked;
use hapax_node::fuzzing::read_upstream_answer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let input = Chunked::new(data);
    let in_pieces = read_upstream_answer(input.chunks());
    let at_once = read_upstream_answer([input.payload]);
    assert_eq!(in_pieces, at_once, "reading depends on how the bytes arrived");
});
