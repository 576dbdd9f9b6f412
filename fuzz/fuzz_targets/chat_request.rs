//! `POST /v1/chat/completions` body: parse (the scan, else serde_json with field-path errors),
//! validate, and the pure steps after admission (token estimate, the OpenAI and Anthropic
//! upstream bodies). The scan must decode what serde_json decodes, to the same request.
#![no_main]

use hapax_node::fuzzing::{
    anthropic_request_body, check_request_scan, parse_chat_request, validate_chat,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(difference) = check_request_scan(data) {
        panic!("{difference}: {:?}", String::from_utf8_lossy(data));
    }
    let request = match parse_chat_request(data) {
        Ok(request) => request,
        Err(error) => return hapax_fuzz::assert_client_error(&error),
    };
    if let Err(error) = validate_chat(&request) {
        return hapax_fuzz::assert_client_error(&error);
    }
    hapax_fuzz::exercise_valid_request(&request);
    let _ = anthropic_request_body(&request);
});
