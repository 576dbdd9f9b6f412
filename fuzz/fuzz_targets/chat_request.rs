//! `POST /v1/chat/completions` body: parse (with field-path errors), validate, and the pure
//! steps after admission (token estimate, the OpenAI and Anthropic upstream bodies).
#![no_main]

use hapax_node::fuzzing::{anthropic_request_body, parse_json, validate_chat};
use hapax_node::wire::openai::ChatRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let request = match parse_json::<ChatRequest>(data) {
        Ok(request) => request,
        Err(error) => return hapax_fuzz::assert_client_error(&error),
    };
    if let Err(error) = validate_chat(&request) {
        return hapax_fuzz::assert_client_error(&error);
    }
    hapax_fuzz::exercise_valid_request(&request);
    let _ = anthropic_request_body(&request);
});
