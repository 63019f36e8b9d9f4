//! One scrape: Prosody's metrics and the census fetched concurrently; a failing source gives its `up`
//! metric 0 and a counted reason, never an error response and never stale values.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::Uri;
use daemon_kit::exporter::{ErrorCounts, FetchError, InvalidUrl, SingleFlight, Upstream};
use daemon_kit::exposition::{Family, Sample, Type, build_info, encode, gauge};

use crate::census;
use daemon_kit::openmetrics;

/// Why a fetch from Prosody failed: a bounded set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    Timeout,
    Connect,
    /// 403: this address is not in openmetrics_allow_ips / openmetrics_allow_cidr.
    Forbidden,
    /// 404: statistics off, or no census module.
    NotFound,
    HttpStatus,
    /// The body was larger than `--body-limit`.
    TooLarge,
    NotJson,
    NotCensus,
    /// A 200 whose body has no metric at all (a proxy's page, garbage).
    NotOpenMetrics,
    ReadBody,
}

impl Reason {
    const ALL: [Reason; 10] = [
        Reason::Timeout,
        Reason::Connect,
        Reason::Forbidden,
        Reason::NotFound,
        Reason::HttpStatus,
        Reason::TooLarge,
        Reason::NotJson,
        Reason::NotCensus,
        Reason::NotOpenMetrics,
        Reason::ReadBody,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Reason::Timeout => "timeout",
            Reason::Connect => "connect",
            Reason::Forbidden => "forbidden",
            Reason::NotFound => "not_found",
            Reason::HttpStatus => "http_status",
            Reason::TooLarge => "too_large",
            Reason::NotJson => "not_json",
            Reason::NotCensus => "not_census",
            Reason::NotOpenMetrics => "not_openmetrics",
            Reason::ReadBody => "read_body",
        }
    }
}

impl From<FetchError> for Reason {
    fn from(error: FetchError) -> Self {
        match error {
            FetchError::Timeout => Reason::Timeout,
            FetchError::Connect => Reason::Connect,
            FetchError::Status(403) => Reason::Forbidden,
            FetchError::Status(404) => Reason::NotFound,
            FetchError::Status(_) => Reason::HttpStatus,
            FetchError::TooLarge => Reason::TooLarge,
            FetchError::ReadBody => Reason::ReadBody,
        }
    }
}

#[derive(Debug)]
pub struct Exporter {
    upstream: Upstream,
    metrics_url: Uri,
    census_url: Option<Uri>,
    errors: ErrorCounts,
    skipped_lines: AtomicU64,
    skipped_families: AtomicU64,
    in_flight: SingleFlight<Bytes>,
}

impl Exporter {
    pub fn new(
        prosody_url: &str,
        metrics_path: &str,
        census_path: Option<&str>,
        timeout: Duration,
        body_limit: usize,
    ) -> Result<Self, InvalidUrl> {
        let base = prosody_url.trim_end_matches('/');
        let path = |p: &str| Upstream::url(&format!("{base}/{}", p.trim_start_matches('/')));
        Ok(Self {
            upstream: Upstream::new(timeout, body_limit),
            metrics_url: path(metrics_path)?,
            census_url: census_path.map(path).transpose()?,
            errors: ErrorCounts::default(),
            skipped_lines: AtomicU64::new(0),
            skipped_families: AtomicU64::new(0),
            in_flight: SingleFlight::default(),
        })
    }

    async fn scrape(&self) -> String {
        let started = Instant::now();
        let census = async {
            match &self.census_url {
                Some(url) => Some(self.fetch(url).await),
                None => None,
            }
        };
        let (prosody, census) = tokio::join!(self.fetch(&self.metrics_url), census);

        let mut out = String::with_capacity(32 * 1024);
        let prosody_up = match prosody {
            Ok(text) => {
                let parsed = openmetrics::parse(
                    &String::from_utf8_lossy(&text),
                    "Prosody",
                    openmetrics::Limits::default(),
                );
                self.skipped_lines
                    .fetch_add(parsed.skipped_lines as u64, Ordering::Relaxed);
                self.skipped_families
                    .fetch_add(parsed.skipped_families as u64, Ordering::Relaxed);
                // Odd lines are skipped, but a body with nothing usable is not Prosody speaking.
                if parsed.families.is_empty() && parsed.skipped_lines > 0 {
                    self.count("prosody", Reason::NotOpenMetrics);
                    false
                } else {
                    encode(&parsed.families, &mut out);
                    true
                }
            }
            Err(reason) => {
                self.count("prosody", reason);
                false
            }
        };
        let census_up = match census {
            None => None,
            Some(Ok(body)) => match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(json) => match census::parse(&json) {
                    Some(census) => {
                        encode(&census::families(&census), &mut out);
                        Some(true)
                    }
                    None => {
                        self.count("census", Reason::NotCensus);
                        Some(false)
                    }
                },
                Err(_) => {
                    self.count("census", Reason::NotJson);
                    Some(false)
                }
            },
            Some(Err(reason)) => {
                self.count("census", reason);
                Some(false)
            }
        };
        encode(
            &self.own_families(prosody_up, census_up, started.elapsed().as_secs_f64()),
            &mut out,
        );
        out
    }

    async fn fetch(&self, url: &Uri) -> Result<Bytes, Reason> {
        Ok(self.upstream.get(url, None).await?.body)
    }

    fn count(&self, source: &'static str, reason: Reason) {
        self.errors.count(source, reason.as_str());
    }

    fn own_families(&self, prosody_up: bool, census_up: Option<bool>, duration: f64) -> Vec<Family> {
        let up = |value: bool| if value { 1.0 } else { 0.0 };
        let mut sources = vec!["prosody"];
        let mut families = vec![gauge(
            "prosody_up",
            "1 if Prosody's /metrics answered at the last scrape",
            up(prosody_up),
        )];
        if let Some(census_up) = census_up {
            sources.push("census");
            families.push(gauge(
                "jitsi_prosody_census_up",
                "1 if the room census answered at the last scrape",
                up(census_up),
            ));
        }
        let skipped = self.skipped_lines.load(Ordering::Relaxed);
        let skipped_families = self.skipped_families.load(Ordering::Relaxed);
        families.extend([
            gauge(
                "prosody_exporter_scrape_duration_seconds",
                "How long the last scrape of Prosody took",
                duration,
            ),
            build_info("prosody_exporter_build_info", env!("CARGO_PKG_VERSION")),
            self.errors.family(
                "prosody_exporter_scrape_errors_total",
                "Failed fetches from Prosody, by source and reason",
                &sources,
                &Reason::ALL.map(Reason::as_str),
            ),
            Family {
                name: "prosody_exporter_skipped_families_total".into(),
                help: "Families of Prosody's metrics left out beyond the limit".into(),
                kind: Type::Counter,
                samples: vec![Sample::plain(skipped_families as f64)],
            },
            Family {
                name: "prosody_exporter_skipped_lines_total".into(),
                help: "Lines of Prosody's metrics that did not parse and were left out".into(),
                kind: Type::Counter,
                samples: vec![Sample::plain(skipped as f64)],
            },
        ]);
        families
    }
}

impl daemon_kit::exporter::Exporter for Exporter {
    /// Scrapes that arrive while one is in flight share its result: Prosody's one thread also carries
    /// the shard's signalling, so a flood of scrapes must not become a flood of requests to it.
    async fn metrics(self: Arc<Self>) -> Bytes {
        let this = Arc::clone(&self);
        self.in_flight
            .run(|| async move { Bytes::from(this.scrape().await) })
            .await
    }
}
