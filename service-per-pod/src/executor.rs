//! Carries out a [`Plan`]: each step once the steps it depends on have succeeded, several at a time,
//! each write only while this replica still leads (checked right before every call, each half of a
//! replacement and each slice included). Every step ends in an [`Outcome`]; none stops the others.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Client, ResourceExt};
use serde_json::Value;

use crate::desired;
use crate::leader::Leadership;
use crate::metrics::{Metrics, Verb};
use crate::plan::{Plan, SliceOwner, Step, StepId, Write};

pub const FIELD_MANAGER: &str = "service-per-pod";
/// Writes in flight at once for one StatefulSet.
const CONCURRENT_WRITES: usize = 16;

/// What became of one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Written (or, for a dry run, accepted); the object's UID when the API server returned it.
    Done { uid: Option<String> },
    /// Leadership ended before the step: nothing was sent.
    NotLeading,
    /// A step it depends on did not succeed: not tried.
    Skipped,
    /// The API server refused these node ports (in use, out of its range).
    Refused { ports: BTreeSet<u16>, message: String },
    /// A Service of that name exists and is not ours: left untouched.
    Foreign { message: String },
    /// The object changed since we looked (resourceVersion precondition): looked at again soon.
    Conflict,
    /// Anything else the API server (or the network) said.
    Failed { code: Option<u16>, message: String },
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        matches!(self, Outcome::Done { .. })
    }
}

/// Where and as whom the steps are written.
#[derive(Clone, Copy)]
pub struct Writer<'a> {
    pub client: &'a Client,
    pub namespace: &'a str,
    /// The StatefulSet's UID: a Service it controls is ours.
    pub owner_uid: &'a str,
    pub leadership: &'a Leadership,
    pub metrics: &'a Metrics,
}

impl std::fmt::Debug for Writer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("namespace", &self.namespace)
            .field("owner_uid", &self.owner_uid)
            .finish_non_exhaustive()
    }
}

/// The node ports an API server message says it refused (`spec.ports[0].nodePort: Invalid value: 30300:
/// provided port is already allocated`).
pub fn refused_node_ports(message: &str) -> BTreeSet<u16> {
    message
        .split("nodePort: Invalid value: ")
        .skip(1)
        .filter_map(|rest| rest.split(':').next()?.trim().parse().ok())
        .collect()
}

/// Whether every cause the API server gave is a node port already allocated (and nothing else wrong).
fn only_node_ports_allocated(status: &kube::core::Status) -> bool {
    let causes = status
        .details
        .as_ref()
        .map(|details| details.causes.as_slice())
        .unwrap_or_default();
    !causes.is_empty()
        && causes.iter().all(|cause| {
            cause.field.ends_with(".nodePort") && cause.message.contains("provided port is already allocated")
        })
}

fn failed(error: kube::Error) -> Outcome {
    match error {
        kube::Error::Api(status) => Outcome::Failed {
            code: Some(status.code),
            message: status.message,
        },
        other => Outcome::Failed {
            code: None,
            message: other.to_string(),
        },
    }
}

