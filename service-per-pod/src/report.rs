//! What a reconcile tells the operator: one Warning Event on the StatefulSet (and one log line) per
//! distinct problem — the planner's refusals and every write that did not succeed — aggregated (one
//! cause refusing many writes is one Event naming them) and reported once: again only after the problem
//! went away and came back.

use std::collections::{BTreeMap, BTreeSet};

use crate::desired::{self, SetKey};
use crate::executor::Outcome;
use crate::plan::{Plan, StepId, Write};

/// A problem to report: a CamelCase reason (the Event's, a metric's category) and one sentence.
pub type Warning = (String, String);

/// How long a node port the API server refused waits at most before it is tried again.
pub const REFUSED_RETRY_MAX_SECS: u64 = 30;

fn written_name(write: &Write) -> &str {
    match write {
        Write::CreateService { name, .. }
        | Write::PatchService { name, .. }
        | Write::DeleteService { name, .. }
        | Write::CreateSlice { name, .. }
        | Write::PatchSlice { name, .. }
        | Write::DeleteSlice { name, .. } => name,
    }
}

/// The warnings the outcomes of `plan` call for.
pub fn from_outcomes(set: &SetKey, plan: &Plan, outcomes: &BTreeMap<StepId, Outcome>) -> Vec<Warning> {
    let mut warnings = Vec::new();
    // Failures of the same kind and words (the object's name left out) are one warning.
    let mut failures: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for step in &plan.steps {
        let Some(outcome) = outcomes.get(&step.id) else {
            continue;
        };
        let name = written_name(&step.write);
        let who = match desired::ordinal_in_name(&set.name, name) {
            Some(ordinal) if matches!(step.write, Write::CreateService { .. }) => {
                format!("pod ordinal {ordinal} gets no Service")
            }
            _ => format!("no {}", step.write.describe()),
        };
        match outcome {
            Outcome::Done { .. } | Outcome::NotLeading | Outcome::Skipped | Outcome::Conflict => {}
            _ if step.write.is_dry_run() => {
                let (staying, stays) = if desired::ordinal_in_name(&set.name, name).is_some() {
                    ("LoadBalancer", "the LoadBalancer Service stays")
                } else {
                    ("NodePort", "the per-pod Services stay")
                };
                let why = match outcome {
                    Outcome::Refused { message, .. }
                    | Outcome::Foreign { message }
                    | Outcome::Failed { message, .. } => message.clone(),
                    _ => String::new(),
                };
                warnings.push((
                    "ModeSwitchRefused".to_owned(),
                    format!("staying in {staying} mode: the API server would refuse Service {name}: {why}; {stays}"),
                ));
            }
            Outcome::Refused { ports, message } => {
                let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
                warnings.push((
                    "NodePortRefused".to_owned(),
                    format!(
                        "the API server refused node port {} for Service {name}: {message} (tried again within {REFUSED_RETRY_MAX_SECS} s; the StatefulSet's other ports are not held up)",
                        ports.join(", ")
                    ),
                ));
            }
            Outcome::Foreign { message } => {
                warnings.push(("ForeignService".to_owned(), format!("{who}: {message}")));
            }
            Outcome::Failed { code, message } => {
                let reason = match code {
                    Some(400..=499) if *code != Some(429) => "WriteRefused",
                    _ => "ApiUnavailable",
                };
                let verb = step.write.describe().replace(name, "").trim().to_owned();
                let generic = message
                    .replace(&format!("\"{name}\""), "<name>")
                    .replace(name, "<name>");
                failures
                    .entry((reason.to_owned(), format!("{verb}: {generic}")))
                    .or_default()
                    .push(name.to_owned());
            }
        }
    }
    for ((reason, message), names) in failures {
        let (verb, words) = message.split_once(": ").unwrap_or((&message, ""));
        let objects = if names.len() > 4 {
            format!("{}, … ({} in all)", names[..4].join(", "), names.len())
        } else {
            names.join(", ")
        };
        warnings.push((
            reason,
            format!("the API server refused to {verb} {objects}: {words} (tried again later; the other writes went on)"),
        ));
    }
    warnings
}

/// The warnings not reported yet: those of `current` that `previous` lacks.
pub fn news(previous: &BTreeSet<Warning>, current: &BTreeSet<Warning>) -> Vec<Warning> {
    current.difference(previous).cloned().collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::plan::Step;

    fn set() -> SetKey {
        SetKey {
            namespace: "jitsi".to_owned(),
            name: "jvb".to_owned(),
        }
    }

    fn patch(name: &str) -> Write {
        Write::PatchService {
            name: name.to_owned(),
            patch: json!({}),
            node_ports: BTreeSet::new(),
        }
    }

    #[test]
    fn one_cause_refusing_several_writes_is_one_warning() {
        let plan = Plan {
            steps: (0..3)
                .map(|i| Step {
                    id: StepId(i),
                    write: patch(&format!("jvb-{i}")),
                    after: Vec::new(),
                })
                .collect(),
            notes: Vec::new(),
        };
        let outcomes: BTreeMap<StepId, Outcome> = (0..3)
            .map(|i| {
                let outcome = if i == 1 {
                    Outcome::Done { uid: None }
                } else {
                    Outcome::Failed {
                        code: Some(422),
                        message: format!("services \"jvb-{i}\" is forbidden: ValidatingAdmissionPolicy 'freeze' denied request"),
                    }
                };
                (StepId(i), outcome)
            })
            .collect();
        let warnings = from_outcomes(&set(), &plan, &outcomes);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].0, "WriteRefused");
        assert!(
            warnings[0].1.contains("update Service jvb-0, jvb-2"),
            "{}",
            warnings[0].1
        );
        assert!(warnings[0].1.contains("<name> is forbidden"), "{}", warnings[0].1);
    }
}
