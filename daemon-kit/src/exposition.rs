//! Metric families and their Prometheus text exposition (format 0.0.4, what `promtool check metrics`
//! lints): names, HELP, TYPE, escaping and number formatting. For the exporters, whose families change
//! from one scrape to the next and so do not fit a static registry. Pure.

use std::fmt::Write as _;

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

impl Type {
    fn as_str(self) -> &'static str {
        match self {
            Type::Gauge => "gauge",
            Type::Counter => "counter",
            Type::Histogram => "histogram",
            Type::Untyped => "untyped",
        }
    }
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

/// A family's name or help: shared, since the exporters derive both once per upstream field and
/// reuse them at every scrape (a copy per scrape was a tenth of jvb-exporter's CPU).
pub type Text = std::sync::Arc<str>;

#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    pub name: Text,
    pub help: Text,
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

fn write_escaped(out: &mut String, text: &str, quote: bool) {
    // Nearly every text needs no escaping: copied whole, not character by character.
    // (A fold without early exit: the compiler vectorizes it.)
    let special = text.bytes().fold(false, |found, b| {
        found | (b == b'\\') | (b == b'\n') | (quote & (b == b'"'))
    });
    if !special {
        out.push_str(text);
        return;
    }
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

pub fn write_value(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        let _ = write!(out, "{}", value as i64);
    } else {
        let _ = write!(out, "{value}");
    }
}

pub fn encode(families: &[Family], out: &mut String) {
    for family in families {
        out.push_str("# HELP ");
        out.push_str(&family.name);
        out.push(' ');
        write_escaped(out, &family.help, false);
        out.push_str("\n# TYPE ");
        out.push_str(&family.name);
        out.push(' ');
        out.push_str(family.kind.as_str());
        out.push('\n');
        for sample in &family.samples {
            out.push_str(&family.name);
            out.push_str(sample.suffix);
            if !sample.labels.is_empty() {
                out.push('{');
                for (index, (name, value)) in sample.labels.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    out.push_str(name);
                    out.push_str("=\"");
                    write_escaped(out, value, true);
                    out.push('"');
                }
                out.push('}');
            }
            out.push(' ');
            write_value(out, sample.value);
            out.push('\n');
        }
    }
}

/// A gauge family of one unlabelled sample.
pub fn gauge(name: &str, help: &str, value: f64) -> Family {
    Family {
        name: name.into(),
        help: help.into(),
        kind: Type::Gauge,
        samples: vec![Sample::plain(value)],
    }
}

/// `<name>{version="<version>"} 1`: which build serves these metrics.
pub fn build_info(name: &str, version: &str) -> Family {
    Family {
        name: name.into(),
        help: "The exporter's version".into(),
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
        name: name.into(),
        help: help.into(),
        kind: Type::Counter,
        samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_help_type_labels_and_escapes() {
        let families = vec![Family {
            name: "jitsi_version_info".into(),
            help: "Version \\ of\nthe bridge".into(),
            kind: Type::Gauge,
            samples: vec![Sample::labelled("version", "2.3 \"x\"\n", 1.0)],
        }];
        let mut out = String::new();
        encode(&families, &mut out);
        assert_eq!(
            out,
            "# HELP jitsi_version_info Version \\\\ of\\nthe bridge\n# TYPE jitsi_version_info gauge\njitsi_version_info{version=\"2.3 \\\"x\\\"\\n\"} 1\n"
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
        let mut out = String::new();
        encode(&[family], &mut out);
        assert_eq!(
            out,
            "# HELP x_errors_total h\n# TYPE x_errors_total counter\n\
             x_errors_total{source=\"a\",reason=\"timeout\"} 0\nx_errors_total{source=\"a\",reason=\"connect\"} 0\n\
             x_errors_total{source=\"b\",reason=\"timeout\"} 0\nx_errors_total{source=\"b\",reason=\"connect\"} 1\n"
        );
    }

    #[test]
    fn values() {
        let text = |v: f64| {
            let mut out = String::new();
            write_value(&mut out, v);
            out
        };
        assert_eq!(text(3.0), "3");
        assert_eq!(text(-2.0), "-2");
        assert_eq!(text(0.25), "0.25");
        assert_eq!(text(6.18e-5), "0.0000618");
        assert_eq!(text(1e20), "100000000000000000000");
        assert_eq!(text(f64::NAN), "NaN");
        assert_eq!(text(f64::INFINITY), "+Inf");
    }

    #[test]
    fn names() {
        assert!(is_valid_name("jitsi_up"));
        assert!(!is_valid_name("9lives"));
        assert!(!is_valid_name("a-b"));
        assert!(!is_valid_name(""));
    }
}
