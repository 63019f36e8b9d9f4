//! A stand-in for a Jitsi Videobridge's private HTTP API (port 8080), for code that talks to one: no JVB
//! can run here. It serves the real recorded outputs in `testdata/colibri/` and behaves as the real API
//! does (Jitsi's documentation and sources of jitsi-videobridge):
//! - `GET /colibri/stats`: the fixture's JSON, with the participant fields following the shutdown state;
//! - with the REST API disabled, `/colibri/*` answers 404 with the real Jetty HTML page;
//! - `POST /colibri/shutdown` `{"graceful-shutdown": true}`: GRACEFUL_SHUTDOWN, participants leave one by
//!   one, then SHUTTING_DOWN, and a while after the last local endpoint left the bridge exits by itself:
//!   the port stops answering (connection refused);
//! - `POST /colibri/drain/enable`: drain mode, the bridge keeps running;
//! - `GET /about/health`: 200 with an empty body;
//! - `GET /metrics`: native `jitsi_jvb_*` metrics as Prometheus text when asked with
//!   `Accept: text/plain`, JSON otherwise (as older bridges did). No real capture of this endpoint
//!   exists (`testdata/README.md`), so its body is synthetic, built from the documented metric names;
//! - an optional delay before every answer (a slow or overloaded bridge);
//! - faults injected one request at a time ([`Fault`]): an error status, a stall of the whole bridge,
//!   a connection reset (the socket closed with RST, no answer).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use tokio::sync::{oneshot, watch};

use crate::testdata;

#[derive(Clone, Debug)]
pub struct StubConfig {
    /// A file under `testdata/colibri/`, served as `/colibri/stats`.
    pub stats_fixture: String,
    /// `COLIBRI_REST_ENABLED` / `SHUTDOWN_REST_ENABLED`: false → the HTML 404 page.
    pub rest_enabled: bool,
    /// Local participants at start; `None` serves the fixture's own numbers untouched.
    pub participants: Option<u64>,
    /// After a graceful shutdown request, one participant leaves this often (`None`: nobody leaves).
    pub leave_every: Option<Duration>,
    /// The real bridge exits 1 minute after its last local endpoint left; scaled down for tests.
    pub exit_after_empty: Duration,
    /// Added before every answer.
    pub delay: Duration,
    /// When set, `stress_level` follows the participants: this much per participant (a bridge's load
    /// grows with what it forwards; 0.05 makes 20 participants a bridge at capacity).
    pub stress_per_participant: Option<f64>,
}

impl Default for StubConfig {
    fn default() -> Self {
        Self {
            stats_fixture: "2026-jvb-2.3.63-relay.json".to_owned(),
            rest_enabled: true,
            participants: None,
            leave_every: Some(Duration::from_millis(100)),
            exit_after_empty: Duration::from_millis(300),
            delay: Duration::ZERO,
            stress_per_participant: None,
        }
    }
}

/// What the next request of a path meets instead of (or before) the bridge's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and a short text body (a 500 or 503 of an overloaded bridge).
    Status(u16),
    /// The whole bridge stops answering for this long, from this request on (a long GC pause).
    Stall(Duration),
    /// The connection is reset: the socket is closed with RST and no answer is sent.
    Reset,
}

#[derive(Debug)]
struct Stub {
    config: StubConfig,
    stats: Value,
    /// When participants started leaving (a graceful shutdown or drain mode was asked for).
    leaving_since: Option<Instant>,
    shutdown_requested: bool,
    drain: bool,
    requests: BTreeMap<String, usize>,
    raw_stats: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    /// Faults still to meet, by path.
    faults: BTreeMap<&'static str, VecDeque<Fault>>,
    /// No answer before this instant.
    stalled_until: Option<Instant>,
    /// Bumped to reset every open connection.
    resets: watch::Sender<u64>,
}

type Shared = Arc<Mutex<Stub>>;

/// A running stub bridge on 127.0.0.1; stops when dropped.
#[derive(Debug)]
pub struct BridgeStub {
    pub addr: SocketAddr,
    state: Shared,
}

