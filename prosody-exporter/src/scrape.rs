//! One scrape: Prosody's metrics and the census fetched concurrently; a failing source gives its `up`
//! metric 0 and a counted reason, never an error response and never stale values.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use daemon_kit::exposition::{Family, Sample, Type, build_info, encode, errors_by_source_and_reason, gauge};

use crate::census;
use crate::openmetrics;

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
    NotJson,
    NotCensus,
    /// A 200 whose body has no metric at all (a proxy's page, garbage).
    NotOpenMetrics,
    ReadBody,
}

impl Reason {
    const ALL: [Reason; 9] = [
        Reason::Timeout,
        Reason::Connect,
        Reason::Forbidden,
        Reason::NotFound,
        Reason::HttpStatus,
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
            Reason::NotJson => "not_json",
            Reason::NotCensus => "not_census",
            Reason::NotOpenMetrics => "not_openmetrics",
            Reason::ReadBody => "read_body",
        }
    }
}

#[derive(Debug)]
pub struct Exporter {
    client: reqwest::Client,
    metrics_url: String,
    census_url: Option<String>,
    /// (source, reason) → failures.
    errors: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    skipped_lines: Mutex<u64>,
}

impl Exporter {
    pub fn new(
        prosody_url: &str,
        metrics_path: &str,
        census_path: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let base = prosody_url.trim_end_matches('/');
        let path = |p: &str| format!("{base}/{}", p.trim_start_matches('/'));
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout)
                .build()?,
            metrics_url: path(metrics_path),
            census_url: census_path.map(path),
            errors: Mutex::default(),
            skipped_lines: Mutex::default(),
        })
    }

    pub async fn metrics(&self) -> String {
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
                let parsed = openmetrics::parse(&String::from_utf8_lossy(&text));
                if parsed.skipped_lines > 0
                    && let Ok(mut skipped) = self.skipped_lines.lock()
                {
                    *skipped += parsed.skipped_lines as u64;
                }
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

    async fn fetch(&self, url: &str) -> Result<Vec<u8>, Reason> {
        let response = self.client.get(url).send().await.map_err(|e| {
            if e.is_timeout() {
                Reason::Timeout
            } else {
                Reason::Connect
            }
        })?;
        match response.status().as_u16() {
            200..=299 => {}
            403 => return Err(Reason::Forbidden),
            404 => return Err(Reason::NotFound),
            _ => return Err(Reason::HttpStatus),
        }
        let body = response.bytes().await.map_err(|e| {
            if e.is_timeout() {
                Reason::Timeout
            } else {
                Reason::ReadBody
            }
        })?;
        Ok(body.to_vec())
    }

    fn count(&self, source: &'static str, reason: Reason) {
        tracing::debug!(source, reason = reason.as_str(), "fetch from Prosody failed");
        if let Ok(mut errors) = self.errors.lock() {
            *errors.entry((source, reason.as_str())).or_insert(0) += 1;
        }
    }

    fn own_families(&self, prosody_up: bool, census_up: Option<bool>, duration: f64) -> Vec<Family> {
        let up = |value: bool| if value { 1.0 } else { 0.0 };
        let errors = self.errors.lock().map(|e| e.clone()).unwrap_or_default();
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
        let skipped = self.skipped_lines.lock().map(|s| *s).unwrap_or(0);
        families.extend([
            gauge(
                "prosody_exporter_scrape_duration_seconds",
                "How long the last scrape of Prosody took",
                duration,
            ),
            build_info("prosody_exporter_build_info", env!("CARGO_PKG_VERSION")),
            errors_by_source_and_reason(
                "prosody_exporter_scrape_errors_total",
                "Failed fetches from Prosody, by source and reason",
                &sources,
                &Reason::ALL.map(Reason::as_str),
                |source, reason| errors.get(&(source, reason)).copied().unwrap_or(0),
            ),
            Family {
                name: "prosody_exporter_skipped_lines_total".to_owned(),
                help: "Lines of Prosody's metrics that did not parse and were left out".to_owned(),
                kind: Type::Counter,
                samples: vec![Sample::plain(skipped as f64)],
            },
        ]);
        families
    }
}
