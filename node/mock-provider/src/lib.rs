//! A fault-injecting fake LLM upstream speaking the OpenAI, Anthropic and Ollama wire formats,
//! for tests, benchmarks and demos (`hapax mock-provider --listen ADDR`).
//!
//! API routes: `POST /v1/chat/completions`, `GET /v1/models`, `POST /v1/messages`,
//! `POST /api/chat`, `GET /api/tags`. Control routes under `/_mock/` set faults (latency, error
//! statuses, hangs, connection resets, slow or stalled streams) and expose request counters and
//! the last request seen per route.

mod anthropic;
mod clock;
mod content;
mod control;
mod delay;
mod faults;
mod ollama;
mod openai;
pub mod reply;
mod route;
mod server;
mod stream;

pub use server::serve;