impl BridgeStub {
    pub async fn start(config: StubConfig) -> Self {
        let stats: Value = serde_json::from_str(&testdata(&format!("colibri/{}", config.stats_fixture)))
            .unwrap_or(Value::Null);
        let (stop, stopped) = oneshot::channel();
        let state: Shared = Arc::new(Mutex::new(Stub {
            config,
            stats,
            leaving_since: None,
            shutdown_requested: false,
            drain: false,
            requests: BTreeMap::new(),
            raw_stats: None,
            stop: Some(stop),
            faults: BTreeMap::new(),
            stalled_until: None,
            resets: watch::channel(0).0,
        }));
        let app = Router::new()
            .route("/colibri/stats", get(stats_handler))
            .route("/colibri/shutdown", post(shutdown_handler))
            .route("/colibri/drain/enable", post(drain_handler))
            .route("/about/health", get(health_handler))
            .route("/metrics", get(native_handler))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the stub bridge");
        let addr = listener.local_addr().expect("stub address");
        let resets = state.lock().expect("stub state").resets.subscribe();
        tokio::spawn(serve(listener, app, stopped, resets));
        Self { addr, state }
    }

    /// The next requests of `path` (`/colibri/stats`, `/colibri/shutdown`, ...) meet `faults`, one each.
    pub fn inject(&self, path: &'static str, faults: impl IntoIterator<Item = Fault>) {
        if let Ok(mut stub) = self.state.lock() {
            stub.faults.entry(path).or_default().extend(faults);
        }
    }

    /// Faults injected and not met yet.
    pub fn pending_faults(&self) -> usize {
        self.state
            .lock()
            .map(|s| s.faults.values().map(VecDeque::len).sum())
            .unwrap_or(0)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests each `METHOD /path` got.
    pub fn requests(&self, method_and_path: &str) -> usize {
        self.state
            .lock()
            .map(|s| s.requests.get(method_and_path).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Replaces the stats body (to flip between fixtures while running); ends a [`Self::set_stats_raw`].
    pub fn set_stats_fixture(&self, name: &str) {
        let stats = serde_json::from_str(&testdata(&format!("colibri/{name}"))).unwrap_or(Value::Null);
        if let Ok(mut stub) = self.state.lock() {
            stub.stats = stats;
            stub.config.stats_fixture = name.to_owned();
            stub.raw_stats = None;
        }
    }

    /// Delay before every answer from now on (a bridge that became slow, or recovered).
    pub fn set_delay(&self, delay: Duration) {
        if let Ok(mut stub) = self.state.lock() {
            stub.config.delay = delay;
        }
    }

    /// Turns the colibri REST API off (the HTML 404 page) or back on.
    pub fn set_rest_enabled(&self, enabled: bool) {
        if let Ok(mut stub) = self.state.lock() {
            stub.config.rest_enabled = enabled;
        }
    }

    /// Serves `body` as `/colibri/stats` from now on (invalid JSON, odd shapes).
    pub fn set_stats_raw(&self, body: &str) {
        if let Ok(mut stub) = self.state.lock() {
            stub.raw_stats = Some(body.to_owned());
        }
    }

    /// The participants a running bridge has now (new conferences landing on it, or ending); ignored
    /// once participants are leaving (a shutdown or drain was asked for): they only leave then.
    pub fn set_participants(&self, participants: u64) {
        if let Ok(mut stub) = self.state.lock()
            && stub.leaving_since.is_none()
        {
            stub.config.participants = Some(participants);
        }
    }

    /// How often a participant leaves once a graceful shutdown is asked for (set before asking).
    pub fn set_leave_every(&self, every: Duration) {
        if let Ok(mut stub) = self.state.lock()
            && stub.leaving_since.is_none()
        {
            stub.config.leave_every = Some(every);
        }
    }

    /// The bridge pod's preStop hook, as the manifest runs it: `jvb-startup drain` against this bridge
    /// (intervals shortened).
    pub fn start_pre_stop_drain(&self) -> tokio::process::Child {
        tokio::process::Command::new(crate::daemon::binary("jvb-startup"))
            .arg("drain")
            .env("JVB_URL", self.url())
            .env("DRAIN_INTERVAL", "500ms")
            .env("DRAIN_TIMEOUT", "2m")
            .env("DRAIN_GONE_AFTER", "1s")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting jvb-startup drain")
    }

    pub fn drain_enabled(&self) -> bool {
        self.state.lock().map(|s| s.drain).unwrap_or(false)
    }
}

impl Drop for BridgeStub {
    fn drop(&mut self) {
        if let Ok(mut stub) = self.state.lock()
            && let Some(stop) = stub.stop.take()
        {
            let _ = stop.send(());
        }
    }
}

/// Accepts connections and serves each with hyper, so that a [`Fault::Reset`] can drop them: every
/// socket lingers 0 s, so dropping it sends RST.
async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    mut stopped: oneshot::Receiver<()>,
    resets: watch::Receiver<u64>,
) {
    // When the bridge exits, its open connections go with it.
    let (exited, exit) = watch::channel(false);
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => {
                exited.send_replace(true);
                return;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let _ = stream.set_zero_linger();
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut resets = resets.clone();
        let generation = *resets.borrow_and_update();
        let mut exit = exit.clone();
        tokio::spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = resets.wait_for(|now| *now != generation) => {}
                _ = exit.wait_for(|exited| *exited) => {}
            }
        });
    }
}

