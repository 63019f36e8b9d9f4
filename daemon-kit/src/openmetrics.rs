//! An upstream's exposition (OpenMetrics, as Prosody's `mod_http_openmetrics` writes it, or the
//! Prometheus text format, as a bridge's native `/metrics` does) → families to serve again.
//!
//! Parsed and re-encoded rather than copied, so what we serve is valid whatever the upstream sends:
//! `# UNIT` and `# EOF` dropped, `_created` samples dropped, counters renamed to their `_total` sample
//! name (the text format names a counter family by its sample), label values re-escaped. Any line that
//! does not parse, and any sample with a label value longer than the limit, is skipped and counted; so
//! is every family beyond the limit — an upstream cannot make the output, or the series count, grow
//! without end.

use crate::exposition::{Family, Sample, Type, is_valid_name};

/// How much of an upstream's exposition is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_families: usize,
    pub max_label_value_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_families: 2000,
            max_label_value_len: 256,
        }
    }
}

/// Families to serve, and what was left out.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub families: Vec<Family>,
    /// Lines that did not parse, and samples whose label values were too long.
    pub skipped_lines: usize,
    /// Families beyond [`Limits::max_families`].
    pub skipped_families: usize,
}

/// One parsed sample: the suffix after its family's name, its labels, its value.
type RawSample = (String, Vec<(String, String)>, f64);

#[derive(Debug)]
struct Pending {
    name: String,
    help: Option<String>,
    kind: String,
    samples: Vec<RawSample>,
}

fn unescape_help(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `{a="x",b="y\"z"}` → pairs and the rest of the line; `None` if malformed.
fn parse_labels(text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut rest = text.strip_prefix('{')?;
    let mut labels = Vec::new();
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (name, after) = rest.split_once("=\"")?;
        let name = name.trim();
        if !is_valid_name(name) || name.contains(':') {
            return None;
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (index, '"') => break index,
                (_, c) => value.push(c),
            }
        };
        labels.push((name.to_owned(), value));
        rest = &after[end + 1..];
    }
}

fn parse_value(text: &str) -> Option<f64> {
    // OpenMetrics allows a timestamp after the value, and an exemplar after ` # `: both dropped.
    let text = text.split(" # ").next()?.trim();
    let value = text.split_whitespace().next()?;
    match value {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        v => v.parse().ok(),
    }
}

fn finish(pending: Pending, parsed: &mut Parsed, limits: Limits, source: &str) {
    if parsed.families.len() >= limits.max_families {
        if !pending.samples.is_empty() {
            parsed.skipped_families += 1;
        }
        return;
    }
    let help = pending
        .help
        .unwrap_or_else(|| format!("{} (from {source})", pending.name));
    let samples = |wanted: &[&str]| -> Vec<Sample> {
        pending
            .samples
            .iter()
            .filter(|(suffix, _, _)| wanted.contains(&suffix.as_str()))
            .map(|(_, labels, value)| Sample::with_labels(labels.clone(), *value))
            .collect()
    };
    match pending.kind.as_str() {
        "counter" => {
            let samples = samples(&["_total", ""]);
            if !samples.is_empty() {
                let name = if pending.name.ends_with("_total") {
                    pending.name.clone()
                } else {
                    format!("{}_total", pending.name)
                };
                parsed.families.push(Family {
                    name: name.into(),
                    help: help.into(),
                    kind: Type::Counter,
                    samples,
                });
            }
        }
        "gauge" => {
            let samples = samples(&[""]);
            if !samples.is_empty() {
                parsed.families.push(Family {
                    name: pending.name.into(),
                    help: help.into(),
                    kind: Type::Gauge,
                    samples,
                });
            }
        }
        "histogram" | "gaugehistogram" => {
            let samples: Vec<Sample> = pending
                .samples
                .iter()
                .filter_map(|(suffix, labels, value)| {
                    let suffix = match suffix.as_str() {
                        "_bucket" => "_bucket",
                        "_sum" => "_sum",
                        "_count" => "_count",
                        _ => return None,
                    };
                    Some(Sample {
                        suffix,
                        labels: labels.clone(),
                        value: *value,
                    })
                })
                .collect();
            if !samples.is_empty() {
                parsed.families.push(Family {
                    name: pending.name.into(),
                    help: help.into(),
                    kind: Type::Histogram,
                    samples,
                });
            }
        }
        _ => {
            // unknown, info, stateset, summary: served as untyped samples under their own names.
            let samples = samples(&["", "_info", "_total"]);
            if !samples.is_empty() {
                parsed.families.push(Family {
                    name: pending.name.into(),
                    help: help.into(),
                    kind: Type::Untyped,
                    samples,
                });
            }
        }
    }
}

