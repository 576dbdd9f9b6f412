//! API-key authentication: client keys (with allowed models, providers and limits) and
//! separate admin keys. Keys are kept only as sha256 digests (and, once matched, keyed
//! fingerprints) and compared in constant time.
//!
//! A key that matched once is recognised after that by its fingerprint: a keyed SipHash-2-4
//! (128 bits, a random key per process), ~300 instructions against sha256's ~4,700 (an
//! eighth of a request's). A presented key that matches no fingerprint still goes through
//! sha256 against every digest, so a wrong key costs what it did and learns nothing.

use std::hash::Hasher as _;
use std::sync::{Arc, OnceLock};

use axum::http::HeaderName;
use hapax_config::{ApiKeyConfig, AuthConfig, RateLimitConfig};
use sha2::{Digest, Sha256};
use siphasher::sip128::{Hasher128 as _, SipHasher24};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::wire::headers::RequestHeaders;

/// Who is calling and what they may use.
#[derive(Debug)]
pub struct Caller {
    /// The key's configured name: safe for logs and metric labels.
    pub name: Arc<str>,
    pub models: Vec<String>,
    pub providers: Option<Vec<String>>,
}

impl Caller {
    pub fn anonymous() -> Arc<Self> {
        Arc::new(Self {
            name: Arc::from(ANONYMOUS),
            models: Vec::new(),
            providers: None,
        })
    }

    /// 403 unless this key may use `model`.
    pub fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        if self.models.is_empty() {
            return Ok(());
        }
        match model {
            Some(m) if self.models.iter().any(|allowed| allowed == m) => Ok(()),
            Some(m) => Err(ApiError::Forbidden(format!(
                "API key '{}' may not use model '{m}'",
                self.name
            ))),
            None => Err(ApiError::Forbidden(format!(
                "API key '{}' must name one of its allowed models",
                self.name
            ))),
        }
    }
}

pub const ANONYMOUS: &str = "anonymous";

struct KeyEntry {
    digest: [u8; 32],
    /// Known from the start for a key written in the config; learned at the first match for
    /// one given as `key_sha256`.
    fingerprint: OnceLock<Fingerprint>,
    caller: Arc<Caller>,
}

type Fingerprint = [u8; 16];

/// The SipHash key fingerprints are made with: random, never leaves the process.
#[derive(Clone, Copy)]
struct FingerprintKey([u8; 16]);

impl FingerprintKey {
    fn random() -> Self {
        Self(rand::random())
    }

    fn of(&self, key: &str) -> Fingerprint {
        let mut hasher = SipHasher24::new_with_key(&self.0);
        hasher.write(key.as_bytes());
        hasher.finish128().as_bytes()
    }
}

pub struct Authenticator {
    enabled: bool,
    fingerprint_key: FingerprintKey,
    clients: Vec<KeyEntry>,
    admins: Vec<KeyEntry>,
    anonymous: Arc<Caller>,
    pub protect_metrics: bool,
    pub protect_health: bool,
}

