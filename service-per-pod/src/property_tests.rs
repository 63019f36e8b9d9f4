//! Hostile or broken input: any annotations, any replica count, any pods — the pure core never panics,
//! and every Service it plans stays inside its own StatefulSet's port block (base + ordinal, in range).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use crate::annotations::{self, BASE_PORT, LABEL, LEGACY_LABEL, MAX_REPLICAS, PROTOCOLS};
use crate::desired::{self, Claim, Limits, NodePortRange, PodView, SetKey, SetView};
use crate::grants::Grants;

fn annotation_value() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u32..70000).prop_map(|n| n.to_string()),
        "[0-9]{0,7}",
        "\\PC{0,12}",
        Just("UDP,TCP".to_owned()),
        Just(" tcp , udp ".to_owned()),
        "[a-z./-]{0,20}",
    ]
}

fn annotations_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    let key = prop_oneof![
        Just(BASE_PORT),
        Just(PROTOCOLS),
        Just(LABEL),
        Just(LEGACY_LABEL),
        Just(MAX_REPLICAS),
        Just("other/key")
    ];
    prop::collection::btree_map(key.prop_map(str::to_owned), annotation_value(), 0..5)
}

fn set_name() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z][a-z0-9-]{0,20}", "\\PC{1,70}", "[a-z.]{1,80}"]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn random_statefulsets_stay_in_their_port_blocks(
        annotations in annotations_map(),
        name in set_name(),
        replicas in prop_oneof![0u32..300, Just(i32::MAX as u32), 0u32..=(i32::MAX as u32)],
        pods in prop::collection::btree_map(0u32..400, prop::option::of(0u16..u16::MAX), 0..20),
        range_start in 1u16..40000,
        range_len in 0u16..30000,
        granted in prop::option::of((0u16..u16::MAX, 0u16..5000)),
        others in prop::collection::vec((0u16..u16::MAX, 0i64..10), 0..4),
    ) {
        let range = NodePortRange { first: range_start, last: range_start.saturating_add(range_len) };
        let Ok(Some(opt_in)) = annotations::parse(&annotations) else {
            return Ok(());
        };
        let grants: Grants = match granted {
            None => Grants::whole_range("ns", range),
            Some((first, len)) => format!("ns={first}-{}", first.saturating_add(len)).parse().unwrap_or_default(),
        };
        let limits = Limits { range, direct_range: range, grants: grants.clone() };
        let set = SetView {
            key: SetKey { namespace: "ns".into(), name: name.clone() },
            uid: "uid".into(),
            opt_in: opt_in.clone(),
            replicas,
            start: 0,
            deleting: false,
            created: 5,
            pods: std::sync::Arc::new(
                pods.iter()
                    .map(|(ordinal, base)| {
                        (*ordinal, PodView { name: format!("{name}-{ordinal}"), uid: format!("p{ordinal}"), base_port: *base, endpoint: None, terminating: false })
                    })
                    .collect(),
            ),
        };
        let mut claims: Vec<Claim> = others
            .iter()
            .enumerate()
            .map(|(i, (base, created))| Claim {
                set: SetKey { namespace: "other".into(), name: format!("s{i}") },
                created: *created,
                ports: (0..3).filter_map(|o| desired::port_for(*base, o)).collect(),
            })
            .collect();
        claims.push(Claim { set: set.key.clone(), created: 5, ports: desired::claimed_ports(&set, &limits) });
        let winners = desired::port_winners(&claims, &BTreeMap::new());
        let plan = desired::plan(&set, &limits, &winners);

        let wanted = desired::wanted(&set);
        prop_assert!(plan.services.len() <= usize::from(range.last - range.first) + 1, "bounded by the range");
        let planned: BTreeSet<u32> = plan.services.iter().map(|s| s.ordinal).collect();
        prop_assert!(planned.iter().all(|o| wanted.contains(*o)));
        let ports: BTreeSet<u16> = plan.services.iter().map(|s| s.port).collect();
        prop_assert_eq!(ports.len(), plan.services.len(), "one Service per port");
        for service in &plan.services {
            let base = set.pods.get(&service.ordinal).and_then(|pod| pod.base_port).unwrap_or(opt_in.base_port);
            prop_assert_eq!(u32::from(service.port), u32::from(base) + service.ordinal, "base + ordinal");
            prop_assert!(range.contains(service.port), "inside the node-port range");
            prop_assert!(grants.allows("ns", service.port), "a granted port");
            prop_assert_eq!(winners.get(&service.port), Some(&set.key), "a port this StatefulSet holds");
            prop_assert_eq!(&service.name, &format!("{}-{}", set.key.name, service.ordinal));
            prop_assert!(desired::is_dns1035_label(&service.name));
        }
        // Every wanted ordinal is either planned or refused, never silently dropped, never both.
        let refused = plan.refused();
        prop_assert_eq!(planned.len() as u64 + refused.len(), wanted.len());
        prop_assert!(planned.iter().all(|o| !refused.contains(*o)));
        prop_assert!(plan.refusals.len() <= 4, "one refusal per reason");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    /// Fuzzing the opt-in parser with arbitrary text: it never panics, and whatever it accepts is exactly
    /// what the text says — a port 1..=65535 equal to the trimmed number, only UDP/TCP, a valid label key.
    #[test]
    fn the_annotation_parser_takes_any_text_and_accepts_only_what_it_can_use(
        base in prop_oneof!["\\PC{0,12}", "\\p{Any}{0,12}", "[ 0-9+-]{0,8}", (0u64..200_000).prop_map(|n| n.to_string())],
        protocols in prop::option::of(prop_oneof!["\\PC{0,16}", "[udtcpUDTCP, ]{0,12}"]),
        label in prop::option::of(prop_oneof!["\\PC{0,80}", "[a-z0-9./_-]{0,80}"]),
        legacy in prop::option::of("\\PC{0,40}"),
        noise in prop::collection::btree_map("\\PC{0,20}", "\\PC{0,20}", 0..4),
    ) {
        let mut annotations = noise;
        annotations.insert(BASE_PORT.to_owned(), base.clone());
        if let Some(protocols) = &protocols {
            annotations.insert(PROTOCOLS.to_owned(), protocols.clone());
        }
        if let Some(label) = &label {
            annotations.insert(LABEL.to_owned(), label.clone());
        }
        if let Some(legacy) = &legacy {
            annotations.insert(LEGACY_LABEL.to_owned(), legacy.clone());
        }
        match annotations::parse(&annotations) {
            Ok(Some(opt_in)) => {
                prop_assert!(opt_in.base_port >= 1);
                prop_assert_eq!(base.trim().parse::<u16>().ok(), Some(opt_in.base_port));
                prop_assert!(!opt_in.protocols.is_empty());
                prop_assert!(annotations::is_label_key(&opt_in.selector_label));
                if let Some(label) = &label {
                    prop_assert_eq!(&opt_in.selector_label, label.trim());
                }
            }
            Ok(None) => prop_assert!(false, "the base-port annotation is present"),
            Err(error) => {
                // One sentence naming the annotation, for the Event and the log line.
                let sentence = error.to_string();
                prop_assert!(!sentence.contains('\n'));
                prop_assert!(sentence.contains("annotation"));
            }
        }
    }
}