impl Writer<'_> {
    fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), self.namespace)
    }

    fn slices(&self) -> Api<EndpointSlice> {
        Api::namespaced(self.client.clone(), self.namespace)
    }

    /// Whether the Service `name` exists and is ours: a create refused for a name or a node port may have
    /// met our own earlier create that the cache did not show yet.
    async fn is_ours(&self, name: &str) -> Result<Option<String>, kube::Error> {
        Ok(self
            .services()
            .get_opt(name)
            .await?
            .filter(|service| desired::controller_uid(service) == Some(self.owner_uid))
            .map(|service| service.uid().unwrap_or_default()))
    }

    async fn create_service(
        &self,
        name: &str,
        manifest: &Value,
        dry_run: bool,
        tolerated: &BTreeSet<u16>,
    ) -> Outcome {
        if dry_run {
            // A create of a name that exists is refused for its node ports before its name is checked:
            // the name is looked up first, or a foreign Service would pass for our own ports.
            match self.services().get_opt(name).await {
                Ok(Some(existing)) if desired::controller_uid(&existing) == Some(self.owner_uid) => {
                    return Outcome::Done { uid: None };
                }
                Ok(Some(_)) => {
                    return Outcome::Foreign {
                        message: format!(
                            "a Service named {name} exists and is not controlled by this StatefulSet; it is left untouched"
                        ),
                    };
                }
                Ok(None) => {}
                Err(error) => return failed(error),
            }
        }
        let service: Service = match serde_json::from_value(manifest.clone()) {
            Ok(service) => service,
            Err(error) => {
                return Outcome::Failed {
                    code: None,
                    message: format!("the Service we built does not parse: {error}"),
                };
            }
        };
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            dry_run,
        };
        if !dry_run {
            self.metrics.write(Verb::Create);
        }
        match self.services().create(&params, &service).await {
            Ok(created) => Outcome::Done {
                uid: created.uid().filter(|_| !dry_run),
            },
            Err(kube::Error::Api(status)) if status.code == 409 && status.reason == "AlreadyExists" => {
                match self.is_ours(name).await {
                    Ok(Some(uid)) => Outcome::Done { uid: Some(uid) },
                    Ok(None) => Outcome::Foreign {
                        message: format!(
                            "a Service named {name} exists and is not controlled by this StatefulSet; it is left untouched"
                        ),
                    },
                    Err(error) => failed(error),
                }
            }
            Err(kube::Error::Api(status)) if status.code == 422 && status.message.contains("nodePort") => {
                // A create of a Service that exists is refused for its node port before its name is
                // checked: when that Service is ours, there is no refusal.
                if let Ok(Some(uid)) = self.is_ours(name).await {
                    return Outcome::Done { uid: Some(uid) };
                }
                let ports = refused_node_ports(&status.message);
                let beyond: BTreeSet<u16> = ports.difference(tolerated).copied().collect();
                if dry_run && !ports.is_empty() && beyond.is_empty() && only_node_ports_allocated(&status) {
                    // Refused only for the node ports the objects it replaces hold: accepted.
                    return Outcome::Done { uid: None };
                }
                Outcome::Refused {
                    ports: if beyond.is_empty() { ports } else { beyond },
                    message: status.message,
                }
            }
            Err(error) => failed(error),
        }
    }

    async fn patch(&self, write: &Write) -> Outcome {
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        self.metrics.write(Verb::Patch);
        let result = match write {
            Write::PatchService { name, patch, .. } => self
                .services()
                .patch(name, &params, &Patch::Merge(patch))
                .await
                .map(|service| service.uid()),
            Write::PatchSlice { name, patch } => self
                .slices()
                .patch(name, &params, &Patch::Merge(patch))
                .await
                .map(|slice| slice.uid()),
            _ => unreachable!("patch() is called for patches"),
        };
        match result {
            Ok(uid) => Outcome::Done { uid },
            // Bound to a UID that is no longer the object's: it was replaced meanwhile; the watch brings
            // the news and the next reconcile looks again.
            Err(kube::Error::Api(status))
                if (status.code == 409 || status.code == 422) && status.message.contains("uid") =>
            {
                Outcome::Done { uid: None }
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Outcome::Conflict,
            Err(kube::Error::Api(status)) if status.code == 422 && status.message.contains("nodePort") => {
                Outcome::Refused {
                    ports: refused_node_ports(&status.message),
                    message: status.message,
                }
            }
            Err(error) => failed(error),
        }
    }

    async fn delete(&self, write: &Write) -> Outcome {
        let (name, uid) = match write {
            Write::DeleteService { name, uid } | Write::DeleteSlice { name, uid } => (name, uid),
            _ => unreachable!("delete() is called for deletions"),
        };
        // The UID precondition: we delete the object we looked at, never a newer one of that name.
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        self.metrics.write(Verb::Delete);
        let result = match write {
            Write::DeleteService { .. } => self.services().delete(name, &params).await.map(|_| ()),
            _ => self.slices().delete(name, &params).await.map(|_| ()),
        };
        match result {
            Ok(()) => Outcome::Done { uid: None },
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {
                Outcome::Done { uid: None }
            }
            Err(error) => failed(error),
        }
    }

    async fn create_slice(&self, manifest: &Value, owner_uid: &str) -> Outcome {
        let mut manifest = manifest.clone();
        manifest["metadata"]["ownerReferences"][0]["uid"] = Value::String(owner_uid.to_owned());
        let slice: EndpointSlice = match serde_json::from_value(manifest) {
            Ok(slice) => slice,
            Err(error) => {
                return Outcome::Failed {
                    code: None,
                    message: format!("the EndpointSlice we built does not parse: {error}"),
                };
            }
        };
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        self.metrics.write(Verb::Create);
        match self.slices().create(&params, &slice).await {
            Ok(created) => Outcome::Done { uid: created.uid() },
            // Ours, made a moment ago: the next reconcile compares it.
            Err(kube::Error::Api(status)) if status.code == 409 => Outcome::Done { uid: None },
            Err(error) => failed(error),
        }
    }

    async fn run(&self, step: &Step, done: &BTreeMap<StepId, Outcome>) -> Outcome {
        if !self.leadership.is_leader() {
            return Outcome::NotLeading;
        }
        match &step.write {
            Write::CreateService {
                name,
                manifest,
                dry_run,
                tolerated,
                ..
            } => self.create_service(name, manifest, *dry_run, tolerated).await,
            write @ (Write::PatchService { .. } | Write::PatchSlice { .. }) => self.patch(write).await,
            write @ (Write::DeleteService { .. } | Write::DeleteSlice { .. }) => self.delete(write).await,
            Write::CreateSlice { manifest, owner, .. } => {
                let owner_uid = match owner {
                    SliceOwner::Existing(uid) => Some(uid.clone()),
                    SliceOwner::CreatedBy(step) => match done.get(step) {
                        Some(Outcome::Done { uid }) => uid.clone(),
                        _ => None,
                    },
                };
                match owner_uid {
                    Some(uid) => self.create_slice(manifest, &uid).await,
                    // The Service was ours already (created before the cache showed it): next time.
                    None => Outcome::Skipped,
                }
            }
        }
    }
}

