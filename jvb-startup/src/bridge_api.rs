//! The bridge's private HTTP API on localhost (`/colibri/...`), spoken with the HTTP client that the
//! Kubernetes client already links, so this binary carries one HTTP stack, not two.

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Where the drain hook asks the bridge for a graceful shutdown.
pub const SHUTDOWN: &str = "/colibri/shutdown";
/// Drain mode only (`drain --drain-only`): no new conferences, the bridge keeps running.
pub const DRAIN_ENABLE: &str = "/colibri/drain/enable";
/// Where the drain hook reads the participants left.
pub const STATS: &str = "/colibri/stats";

/// Every request this binary makes of the bridge (the image contract checks that the bridge's
/// configuration serves each).
pub const ENDPOINTS: [(&str, &str); 3] = [("POST", SHUTDOWN), ("POST", DRAIN_ENABLE), ("GET", STATS)];

/// More than any stats document a bridge sends; a larger answer is treated as broken.
const BODY_LIMIT: usize = 1 << 20;

/// An answer of the bridge, whatever its status.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// An HTML page: what Jetty answers where the REST API is disabled.
    pub fn is_html(&self) -> bool {
        self.content_type
            .as_deref()
            .is_some_and(|value| value.starts_with("text/html"))
            || self.text().trim_start().starts_with('<')
    }
}

/// Why no answer came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The port refused the connection: nothing listens there (the bridge is not, or no longer, running).
    Refused,
    /// No whole answer within the timeout: a slow or overloaded bridge.
    Timeout,
    /// Anything else: reset, closed mid-answer, an oversized body. Says what.
    Broken(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused => f.write_str("connection refused"),
            Failure::Timeout => f.write_str("no answer within the timeout"),
            Failure::Broken(why) => f.write_str(why),
        }
    }
}

#[derive(Clone, Debug)]
pub struct BridgeApi {
    base: String,
    timeout: Duration,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl BridgeApi {
    /// `base_url` is `http://host:port` (plain HTTP: the API is the pod's own); `timeout` bounds each
    /// request from connecting to the last byte of the answer.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, String> {
        let base = base_url.trim_end_matches('/').to_owned();
        let uri: Uri = base
            .parse()
            .map_err(|_| format!("{base_url:?} is not a valid URL"))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(format!("{base_url:?} is not a URL like http://127.0.0.1:8080"));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            base,
            timeout,
            client,
        })
    }

    pub async fn get(&self, path: &str) -> Result<Answer, Failure> {
        self.send(Method::GET, path, None).await
    }

    /// POSTs a JSON body.
    pub async fn post_json(&self, path: &str, body: &'static str) -> Result<Answer, Failure> {
        self.send(Method::POST, path, Some(body)).await
    }

    async fn send(&self, method: Method, path: &str, json: Option<&'static str>) -> Result<Answer, Failure> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if json.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from_static(json.unwrap_or_default().as_bytes())))
            .map_err(|error| Failure::Broken(error.to_string()))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|error| {
                if is_refused(&error) {
                    Failure::Refused
                } else {
                    Failure::Broken(chain(&error))
                }
            })?;
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            let body = Limited::new(response.into_body(), BODY_LIMIT)
                .collect()
                .await
                .map_err(|error| Failure::Broken(format!("reading the answer: {error}")))?
                .to_bytes();
            Ok(Answer {
                status,
                content_type,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or(Err(Failure::Timeout))
    }
}

/// Whether the connection was refused (as opposed to reset, timed out, ...): the one sign that nothing
/// listens on the port.
fn is_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(current) = source {
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = current.source();
    }
    false
}

/// An error and its causes, as one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(current) = source {
        text.push_str(": ");
        text.push_str(&current.to_string());
        source = current.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_are_taken() {
        assert!(BridgeApi::new("http://127.0.0.1:8080/", Duration::from_secs(1)).is_ok());
        for bad in ["", "127.0.0.1:8080", "https://127.0.0.1:8080", "not a url"] {
            assert!(BridgeApi::new(bad, Duration::from_secs(1)).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_refused_and_a_silent_one_times_out() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let api = BridgeApi::new(&format!("http://{closed}"), Duration::from_millis(300)).unwrap();
        assert_eq!(api.get("/colibri/stats").await.unwrap_err(), Failure::Refused);

        // Accepts connections, never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let api = BridgeApi::new(
            &format!("http://{}", silent.local_addr().unwrap()),
            Duration::from_millis(300),
        )
        .unwrap();
        assert_eq!(api.get("/colibri/stats").await.unwrap_err(), Failure::Timeout);
        drop(silent);
    }
}
