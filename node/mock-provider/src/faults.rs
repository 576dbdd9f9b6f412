//! Injected faults: what `POST /_mock/faults` stores and how a request picks up its fault.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::route::ApiRoute;

/// The route a fault is set on: one API route, or `*` for every API route without its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FaultRoute {
    Any,
    Api(ApiRoute),
}

/// How a `reset` fault kills the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ResetMode {
    /// Close the TCP connection (with an RST) without writing any response.
    BeforeResponse,
    /// Send the headers and the first `reset_after_chunks` body chunks, then reset.
    MidStream,
}

/// One fault as posted to and returned by `/_mock/faults`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Fault {
    pub route: FaultRoute,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hang: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<ResetMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_after_chunks: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_delay_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall_after_chunks: Option<u32>,
    /// End the body cleanly after this many chunks, without the stream's end marker (an
    /// upstream cut off between events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_after_chunks: Option<u32>,
    /// Requests left before the fault clears itself; `None` means until cleared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u32>,
}

/// The faults that shape a response body after its headers are sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StreamFaults {
    pub chunk_delay: Option<Duration>,
    pub stall_after: Option<u32>,
    pub reset_after: Option<u32>,
    pub end_after: Option<u32>,
}

/// The stored faults, one slot per API route plus one for `*`.
#[derive(Debug, Default)]
pub(crate) struct FaultTable {
    /// Whether any slot holds a fault: lets the fault-free path skip the lock.
    armed: AtomicBool,
    slots: Mutex<[Option<Fault>; SLOTS]>,
}

const SLOTS: usize = ApiRoute::ALL.len() + 1;
const ANY_SLOT: usize = ApiRoute::ALL.len();

// === impl FaultRoute ===

impl FaultRoute {
    pub fn parse(route: &str) -> Option<Self> {
        if route == "*" {
            return Some(FaultRoute::Any);
        }
        ApiRoute::from_path(route).map(FaultRoute::Api)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FaultRoute::Any => "*",
            FaultRoute::Api(route) => route.path(),
        }
    }

    fn slot(self) -> usize {
        match self {
            FaultRoute::Any => ANY_SLOT,
            FaultRoute::Api(route) => route.index(),
        }
    }
}

impl Serialize for FaultRoute {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FaultRoute {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let route = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        FaultRoute::parse(&route).ok_or_else(|| {
            serde::de::Error::custom(format_args!(
                "unknown route `{route}`: expected `*` or one of /v1/chat/completions, \
                 /v1/models, /v1/messages, /api/chat, /api/tags"
            ))
        })
    }
}

// === impl Fault ===

impl Fault {
    /// Rejects faults that cannot be applied.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(status) = self.status
            && !(400..=599).contains(&status)
        {
            return Err(format!(
                "status {status} is not an error status (400..=599)"
            ));
        }
        if self.times == Some(0) {
            return Err("times must be at least 1".to_owned());
        }
        Ok(())
    }

    pub fn latency(&self) -> Option<Duration> {
        self.latency_ms
            .filter(|&ms| ms > 0)
            .map(Duration::from_millis)
    }

    pub fn stream_faults(&self) -> StreamFaults {
        StreamFaults {
            chunk_delay: self
                .chunk_delay_ms
                .filter(|&ms| ms > 0)
                .map(Duration::from_millis),
            stall_after: self.stall_after_chunks,
            reset_after: (self.reset == Some(ResetMode::MidStream))
                .then(|| self.reset_after_chunks.unwrap_or(1)),
            end_after: self.end_after_chunks,
        }
    }
}

// === impl StreamFaults ===

impl StreamFaults {
    pub fn is_none(&self) -> bool {
        *self == StreamFaults::default()
    }
}

// === impl FaultTable ===

impl FaultTable {
    /// Stores a fault, replacing the previous one on the same route.
    pub fn set(&self, fault: Fault) {
        let mut slots = self.slots.lock();
        slots[fault.route.slot()] = Some(fault);
        self.armed.store(true, Ordering::Release);
    }

    /// Clears one route's fault, or all of them; returns how many were cleared.
    pub fn clear(&self, route: Option<FaultRoute>) -> usize {
        let mut slots = self.slots.lock();
        let cleared = match route {
            Some(route) => usize::from(slots[route.slot()].take().is_some()),
            None => slots.iter_mut().filter_map(Option::take).count(),
        };
        self.armed
            .store(slots.iter().any(Option::is_some), Ordering::Release);
        cleared
    }

    pub fn list(&self) -> Vec<Fault> {
        self.slots.lock().iter().flatten().copied().collect()
    }

    /// The fault that applies to one request on `route`, consuming one of its `times`.
    pub fn take(&self, route: ApiRoute) -> Option<Fault> {
        if !self.armed.load(Ordering::Acquire) {
            return None;
        }
        let mut slots = self.slots.lock();
        let slot = if slots[route.index()].is_some() {
            route.index()
        } else {
            ANY_SLOT
        };
        let fault = slots[slot].as_mut()?;
        let taken = *fault;
        match &mut fault.times {
            Some(1) => {
                slots[slot] = None;
                self.armed
                    .store(slots.iter().any(Option::is_some), Ordering::Release);
            }
            Some(left) => *left -= 1,
            None => {}
        }
        Some(taken)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn fault(json: &str) -> Fault {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn specific_route_wins_over_wildcard_and_times_count_down() {
        let table = FaultTable::default();
        table.set(fault(r#"{"route":"*","status":503}"#));
        table.set(fault(r#"{"route":"/v1/messages","status":429,"times":2}"#));
        assert_eq!(table.take(ApiRoute::Messages).unwrap().status, Some(429));
        assert_eq!(table.take(ApiRoute::Messages).unwrap().status, Some(429));
        assert_eq!(table.take(ApiRoute::Messages).unwrap().status, Some(503));
        assert_eq!(table.take(ApiRoute::OllamaChat).unwrap().status, Some(503));
        assert_eq!(table.clear(None), 1);
        assert!(table.take(ApiRoute::Messages).is_none());
    }

    #[test]
    fn rejects_unknown_routes_fields_and_bad_values() {
        assert!(serde_json::from_str::<Fault>(r#"{"route":"/nope"}"#).is_err());
        assert!(serde_json::from_str::<Fault>(r#"{"route":"*","bogus":1}"#).is_err());
        assert!(fault(r#"{"route":"*","status":200}"#).validate().is_err());
        assert!(fault(r#"{"route":"*","times":0}"#).validate().is_err());
        let mid = fault(r#"{"route":"*","reset":"mid_stream"}"#);
        assert_eq!(mid.stream_faults().reset_after, Some(1));
    }
}
