//! What both exporters are made of: an upstream on localhost fetched with deadlines and a size limit
//! ([`Upstream`]), one fetch in flight shared by every scrape that arrives meanwhile ([`SingleFlight`]),
//! failures counted by source and reason with every pair exported from the start ([`ErrorCounts`]), and
//! the HTTP side — `/metrics`, `/livez`, `/readyz` ([`router`]). An exporter only says how to turn what
//! it fetched into metric families.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Request, Uri, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::admin::{Readiness, health_router};
use crate::exposition::{CONTENT_TYPE, Family, errors_by_source_and_reason};

/// Why a fetch from the upstream failed, before its body was looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("no answer within the timeout")]
    Timeout,
    #[error("cannot connect")]
    Connect,
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("the body is larger than the limit")]
    TooLarge,
    #[error("the body could not be read")]
    ReadBody,
}

/// A successful answer: 2xx, its body read whole and within the limit.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// An upstream address the exporter cannot fetch: one sentence for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{url:?} is not a plain http:// URL with a host ({why}): the upstream is a sidecar on localhost")]
pub struct InvalidUrl {
    url: String,
    why: String,
}

/// The HTTP client of an exporter's upstream: one keep-alive connection pool, a deadline on every
/// request, and a limit on what it reads, so a misbehaving upstream costs a failed scrape, never the
/// sidecar's memory. Plain HTTP/1.1 to a parsed address: the upstream is a sidecar on localhost, and
/// a general-purpose client (URL parsing, redirects, TLS) cost a tenth of every scrape's CPU.
#[derive(Clone, Debug)]
pub struct Upstream {
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
    body_limit: usize,
}

impl Upstream {
    /// `timeout` bounds connecting and the whole exchange; `body_limit` bounds each body, in bytes.
    pub fn new(timeout: Duration, body_limit: usize) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self {
            client,
            timeout,
            body_limit,
        }
    }

    /// Parses an upstream address once, at start.
    pub fn url(text: &str) -> Result<Uri, InvalidUrl> {
        let invalid = |why: &str| InvalidUrl {
            url: text.to_owned(),
            why: why.to_owned(),
        };
        let uri: Uri = text
            .parse()
            .map_err(|e: axum::http::uri::InvalidUri| invalid(&e.to_string()))?;
        match (uri.scheme_str(), uri.host()) {
            (Some("http"), Some(_)) => Ok(uri),
            (Some(other), _) if other != "http" => Err(invalid(&format!("scheme {other}"))),
            _ => Err(invalid("no scheme or host")),
        }
    }

    /// GETs `url` (with `accept` as its Accept header when given). Non-2xx answers are errors.
    pub async fn get(&self, url: &Uri, accept: Option<&str>) -> Result<Fetched, FetchError> {
        match tokio::time::timeout(self.timeout, self.exchange(url, accept)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout),
        }
    }

    async fn exchange(&self, url: &Uri, accept: Option<&str>) -> Result<Fetched, FetchError> {
        let mut request = Request::get(url.clone());
        if let Some(accept) = accept {
            request = request.header(header::ACCEPT, accept);
        }
        let request = request.body(Empty::new()).map_err(|_| FetchError::Connect)?;
        let response = self.client.request(request).await.map_err(|error| {
            if error.is_connect() {
                FetchError::Connect
            } else {
                FetchError::ReadBody
            }
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status(status.as_u16()));
        }
        let length = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        if length.is_some_and(|length| length > self.body_limit as u64) {
            return Err(FetchError::TooLarge);
        }
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        // Read frame by frame: a body without a length (or lying about it) stops at the limit.
        let mut body = Vec::with_capacity(length.map_or(0, |length| length as usize));
        let mut incoming = response.into_body();
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(|_| FetchError::ReadBody)?;
            if let Ok(chunk) = frame.into_data() {
                if body.len() + chunk.len() > self.body_limit {
                    return Err(FetchError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
        }
        Ok(Fetched {
            content_type,
            body: Bytes::from(body),
        })
    }
}

/// Failures counted by `(source, reason)`, both from bounded sets the exporter declares.
#[derive(Debug, Default)]
pub struct ErrorCounts(Mutex<BTreeMap<(&'static str, &'static str), u64>>);

impl ErrorCounts {
    pub fn count(&self, source: &'static str, reason: &'static str) {
        tracing::debug!(source, reason, "fetch from the upstream failed");
        let mut counts = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *counts.entry((source, reason)).or_insert(0) += 1;
    }

    /// A counter family with a sample for every `source` × `reason` pair, 0 until it happens, so
    /// `rate()` and alerts work from the first scrape.
    pub fn family(
        &self,
        name: &str,
        help: &str,
        sources: &[&'static str],
        reasons: &[&'static str],
    ) -> Family {
        let counts = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        errors_by_source_and_reason(name, help, sources, reasons, |source, reason| {
            counts.get(&(source, reason)).copied().unwrap_or(0)
        })
    }
}

/// At most one scrape of the upstream at a time: callers that arrive while one is in flight get its
/// result, so the upstream sees one request however many scrapers ask at once.
pub struct SingleFlight<T: Clone> {
    in_flight: Arc<Mutex<Option<Shared<BoxFuture<'static, T>>>>>,
}

impl<T: Clone> Default for SingleFlight<T> {
    fn default() -> Self {
        Self {
            in_flight: Arc::default(),
        }
    }
}

impl<T: Clone> std::fmt::Debug for SingleFlight<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleFlight").finish_non_exhaustive()
    }
}

impl<T: Clone + Send + Sync + 'static> SingleFlight<T> {
    /// The result of the scrape in flight, or of a new one made by `start`.
    pub async fn run<F>(&self, start: impl FnOnce() -> F) -> T
    where
        F: Future<Output = T> + Send + 'static,
    {
        let shared = {
            let mut slot = self
                .in_flight
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match slot.as_ref() {
                Some(shared) => shared.clone(),
                None => {
                    let scrape = start();
                    let done = Arc::clone(&self.in_flight);
                    let shared = async move {
                        let result = scrape.await;
                        done.lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .take();
                        result
                    }
                    .boxed()
                    .shared();
                    *slot = Some(shared.clone());
                    shared
                }
            }
        };
        shared.await
    }
}