/// Counts the request, then plays the fault due for `path`, if any. `Some(response)`: answer that.
async fn count_and_fault(
    state: &Shared,
    method: &str,
    path: &'static str,
) -> (StubConfig, Option<Instant>, Option<Response>) {
    let (config, leaving_since, fault, stalled_until) = {
        let mut stub = state.lock().expect("stub state");
        *stub.requests.entry(format!("{method} {path}")).or_insert(0) += 1;
        let fault = stub.faults.get_mut(path).and_then(VecDeque::pop_front);
        if let Some(Fault::Stall(duration)) = fault {
            stub.stalled_until = Some(Instant::now() + duration);
        }
        (stub.config.clone(), stub.leaving_since, fault, stub.stalled_until)
    };
    if let Some(until) = stalled_until {
        tokio::time::sleep_until(until.into()).await;
    }
    tokio::time::sleep(config.delay).await;
    let response = match fault {
        Some(Fault::Status(code)) => Some(
            (
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "injected fault\n",
            )
                .into_response(),
        ),
        Some(Fault::Reset) => {
            if let Ok(stub) = state.lock() {
                stub.resets.send_modify(|generation| *generation += 1);
            }
            // The connection is dropped under this request: it never answers.
            std::future::pending::<()>().await;
            None
        }
        Some(Fault::Stall(_)) | None => None,
    };
    (config, leaving_since, response)
}

/// The exact page a bridge with its REST API disabled answers (Jetty's 404).
fn rest_disabled() -> Response {
    let page = testdata("colibri/rest-disabled-404.html");
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/html;charset=iso-8859-1")],
        page,
    )
        .into_response()
}

/// Participants now, given since when they have been leaving.
fn participants_now(config: &StubConfig, leaving_since: Option<Instant>) -> Option<u64> {
    let start = config.participants?;
    let (Some(requested), Some(every)) = (leaving_since, config.leave_every) else {
        return Some(start);
    };
    let left = (requested.elapsed().as_millis() / every.as_millis().max(1)) as u64;
    Some(start.saturating_sub(left))
}

async fn stats_handler(State(state): State<Shared>) -> Response {
    let (config, leaving_since, fault) = count_and_fault(&state, "GET", "/colibri/stats").await;
    if let Some(response) = fault {
        return response;
    }
    if !config.rest_enabled {
        return rest_disabled();
    }
    if let Some(raw) = state.lock().ok().and_then(|s| s.raw_stats.clone()) {
        return ([(header::CONTENT_TYPE, "application/json")], raw).into_response();
    }
    let (mut stats, shutdown, drain) = state
        .lock()
        .map(|s| (s.stats.clone(), s.shutdown_requested, s.drain))
        .unwrap_or((Value::Null, false, false));
    if let (Some(participants), Some(object)) =
        (participants_now(&config, leaving_since), stats.as_object_mut())
    {
        for key in ["local_endpoints", "participants", "endpoints"] {
            object.insert(key.to_owned(), participants.into());
        }
        if let Some(per_participant) = config.stress_per_participant {
            object.insert(
                "stress_level".to_owned(),
                (participants as f64 * per_participant).into(),
            );
        }
        // RUNNING → GRACEFUL_SHUTDOWN (calls go on) → SHUTTING_DOWN (empty, about to exit).
        object.insert(
            "graceful_shutdown".to_owned(),
            (shutdown && participants > 0).into(),
        );
        object.insert("shutting_down".to_owned(), (shutdown && participants == 0).into());
        object.insert("drain".to_owned(), drain.into());
    }
    ([(header::CONTENT_TYPE, "application/json")], stats.to_string()).into_response()
}

