//! Metric families — what the exporters make of their upstream at each scrape — and their Prometheus text
//! exposition (format 0.0.4, what `promtool check metrics` lints), written by prometheus-client. Pure.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Gauge,
    Counter,
    /// Samples carry the `_bucket`, `_sum` and `_count` suffixes.
    Histogram,
    /// Old names kept for existing dashboards: no type is claimed for them.
    Untyped,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Appended to the family name: `_bucket`, `_sum`, `_count` for histograms, else empty.
    pub suffix: &'static str,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn plain(value: f64) -> Self {
        Self {
            suffix: "",
            labels: Vec::new(),
            value,
        }
    }

    pub fn with_labels(labels: Vec<(String, String)>, value: f64) -> Self {
        Self {
            suffix: "",
            labels,
            value,
        }
    }

    pub fn labelled(name: &str, value_label: &str, value: f64) -> Self {
        Self {
            suffix: "",
            labels: vec![(name.to_owned(), value_label.to_owned())],
            value,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    pub name: String,
    pub help: String,
    pub kind: Type,
    pub samples: Vec<Sample>,
}

/// A valid metric or label name: `[a-zA-Z_:][a-zA-Z0-9_:]*` (no colon for labels, which we never use).
pub fn is_valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// Encodes `families` in the Prometheus text format (0.0.4) with prometheus-client's encoder: the families
/// change from one scrape to the next, so they are handed to a per-scrape registry as one collector.
/// (Measured against the encoder we had: within 3 % of a whole scrape, `examples/encoder_cost.rs` of
/// jvb-exporter.)
pub fn encode(families: &[Family], out: &mut String) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Collected(families.to_vec())));
    // Writing into a String cannot fail; a family the encoder refuses would be a bug of ours.
    if let Err(error) = prometheus_client::encoding::prometheus_text::encode(out, &registry) {
        tracing::error!(%error, "encoding metric families failed");
    }
}

#[derive(Debug)]
struct Collected(Vec<Family>);

