//! `/colibri/stats` JSON → metric families. Lenient by design: a field of an odd type is skipped and
//! reported, and never costs the other fields (strict typing is what blanked every existing exporter).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

use serde_json::{Map, Value};

use crate::exposition::{Family, Sample, Text, Type, is_valid_name};
use crate::fields::{self, Kind};

/// Names we emit ourselves, and the prefix of the bridge's native families: never produced from a field.
const RESERVED: &[&str] = &["jitsi_up", "jitsi_scrape_duration_seconds"];
const RESERVED_PREFIXES: &[&str] = &["jitsi_exporter_", "jitsi_jvb_"];

#[derive(Debug, Default, PartialEq)]
pub struct Converted {
    pub families: Vec<Family>,
    /// Fields skipped for their type: the known field's name, or `other`.
    pub field_errors: Vec<&'static str>,
    /// What was left out to keep the output bounded: one of [`SKIPPED_REASONS`] per item.
    pub skipped: Vec<&'static str>,
}

/// Why a well-formed part of the stats is left out: too many fields nobody knows (each would be a new
/// family, without end), or a label value longer than anything real (a version, a region, a size).
pub const SKIPPED_REASONS: [&str; 2] = ["too_many_fields", "label_too_long"];
/// Families made from fields we do not know, per scrape. A bridge sends ~80 fields, all known.
pub const MAX_UNKNOWN_FIELDS: usize = 200;
/// Label values (versions, regions, relay ids, conference sizes) longer than this are left out.
pub const MAX_LABEL_VALUE_LEN: usize = 128;
/// Conference-size buckets per scrape.
const MAX_SIZE_BUCKETS: usize = 64;

/// Lower snake case of a field name, keeping only `[a-z0-9_]`.
fn snake(field: &str) -> String {
    let mut out = String::with_capacity(field.len() + 4);
    let mut previous_lower = false;
    for c in field.chars() {
        if c.is_ascii_uppercase() {
            if previous_lower {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            previous_lower = false;
        } else if c.is_ascii_alphanumeric() {
            out.push(c);
            previous_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        } else {
            out.push('_');
            previous_lower = false;
        }
    }
    let mut collapsed = String::with_capacity(out.len());
    for c in out.chars() {
        if !(c == '_' && collapsed.ends_with('_')) {
            collapsed.push(c);
        }
    }
    collapsed.trim_matches('_').to_owned()
}

/// The metric name for a field, and the factor its value is scaled by (milliseconds → seconds, since
/// Prometheus wants base units and `promtool` refuses `milliseconds` in a name).
fn metric_name(field: &str, counter: bool) -> Option<(String, f64)> {
    let mut base = snake(field);
    if base.is_empty() {
        return None;
    }
    let mut scale = 1.0;
    if base.contains("milliseconds") {
        base = base.replace("milliseconds", "seconds");
        scale = 0.001;
    }
    if counter {
        let stem = base.strip_prefix("total_").unwrap_or(&base);
        let stem = stem.strip_suffix("_total").unwrap_or(stem);
        base = format!("{stem}_total");
    }
    let name = format!("jitsi_{base}");
    let reserved = RESERVED.contains(&name.as_str()) || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p));
    (is_valid_name(&name) && !reserved).then_some((name, scale))
}

fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        // Type drift: numbers printed as strings are still numbers.
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|v| v.is_finite()),
        _ => None,
    }
}

fn boolean(value: &Value) -> Option<f64> {
    match value {
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::Number(n) => n.as_f64().filter(|v| *v == 0.0 || *v == 1.0),
        Value::String(s) => match s.trim() {
            "true" => Some(1.0),
            "false" => Some(0.0),
            _ => None,
        },
        _ => None,
    }
}