fn entry(config: &ApiKeyConfig, fingerprint_key: FingerprintKey) -> Option<KeyEntry> {
    let fingerprint = OnceLock::new();
    let digest = match (&config.key, &config.key_sha256) {
        (Some(key), _) => {
            let _ = fingerprint.set(fingerprint_key.of(key.expose()));
            Sha256::digest(key.expose().as_bytes()).into()
        }
        (None, Some(hex_digest)) => {
            let mut out = [0u8; 32];
            hex::decode_to_slice(hex_digest.trim(), &mut out).ok()?;
            out
        }
        (None, None) => return None,
    };
    let providers = (!config.providers.is_empty()).then(|| config.providers.clone());
    Some(KeyEntry {
        digest,
        fingerprint,
        caller: Arc::new(Caller {
            name: Arc::from(config.name.as_str()),
            models: config.models.clone(),
            providers,
        }),
    })
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Self {
        let fingerprint_key = FingerprintKey::random();
        let entries = |keys: &[ApiKeyConfig]| -> Vec<KeyEntry> {
            keys.iter()
                .filter_map(|k| entry(k, fingerprint_key))
                .collect()
        };
        Self {
            enabled: config.enabled.unwrap_or(true),
            fingerprint_key,
            clients: entries(&config.api_keys),
            admins: entries(&config.admin_keys),
            anonymous: Caller::anonymous(),
            protect_metrics: config.protect_metrics,
            protect_health: config.protect_health,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Client names with their own rate limits, for the rate limiter.
    pub fn client_limits(config: &AuthConfig) -> Vec<(String, Option<RateLimitConfig>)> {
        let mut out: Vec<_> = config
            .api_keys
            .iter()
            .map(|k| (k.name.clone(), k.rate_limit))
            .collect();
        out.push((ANONYMOUS.to_owned(), None));
        out
    }

    pub fn client(&self, headers: &impl RequestHeaders) -> Result<Arc<Caller>, ApiError> {
        if !self.enabled {
            return Ok(Arc::clone(&self.anonymous));
        }
        let key = presented_key(headers).ok_or_else(|| {
            ApiError::Unauthorized(
                "missing API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`".into(),
            )
        })?;
        find(&self.clients, key, self.fingerprint_key)
            .ok_or_else(|| ApiError::Unauthorized("invalid API key".into()))
    }

    /// Admin endpoints: an admin key, or open only when auth is off and no admin key exists.
    pub fn admin(&self, headers: &impl RequestHeaders) -> Result<Arc<Caller>, ApiError> {
        if self.admins.is_empty() {
            if !self.enabled {
                return Ok(Arc::clone(&self.anonymous));
            }
            return Err(ApiError::Unauthorized(
                "admin endpoints are disabled: configure auth.admin_keys".into(),
            ));
        }
        let key = presented_key(headers)
            .ok_or_else(|| ApiError::Unauthorized("missing admin key".into()))?;
        find(&self.admins, key, self.fingerprint_key)
            .ok_or_else(|| ApiError::Unauthorized("invalid admin key".into()))
    }
}

/// `X-API-Key`, the other place a key may be sent.
const API_KEY: HeaderName = HeaderName::from_static("x-api-key");

fn presented_key(headers: &impl RequestHeaders) -> Option<&str> {
    if let Some(value) = headers.first_str(&axum::http::header::AUTHORIZATION) {
        return bearer_token(value);
    }
    headers
        .first_str(&API_KEY)
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The key in an `Authorization` value: `Bearer KEY` (the scheme in any case), or the bare key.
fn bearer_token(value: &str) -> Option<&str> {
    // The usual spelling first (the general parse compares the scheme a byte at a time).
    if let Some(token) = value.strip_prefix("Bearer ")
        && !token.is_empty()
        && token.trim() == token
    {
        return Some(token);
    }
    parsed_bearer_token(value)
}

fn parsed_bearer_token(value: &str) -> Option<&str> {
    let value = value.trim();
    // The scheme is case-insensitive (RFC 9110 §11.1): `Bearer`, `bearer`, `BEARER`.
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token,
        _ => value,
    };
    Some(token.trim()).filter(|t| !t.is_empty())
}

/// Compares against every key without stopping early, so timing says nothing about which:
/// first by fingerprint, then (for a key no fingerprint knows) by sha256 digest.
fn find(entries: &[KeyEntry], key: &str, fingerprint_key: FingerprintKey) -> Option<Arc<Caller>> {
    let fingerprint = fingerprint_key.of(key);
    let mut found = None;
    for entry in entries {
        if let Some(known) = entry.fingerprint.get()
            && bool::from(known.ct_eq(&fingerprint))
        {
            found = Some(entry);
        }
    }
    if found.is_none() {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        for entry in entries {
            if bool::from(entry.digest.ct_eq(&digest)) {
                found = Some(entry);
            }
        }
        if let Some(entry) = found {
            let _ = entry.fingerprint.set(fingerprint);
        }
    }
    found.map(|entry| Arc::clone(&entry.caller))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;
    use hapax_config::Secret;

    fn key(name: &str, secret: &str) -> ApiKeyConfig {
        ApiKeyConfig {
            name: name.into(),
            key: Some(Secret(secret.into())),
            key_sha256: None,
            models: vec![],
            providers: vec![],
            rate_limit: None,
        }
    }

    #[test]
    fn the_usual_bearer_spelling_reads_as_the_general_parse() {
        for value in [
            "Bearer k",
            "Bearer sk-123",
            "Bearer  k",
            "Bearer k ",
            "Bearer k\t",
            "Bearer \tk",
            "Bearer ",
            "Bearer",
            " Bearer k",
            "Bearer k with spaces",
            "bearer k",
            "Basic k",
            "k",
            "",
        ] {
            assert_eq!(bearer_token(value), parsed_bearer_token(value), "{value:?}");
        }
    }

    #[test]
    fn bearer_and_x_api_key_and_digests_work() {
        let digest = hex::encode(Sha256::digest(b"s3cret-b"));
        let config = AuthConfig {
            enabled: None,
            api_keys: vec![
                key("a", "s3cret-a"),
                ApiKeyConfig {
                    key: None,
                    key_sha256: Some(digest),
                    ..key("b", "")
                },
            ],
            admin_keys: vec![key("root", "admin-key")],
            ..Default::default()
        };
        let auth = Authenticator::new(&config);
        let mut h = HeaderMap::new();
        assert!(auth.client(&h).is_err());
        h.insert("authorization", "Bearer s3cret-a".parse().unwrap());
        assert_eq!(&*auth.client(&h).unwrap().name, "a");
        assert!(auth.admin(&h).is_err());
        for scheme in ["bearer", "BEARER", "BeArEr"] {
            let value = format!("{scheme} s3cret-a").parse().unwrap();
            h.insert("authorization", value);
            assert_eq!(&*auth.client(&h).unwrap().name, "a", "{scheme}");
        }
        h.insert("authorization", "Basic s3cret-a".parse().unwrap());
        assert!(
            auth.client(&h).is_err(),
            "another scheme is not a bearer key"
        );
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "s3cret-b".parse().unwrap());
        assert_eq!(&*auth.client(&h).unwrap().name, "b");
        h.insert("x-api-key", "wrong".parse().unwrap());
        assert!(auth.client(&h).is_err());
    }

    #[test]
    fn a_digest_key_is_learned_by_fingerprint_and_a_wrong_key_never_is() {
        let config = AuthConfig {
            enabled: None,
            api_keys: vec![
                key("plain", "s3cret-a"),
                ApiKeyConfig {
                    key: None,
                    key_sha256: Some(hex::encode(Sha256::digest(b"s3cret-b"))),
                    ..key("digest", "")
                },
            ],
            ..Default::default()
        };
        let auth = Authenticator::new(&config);
        let learned = |name: &str| {
            auth.clients
                .iter()
                .find(|e| &*e.caller.name == name)
                .map(|e| e.fingerprint.get().is_some())
        };
        assert_eq!(learned("plain"), Some(true), "known from the config");
        assert_eq!(learned("digest"), Some(false), "unknown until it matches");
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "wrong".parse().unwrap());
        assert!(auth.client(&h).is_err());
        assert_eq!(
            learned("digest"),
            Some(false),
            "a wrong key teaches nothing"
        );
        h.insert("x-api-key", "s3cret-b".parse().unwrap());
        for _ in 0..2 {
            assert_eq!(&*auth.client(&h).unwrap().name, "digest");
            assert_eq!(learned("digest"), Some(true));
        }
        h.insert("x-api-key", "s3cret-a".parse().unwrap());
        assert_eq!(&*auth.client(&h).unwrap().name, "plain");
        h.insert("x-api-key", "s3cret-".parse().unwrap());
        assert!(auth.client(&h).is_err(), "a prefix of a key is not the key");
    }
}
