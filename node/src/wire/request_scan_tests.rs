use super::*;

/// serde_json's decoding, the reference the scan must match.
fn derived(json: &str) -> Option<ChatRequest> {
    serde_json::from_str(json).ok()
}

#[test]
fn bodies_sdks_send_decode_to_what_serde_json_decodes() {
    let bodies = [
        r#"{"model":"mock-1","messages":[{"role":"user","content":"hello there, how are you"}]}"#,
        r#" { "messages" : [ { "content" : "hi" , "role" : "system" } ] , "model" : null } "#,
        r#"{"model":"gpt-4o","messages":[{"role":"developer","content":"Be \"brief\".\nThanks\t\u00e9\ud83d\ude00 \/ \\"},{"role":"user","content":"héllo ✓ 😀"},{"role":"assistant","content":null},{"role":"tool","content":""},{"role":"function","content":"f"}],"stream":false}"#,
        r#"{"messages":[{"role":"user","content":"x"}],"stream":true,"max_tokens":0,"max_completion_tokens":18446744073709551615,"temperature":0.7,"top_p":1,"n":4294967295,"seed":9223372036854775807}"#,
        r#"{"messages":[{"role":"user","content":"x"}],"temperature":-0,"top_p":0.12345678901234,"stream":null,"max_tokens":null,"n":null,"seed":null}"#,
        r#"{"messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{"include_usage":true}}"#,
        r#"{"messages":[{"role":"user","content":"x"}],"stream_options":{ }}"#,
        r#"{"messages":[{"role":"user","content":"x"}],"stream_options":null}"#,
        r#"{"messages":[{"role":"user","content":"x"}],"temperature":-1.5,"top_p":12345678901234.5}"#,
        r#"{"messages":[{"role":"user","content":"x"}],"temperature":2.000000000000}"#,
        r#"{"messages":[],"model":"m\u0000\u00E9\uD83D\uDE00\b\f\r"}"#,
        "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}\n\r\t ",
        // members and shapes decoded by serde_json from their own bytes
        r#"{"messages":[{"role":"user","content":"x"}],"temperature":1,"temperature_unused":1,"user":"u-1","user":"u-2"}"#,
        r#"{"messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true,"other":[1,{"a":null}]}}"#,
        r#"{"messages":[{"role":"user","content":[{"type":"text","text":"x"},{"type":"image_url","image_url":{"url":"data:x"}}]}]}"#,
        r#"{"messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c1","content":"42","name":"f"}]}"#,
        r#"{"messages":[{"role":"user","content":"x"}],"stop":"\n","tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],"response_format":{"type":"json_object"}}"#,
        r#"{"messages":[{"role":"user","content":"x"}],"stop":["a","b"],"tools":null}"#,
        r#"{"messages":[{"role":{"user":null},"content":"x","name":"a","name":"b"}],"stop":null}"#,
        // serde's derive takes a struct written as an array, too
        r#"{"messages":[],"stream_options":[]}"#,
        r#"{"messages":[{"role":"us\u0065r","content":"x"}]}"#,
        r#"{"messages":[],"temperature":1e2,"top_p":0.1234567890123456,"seed":-3}"#,
        r#"{"messages":[],"temperature":1.7976931348623157e308,"top_p":5e-324}"#,
    ];
    for body in bodies {
        let reference = derived(body).map(|r| format!("{r:?}"));
        let scanned = chat_request(body).map(|r| format!("{r:?}"));
        assert!(scanned.is_some(), "the scan decodes {body}");
        assert_eq!(scanned, reference, "{body}");
    }
}