/// Conference counts by size, in the shapes seen in the wild: an array (index = size), an object
/// (`{"2": 5}`), Jicofo's histogram summary (`{"buckets": {"0_to_1": 0, "1_to_2": 4, ...}, ...}`: its
/// ranges become the label), or any of these as a string.
fn conference_sizes(value: &Value) -> Option<Vec<(String, f64)>> {
    match value {
        Value::Array(counts) => counts
            .iter()
            .enumerate()
            .map(|(size, count)| Some((size.to_string(), number(count)?)))
            .collect(),
        Value::Object(summary) if summary.get("buckets").is_some_and(Value::is_object) => {
            let buckets = summary.get("buckets")?.as_object()?;
            // Ranges only (`<n>_to_<m>`, `<n>_to_max`): `p99_upper_bound` and the like are not counts.
            let digits = |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
            buckets
                .iter()
                .filter(|(range, _)| {
                    range
                        .split_once("_to_")
                        .is_some_and(|(low, high)| digits(low) && (digits(high) || high == "max"))
                })
                .map(|(range, count)| Some((range.clone(), number(count)?)))
                .collect()
        }
        Value::Object(counts) => {
            let mut sizes: Vec<(u64, f64)> = counts
                .iter()
                .map(|(size, count)| Some((size.trim().parse().ok()?, number(count)?)))
                .collect::<Option<_>>()?;
            sizes.sort_by_key(|(size, _)| *size);
            Some(
                sizes
                    .into_iter()
                    .map(|(size, count)| (size.to_string(), count))
                    .collect(),
            )
        }
        Value::String(text) => match serde_json::from_str::<Value>(text) {
            Ok(inner @ (Value::Array(_) | Value::Object(_))) => conference_sizes(&inner),
            _ => None,
        },
        _ => None,
    }
}

fn help(field: &str, kind: Kind) -> String {
    match kind {
        Kind::Counter => {
            format!("{field} from the bridge's /colibri/stats (cumulative since the bridge started)")
        }
        Kind::Bool => format!("{field} from the bridge's /colibri/stats (1 = true)"),
        _ => format!("{field} from the bridge's /colibri/stats"),
    }
}

/// What a field's name alone determines — its kind if known, metric name, help, legacy twin — computed
/// at its first scrape and reused: the same ~80 fields arrive every time, and deriving names was most of
/// the cost of a scrape. Bounded, so a bridge inventing field names cannot grow it without end.
#[derive(Debug, Default)]
pub struct NameCache {
    fields: HashMap<String, FieldNames>,
}

const CACHE_LIMIT: usize = 4096;

#[derive(Clone, Debug)]
struct FieldNames {
    known: Option<Kind>,
    error: &'static str,
    /// For numbers and booleans: (name, scale), help, and for counters the legacy (name, help).
    gauge: Option<Derived>,
    counter: Option<Derived>,
}

#[derive(Clone, Debug)]
struct Derived {
    metric: Option<(Text, f64)>,
    help: Text,
    legacy: Option<(Text, Text)>,
}

impl FieldNames {
    fn new(field: &str) -> Self {
        Self {
            known: fields::kind_of(field),
            error: fields::known(field).unwrap_or("other"),
            gauge: None,
            counter: None,
        }
    }

    fn derived(&mut self, field: &str, kind: Kind) -> &Derived {
        let counter = kind == Kind::Counter;
        let slot = if counter {
            &mut self.counter
        } else {
            &mut self.gauge
        };
        slot.get_or_insert_with(|| {
            let metric = metric_name(field, counter).map(|(name, scale)| (Text::from(name), scale));
            let legacy = if counter {
                // The Go exporter's name, as dashboards query it (`jitsi_total_video_stream_milliseconds_received`
                // included, though `promtool` would rather see seconds: compatibility is the point).
                let legacy = fields::legacy_name(field)
                    .map_or_else(|| format!("jitsi_{}", snake(field)), str::to_owned);
                let usable = is_valid_name(&legacy) && !legacy.ends_with("_total");
                match (&metric, usable) {
                    (Some((current, _)), true) => Some((
                        legacy.into(),
                        format!("Deprecated old name of {current}, kept for existing dashboards").into(),
                    )),
                    _ => None,
                }
            } else {
                None
            };
            Derived {
                metric,
                help: help(field, kind).into(),
                legacy,
            }
        })
    }
}

