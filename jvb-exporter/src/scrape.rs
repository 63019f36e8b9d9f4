//! One scrape: fetch from the bridge (at most one request in flight, shared by concurrent scrapes),
//! convert, encode. Failures become `jitsi_up 0` and a counted reason, never an error response.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use serde_json::{Map, Value};

use crate::cli::Source;
use crate::convert::{NameCache, convert_cached};
use crate::exposition::{
    Family, Sample, Type, build_info, encode, errors_by_source_and_reason, gauge, native_jvb_families,
};

/// Why a fetch from the bridge failed: a bounded set, the label of `jitsi_exporter_scrape_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    Timeout,
    Connect,
    HttpStatus,
    NotJson,
    NotAnObject,
    NotText,
    ReadBody,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::Timeout,
        Reason::Connect,
        Reason::HttpStatus,
        Reason::NotJson,
        Reason::NotAnObject,
        Reason::NotText,
        Reason::ReadBody,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Timeout => "timeout",
            Reason::Connect => "connect",
            Reason::HttpStatus => "http_status",
            Reason::NotJson => "not_json",
            Reason::NotAnObject => "not_an_object",
            Reason::NotText => "not_text",
            Reason::ReadBody => "read_body",
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    /// (source, reason) → failures.
    scrape_errors: BTreeMap<(&'static str, &'static str), u64>,
    field_errors: BTreeMap<&'static str, u64>,
}

type Scrape = Shared<BoxFuture<'static, Arc<String>>>;

#[derive(Debug)]
pub struct Exporter {
    client: reqwest::Client,
    stats_url: String,
    native_url: String,
    source: Source,
    legacy_names: bool,
    counters: Mutex<Counters>,
    names: Mutex<NameCache>,
    in_flight: Mutex<Option<Scrape>>,
}

const ACCEPT_TEXT: &str = "text/plain; version=0.0.4";