async fn shutdown_handler(State(state): State<Shared>, body: Bytes) -> Response {
    let (config, _, fault) = count_and_fault(&state, "POST", "/colibri/shutdown").await;
    if let Some(response) = fault {
        return response;
    }
    if !config.rest_enabled {
        return rest_disabled();
    }
    let graceful = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| b["graceful-shutdown"].as_bool());
    let Some(graceful) = graceful else {
        return (
            StatusCode::BAD_REQUEST,
            "expected {\"graceful-shutdown\": true|false}",
        )
            .into_response();
    };
    let requested = Instant::now();
    if let Ok(mut stub) = state.lock() {
        stub.shutdown_requested = true;
        stub.leaving_since.get_or_insert(requested);
    }
    // Like the real bridge: it exits by itself once empty (at once for a non-graceful shutdown).
    let until_empty = match (graceful, config.participants, config.leave_every) {
        (false, _, _) => Some(Duration::ZERO),
        (true, Some(n), Some(every)) => Some(every * u32::try_from(n + 1).unwrap_or(u32::MAX)),
        (true, None, _) => Some(Duration::ZERO),
        (true, Some(_), None) => None,
    };
    if let Some(until_empty) = until_empty {
        let exit_in = until_empty
            + if graceful {
                config.exit_after_empty
            } else {
                Duration::ZERO
            };
        let state = state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(exit_in).await;
            if let Some(stop) = state.lock().ok().and_then(|mut s| s.stop.take()) {
                let _ = stop.send(());
            }
        });
    }
    StatusCode::OK.into_response()
}

async fn drain_handler(State(state): State<Shared>) -> Response {
    let (_, _, fault) = count_and_fault(&state, "POST", "/colibri/drain/enable").await;
    if let Some(response) = fault {
        return response;
    }
    if let Ok(mut stub) = state.lock() {
        stub.drain = true;
        // In drain mode existing conferences end on their own: participants leave as after a shutdown.
        stub.leaving_since.get_or_insert(Instant::now());
    }
    StatusCode::OK.into_response()
}

async fn health_handler(State(state): State<Shared>) -> Response {
    let (_, _, fault) = count_and_fault(&state, "GET", "/about/health").await;
    fault.unwrap_or_else(|| StatusCode::OK.into_response())
}

/// Synthetic native metrics (see the module comment): the families jitsi.md names, in text format.
pub const NATIVE_METRICS: &str = "# HELP jitsi_jvb_stress Current stress (0-1)
# TYPE jitsi_jvb_stress gauge
jitsi_jvb_stress 0.05
# HELP jitsi_jvb_conferences Number of conferences
# TYPE jitsi_jvb_conferences gauge
jitsi_jvb_conferences 1
# HELP jitsi_jvb_local_endpoints Number of local endpoints
# TYPE jitsi_jvb_local_endpoints gauge
jitsi_jvb_local_endpoints 3
# HELP jitsi_jvb_conferences_created_total Number of conferences created
# TYPE jitsi_jvb_conferences_created_total counter
jitsi_jvb_conferences_created_total 12
# HELP jitsi_jvb_conferences_by_size Conferences by size
# TYPE jitsi_jvb_conferences_by_size histogram
jitsi_jvb_conferences_by_size_bucket{le=\"0.0\"} 0
jitsi_jvb_conferences_by_size_bucket{le=\"1.0\"} 0
jitsi_jvb_conferences_by_size_bucket{le=\"3.0\"} 1
jitsi_jvb_conferences_by_size_bucket{le=\"+Inf\"} 1
jitsi_jvb_conferences_by_size_sum 3.0
jitsi_jvb_conferences_by_size_count 1
# HELP jvm_threads_current Current thread count of a JVM
# TYPE jvm_threads_current gauge
jvm_threads_current 58
";

async fn native_handler(State(state): State<Shared>, headers: axum::http::HeaderMap) -> Response {
    let (_, _, fault) = count_and_fault(&state, "GET", "/metrics").await;
    if let Some(response) = fault {
        return response;
    }
    let wants_text = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/plain"));
    if wants_text {
        (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            NATIVE_METRICS,
        )
            .into_response()
    } else {
        let json = serde_json::json!({ "jitsi_jvb_stress": 0.05, "jitsi_jvb_conferences": 1 });
        ([(header::CONTENT_TYPE, "application/json")], json.to_string()).into_response()
    }
}
