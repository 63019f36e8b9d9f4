//! One scrape: fetch from the bridge (at most one request in flight, shared by concurrent scrapes),
//! convert, encode. Failures become `jitsi_up 0` and a counted reason, never an error response.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::Uri;
use daemon_kit::exporter::{ErrorCounts, FetchError, InvalidUrl, SingleFlight, Upstream};

use crate::cli::Source;
use crate::convert::SKIPPED_REASONS;
use crate::convert::{Fields, NameCache, NotStats, convert_cached};
use crate::exposition::{Family, Sample, Type, build_info, encode, gauge};
use daemon_kit::openmetrics;

/// The bridge's own families are a few dozen: this much is room enough, and a bound.
const NATIVE_LIMITS: openmetrics::Limits = openmetrics::Limits {
    max_families: 500,
    max_label_value_len: 128,
};

/// Every reason of `jitsi_exporter_skipped_total`, exported from the first scrape.
const SKIP_REASONS: [&str; 4] = [
    SKIPPED_REASONS[0],
    SKIPPED_REASONS[1],
    "native_bad_line",
    "native_too_many_families",
];

/// Why a fetch from the bridge failed: a bounded set, the label of `jitsi_exporter_scrape_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    Timeout,
    Connect,
    HttpStatus,
    TooLarge,
    NotJson,
    NotAnObject,
    NotText,
    ReadBody,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::Timeout,
        Reason::Connect,
        Reason::HttpStatus,
        Reason::TooLarge,
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
            Reason::TooLarge => "too_large",
            Reason::NotJson => "not_json",
            Reason::NotAnObject => "not_an_object",
            Reason::NotText => "not_text",
            Reason::ReadBody => "read_body",
        }
    }
}

impl From<FetchError> for Reason {
    fn from(error: FetchError) -> Self {
        match error {
            FetchError::Timeout => Reason::Timeout,
            FetchError::Connect => Reason::Connect,
            FetchError::Status(_) => Reason::HttpStatus,
            FetchError::TooLarge => Reason::TooLarge,
            FetchError::ReadBody => Reason::ReadBody,
        }
    }
}

#[derive(Debug)]
pub struct Exporter {
    upstream: Upstream,
    stats_url: Uri,
    native_url: Uri,
    source: Source,
    legacy_names: bool,
    scrape_errors: ErrorCounts,
    field_errors: Mutex<BTreeMap<&'static str, u64>>,
    /// What was left out to keep the output bounded, by reason.
    skipped: Mutex<BTreeMap<&'static str, u64>>,
    names: Mutex<NameCache>,
    in_flight: SingleFlight<Bytes>,
    /// The size of the last exposition, in bytes.
    last_size: AtomicUsize,
}

const ACCEPT_TEXT: &str = "text/plain; version=0.0.4";

impl Exporter {
    pub fn new(
        jvb_url: &str,
        timeout: Duration,
        body_limit: usize,
        source: Source,
        legacy_names: bool,
    ) -> Result<Arc<Self>, InvalidUrl> {
        let base = jvb_url.trim_end_matches('/');
        Ok(Arc::new(Self {
            upstream: Upstream::new(timeout, body_limit),
            stats_url: Upstream::url(&format!("{base}/colibri/stats"))?,
            native_url: Upstream::url(&format!("{base}/metrics"))?,
            source,
            legacy_names,
            scrape_errors: ErrorCounts::default(),
            field_errors: Mutex::default(),
            skipped: Mutex::default(),
            names: Mutex::default(),
            in_flight: SingleFlight::default(),
            last_size: AtomicUsize::new(0),
        }))
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

        // `jitsi_up` is about the colibri stats alone (what the alerts and dashboards read); the native
        // endpoint has its own `jitsi_native_up`, so a bridge whose native metrics fail is not "down".
        let mut up = None;
        let mut native_up = None;
        // As large as the last exposition: the text is not copied as it grows.
        let mut out = String::with_capacity(self.last_size.load(Ordering::Relaxed).max(16 * 1024));
        if let Some(result) = colibri {
            match result {
                Ok(body) => match Fields::parse(&body) {
                    Ok(stats) => {
                        let converted = {
                            let mut names =
                                self.names.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                            convert_cached(stats.iter(), self.legacy_names, &mut names)
                        };
                        self.count_field_errors(&converted.field_errors);
                        self.count_skipped(&converted.skipped);
                        encode(&converted.families, &mut out);
                        up = Some(true);
                    }
                    Err(not_stats) => {
                        up = Some(false);
                        let reason = match not_stats {
                            NotStats::NotJson => Reason::NotJson,
                            NotStats::NotAnObject => Reason::NotAnObject,
                        };
                        self.count_scrape_error("colibri", reason);
                    }
                },
                Err(reason) => {
                    up = Some(false);
                    self.count_scrape_error("colibri", reason);
                }
            }
        }
        if let Some(result) = native {
            match result {
                Ok(text) => {
                    let parsed = openmetrics::parse(&text, "the bridge", NATIVE_LIMITS);
                    self.count_native_skipped(parsed.skipped_lines, parsed.skipped_families);
                    let families: Vec<Family> = parsed
                        .families
                        .into_iter()
                        .filter(|family| family.name.starts_with("jitsi_jvb_"))
                        .collect();
                    encode(&families, &mut out);
                    native_up = Some(true);
                }
                Err(reason) => {
                    native_up = Some(false);
                    self.count_scrape_error("native", reason);
                }
            }
        }
        encode(
            &self.own_families(up, native_up, started.elapsed().as_secs_f64()),
            &mut out,
        );
        self.last_size.store(out.len(), Ordering::Relaxed);
        out
    }

