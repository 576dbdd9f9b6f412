//! Every metric the node exports, defined in one place. Names and meanings of the seed's
//! metrics are kept (`hapax_http_requests_total`, ..., `circuit_breaker_state`).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Request latencies from a millisecond to five minutes (LLM calls are long).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

/// Cache operations are sub-millisecond when healthy; the top buckets show a slow Redis.
const CACHE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Every `endpoint` label value (bounded cardinality), indexed by `observe::endpoint_index`.
pub const ENDPOINTS: [&str; 8] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/health",
    "/v1/health",
    "/metrics",
    "/admin",
    "other",
];
const PROTOCOLS: [&str; 3] = ["h1", "h2", "h3"];

/// Handles resolved once per endpoint, so the common path does no label look-ups.
pub struct EndpointHandles {
    pub active: prometheus::IntGauge,
    pub duration: prometheus::Histogram,
    /// `status="200"` per protocol (h1, h2, h3).
    pub ok: [IntCounter; 3],
}

pub struct Metrics {
    registry: Registry,
    pub endpoints: Vec<EndpointHandles>,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub http_active: IntGaugeVec,
    pub errors: IntCounterVec,
    pub breaker_state: IntGaugeVec,
    pub breaker_transitions: IntCounterVec,
    pub health_check_duration: HistogramVec,
    pub provider_healthy: IntGaugeVec,
    pub deduplicated: IntCounter,
    pub rate_limit_hits: IntCounterVec,
    pub provider_requests: IntCounterVec,
    pub provider_duration: HistogramVec,
    pub provider_ttft: HistogramVec,
    pub provider_tokens: IntCounterVec,
    pub failovers: IntCounterVec,
    /// Requests sent again on a new upstream connection: the upstream closed a kept one as
    /// they arrived (its idle timeout racing the pool's), by provider.
    pub upstream_resends: IntCounterVec,
    pub cache_requests: IntCounterVec,
    pub cache_errors: IntCounterVec,
    pub cache_duration: HistogramVec,
    /// Client-API requests answered 503 `overloaded` by the in-flight cap, by endpoint.
    pub load_shed: IntCounterVec,
    /// TCP connections open now, and those closed at once by the connection cap.
    pub tcp_connections: IntGauge,
    pub tcp_connections_refused: IntCounter,
}

fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn gauge(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, prometheus::Error> {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<HistogramVec, prometheus::Error> {
    let metric = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let r = Registry::new();
        let deduplicated = IntCounter::new(
            "hapax_deduplicated_requests_total",
            "Upstream calls saved by request deduplication",
        )?;
        r.register(Box::new(deduplicated.clone()))?;
        let mut metrics = Self {
            endpoints: Vec::new(),
            http_requests: counter(
                &r,
                "hapax_http_requests_total",
                "HTTP requests by endpoint, status and protocol (h1, h2, h3)",
                &["endpoint", "status", "protocol"],
            )?,
            http_duration: histogram(
                &r,
                "hapax_http_request_duration_seconds",
                "HTTP request latency, to the end of the body",
                &["endpoint"],
            )?,
            http_active: gauge(
                &r,
                "hapax_http_active_requests",
                "Requests in flight, streams included",
                &["endpoint"],
            )?,
            errors: counter(&r, "hapax_errors_total", "Errors by type", &["type"])?,
            breaker_state: gauge(
                &r,
                "circuit_breaker_state",
                "Circuit breaker state per provider: 0 closed, 1 half-open, 2 open",
                &["provider"],
            )?,
            breaker_transitions: counter(
                &r,
                "hapax_circuit_breaker_transitions_total",
                "Circuit breaker transitions by target state",
                &["provider", "state"],
            )?,
            health_check_duration: histogram(
                &r,
                "hapax_health_check_duration_seconds",
                "Duration of active provider health checks",
                &["provider"],
            )?,
            provider_healthy: gauge(
                &r,
                "hapax_provider_healthy",
                "1 when the provider is considered healthy",
                &["provider"],
            )?,
            deduplicated,
            rate_limit_hits: counter(
                &r,
                "hapax_rate_limit_hits_total",
                "Requests rejected by a rate limit, by client key name",
                &["client"],
            )?,
            provider_requests: counter(
                &r,
                "hapax_provider_requests_total",
                "Upstream attempts by provider and outcome",
                &["provider", "outcome"],
            )?,
            provider_duration: histogram(
                &r,
                "hapax_provider_request_duration_seconds",
                "Upstream attempt latency (to the full answer or the first chunk)",
                &["provider"],
            )?,
            provider_ttft: histogram(
                &r,
                "hapax_provider_time_to_first_token_seconds",
                "Time to the first streamed chunk",
                &["provider"],
            )?,
            provider_tokens: counter(
                &r,
                "hapax_provider_tokens_total",
                "Tokens reported by providers",
                &["provider", "direction"],
            )?,
            failovers: counter(
                &r,
                "hapax_failovers_total",
                "Failovers from one provider to the next",
                &["from", "to"],
            )?,
            upstream_resends: counter(
                &r,
                "hapax_upstream_resends_total",
                "Requests sent again on another connection because the upstream dropped \
                 theirs unanswered as they arrived (its idle timeout racing the gateway's pool) \
                 or refused an HTTP/2 stream",
                &["provider"],
            )?,
            cache_requests: counter(
                &r,
                "hapax_cache_requests_total",
                "Completion requests by response-cache result (hit, miss, bypass)",
                &["result"],
            )?,
            cache_errors: counter(
                &r,
                "hapax_cache_errors_total",
                "Response-cache operations that failed or timed out",
                &["op"],
            )?,
            cache_duration: {
                let metric = HistogramVec::new(
                    HistogramOpts::new(
                        "hapax_cache_operation_duration_seconds",
                        "Response-cache operation latency",
                    )
                    .buckets(CACHE_BUCKETS.to_vec()),
                    &["op"],
                )?;
                r.register(Box::new(metric.clone()))?;
                metric
            },
            load_shed: counter(
                &r,
                "hapax_load_shed_total",
                "Requests refused with 503 because the node was at its cap of requests in flight",
                &["endpoint"],
            )?,
            tcp_connections: {
                let metric = IntGauge::new("hapax_tcp_connections", "TCP connections open")?;
                r.register(Box::new(metric.clone()))?;
                metric
            },
            tcp_connections_refused: {
                let metric = IntCounter::new(
                    "hapax_tcp_connections_refused_total",
                    "TCP connections closed at once because server.max_connections were open",
                )?;
                r.register(Box::new(metric.clone()))?;
                metric
            },
            registry: r,
        };
        metrics.endpoints = ENDPOINTS
            .iter()
            .map(|&endpoint| {
                Ok(EndpointHandles {
                    active: metrics
                        .http_active
                        .get_metric_with_label_values(&[endpoint])?,
                    duration: metrics
                        .http_duration
                        .get_metric_with_label_values(&[endpoint])?,
                    ok: [
                        metrics.http_requests.get_metric_with_label_values(&[
                            endpoint,
                            "200",
                            PROTOCOLS[0],
                        ])?,
                        metrics.http_requests.get_metric_with_label_values(&[
                            endpoint,
                            "200",
                            PROTOCOLS[1],
                        ])?,
                        metrics.http_requests.get_metric_with_label_values(&[
                            endpoint,
                            "200",
                            PROTOCOLS[2],
                        ])?,
                    ],
                })
            })
            .collect::<Result<_, prometheus::Error>>()?;
        Ok(metrics)
    }

    /// Requests answered so far, all endpoints together: a cheap activity signal.
    pub fn requests_completed(&self) -> u64 {
        self.endpoints
            .iter()
            .map(|e| e.duration.get_sample_count())
            .sum()
    }

    /// The registry, for other crates' metrics (the cluster's).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition of everything registered.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buffer = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        String::from_utf8(buffer).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}
