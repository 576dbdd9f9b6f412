//! Helpers shared by the fuzz targets.

/// Splits a fuzz input into a flag byte, chunk lengths and the payload, so the fuzzer controls
/// how a stream arrives: `[flags, k, len_1 .. len_k, payload ..]`; chunk lengths cycle (0 = 1).
pub struct Chunked<'a> {
    pub flags: u8,
    pub payload: &'a [u8],
    lengths: &'a [u8],
}

impl<'a> Chunked<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        let flags = data.first().copied().unwrap_or(0);
        let k = usize::from(data.get(1).copied().unwrap_or(0) % 8);
        let start = (2 + k).min(data.len());
        Self {
            flags,
            lengths: &data[2.min(data.len())..start],
            payload: &data[start..],
        }
    }

    /// The payload in the chunks the lengths describe (one chunk when there are none).
    pub fn chunks(&self) -> Vec<&'a [u8]> {
        if self.lengths.is_empty() {
            return vec![self.payload];
        }
        let mut out = Vec::new();
        let mut rest = self.payload;
        for &len in self.lengths.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let n = usize::from(len.max(1)).min(rest.len());
            let (head, tail) = rest.split_at(n);
            out.push(head);
            rest = tail;
        }
        out
    }
}

/// Every translated item must be an OpenAI `chat.completion.chunk` in JSON.
pub fn assert_chunk(data: &[u8]) {
    let value: serde_json::Value = match serde_json::from_slice(data) {
        Ok(value) => value,
        Err(e) => panic!("a translated item is not JSON ({e}): {data:?}"),
    };
    assert_eq!(value["object"], "chat.completion.chunk", "{value}");
    assert!(value["choices"].is_array(), "{value}");
}

/// A rejected body is a 400 with the one JSON error shape.
pub fn assert_client_error(error: &hapax_node::error::ApiError) {
    assert_eq!(error.status().as_u16(), 400, "{error}");
    let body: serde_json::Value = match serde_json::from_str(&error.body_json("fuzz")) {
        Ok(body) => body,
        Err(e) => panic!("error body is not JSON: {e}"),
    };
    assert!(body["error"]["message"].is_string(), "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
}

/// What the gateway does with a valid request before and while sending it upstream.
pub fn exercise_valid_request(request: &hapax_node::wire::openai::ChatRequest) {
    let _ = request.prompt_chars() as u64 / 4 + request.completion_limit().unwrap_or(256);
    let _ = request.wants_stream_usage();
    // The OpenAI upstream body must serialize and read back as a valid request.
    let body = match serde_json::to_vec(request) {
        Ok(body) => body,
        Err(e) => panic!("a valid request does not serialize: {e}"),
    };
    let again =
        match hapax_node::fuzzing::parse_json::<hapax_node::wire::openai::ChatRequest>(&body) {
            Ok(again) => again,
            Err(e) => panic!("the upstream body does not parse back: {e}"),
        };
    assert_eq!(again.messages.len(), request.messages.len());
}
