//! The API routes the mock serves, and which wire format each one speaks.

use http::Method;

/// An upstream API route; control routes under `/_mock/` are not among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ApiRoute {
    ChatCompletions,
    Models,
    Messages,
    OllamaChat,
    OllamaTags,
}

/// The wire format a route speaks, which decides the shape of its error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    OpenAi,
    Anthropic,
    Ollama,
}

impl ApiRoute {
    pub const ALL: [ApiRoute; 5] = [
        ApiRoute::ChatCompletions,
        ApiRoute::Models,
        ApiRoute::Messages,
        ApiRoute::OllamaChat,
        ApiRoute::OllamaTags,
    ];

    pub fn from_path(path: &str) -> Option<Self> {
        Some(match path {
            "/v1/chat/completions" => ApiRoute::ChatCompletions,
            "/v1/models" => ApiRoute::Models,
            "/v1/messages" => ApiRoute::Messages,
            "/api/chat" => ApiRoute::OllamaChat,
            "/api/tags" => ApiRoute::OllamaTags,
            _ => return None,
        })
    }

    pub fn path(self) -> &'static str {
        match self {
            ApiRoute::ChatCompletions => "/v1/chat/completions",
            ApiRoute::Models => "/v1/models",
            ApiRoute::Messages => "/v1/messages",
            ApiRoute::OllamaChat => "/api/chat",
            ApiRoute::OllamaTags => "/api/tags",
        }
    }

    /// Position in [`ApiRoute::ALL`], for per-route tables.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn method(self) -> Method {
        match self {
            ApiRoute::Models | ApiRoute::OllamaTags => Method::GET,
            ApiRoute::ChatCompletions | ApiRoute::Messages | ApiRoute::OllamaChat => Method::POST,
        }
    }

    pub fn dialect(self) -> Dialect {
        match self {
            ApiRoute::ChatCompletions | ApiRoute::Models => Dialect::OpenAi,
            ApiRoute::Messages => Dialect::Anthropic,
            ApiRoute::OllamaChat | ApiRoute::OllamaTags => Dialect::Ollama,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_and_indexes_match_all() {
        for (i, route) in ApiRoute::ALL.into_iter().enumerate() {
            assert_eq!(ApiRoute::from_path(route.path()), Some(route));
            assert_eq!(route.index(), i);
        }
    }
}
