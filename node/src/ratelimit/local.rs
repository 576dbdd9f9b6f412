//! The single-node rate limiter: every bucket lives in this process.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hapax_config::{RateLimitConfig, RateLimitsConfig};

use futures_util::future::{Either, ready};
use smallvec::SmallVec;

use super::bucket::Bucket;
use super::{Admission, AdmissionRequest, AdmitFuture, RateLimitHeaders, RateLimiter, Rejection};
use super::{Reservation, ReservationTarget};

#[derive(Default, Clone)]
struct LimitPair {
    requests: Option<Arc<Bucket>>,
    tokens: Option<Arc<Bucket>>,
}

impl LimitPair {
    fn from_config(config: Option<&RateLimitConfig>) -> Self {
        let config = config.copied().unwrap_or_default();
        Self {
            requests: config.requests_per_minute.map(Bucket::per_minute),
            tokens: config.tokens_per_minute.map(Bucket::per_minute),
        }
    }

    fn is_empty(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none()
    }
}

pub struct LocalRateLimiter {
    global: LimitPair,
    endpoints: HashMap<String, LimitPair>,
    keys: HashMap<String, LimitPair>,
}

impl LocalRateLimiter {
    /// `keys`: every client name with its own limit, if it has one.
    pub fn new(config: &RateLimitsConfig, keys: &[(String, Option<RateLimitConfig>)]) -> Self {
        let keys = keys
            .iter()
            .map(|(name, own)| {
                (
                    name.clone(),
                    LimitPair::from_config(own.as_ref().or(config.per_key.as_ref())),
                )
            })
            .filter(|(_, pair)| !pair.is_empty())
            .collect();
        Self {
            global: LimitPair::from_config(config.global.as_ref()),
            endpoints: config
                .endpoints
                .iter()
                .map(|(path, limit)| (path.clone(), LimitPair::from_config(Some(limit))))
                .collect(),
            keys,
        }
    }

    fn scopes<'a>(
        &'a self,
        request: &AdmissionRequest<'_>,
    ) -> [(&'static str, Option<&'a LimitPair>); 3] {
        [
            ("global", Some(&self.global)),
            ("endpoint", self.endpoints.get(request.endpoint)),
            ("key", self.keys.get(request.client)),
        ]
    }

    fn headers(&self, request: &AdmissionRequest<'_>) -> Option<RateLimitHeaders> {
        let mut tightest = Tightest::default();
        for (_, pair) in self.scopes(request) {
            let Some(pair) = pair else { continue };
            for (bucket, is_tokens) in [(&pair.requests, false), (&pair.tokens, true)] {
                if let Some(bucket) = bucket {
                    tightest.see(is_tokens, bucket.limit, bucket.remaining());
                }
            }
        }
        tightest.headers()
    }
}

impl RateLimiter for LocalRateLimiter {
    fn admit<'a>(&'a self, request: &'a AdmissionRequest<'a>) -> AdmitFuture<'a> {
        Either::Left(ready(self.admit_now(request)))
    }

    fn settle(&self, admission: Admission, actual_tokens: Option<u64>) {
        super::settle_reservations(admission, actual_tokens);
    }
}

impl LocalRateLimiter {
    /// Admission never waits on a single node.
    pub fn admit_now(&self, request: &AdmissionRequest<'_>) -> Result<Admission, Rejection> {
        // What was taken so far, given back if a later limit refuses: at most three scopes
        // of two units each, so never on the heap.
        let mut taken: SmallVec<[(&Arc<Bucket>, f64, bool); 6]> = SmallVec::new();
        // The headers' figures, from what each take left (no second lock and clock read).
        let mut tightest = Tightest::default();
        let now = Instant::now();
        for (scope, pair) in self.scopes(request) {
            let Some(pair) = pair else { continue };
            let wanted = [
                (pair.requests.as_ref(), 1.0, false),
                (pair.tokens.as_ref(), request.estimated_tokens as f64, true),
            ];
            for (bucket, amount, is_tokens) in wanted {
                let Some(bucket) = bucket else { continue };
                match bucket.try_take(amount, now) {
                    Ok((took, left)) => {
                        tightest.see(is_tokens, bucket.limit, left);
                        taken.push((bucket, took, is_tokens));
                    }
                    Err(wait) => {
                        for (bucket, took, _) in &taken {
                            bucket.adjust(*took);
                        }
                        let unit = if is_tokens { "tokens" } else { "requests" };
                        return Err(Rejection {
                            retry_after: wait.max(Duration::from_millis(1)),
                            scope,
                            unit,
                            headers: self.headers(request),
                        });
                    }
                }
            }
        }
        // Only token reservations are settled later (request counts stay spent): without
        // token limits an admission keeps none, and allocates nothing.
        let reservations = taken
            .iter()
            .filter(|(_, _, is_tokens)| *is_tokens)
            .map(|(bucket, took, _)| Reservation {
                target: ReservationTarget::Local(Arc::clone(bucket)),
                amount: *took,
                is_tokens: true,
            })
            .collect();
        Ok(Admission {
            reservations,
            headers: tightest.headers(),
        })
    }
}

/// A bucket's limit, and its remaining units and seconds until full.
type Figures = (u64, (u64, u64));

