//! Any JSON whatever → the mapping never panics, and the text is valid exposition: every family has
//! one HELP and one TYPE before its samples, names and labels are valid, values parse.

use std::collections::HashSet;

use proptest::prelude::*;
use serde_json::{Map, Value};

use crate::convert::convert;
use crate::exposition::{encode, is_valid_name};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
        "[0-9.eE+-]{1,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn stats() -> impl Strategy<Value = Map<String, Value>> {
    let key = prop_oneof![
        "\\PC{0,16}",
        "[a-zA-Z_]{1,20}",
        Just("conference_sizes".to_owned()),
        Just("version".to_owned()),
        Just("total_conferences_created".to_owned()),
        Just("healthy".to_owned()),
        Just("up".to_owned()),
    ];
    prop::collection::btree_map(key, json_value(), 0..24).prop_map(|m| m.into_iter().collect())
}

/// Parses `{a="x",b="y"}` (with escapes); returns the rest of the line after the closing brace.
fn labels(mut rest: &str) -> Result<&str, String> {
    rest = rest.strip_prefix('{').ok_or("labels must start with {")?;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok(after);
        }
        let (name, after) = rest.split_once("=\"").ok_or("label without =\"")?;
        if !is_valid_name(name) || name.contains(':') {
            return Err(format!("bad label name {name:?}"));
        }
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\' | '"' | 'n')) => {}
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((i, '"')) => break i,
                Some((_, '\n')) => return Err("raw newline in label value".into()),
                Some(_) => {}
                None => return Err("unterminated label value".into()),
            }
        };
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

fn validate(text: &str) -> Result<(), String> {
    let mut typed = HashSet::new();
    let mut helped = HashSet::new();
    let mut current: Option<&str> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            if !is_valid_name(name) || !helped.insert(name.to_owned()) {
                return Err(format!("bad or repeated HELP: {line}"));
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or("TYPE without a type")?;
            if !matches!(kind, "gauge" | "counter" | "untyped")
                || !typed.insert(name.to_owned())
                || !helped.contains(name)
            {
                return Err(format!("bad, repeated or unhelped TYPE: {line}"));
            }
            current = Some(name);
        } else if line.starts_with('#') {
            return Err(format!("unexpected comment: {line}"));
        } else {
            let end = line.find(['{', ' ']).ok_or("sample without value")?;
            let (name, rest) = line.split_at(end);
            if Some(name) != current {
                return Err(format!("sample outside its family: {line}"));
            }
            let rest = if rest.starts_with('{') {
                labels(rest)?
            } else {
                rest
            };
            let value = rest.strip_prefix(' ').ok_or("no space before value")?;
            if !matches!(value, "NaN" | "+Inf" | "-Inf") && value.parse::<f64>().is_err() {
                return Err(format!("bad value: {line}"));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_stats_give_valid_exposition(stats in stats(), legacy in any::<bool>()) {
        let converted = convert(&stats, legacy);
        let mut text = String::new();
        encode(&converted.families, &mut text);
        prop_assert!(validate(&text).is_ok(), "{:?}\n{}", validate(&text), text);
        for family in &converted.families {
            prop_assert!(family.name.starts_with("jitsi_") && !family.name.starts_with("jitsi_jvb_"));
            prop_assert!(&*family.name != "jitsi_up" && !family.name.starts_with("jitsi_exporter_"));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_name_cache_never_changes_the_result(scrapes in prop::collection::vec(stats(), 1..5), legacy in any::<bool>()) {
        let mut cache = crate::convert::NameCache::default();
        for stats in &scrapes {
            let fields = stats.iter().map(|(name, value)| (name.as_str(), value));
            prop_assert_eq!(crate::convert::convert_cached(fields, legacy, &mut cache), convert(stats, legacy));
        }
    }
}

#[test]
fn the_validator_rejects_what_it_should() {
    assert!(validate("# HELP a x\n# TYPE a gauge\na 1\n").is_ok());
    assert!(validate("a 1\n").is_err());
    assert!(validate("# HELP a x\n# TYPE a gauge\na{b=\"x} 1\n").is_err());
    assert!(validate("# HELP a x\n# TYPE a gauge\n# HELP a x\n").is_err());
    assert!(validate("# HELP a x\n# TYPE a gauge\na one\n").is_err());
}
