//! What the TLS listener puts in front of the router: the request checks the plain listener
//! makes in its own HTTP/1.1 parser and hyper's server (behind TLS) does not, and the
//! `Alt-Svc` announcement of HTTP/3.

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::header::{ALT_SVC, CONNECTION, CONTENT_TYPE, HOST};
use axum::http::{HeaderValue, Request, Version};
use axum::response::Response;
use futures_util::future::BoxFuture;
use hyper::body::Incoming;

use super::http1::head::{self, HeadError};
use super::observe::ObservedRouter;
use super::request_id;

/// The router as the TLS listener serves it (HTTP/1.1 and HTTP/2 by ALPN).
#[derive(Clone)]
pub struct TlsFront {
    router: ObservedRouter,
    alt_svc: Option<HeaderValue>,
}

impl TlsFront {
    pub fn new(router: ObservedRouter, alt_svc: Option<HeaderValue>) -> Self {
        Self { router, alt_svc }
    }

    /// A request refused before routing, answered as the plain listener answers a refused
    /// head (same status, body and error type, counted and logged under `other`), and the
    /// connection closed after it.
    fn refuse(&self, request: &Request<Incoming>, error: &HeadError) -> Response {
        tracing::debug!(%error, "request refused on the TLS listener");
        let id = self.router.record_refused_head(
            request.method().clone(),
            error.status().as_u16(),
            error.code(),
        );
        let mut response = Response::new(Body::from(head::error_body(error)));
        *response.status_mut() = error.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
        if let Ok(value) = HeaderValue::from_str(&id) {
            headers.insert(request_id::HEADER, value);
        }
        response
    }
}

/// RFC 9112 §3.2 for an HTTP/1.x request; HTTP/2 names its authority in `:authority`.
fn host_problem(request: &Request<Incoming>) -> Option<HeadError> {
    let http11 = match request.version() {
        Version::HTTP_11 => true,
        Version::HTTP_10 | Version::HTTP_09 => false,
        _ => return None,
    };
    head::host_problem(http11, request.headers().get_all(HOST).iter().count())
}

impl tower::Service<Request<Incoming>> for TlsFront {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        if let Some(error) = host_problem(&request) {
            let refusal = self.refuse(&request, &error);
            return Box::pin(std::future::ready(Ok(refusal)));
        }
        let answer = tower::Service::call(&mut self.router, request);
        let alt_svc = self.alt_svc.clone();
        Box::pin(async move {
            let mut response = match answer.await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            if let Some(value) = alt_svc {
                response.headers_mut().insert(ALT_SVC, value);
            }
            Ok(response)
        })
    }
}
