//! Client requests in arbitrary byte chunks, read as the gateway's HTTP/1.1 listener reads a
//! connection (heads, bodies by their framing, pipelined requests): never a panic, and what is
//! read or refused does not depend on how the bytes arrived, nor on the header names the
//! connection kept from one head to the next, nor on whether a chat completion's fields were
//! read in place or from a map.
#![no_main]

use hapax_fuzz::Chunked;
use hapax_node::fuzzing::read_client_requests;
use libfuzzer_sys::fuzz_target;

/// Small enough that the fuzzer reaches the head-size limit.
const MAX_HEAD_BYTES: usize = 2048;

fuzz_target!(|data: &[u8]| {
    let input = Chunked::new(data);
    // In pieces as a connection reads them; at once, each head from scratch.
    let in_pieces = read_client_requests(input.chunks(), MAX_HEAD_BYTES, true);
    let at_once = read_client_requests([input.payload], MAX_HEAD_BYTES, false);
    assert_eq!(in_pieces, at_once, "reading depends on how the bytes arrived");
});
