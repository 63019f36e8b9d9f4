//! A fault-injecting HTTP proxy in front of a real upstream (Prosody): every request is forwarded as it is,
//! or delayed, answered with an error, or answered with garbage — switched while the test runs, request by
//! request (a TCP-level proxy would not do: clients keep their connections alive across a switch).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::sync::oneshot;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward untouched.
    None,
    /// Wait, then forward (slowness; a timeout when longer than the client's).
    Delay(Duration),
    /// 500 with a short text body.
    ServerError,
    /// 200 with bytes that are neither OpenMetrics nor JSON.
    Garbage,
}

#[derive(Clone, Debug)]
struct Shared {
    upstream: String,
    fault: Arc<Mutex<Fault>>,
    client: reqwest::Client,
}

/// Runs on 127.0.0.1 until dropped.
#[derive(Debug)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    fault: Arc<Mutex<Fault>>,
    stop: Option<oneshot::Sender<()>>,
}

impl FaultProxy {
    pub async fn start(upstream: &str) -> Self {
        let fault = Arc::new(Mutex::new(Fault::None));
        let shared = Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            fault: fault.clone(),
            client: reqwest::Client::new(),
        };
        let app = Router::new().fallback(forward).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            addr,
            fault,
            stop: Some(stop),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Applies to every request from now on.
    pub fn set(&self, fault: Fault) {
        if let Ok(mut current) = self.fault.lock() {
            *current = fault;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn forward(State(shared): State<Shared>, request: Request) -> Response {
    let fault = shared.fault.lock().map(|f| *f).unwrap_or(Fault::None);
    match fault {
        Fault::ServerError => return (StatusCode::INTERNAL_SERVER_ERROR, "injected failure").into_response(),
        Fault::Garbage => return (StatusCode::OK, "\u{0}\u{1}not{ metrics\n\u{7f}").into_response(),
        Fault::Delay(delay) => tokio::time::sleep(delay).await,
        Fault::None => {}
    }
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut upstream = shared.client.get(format!("{}{path}", shared.upstream));
    for (name, value) in request.headers() {
        if name != "host" {
            upstream = upstream.header(name, value);
        }
    }
    match upstream.send().await {
        Ok(response) => {
            let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let content_type = response.headers().get("content-type").cloned();
            let body = response.bytes().await.unwrap_or_default();
            let mut answer = Response::new(Body::from(body));
            *answer.status_mut() = status;
            if let Some(content_type) = content_type
                && let Ok(value) = content_type.to_str()
                && let Ok(header) = value.parse()
            {
                answer.headers_mut().insert("content-type", header);
            }
            answer
        }
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}
