//! Wire formats shared by the API and the providers.

pub mod answer;
mod answer_scan;
pub mod headers;
pub mod http1;
mod json_cursor;
mod members;
pub mod openai;
mod raw_json;
mod request_de;
pub(crate) mod request_scan;