/// The top-level fields of a stats object in key order (as a map would iterate them), their names
/// borrowed from the body: a map of owned keys cost an allocation per field at every scrape.
#[derive(Debug, Default, PartialEq)]
pub struct Fields<'a>(pub Vec<(Cow<'a, str>, Value)>);

/// Why a body is not a stats object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotStats {
    NotJson,
    NotAnObject,
}

impl<'a> Fields<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, NotStats> {
        let mut fields: Fields<'a> = serde_json::from_slice(body).map_err(|error| {
            if error.is_data() {
                NotStats::NotAnObject
            } else {
                NotStats::NotJson
            }
        })?;
        fields.0.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        // A repeated key counts once, its last value, as in a map.
        fields.0.reverse();
        fields.0.dedup_by(|later, earlier| later.0 == earlier.0);
        fields.0.reverse();
        Ok(fields)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(name, value)| (name.as_ref(), value))
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Fields<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = Fields<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Fields<'a>, M::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(128));
                while let Some((Key(name), value)) = map.next_entry::<Key<'a>, Value>()? {
                    fields.push((name, value));
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

/// A key borrowed from the body when it has no escapes (every real one), else owned.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Key<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = Key<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Borrowed(name)))
            }
            fn visit_str<E>(self, name: &str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Owned(name.to_owned())))
            }
        }
        deserializer.deserialize_str(Visitor(std::marker::PhantomData))
    }
}

/// Converts one stats object. `legacy_names` also emits the old names of cumulative fields
/// (`jitsi_total_conferences_created`, ...) as untyped, for the dashboards operators already have.
pub fn convert(stats: &Map<String, Value>, legacy_names: bool) -> Converted {
    let fields = stats.iter().map(|(name, value)| (name.as_str(), value));
    convert_cached(fields, legacy_names, &mut NameCache::default())
}