impl Collector for Collected {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in &self.0 {
            match family.kind {
                Type::Histogram => encode_histogram(family, &mut encoder)?,
                Type::Untyped => {
                    // Untyped samples keep whatever suffix they came with (`_info`, `_total`): one
                    // family per suffix.
                    let mut suffixes: Vec<&str> = family.samples.iter().map(|s| s.suffix).collect();
                    suffixes.dedup();
                    for suffix in suffixes {
                        let name = format!("{}{suffix}", family.name);
                        let mut metric =
                            encoder.encode_descriptor(&name, &family.help, None, MetricType::Unknown)?;
                        for sample in family.samples.iter().filter(|s| s.suffix == suffix) {
                            Value(sample.value, MetricType::Unknown)
                                .encode(metric.encode_family(&sample.labels)?)?;
                        }
                    }
                }
                Type::Gauge | Type::Counter => {
                    let (name, kind) = if family.kind == Type::Counter {
                        // prometheus-client names a counter family by its stem and adds `_total` itself.
                        (
                            family.name.strip_suffix("_total").unwrap_or(&family.name),
                            MetricType::Counter,
                        )
                    } else {
                        (family.name.as_str(), MetricType::Gauge)
                    };
                    let mut metric = encoder.encode_descriptor(name, &family.help, None, kind)?;
                    for sample in &family.samples {
                        Value(sample.value, kind).encode(metric.encode_family(&sample.labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A histogram's `_bucket`, `_sum`, `_count` samples, regrouped by their labels (all but `le`) into what
/// the encoder takes: sum, count, and per-bucket (not cumulative) counts.
fn encode_histogram(family: &Family, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    type Series = (f64, u64, Vec<(f64, f64)>);
    let mut series: Vec<(Vec<(String, String)>, Series)> = Vec::new();
    for sample in &family.samples {
        let labels: Vec<(String, String)> = sample
            .labels
            .iter()
            .filter(|(name, _)| name != "le")
            .cloned()
            .collect();
        let index = match series.iter().position(|(known, _)| *known == labels) {
            Some(index) => index,
            None => {
                series.push((labels, (0.0, 0, Vec::new())));
                series.len() - 1
            }
        };
        let entry = &mut series[index].1;
        match sample.suffix {
            "_sum" => entry.0 = sample.value,
            "_count" => entry.1 = sample.value.max(0.0) as u64,
            "_bucket" => {
                let bound = sample
                    .labels
                    .iter()
                    .find(|(name, _)| name == "le")
                    .and_then(|(_, le)| match le.as_str() {
                        "+Inf" | "Inf" => Some(f64::INFINITY),
                        other => other.parse::<f64>().ok(),
                    });
                if let Some(bound) = bound {
                    entry.2.push((bound, sample.value));
                }
            }
            _ => {}
        }
    }
    let mut metric = encoder.encode_descriptor(&family.name, &family.help, None, MetricType::Histogram)?;
    for (labels, (sum, count, mut buckets)) in series {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut previous = 0.0;
        let per_bucket: Vec<(f64, u64)> = buckets
            .into_iter()
            .map(|(bound, cumulative)| {
                let own = (cumulative - previous).max(0.0);
                previous = cumulative.max(previous);
                (bound, own as u64)
            })
            .collect();
        metric
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(sum, count, &per_bucket, None)?;
    }
    Ok(())
}

/// One sample's value, as the encoder wants a metric.
#[derive(Debug)]
struct Value(f64, MetricType);

impl EncodeMetric for Value {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        match self.1 {
            MetricType::Counter => encoder.encode_counter::<NoLabelSet, _, f64>(&self.0, None),
            _ => encoder.encode_gauge(&self.0),
        }
    }

    fn metric_type(&self) -> MetricType {
        self.1
    }
}

/// A gauge family of one unlabelled sample.
pub fn gauge(name: &str, help: &str, value: f64) -> Family {
    Family {
        name: name.to_owned(),
        help: help.to_owned(),
        kind: Type::Gauge,
        samples: vec![Sample::plain(value)],
    }
}

/// `<name>{version="<version>"} 1`: which build serves these metrics.
pub fn build_info(name: &str, version: &str) -> Family {
    Family {
        name: name.to_owned(),
        help: "The exporter's version".to_owned(),
        kind: Type::Gauge,
        samples: vec![Sample::labelled("version", version, 1.0)],
    }
}

/// A counter of failures with a sample for every `source` × `reason` pair — 0 until it happens, so
/// `rate()` and alerts work from the first scrape. `count(source, reason)` gives each value.
pub fn errors_by_source_and_reason(
    name: &str,
    help: &str,
    sources: &[&'static str],
    reasons: &[&'static str],
    count: impl Fn(&'static str, &'static str) -> u64,
) -> Family {
    let samples = sources
        .iter()
        .flat_map(|source| reasons.iter().map(move |reason| (*source, *reason)))
        .map(|(source, reason)| {
            let labels = vec![
                ("source".to_owned(), source.to_owned()),
                ("reason".to_owned(), reason.to_owned()),
            ];
            Sample::with_labels(labels, count(source, reason) as f64)
        })
        .collect();
    Family {
        name: name.to_owned(),
        help: help.to_owned(),
        kind: Type::Counter,
        samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(families: &[Family]) -> String {
        let mut out = String::new();
        encode(families, &mut out);
        out
    }

    #[test]
    fn encodes_help_type_labels_and_escapes() {
        let families = vec![Family {
            name: "jitsi_version_info".into(),
            help: "Version \\ of\nthe bridge".into(),
            kind: Type::Gauge,
            samples: vec![Sample::labelled("version", "2.3 \"x\"\n", 1.0)],
        }];
        assert_eq!(
            text(&families),
            "# HELP jitsi_version_info Version \\\\ of\\nthe bridge\n# TYPE jitsi_version_info gauge\njitsi_version_info{version=\"2.3 \\\"x\\\"\\n\"} 1.0\n"
        );
    }

    #[test]
    fn error_counters_list_every_pair() {
        let family = errors_by_source_and_reason(
            "x_errors_total",
            "h",
            &["a", "b"],
            &["timeout", "connect"],
            |source, reason| u64::from(source == "b" && reason == "connect"),
        );
        assert_eq!(
            text(&[family]),
            "# HELP x_errors_total h\n# TYPE x_errors_total counter\n\
             x_errors_total{source=\"a\",reason=\"timeout\"} 0.0\nx_errors_total{source=\"a\",reason=\"connect\"} 0.0\n\
             x_errors_total{source=\"b\",reason=\"timeout\"} 0.0\nx_errors_total{source=\"b\",reason=\"connect\"} 1.0\n"
        );
    }

    #[test]
    fn untyped_and_odd_values() {
        let families = vec![
            Family {
                name: "old_name".into(),
                help: "h".into(),
                kind: Type::Untyped,
                samples: vec![Sample::plain(6.18e-5)],
            },
            gauge("nan", "h", f64::NAN),
            gauge("inf", "h", f64::INFINITY),
        ];
        let out = text(&families);
        assert!(
            out.contains("# TYPE old_name untyped\nold_name 0.0000618\n"),
            "{out}"
        );
        assert!(out.contains("nan NaN\n") && out.contains("inf +Inf\n"), "{out}");
    }

    #[test]
    fn histograms_are_regrouped_by_their_labels() {
        let bucket = |host: &str, le: &str, value: f64| Sample {
            suffix: "_bucket",
            labels: vec![("host".into(), host.into()), ("le".into(), le.into())],
            value,
        };
        let total = |suffix: &'static str, host: &str, value: f64| Sample {
            suffix,
            labels: vec![("host".into(), host.into())],
            value,
        };
        let family = Family {
            name: "x_seconds".into(),
            help: "h".into(),
            kind: Type::Histogram,
            samples: vec![
                bucket("a", "0.1", 2.0),
                bucket("a", "+Inf", 3.0),
                total("_sum", "a", 0.5),
                total("_count", "a", 3.0),
                bucket("b", "0.1", 0.0),
                bucket("b", "+Inf", 1.0),
                total("_sum", "b", 2.0),
                total("_count", "b", 1.0),
            ],
        };
        let out = text(&[family]);
        assert!(
            out.contains(
                "x_seconds_bucket{host=\"a\",le=\"0.1\"} 2\nx_seconds_bucket{host=\"a\",le=\"+Inf\"} 3\n"
            ),
            "{out}"
        );
        assert!(out.contains("x_seconds_count{host=\"b\"} 1\n"), "{out}");
    }

    #[test]
    fn names() {
        assert!(is_valid_name("jitsi_up"));
        assert!(!is_valid_name("9lives"));
        assert!(!is_valid_name("a-b"));
        assert!(!is_valid_name(""));
    }
}