/// The tightest request limit and token limit seen: the one with the fewest units remaining
/// (the first of equals).
#[derive(Default)]
struct Tightest {
    requests: Option<Figures>,
    tokens: Option<Figures>,
}

impl Tightest {
    fn see(&mut self, is_tokens: bool, limit: u64, left: (u64, u64)) {
        let kept = if is_tokens {
            &mut self.tokens
        } else {
            &mut self.requests
        };
        if kept.is_none_or(|(_, (remaining, _))| left.0 < remaining) {
            *kept = Some((limit, left));
        }
    }

    /// The request limit's figures (the token limit's when there is no request limit).
    fn headers(&self) -> Option<RateLimitHeaders> {
        let (limit, (remaining, reset)) = self.requests.or(self.tokens)?;
        Some(RateLimitHeaders {
            limit,
            remaining,
            reset_secs: reset,
            token_limit: self.tokens.map(|t| t.0),
            token_remaining: self.tokens.map(|t| t.1.0),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Alice's key limited to `key_rpm` requests, everyone to `global_tpm` tokens a minute.
    fn limiter(key_rpm: u64, global_tpm: u64) -> LocalRateLimiter {
        key_limiter(
            key_rpm,
            Some(RateLimitConfig {
                requests_per_minute: None,
                tokens_per_minute: Some(global_tpm),
            }),
        )
    }

    fn alice_asking(estimated_tokens: u64) -> AdmissionRequest<'static> {
        AdmissionRequest {
            client: "alice",
            endpoint: "/x",
            estimated_tokens,
        }
    }

    fn key_limiter(key_rpm: u64, global: Option<RateLimitConfig>) -> LocalRateLimiter {
        let config = RateLimitsConfig {
            global,
            ..Default::default()
        };
        LocalRateLimiter::new(
            &config,
            &[(
                "alice".into(),
                Some(RateLimitConfig {
                    requests_per_minute: Some(key_rpm),
                    tokens_per_minute: None,
                }),
            )],
        )
    }

    #[test]
    fn per_key_requests_are_limited_and_headers_count_down() {
        let l = limiter(2, 1_000_000);
        let req = AdmissionRequest {
            client: "alice",
            endpoint: "/v1/chat/completions",
            estimated_tokens: 10,
        };
        let a = l.admit_now(&req).unwrap();
        assert_eq!(a.headers.unwrap().remaining, 1);
        l.admit_now(&req).unwrap();
        let rejected = l.admit_now(&req).err().unwrap();
        assert_eq!((rejected.scope, rejected.unit), ("key", "requests"));
        assert!(rejected.retry_after > Duration::from_secs(20));
        let other = AdmissionRequest {
            client: "bob",
            ..req
        };
        assert!(l.admit_now(&other).is_ok(), "bob has no key limit");
    }

    #[test]
    fn admission_headers_name_the_tightest_limits_as_a_fresh_reading_does() {
        let config = RateLimitsConfig {
            global: Some(RateLimitConfig {
                requests_per_minute: Some(100),
                tokens_per_minute: Some(1000),
            }),
            ..Default::default()
        };
        let alice = RateLimitConfig {
            requests_per_minute: Some(5),
            tokens_per_minute: None,
        };
        let l = LocalRateLimiter::new(&config, &[("alice".into(), Some(alice))]);
        let req = AdmissionRequest {
            client: "alice",
            endpoint: "/v1/chat/completions",
            estimated_tokens: 10,
        };
        let taken = l.admit_now(&req).unwrap().headers.unwrap();
        let read = l.headers(&req).unwrap();
        let figures = |h: RateLimitHeaders| {
            (
                h.limit,
                h.remaining,
                h.reset_secs,
                h.token_limit,
                h.token_remaining,
            )
        };
        // The key's 5 a minute is tighter than the global 100; 10 tokens of 1000 reserved.
        assert_eq!(figures(taken), (5, 4, 12, Some(1000), Some(990)));
        assert_eq!(figures(taken), figures(read));
    }

    #[test]
    fn a_refusal_gives_back_what_the_limits_before_it_took() {
        // The global token limit is taken first, then the key's request limit refuses.
        let l = limiter(1, 100);
        let req = alice_asking(10);
        let admitted = l.admit_now(&req).unwrap();
        assert_eq!(admitted.headers.unwrap().token_remaining, Some(90));
        assert_eq!(
            admitted.reservations.len(),
            1,
            "only the token reservation is kept for settling"
        );
        for _ in 0..3 {
            let refused = l.admit_now(&req).err().unwrap();
            assert_eq!((refused.scope, refused.unit), ("key", "requests"));
            assert_eq!(refused.headers.unwrap().token_remaining, Some(90));
        }
        let admitted = key_limiter(5, None).admit_now(&req).unwrap();
        assert!(
            admitted.reservations.is_empty(),
            "request counts stay spent"
        );
    }

    #[test]
    fn token_reservations_settle_with_real_usage() {
        let l = limiter(1000, 100);
        let req = AdmissionRequest {
            client: "alice",
            endpoint: "/x",
            estimated_tokens: 60,
        };
        let a = l.admit_now(&req).unwrap();
        assert!(
            l.admit_now(&req).is_err(),
            "60 + 60 > 100: the reservation prevents overshoot"
        );
        l.settle(a, Some(10));
        assert!(l.admit_now(&req).is_ok(), "settling returned 50 tokens");
    }
}