/// [`convert`], reusing the names derived at earlier scrapes.
pub fn convert_cached<'s>(
    stats: impl IntoIterator<Item = (&'s str, &'s Value)>,
    legacy_names: bool,
    cache: &mut NameCache,
) -> Converted {
    let stats = stats.into_iter();
    let mut converted = Converted::default();
    converted.families.reserve(stats.size_hint().0 * 2);
    // Names emitted so far, by hash (no copy of each name): a hash seen before is checked against the
    // families themselves, so two names sharing a hash are both kept.
    let hasher = BuildHasherDefault::<DefaultHasher>::default();
    let mut emitted: HashSet<u64> = HashSet::with_capacity(converted.families.capacity());
    let mut push = |converted: &mut Converted, family: Family| {
        let seen = !emitted.insert(hasher.hash_one(&family.name))
            && converted.families.iter().any(|f| f.name == family.name);
        if !seen {
            converted.families.push(family);
        }
        !seen
    };
    let mut uncached;
    let mut unknown_families = 0usize;
    for (field, value) in stats {
        if value.is_null() {
            continue;
        }
        let names = if cache.fields.contains_key(field) {
            cache.fields.get_mut(field).expect("just looked up")
        } else if cache.fields.len() < CACHE_LIMIT {
            cache
                .fields
                .entry(field.to_owned())
                .or_insert_with(|| FieldNames::new(field))
        } else {
            uncached = FieldNames::new(field);
            &mut uncached
        };
        let kind = match (names.known, value) {
            (Some(kind), _) => kind,
            (None, Value::Bool(_)) => Kind::Bool,
            (None, Value::Number(_)) => {
                let lower = field.to_ascii_lowercase();
                if lower.starts_with("total_") || lower.ends_with("_total") {
                    Kind::Counter
                } else {
                    Kind::Gauge
                }
            }
            // Strings we do not know could hold anything (a timestamp, an id): never labels.
            (None, Value::String(_)) => Kind::Skip,
            (None, _) => {
                converted.field_errors.push("other");
                continue;
            }
        };
        let error = names.error;
        match kind {
            Kind::Skip => {}
            Kind::Gauge | Kind::Counter | Kind::Bool => {
                let parsed = if kind == Kind::Bool {
                    boolean(value)
                } else {
                    number(value)
                };
                let Some(raw) = parsed else {
                    converted.field_errors.push(error);
                    continue;
                };
                let is_known = names.known.is_some();
                let derived = names.derived(field, kind);
                let Some((name, scale)) = &derived.metric else {
                    converted.field_errors.push(error);
                    continue;
                };
                let counter = kind == Kind::Counter;
                let family = Family {
                    name: name.clone(),
                    help: derived.help.clone(),
                    kind: if counter { Type::Counter } else { Type::Gauge },
                    samples: vec![Sample::plain(raw * scale)],
                };
                if !is_known {
                    if unknown_families >= MAX_UNKNOWN_FIELDS {
                        converted.skipped.push(SKIPPED_REASONS[0]);
                        continue;
                    }
                    unknown_families += 1;
                }
                if !push(&mut converted, family) {
                    converted.field_errors.push(error);
                    continue;
                }
                if legacy_names && let Some((legacy, legacy_help)) = &derived.legacy {
                    push(
                        &mut converted,
                        Family {
                            name: legacy.clone(),
                            help: legacy_help.clone(),
                            kind: Type::Untyped,
                            samples: vec![Sample::plain(raw)],
                        },
                    );
                }
            }
            Kind::Info => {
                let Value::String(text) = value else {
                    converted.field_errors.push(error);
                    continue;
                };
                if text.len() > MAX_LABEL_VALUE_LEN {
                    converted.skipped.push(SKIPPED_REASONS[1]);
                    continue;
                }
                let label = snake(field);
                push(
                    &mut converted,
                    Family {
                        name: format!("jitsi_{label}_info").into(),
                        help: format!("The bridge's {field}, as a label").into(),
                        kind: Type::Gauge,
                        samples: vec![Sample::labelled(&label, text, 1.0)],
                    },
                );
            }
            Kind::ConferenceSizes => {
                let Some(mut sizes) = conference_sizes(value) else {
                    converted.field_errors.push(error);
                    continue;
                };
                if sizes.len() > MAX_SIZE_BUCKETS {
                    sizes.truncate(MAX_SIZE_BUCKETS);
                    converted.skipped.push(SKIPPED_REASONS[0]);
                }
                let before = sizes.len();
                sizes.retain(|(size, _)| size.len() <= MAX_LABEL_VALUE_LEN);
                if sizes.len() < before {
                    converted.skipped.push(SKIPPED_REASONS[1]);
                }
                let samples = sizes
                    .into_iter()
                    .map(|(size, count)| Sample::labelled("conference_size", &size, count))
                    .collect();
                push(
                    &mut converted,
                    Family {
                        name: "jitsi_conference_sizes".into(),
                        help: "Conferences by number of participants (older bridges only)".into(),
                        kind: Type::Gauge,
                        samples,
                    },
                );
            }
        }
    }
    converted
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(converted: &Converted) -> Vec<(&str, Type)> {
        converted.families.iter().map(|f| (&*f.name, f.kind)).collect()
    }

    #[test]
    fn fields_parsed_from_a_body_convert_as_the_map_would() {
        for body in [
            include_str!("../../testdata/colibri/2020-jvb-2.1.169-idle.json"),
            include_str!("../../testdata/colibri/2026-jvb-2.3.63-relay.json"),
            // An escaped name (owned, not borrowed) and a repeated one (the last value counts).
            r#"{"total_conferences_created": 1, "b\u0069trate_download": 5, "total_conferences_created": 7}"#,
        ] {
            let map: Map<String, Value> = serde_json::from_str(body).unwrap();
            let fields = Fields::parse(body.as_bytes()).unwrap();
            assert_eq!(fields.0.len(), map.len());
            let mut cache = NameCache::default();
            assert_eq!(
                convert_cached(fields.iter(), true, &mut cache),
                convert(&map, true)
            );
        }
    }

    #[test]
    fn a_body_that_is_no_stats_object_says_why() {
        assert_eq!(Fields::parse(b"<html>404</html>"), Err(NotStats::NotJson));
        assert_eq!(Fields::parse(b"{\"truncated\": "), Err(NotStats::NotJson));
        assert_eq!(Fields::parse(b"[1, 2]"), Err(NotStats::NotAnObject));
        assert_eq!(Fields::parse(b"\"text\""), Err(NotStats::NotAnObject));
    }

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn counters_are_named_by_convention_with_legacy_twins() {
        let converted = convert(
            &object(json!({ "total_conferences_created": 10, "preemptive_kfr_sent": 2 })),
            true,
        );
        assert_eq!(
            names(&converted),
            vec![
                ("jitsi_preemptive_kfr_sent_total", Type::Counter),
                ("jitsi_preemptive_kfr_sent", Type::Untyped),
                ("jitsi_conferences_created_total", Type::Counter),
                ("jitsi_total_conferences_created", Type::Untyped),
            ]
        );
        let without = convert(&object(json!({ "total_conferences_created": 10 })), false);
        assert_eq!(
            names(&without),
            vec![("jitsi_conferences_created_total", Type::Counter)]
        );
    }

    #[test]
    fn milliseconds_become_seconds_and_the_old_name_keeps_milliseconds() {
        let converted = convert(
            &object(json!({ "total_video_stream_milliseconds_received": 3357131 })),
            true,
        );
        assert_eq!(
            names(&converted),
            vec![
                ("jitsi_video_stream_seconds_received_total", Type::Counter),
                ("jitsi_total_video_stream_milliseconds_received", Type::Untyped)
            ]
        );
        assert_eq!(converted.families[0].samples[0].value, 3357.131);
        assert_eq!(converted.families[1].samples[0].value, 3357131.0);
    }

    /// Every name the Go exporter prints (read from its source into `testdata/go-exporter/`) is printed
    /// by ours with `--legacy-names`, for a bridge that sends the field behind it.
    #[test]
    fn legacy_names_cover_every_name_of_the_go_exporter() {
        let list = include_str!("../../testdata/go-exporter/metric-names.tsv");
        let rows: Vec<(&str, &str)> = list
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .map(|line| line.split_once('\t').unwrap())
            .collect();
        assert!(rows.len() > 80, "the whole list: {}", rows.len());
        let mut stats = Map::new();
        for (_, field) in &rows {
            let value = match fields::kind_of(field) {
                Some(Kind::Bool) => json!(true),
                Some(Kind::Info) => json!("x"),
                Some(Kind::ConferenceSizes) => json!([0, 2, 1]),
                _ => json!(7),
            };
            stats.insert((*field).to_owned(), value);
        }
        let converted = convert(&stats, true);
        let printed: Vec<String> = converted
            .families
            .iter()
            .flat_map(|family| {
                family.samples.iter().map(|sample| match sample.labels.first() {
                    Some((label, _)) => format!("{}{}{{{label}}}", family.name, sample.suffix),
                    None => format!("{}{}", family.name, sample.suffix),
                })
            })
            .collect();
        let missing: Vec<&str> = rows
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| !printed.iter().any(|printed| printed == name))
            .collect();
        assert!(
            missing.is_empty(),
            "names of the Go exporter we do not print: {missing:?}"
        );
    }

    #[test]
    fn a_flood_of_unknown_fields_is_capped_and_counted() {
        let mut stats = Map::new();
        for i in 0..5000 {
            stats.insert(format!("invented_field_{i}"), json!(i));
        }
        stats.insert("conferences".to_owned(), json!(3));
        let converted = convert(&stats, true);
        assert_eq!(
            converted.families.len(),
            MAX_UNKNOWN_FIELDS + 1,
            "the known field is never the one left out"
        );
        assert!(
            converted
                .families
                .iter()
                .any(|family| &*family.name == "jitsi_conferences")
        );
        assert_eq!(converted.skipped.len(), 5000 - MAX_UNKNOWN_FIELDS);
        assert!(
            converted
                .skipped
                .iter()
                .all(|reason| *reason == "too_many_fields")
        );
    }

    #[test]
    fn label_values_longer_than_anything_real_are_left_out() {
        let converted = convert(
            &object(json!({
                "version": "v".repeat(500),
                "region": "eu-west",
                "conference_sizes": { "buckets": { "0_to_1": 1, "x_to_y": 2, "1_to_max": 4 } }
            })),
            true,
        );
        let names: Vec<&str> = converted.families.iter().map(|f| &*f.name).collect();
        assert!(!names.contains(&"jitsi_version_info") && names.contains(&"jitsi_region_info"));
        assert_eq!(converted.skipped, vec!["label_too_long"]);
        let sizes = converted
            .families
            .iter()
            .find(|f| &*f.name == "jitsi_conference_sizes")
            .unwrap();
        assert_eq!(sizes.samples.len(), 2, "only <n>_to_<m> ranges become labels");
    }

    #[test]
    fn odd_types_cost_only_their_own_field() {
        let converted = convert(
            &object(
                json!({ "conferences": {"x": 1}, "participants": "7", "threads": 58.0, "healthy": "maybe", "weird": [1] }),
            ),
            true,
        );
        assert_eq!(
            names(&converted),
            vec![
                ("jitsi_participants", Type::Gauge),
                ("jitsi_threads", Type::Gauge)
            ]
        );
        assert_eq!(converted.families[0].samples[0].value, 7.0);
        assert_eq!(converted.field_errors, vec!["conferences", "healthy", "other"]);
    }

    #[test]
    fn conference_sizes_in_every_shape() {
        for shape in [
            json!([0, 3, 1]),
            json!({ "2": 1, "1": 3, "0": 0 }),
            json!("[0,3,1]"),
        ] {
            let converted = convert(&object(json!({ "conference_sizes": shape })), true);
            let samples: Vec<(String, f64)> = converted.families[0]
                .samples
                .iter()
                .map(|s| (s.labels[0].1.clone(), s.value))
                .collect();
            assert_eq!(
                samples,
                vec![("0".into(), 0.0), ("1".into(), 3.0), ("2".into(), 1.0)],
                "{shape}"
            );
        }
        let empty = convert(&object(json!({ "conference_sizes": "[]" })), true);
        assert!(empty.families[0].samples.is_empty());
        let jicofo = convert(
            &object(
                json!({ "conference_sizes": { "max": 3, "buckets": { "0_to_1": 2, "1_to_2": 5, "p99_upper_bound": -1 } } }),
            ),
            true,
        );
        let samples: Vec<(String, f64)> = jicofo.families[0]
            .samples
            .iter()
            .map(|s| (s.labels[0].1.clone(), s.value))
            .collect();
        assert_eq!(samples, vec![("0_to_1".into(), 2.0), ("1_to_2".into(), 5.0)]);
        let bad = convert(&object(json!({ "conference_sizes": "no" })), true);
        assert_eq!(bad.field_errors, vec!["conference_sizes"]);
    }

    #[test]
    fn strings_become_info_metrics_only_when_known() {
        let converted = convert(
            &object(
                json!({ "version": "2.3.63", "current_timestamp": "2026-03-03 18:30:14.965", "mystery": "x" }),
            ),
            true,
        );
        assert_eq!(names(&converted), vec![("jitsi_version_info", Type::Gauge)]);
        assert_eq!(
            converted.families[0].samples[0].labels,
            vec![("version".to_owned(), "2.3.63".to_owned())]
        );
    }

    #[test]
    fn unknown_fields_are_exported_without_colliding_with_ours() {
        let converted = convert(
            &object(
                json!({ "newFieldCount": 4, "total_new_things": 9, "up": 0, "jvb_x": 1, "exporter_build": 1, "flag": true }),
            ),
            true,
        );
        assert_eq!(
            names(&converted),
            vec![
                ("jitsi_flag", Type::Gauge),
                ("jitsi_new_field_count", Type::Gauge),
                ("jitsi_new_things_total", Type::Counter),
                ("jitsi_total_new_things", Type::Untyped),
            ]
        );
        assert_eq!(converted.field_errors, vec!["other", "other", "other"]);
    }
}