impl Exporter {
    pub fn new(
        jvb_url: &str,
        timeout: std::time::Duration,
        source: Source,
        legacy_names: bool,
    ) -> Result<Arc<Self>, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()?;
        let base = jvb_url.trim_end_matches('/');
        Ok(Arc::new(Self {
            client,
            stats_url: format!("{base}/colibri/stats"),
            native_url: format!("{base}/metrics"),
            source,
            legacy_names,
            counters: Mutex::default(),
            names: Mutex::default(),
            in_flight: Mutex::default(),
        }))
    }

    /// The exposition text. Scrapes that arrive while one is in flight share its result, so the bridge
    /// sees one request however many Prometheus replicas scrape at once.
    pub async fn metrics(self: &Arc<Self>) -> Arc<String> {
        let scrape = {
            let mut in_flight = self
                .in_flight
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match in_flight.as_ref() {
                Some(scrape) => scrape.clone(),
                None => {
                    let this = Arc::clone(self);
                    let scrape = async move {
                        let text = Arc::new(this.scrape().await);
                        this.in_flight
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .take();
                        text
                    }
                    .boxed()
                    .shared();
                    *in_flight = Some(scrape.clone());
                    scrape
                }
            }
        };
        scrape.await
    }

    async fn scrape(&self) -> String {
        let started = Instant::now();
        let colibri = async {
            if self.source.colibri() {
                Some(self.fetch_stats().await)
            } else {
                None
            }
        };
        let native = async {
            if self.source.native() {
                Some(self.fetch_native().await)
            } else {
                None
            }
        };
        let (colibri, native) = tokio::join!(colibri, native);

        let mut up = true;
        let mut out = String::with_capacity(16 * 1024);
        if let Some(result) = colibri {
            match result {
                Ok(stats) => {
                    let converted = {
                        let mut names = self.names.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                        convert_cached(&stats, self.legacy_names, &mut names)
                    };
                    self.count_field_errors(&converted.field_errors);
                    encode(&converted.families, &mut out);
                }
                Err(reason) => {
                    up = false;
                    self.count_scrape_error("colibri", reason);
                }
            }
        }
        if let Some(result) = native {
            match result {
                Ok(text) => out.push_str(&native_jvb_families(&text)),
                Err(reason) => {
                    up = false;
                    self.count_scrape_error("native", reason);
                }
            }
        }
        encode(&self.own_families(up, started.elapsed().as_secs_f64()), &mut out);
        out
    }

    async fn fetch_stats(&self) -> Result<Map<String, Value>, Reason> {
        let response = self.client.get(&self.stats_url).send().await.map_err(classify)?;
        if !response.status().is_success() {
            return Err(Reason::HttpStatus);
        }
        let body = response.bytes().await.map_err(|e| {
            if e.is_timeout() {
                Reason::Timeout
            } else {
                Reason::ReadBody
            }
        })?;
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(stats)) => Ok(stats),
            Ok(_) => Err(Reason::NotAnObject),
            Err(_) => Err(Reason::NotJson),
        }
    }

    async fn fetch_native(&self) -> Result<String, Reason> {
        // Without this header older bridges answer JSON.
        let request = self
            .client
            .get(&self.native_url)
            .header(reqwest::header::ACCEPT, ACCEPT_TEXT);
        let response = request.send().await.map_err(classify)?;
        if !response.status().is_success() {
            return Err(Reason::HttpStatus);
        }
        let is_json = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        let text = response.text().await.map_err(|e| {
            if e.is_timeout() {
                Reason::Timeout
            } else {
                Reason::ReadBody
            }
        })?;
        if is_json || text.trim_start().starts_with('{') {
            return Err(Reason::NotText);
        }
        Ok(text)
    }

    fn count_scrape_error(&self, source: &'static str, reason: Reason) {
        tracing::debug!(source, reason = reason.as_str(), "scrape of the bridge failed");
        if let Ok(mut counters) = self.counters.lock() {
            *counters
                .scrape_errors
                .entry((source, reason.as_str()))
                .or_insert(0) += 1;
        }
    }

    fn count_field_errors(&self, fields: &[&'static str]) {
        if fields.is_empty() {
            return;
        }
        if let Ok(mut counters) = self.counters.lock() {
            for field in fields {
                *counters.field_errors.entry(field).or_insert(0) += 1;
            }
        }
    }

    fn own_families(&self, up: bool, duration: f64) -> Vec<Family> {
        let counters = self
            .counters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut sources = Vec::new();
        if self.source.colibri() {
            sources.push("colibri");
        }
        if self.source.native() {
            sources.push("native");
        }
        let mut families = vec![
            gauge(
                "jitsi_up",
                "1 if the last scrape of the bridge succeeded, 0 if not",
                if up { 1.0 } else { 0.0 },
            ),
            gauge(
                "jitsi_scrape_duration_seconds",
                "How long the last scrape of the bridge took",
                duration,
            ),
            build_info("jitsi_exporter_build_info", env!("CARGO_PKG_VERSION")),
            errors_by_source_and_reason(
                "jitsi_exporter_scrape_errors_total",
                "Failed fetches from the bridge, by source and reason",
                &sources,
                &Reason::ALL.map(Reason::as_str),
                |source, reason| {
                    counters
                        .scrape_errors
                        .get(&(source, reason))
                        .copied()
                        .unwrap_or(0)
                },
            ),
        ];
        if !counters.field_errors.is_empty() {
            families.push(Family {
                name: "jitsi_exporter_field_errors_total".to_owned(),
                help: "Stats fields skipped for an unexpected type, by field (known names, or other)"
                    .to_owned(),
                kind: Type::Counter,
                samples: counters
                    .field_errors
                    .iter()
                    .map(|(field, count)| Sample::labelled("field", field, *count as f64))
                    .collect(),
            });
        }
        families
    }
}

fn classify(error: reqwest::Error) -> Reason {
    if error.is_timeout() {
        Reason::Timeout
    } else {
        Reason::Connect
    }
}