#[test]
fn what_it_is_not_sure_of_is_left_to_serde_json() {
    // What serde_json decodes but the scan leaves to it whole.
    let deep = |levels: usize| {
        format!(
            r#"{{"messages":[],"tools":{}{}}}"#,
            "[".repeat(levels),
            "]".repeat(levels)
        )
    };
    let unsure = [
        r#"{"m\u006fdel":"m","messages":[]}"#.to_owned(),
        r#"{"messages":[],"stream_options":{"include\u005fusage":true}}"#.to_owned(),
        deep(64),
    ];
    for body in &unsure {
        assert!(derived(body).is_some(), "serde_json decodes {body}");
        assert!(chat_request(body).is_none(), "{body}");
    }
    // Within the scan's nesting bound, the same value is decoded.
    assert!(chat_request(&deep(63)).is_some());
    let refused = [
        r#"{"model":"m"}"#,
        r#"{"messages":[{"content":"x"}]}"#,
        r#"{"messages":[{"role":"robot","content":"x"}]}"#,
        r#"{"messages":[],"model":"a","model":"b"}"#,
        r#"{"messages":[{"role":"user","role":"user","content":"x"}]}"#,
        r#"{"messages":[{"role":"user","content":5}]}"#,
        r#"{"messages":[],"max_tokens":"5"}"#,
        r#"{"messages":[],"max_tokens":-1}"#,
        r#"{"messages":[],"n":4294967296}"#,
        r#"{"messages":[],"stream":tru}"#,
        r#"{"messages":[],"stream":truex}"#,
        r#"{"messages":[],"stream_options":{"include_usage":null}}"#,
        r#"{"messages":[],"stream_options":{"include_usage":true,"include_usage":false}}"#,
        r#"{"messages":[],"model":nul}"#,
        r#"{"messages":[],"temperature":01}"#,
        r#"{"messages":[],"temperature":1.}"#,
        r#"{"messages":[],"temperature":-}"#,
        r#"{"messages":[],"temperature":.5}"#,
        r#"{"messages":[{"role":"user","content":"a\u12g4"}]}"#,
        "{\"messages\":[{\"role\":\"user\",\"content\":\"tab\tin\"}]}",
        r#"{"messages":[{"role":"user","content":"\ud800"}]}"#,
        r#"{"messages":[{"role":"user","content":"\udc00"}]}"#,
        r#"{"messages":[{"role":"user","content":"\ud83dx"}]}"#,
        r#"{"messages":[{"role":"user","content":"\ud83d\u0041"}]}"#,
        r#"{"messages":[{"role":"user","content":"\ud83d\n"}]}"#,
        r#"{"messages":[{"role":"user","content":"\x41"}]}"#,
        r#"{"messages":[{"role":"user","content":"\u00e"}]}"#,
        r#"{"messages":[],}"#,
        r#"{"messages":[1,]}"#,
        r#"{"messages":[]} x"#,
        "\u{feff}{\"messages\":[]}",
        "{\"messages\":[]}\x0c",
        "[]",
        "",
        // what serde_json refuses, behind a value the scan hands to it
        r#"{"messages":[],"tools":[1,]}"#,
        r#"{"messages":[],"stop":5}"#,
        r#"{"messages":[{"role":"user","content":[{"type":"text"}],"content":"x"}]}"#,
        r#"{"messages":[{"role":"user","content":[{"type":"text","text":"x"}],"name":}]}"#,
        r#"{"messages":[],"seed":9223372036854775808}"#,
        r#"{"messages":[],"seed":1e0}"#,
        r#"{"messages":[],"seed":-0}"#,
        r#"{"messages":[{"role":"us\u0065r","role":"user","content":"x"}]}"#,
    ];
    for body in refused {
        assert!(derived(body).is_none(), "serde_json refuses {body}");
        assert!(chat_request(body).is_none(), "{body}");
    }
}

#[test]
fn a_body_with_escapes_keeps_its_text() {
    let body = r#"{"messages":[{"role":"user","content":"line one\nline \"two\" \u2713"}]}"#;
    let Some(request) = chat_request(body) else {
        panic!("decodes");
    };
    assert_eq!(
        request.messages[0].content.to_text(),
        "line one\nline \"two\" \u{2713}"
    );
}

#[test]
fn every_one_byte_change_of_a_body_is_decoded_as_serde_json_decodes_it_or_left_to_it() {
    let seeds = [
        r#"{"model":"m-1","messages":[{"role":"user","content":"hi \"you\"\n"},{"role":"assistant","content":null}],"stream":false,"max_tokens":12,"temperature":0.75,"top_p":1,"n":2,"seed":7}"#,
        r#" { "messages" : [ { "content" : "x" , "role" : "tool" } ] , "model" : null , "stream" : true } "#,
        r#"{"messages":[{"role":"system","content":"\u00e9\uD83D\uDE00 \/"}],"temperature":1.5,"stream_options":{"include_usage":false},"seed":0}"#,
        r#"{"messages":[{"role":"assistant","content":[{"type":"text","text":"a"}],"tool_calls":[{"id":"c"}]}],"tools":[{"type":"function"}],"stop":["x"],"user":"u","seed":-2,"temperature":1e-1}"#,
    ];
    let replacements = b" \t\n\"\\{}[],:.-+0159eEtfnul\x00\x7f";
    let (mut checked, mut scanned) = (0, 0);
    for seed in seeds {
        let seed = seed.as_bytes();
        for at in 0..seed.len() {
            let mut variants = vec![[&seed[..at], &seed[at + 1..]].concat()];
            for &byte in replacements {
                let mut changed = seed.to_vec();
                changed[at] = byte;
                variants.push(changed);
                let mut inserted = seed.to_vec();
                inserted.insert(at, byte);
                variants.push(inserted);
            }
            for variant in variants {
                if let Err(difference) = crate::fuzzing::check_request_scan(&variant) {
                    panic!("{difference}: {}", String::from_utf8_lossy(&variant));
                }
                checked += 1;
                let text = std::str::from_utf8(&variant).ok();
                scanned += usize::from(text.and_then(chat_request).is_some());
            }
        }
    }
    // Many variants stay valid (a digit for a digit, a space added): the scan decodes those.
    assert!(checked > 10_000 && scanned > 1_000, "{checked} {scanned}");
}