/// An exporter: what `/metrics` answers, always 200 and valid text (failures are in the metrics).
pub trait Exporter: Send + Sync + 'static {
    fn metrics(self: Arc<Self>) -> impl Future<Output = Bytes> + Send;
}

/// `/metrics` from `exporter`, plus `/livez` and `/readyz`.
pub fn router<E: Exporter>(exporter: Arc<E>, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics::<E>))
        .with_state(exporter)
        .merge(health_router(readiness))
}

async fn metrics<E: Exporter>(State(exporter): State<Arc<E>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], exporter.metrics().await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_run_and_later_ones_start_another() {
        let flight = Arc::new(SingleFlight::<usize>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let call = |flight: Arc<SingleFlight<usize>>, runs: Arc<AtomicUsize>| async move {
            flight
                .run(|| async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    runs.fetch_add(1, Ordering::SeqCst) + 1
                })
                .await
        };
        let together: Vec<usize> =
            futures::future::join_all((0..20).map(|_| call(Arc::clone(&flight), Arc::clone(&runs)))).await;
        assert!(together.iter().all(|run| *run == 1), "{together:?}");
        assert_eq!(call(Arc::clone(&flight), Arc::clone(&runs)).await, 2);
    }

    #[test]
    fn every_pair_is_exported_and_counted() {
        let counts = ErrorCounts::default();
        counts.count("b", "connect");
        counts.count("b", "connect");
        let family = counts.family("x_errors_total", "h", &["a", "b"], &["timeout", "connect"]);
        let values: Vec<f64> = family.samples.iter().map(|sample| sample.value).collect();
        assert_eq!(values, vec![0.0, 0.0, 0.0, 2.0]);
    }
}
