//! `POST /v1/completions` bodies: Hapax's (`messages` or `input` + `function_description`)
//! and OpenAI's legacy (`prompt`), parsed as the handler does, then validated.
#![no_main]

use hapax_node::fuzzing::{CompletionBody, parse_completion_body, validate_chat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let request = match parse_completion_body(data) {
        Ok(CompletionBody::Hapax(request)) => request,
        Ok(CompletionBody::Legacy(request)) => {
            assert_eq!(request.messages.len(), 1, "a prompt is one user message");
            request
        }
        Err(error) => return hapax_fuzz::assert_client_error(&error),
    };
    if let Err(error) = validate_chat(&request) {
        return hapax_fuzz::assert_client_error(&error);
    }
    hapax_fuzz::exercise_valid_request(&request);
});
