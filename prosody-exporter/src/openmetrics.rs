//! Prosody's OpenMetrics text (`mod_http_openmetrics`) → families in the Prometheus text format.
//!
//! Parsed and re-encoded rather than copied, so what we serve is valid whatever Prosody sends: `# UNIT`
//! and `# EOF` dropped, `_created` samples dropped, counters renamed to their `_total` sample name (the
//! text format names a counter family by its sample), label values re-escaped, and any line that does not
//! parse skipped and counted.

use daemon_kit::exposition::{Family, Sample, Type, is_valid_name};

/// Families to serve, and how many input lines were skipped as unparsable.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub families: Vec<Family>,
    pub skipped_lines: usize,
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

fn finish(pending: Pending, parsed: &mut Parsed) {
    let help = pending
        .help
        .unwrap_or_else(|| format!("{} (from Prosody)", pending.name));
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
                    name,
                    help,
                    kind: Type::Counter,
                    samples,
                });
            }
        }
        "gauge" => {
            let samples = samples(&[""]);
            if !samples.is_empty() {
                parsed.families.push(Family {
                    name: pending.name,
                    help,
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
                    name: pending.name,
                    help,
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
                    name: pending.name,
                    help,
                    kind: Type::Untyped,
                    samples,
                });
            }
        }
    }
}

pub fn parse(text: &str) -> Parsed {
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
                    finish(done, &mut parsed);
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
                    finish(done, &mut parsed);
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
        finish(done, &mut parsed);
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
        let parsed = parse(text);
        let names: Vec<(&str, Type)> = parsed
            .families
            .iter()
            .map(|f| (f.name.as_str(), f.kind))
            .collect();
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
        daemon_kit::exposition::encode(&parsed.families[2..], &mut histogram);
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
        let parsed = parse("not a metric line\n# TYPE ok gauge\nok{a=\"unterminated} 1\nok 2\nbad-name 3\n");
        assert_eq!(parsed.families.len(), 1);
        assert_eq!(parsed.families[0].samples[0].value, 2.0);
        assert_eq!(parsed.skipped_lines, 3);
    }
}
