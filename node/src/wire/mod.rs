//! Wire formats shared by the API and the providers.

pub mod answer;
pub mod openai;
mod request_de;
mod splice;
