//! An upstream's answer body, checked for the shape of a completion as the gateway checks it
//! before passing it on: never a panic, and the same verdict and usage as the derived serde
//! decoder the hand-written check replaced.
#![no_main]

use hapax_node::fuzzing::check_answer_shape;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(difference) = check_answer_shape(data) {
        panic!("{difference}: {:?}", String::from_utf8_lossy(data));
    }
});
