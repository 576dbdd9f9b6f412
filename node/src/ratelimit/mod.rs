//! Rate limits: token buckets for requests and tokens per minute, per API key, per endpoint
//! and global. Token budgets reserve an estimate at admission and settle against the real
//! `usage` afterwards. Behind a trait so a cluster-wide backend can replace the local one.

mod bucket;
mod leased;
#[cfg(test)]
mod leased_tests;
mod local;

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName};

use crate::server::number_header::number_header;

// Header names parsed once, not per response.
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
const X_RATELIMIT_LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const X_RATELIMIT_REMAINING_TOKENS: HeaderName =
    HeaderName::from_static("x-ratelimit-remaining-tokens");

pub use self::leased::{LeaseError, LeasedRateLimiter, QuotaLedger};
pub use self::local::LocalRateLimiter;

/// What admission needs to know about a request.
pub struct AdmissionRequest<'a> {
    /// The caller's key name (never the key itself).
    pub client: &'a str,
    pub endpoint: &'static str,
    pub estimated_tokens: u64,
}

/// A granted admission; hand it back to `settle` with the real token count.
pub struct Admission {
    pub(crate) reservations: Vec<Reservation>,
    pub headers: Option<RateLimitHeaders>,
}

#[derive(Debug, Clone)]
pub struct Rejection {
    pub retry_after: Duration,
    /// Which limit said no: `global`, `endpoint` or `key`; and whether requests or tokens.
    pub scope: &'static str,
    pub unit: &'static str,
    pub headers: Option<RateLimitHeaders>,
}

/// The `X-RateLimit-*` figures of the tightest request limit (and token limit, if any).
#[derive(Debug, Clone, Copy)]
pub struct RateLimitHeaders {
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the limit is fully replenished.
    pub reset_secs: u64,
    pub token_limit: Option<u64>,
    pub token_remaining: Option<u64>,
}

impl RateLimitHeaders {
    pub fn apply(&self, headers: &mut HeaderMap) {
        self.for_each(|name, figure| {
            headers.insert(name, number_header(figure));
        });
    }

    /// Each `X-RateLimit-*` header's name and figure, in the order they are written.
    pub fn for_each(&self, mut header: impl FnMut(HeaderName, u64)) {
        header(X_RATELIMIT_LIMIT, self.limit);
        header(X_RATELIMIT_REMAINING, self.remaining);
        header(X_RATELIMIT_RESET, self.reset_secs);
        if let Some(limit) = self.token_limit {
            header(X_RATELIMIT_LIMIT_TOKENS, limit);
        }
        if let Some(remaining) = self.token_remaining {
            header(X_RATELIMIT_REMAINING_TOKENS, remaining);
        }
    }
}

/// Where a reservation was taken from.
pub(crate) enum ReservationTarget {
    Local(std::sync::Arc<bucket::Bucket>),
    /// A cluster lease, in a given window.
    Leased(std::sync::Arc<leased::LeasedBucket>, u64),
}

/// An amount taken at admission, to give back or to correct once usage is known.
pub(crate) struct Reservation {
    pub(crate) target: ReservationTarget,
    pub(crate) amount: f64,
    pub(crate) is_tokens: bool,
}

impl Reservation {
    /// Gives back `amount` (negative: charges more).
    pub(crate) fn refund(&self, amount: f64) {
        match &self.target {
            ReservationTarget::Local(bucket) => bucket.adjust(amount),
            ReservationTarget::Leased(bucket, window) if amount >= 0.0 => {
                bucket.give_back(*window, amount as u64)
            }
            ReservationTarget::Leased(bucket, window) => bucket.charge(*window, (-amount) as u64),
        }
    }
}

/// Token reservations settle against the real usage; request counts stay spent.
pub(crate) fn settle_reservations(admission: Admission, actual_tokens: Option<u64>) {
    let Some(actual) = actual_tokens else { return };
    for r in admission.reservations.iter().filter(|r| r.is_tokens) {
        r.refund(r.amount - actual as f64);
    }
}

/// An admission decided at once (`Left`: no box, the local limiter's every answer) or after
/// a wait (`Right`: a cluster backend waiting for a lease).
pub type AdmitFuture<'a> = futures_util::future::Either<
    futures_util::future::Ready<Result<Admission, Rejection>>,
    futures_util::future::BoxFuture<'a, Result<Admission, Rejection>>,
>;

pub trait RateLimiter: Send + Sync {
    /// Admits or rejects; a cluster backend may wait (boundedly) for a lease here.
    fn admit<'a>(&'a self, request: &'a AdmissionRequest<'a>) -> AdmitFuture<'a>;

    /// Corrects token reservations with the tokens really used.
    fn settle(&self, admission: Admission, actual_tokens: Option<u64>);
}