    /// The body of `/colibri/stats`, parsed by the caller (its field names borrow from it).
    async fn fetch_stats(&self) -> Result<Bytes, Reason> {
        Ok(self.upstream.get(&self.stats_url, None).await?.body)
    }

    async fn fetch_native(&self) -> Result<String, Reason> {
        // Without this header older bridges answer JSON.
        let fetched = self.upstream.get(&self.native_url, Some(ACCEPT_TEXT)).await?;
        let is_json = fetched
            .content_type
            .as_deref()
            .is_some_and(|value| value.contains("json"));
        let text = String::from_utf8_lossy(&fetched.body);
        if is_json || text.trim_start().starts_with('{') {
            return Err(Reason::NotText);
        }
        Ok(text.into_owned())
    }

    fn count_scrape_error(&self, source: &'static str, reason: Reason) {
        self.scrape_errors.count(source, reason.as_str());
    }

    fn count_field_errors(&self, fields: &[&'static str]) {
        if fields.is_empty() {
            return;
        }
        let mut counts = self
            .field_errors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for field in fields {
            *counts.entry(field).or_insert(0) += 1;
        }
    }

    fn count_skipped(&self, reasons: &[&'static str]) {
        if reasons.is_empty() {
            return;
        }
        let mut skipped = self
            .skipped
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for reason in reasons {
            *skipped.entry(reason).or_insert(0) += 1;
        }
    }

    fn count_native_skipped(&self, lines: usize, families: usize) {
        let mut skipped = self
            .skipped
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *skipped.entry("native_bad_line").or_insert(0) += lines as u64;
        *skipped.entry("native_too_many_families").or_insert(0) += families as u64;
    }

    fn own_families(&self, up: Option<bool>, native_up: Option<bool>, duration: f64) -> Vec<Family> {
        let mut sources = Vec::new();
        if self.source.colibri() {
            sources.push("colibri");
        }
        if self.source.native() {
            sources.push("native");
        }
        let as_number = |up: bool| if up { 1.0 } else { 0.0 };
        let mut families = Vec::new();
        if let Some(up) = up {
            families.push(gauge(
                "jitsi_up",
                "1 if the last scrape of the bridge's /colibri/stats succeeded, 0 if not",
                as_number(up),
            ));
        }
        if let Some(up) = native_up {
            families.push(gauge(
                "jitsi_native_up",
                "1 if the last scrape of the bridge's native /metrics succeeded, 0 if not",
                as_number(up),
            ));
        }
        families.extend([
            gauge(
                "jitsi_scrape_duration_seconds",
                "How long the last scrape of the bridge took",
                duration,
            ),
            build_info("jitsi_exporter_build_info", env!("CARGO_PKG_VERSION")),
            self.scrape_errors.family(
                "jitsi_exporter_scrape_errors_total",
                "Failed fetches from the bridge, by source and reason",
                &sources,
                &Reason::ALL.map(Reason::as_str),
            ),
        ]);
        let skipped = self
            .skipped
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        families.push(Family {
            name: "jitsi_exporter_skipped_total".into(),
            help: "What the bridge sent and was left out to keep the output bounded, by reason".into(),
            kind: Type::Counter,
            samples: SKIP_REASONS
                .iter()
                .map(|reason| {
                    Sample::labelled("reason", reason, skipped.get(reason).copied().unwrap_or(0) as f64)
                })
                .collect(),
        });
        drop(skipped);
        let field_errors = self
            .field_errors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !field_errors.is_empty() {
            families.push(Family {
                name: "jitsi_exporter_field_errors_total".into(),
                help: "Stats fields skipped for an unexpected type, by field (known names, or other)".into(),
                kind: Type::Counter,
                samples: field_errors
                    .iter()
                    .map(|(field, count)| Sample::labelled("field", field, *count as f64))
                    .collect(),
            });
        }
        families
    }
}

impl daemon_kit::exporter::Exporter for Exporter {
    /// The exposition text. Scrapes that arrive while one is in flight share its result, so the bridge
    /// sees one request however many Prometheus replicas scrape at once.
    async fn metrics(self: Arc<Self>) -> Bytes {
        let this = Arc::clone(&self);
        self.in_flight
            .run(|| async move { Bytes::from(this.scrape().await) })
            .await
    }
}