async fn run_one<'a>(
    writer: &Writer<'a>,
    step: &'a Step,
    done: &BTreeMap<StepId, Outcome>,
) -> (StepId, Outcome) {
    (step.id, writer.run(step, done).await)
}

/// Runs every step of `plan` whose dependencies succeeded, in waves, and returns each step's outcome.
pub async fn execute(writer: &Writer<'_>, plan: &Plan) -> BTreeMap<StepId, Outcome> {
    let mut done: BTreeMap<StepId, Outcome> = BTreeMap::new();
    loop {
        let before = done.len();
        let mut ready = Vec::new();
        for step in &plan.steps {
            if done.contains_key(&step.id)
                || !step.after.iter().all(|dependency| done.contains_key(dependency))
            {
                continue;
            }
            if step.after.iter().all(|dependency| done[dependency].succeeded()) {
                ready.push(step);
            } else {
                done.insert(step.id, Outcome::Skipped);
            }
        }
        if ready.is_empty() {
            if done.len() == plan.steps.len() {
                return done;
            }
            if done.len() == before {
                // Only steps waiting on steps that will never run (none, with a plan from `plan`).
                for step in &plan.steps {
                    done.entry(step.id).or_insert(Outcome::Skipped);
                }
                return done;
            }
            continue;
        }
        // Made before they are streamed (a few references each, nothing polled yet): a stream over a
        // mapping closure trips the compiler's higher-ranked lifetime check in a Send future.
        let futures: Vec<_> = ready
            .into_iter()
            .map(|step| run_one(writer, step, &done))
            .collect();
        let wave: Vec<(StepId, Outcome)> = futures::stream::iter(futures)
            .buffer_unordered(CONCURRENT_WRITES)
            .collect()
            .await;
        for (id, outcome) in wave {
            match &outcome {
                Outcome::Done { .. } if !plan.steps[id.0].write.is_dry_run() => {
                    tracing::info!(
                        namespace = writer.namespace,
                        "{}",
                        plan.steps[id.0].write.describe()
                    );
                }
                _ => {}
            }
            done.insert(id, outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refused_node_ports_come_from_the_api_servers_words() {
        let message = "Service \"jvb-public\" is invalid: [spec.ports[0].nodePort: Invalid value: 30300: provided port is already allocated, spec.ports[2].nodePort: Invalid value: 30302: provided port is already allocated]";
        assert_eq!(refused_node_ports(message), BTreeSet::from([30300, 30302]));
        assert!(refused_node_ports("exceeded quota: services.nodeports=1").is_empty());
    }
}