/// Parses `text`; `source` names the upstream in the HELP of families that came without one.
pub fn parse(text: &str, source: &str, limits: Limits) -> Parsed {
    let mut parsed = Parsed::default();
    let mut current: Option<Pending> = None;
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if line == "# EOF" {
            break;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let (keyword, name, tail) = (
                words.next().unwrap_or(""),
                words.next().unwrap_or(""),
                words.next().unwrap_or(""),
            );
            if !is_valid_name(name) {
                parsed.skipped_lines += 1;
                continue;
            }
            if current.as_ref().is_none_or(|c| c.name != name) {
                if let Some(done) = current.take() {
                    finish(done, &mut parsed, limits, source);
                }
                current = Some(Pending {
                    name: name.to_owned(),
                    help: None,
                    kind: "unknown".to_owned(),
                    samples: Vec::new(),
                });
            }
            if let Some(family) = current.as_mut() {
                match keyword {
                    "HELP" => family.help = Some(unescape_help(tail)),
                    "TYPE" => family.kind = tail.trim().to_owned(),
                    _ => {} // UNIT and anything else: nothing to keep
                }
            }
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let (sample_name, rest) = line.split_at(end);
        let (labels, rest) = if rest.starts_with('{') {
            match parse_labels(rest) {
                Some(parsed_labels) => parsed_labels,
                None => {
                    parsed.skipped_lines += 1;
                    continue;
                }
            }
        } else {
            (Vec::new(), rest)
        };
        let Some(value) = parse_value(rest) else {
            parsed.skipped_lines += 1;
            continue;
        };
        if labels
            .iter()
            .any(|(_, value)| value.len() > limits.max_label_value_len)
        {
            parsed.skipped_lines += 1;
            continue;
        }
        let suffix = match current
            .as_ref()
            .and_then(|family| sample_name.strip_prefix(family.name.as_str()))
        {
            Some(suffix)
                if matches!(
                    suffix,
                    "" | "_total" | "_created" | "_bucket" | "_sum" | "_count" | "_info"
                ) =>
            {
                suffix
            }
            _ => {
                // A sample outside any declared family: its own untyped family.
                if let Some(done) = current.take() {
                    finish(done, &mut parsed, limits, source);
                }
                if !is_valid_name(sample_name) {
                    parsed.skipped_lines += 1;
                    continue;
                }
                current = Some(Pending {
                    name: sample_name.to_owned(),
                    help: None,
                    kind: "unknown".to_owned(),
                    samples: Vec::new(),
                });
                ""
            }
        };
        if suffix != "_created"
            && let Some(family) = current.as_mut()
        {
            family.samples.push((suffix.to_owned(), labels, value));
        }
    }
    if let Some(done) = current.take() {
        finish(done, &mut parsed, limits, source);
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_histograms_and_openmetrics_only_lines() {
        let text = "# HELP prosody_mod_bosh__new_sid mod_bosh/new_sid counter
# UNIT prosody_mod_bosh__new_sid 
# TYPE prosody_mod_bosh__new_sid counter
prosody_mod_bosh__new_sid_created 1795502138.6802056
prosody_mod_bosh__new_sid_total 4
# HELP prosody_mod_c2s__connections Established c2s connections
# TYPE prosody_mod_c2s__connections gauge
prosody_mod_c2s__connections{host=\"meet.test\",type=\"c2s\",ip_family=\"ipv4\"} 3
# HELP prosody_stats_seconds stats times
# UNIT prosody_stats_seconds seconds
# TYPE prosody_stats_seconds histogram
prosody_stats_seconds_bucket{le=\"0.1\"} 2
prosody_stats_seconds_bucket{le=\"+Inf\"} 2
prosody_stats_seconds_count 2
prosody_stats_seconds_created 1795502138.66
prosody_stats_seconds_sum 3.8e-06
# HELP prosody_empty no samples
# TYPE prosody_empty counter
# EOF
";
        let parsed = parse(text, "Prosody", Limits::default());
        let names: Vec<(&str, Type)> = parsed.families.iter().map(|f| (&*f.name, f.kind)).collect();
        assert_eq!(
            names,
            vec![
                ("prosody_mod_bosh__new_sid_total", Type::Counter),
                ("prosody_mod_c2s__connections", Type::Gauge),
                ("prosody_stats_seconds", Type::Histogram),
            ]
        );
        assert_eq!(parsed.families[0].samples[0].value, 4.0);
        assert_eq!(
            parsed.families[1].samples[0].labels[2],
            ("ip_family".to_owned(), "ipv4".to_owned())
        );
        let mut histogram = String::new();
        crate::exposition::encode(&parsed.families[2..], &mut histogram);
        assert_eq!(
            histogram,
            "# HELP prosody_stats_seconds stats times\n# TYPE prosody_stats_seconds histogram\n\
             prosody_stats_seconds_bucket{le=\"0.1\"} 2\nprosody_stats_seconds_bucket{le=\"+Inf\"} 2\n\
             prosody_stats_seconds_count 2\nprosody_stats_seconds_sum 0.0000038\n"
        );
        assert_eq!(parsed.skipped_lines, 0);
    }

    #[test]
    fn garbage_lines_are_skipped_and_counted() {
        let parsed = parse(
            "not a metric line\n# TYPE ok gauge\nok{a=\"unterminated} 1\nok 2\nbad-name 3\n",
            "Prosody",
            Limits::default(),
        );
        assert_eq!(parsed.families.len(), 1);
        assert_eq!(parsed.families[0].samples[0].value, 2.0);
        assert_eq!(parsed.skipped_lines, 3);
    }

    #[test]
    fn families_and_label_values_beyond_the_limits_are_left_out_and_counted() {
        let mut text = String::new();
        for i in 0..10 {
            text.push_str(&format!("# TYPE f{i} gauge\nf{i} {i}\n"));
        }
        text.push_str(&format!(
            "# TYPE long gauge\nlong{{v=\"{}\"}} 1\n",
            "x".repeat(300)
        ));
        let limits = Limits {
            max_families: 4,
            max_label_value_len: 256,
        };
        let parsed = parse(&text, "test", limits);
        assert_eq!(parsed.families.len(), 4);
        assert_eq!(parsed.skipped_families, 6);
        assert_eq!(
            parsed.skipped_lines, 1,
            "the sample with a 300-character label value"
        );
    }
}
