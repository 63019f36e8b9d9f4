//! Every write a reconcile makes, decided in one place for either mode: each create, repair,
//! replacement and deletion of our Services and EndpointSlices, with the precondition it is written
//! under and the steps that must have succeeded first. Pure: the caches and the desired Services in,
//! steps out. [`crate::executor`] carries them out.
//!
//! The rules, the same in both modes:
//! - a node port the API server refused waits for its own retry time ([`Waiting::refused_ports`]) and
//!   holds up nothing else; an ordinal refused by the planner (range, grants, conflicts) keeps what it
//!   has;
//! - only a changed node port *number* replaces a per-pod Service (delete, then create); protocol entries
//!   added or removed keep the number, which the API server then neither frees nor allocates: patched in
//!   place. In `LoadBalancer` mode the one Service is never replaced: a patch that changes its node
//!   ports carries the resourceVersion it was computed from, so the API server fails it on a concurrent
//!   write instead of retrying it internally (the retry that leaked node ports, issue 16);
//! - a mode switch moves node ports from the old objects to the new: the new ones are first created as a
//!   dry run (accepted but for the node ports the old ones hold); only then are the old ones deleted and
//!   the new ones created. A refused dry run leaves the old ones in place;
//! - Services with our labels that nothing controls (orphans) are adopted by the repair patch.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use serde_json::Value;

use crate::annotations::PublicService;
use crate::desired::{self, DesiredService, SetView};
use crate::public;

/// What waits for a later reconcile, per StatefulSet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Waiting {
    /// Node ports the API server refused, not due for another try yet.
    pub refused_ports: BTreeSet<u16>,
    /// Services we created or patched that the cache does not show yet (left alone until it does).
    pub echoes: BTreeSet<String>,
}

/// How a StatefulSet's pods are exposed in this plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    NodePort,
    LoadBalancer { name: String, spec: PublicService },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StepId(pub usize);

/// The object a slice's owner reference points at: the public Service as it exists, or as a step
/// creates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SliceOwner {
    Existing(String),
    CreatedBy(StepId),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// POST; with `dry_run`, only asks whether the API server would accept it. `tolerated` node ports
    /// are held by the objects this plan replaces: a dry run refused for those alone is accepted.
    CreateService {
        name: String,
        manifest: Value,
        node_ports: BTreeSet<u16>,
        dry_run: bool,
        tolerated: BTreeSet<u16>,
    },
    /// A merge patch bound to the UID we looked at (and, when it moves node ports, to the version).
    PatchService {
        name: String,
        patch: Value,
        node_ports: BTreeSet<u16>,
    },
    DeleteService {
        name: String,
        uid: String,
    },
    CreateSlice {
        name: String,
        manifest: Value,
        owner: SliceOwner,
    },
    PatchSlice {
        name: String,
        patch: Value,
    },
    DeleteSlice {
        name: String,
        uid: String,
    },
}

impl Write {
    /// "create Service jvb-3", for messages.
    pub fn describe(&self) -> String {
        match self {
            Write::CreateService {
                name, dry_run: true, ..
            } => format!("dry-run create of Service {name}"),
            Write::CreateService { name, .. } => format!("create Service {name}"),
            Write::PatchService { name, .. } => format!("update Service {name}"),
            Write::DeleteService { name, .. } => format!("delete Service {name}"),
            Write::CreateSlice { name, .. } => format!("create EndpointSlice {name}"),
            Write::PatchSlice { name, .. } => format!("update EndpointSlice {name}"),
            Write::DeleteSlice { name, .. } => format!("delete EndpointSlice {name}"),
        }
    }

    pub fn is_dry_run(&self) -> bool {
        matches!(self, Write::CreateService { dry_run: true, .. })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub id: StepId,
    pub write: Write,
    /// Steps that must have succeeded before this one runs; if one failed, this one is not tried.
    pub after: Vec<StepId>,
}

/// A thing the plan decided not to do, for the operator.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Note {
    pub reason: String,
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub notes: Vec<Note>,
}

impl Plan {
    fn push(&mut self, write: Write, after: Vec<StepId>) -> StepId {
        let id = StepId(self.steps.len());
        self.steps.push(Step { id, write, after });
        id
    }
}

/// What the plan reads.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    pub set: &'a SetView,
    /// The ordinals that get a Service, and why others do not.
    pub desired: &'a desired::Plan,
    /// The Services the StatefulSet controls.
    pub services: &'a [Arc<Service>],
    /// Services with our labels for this StatefulSet that nothing controls.
    pub orphans: &'a [Arc<Service>],
    /// Our EndpointSlices of this StatefulSet.
    pub slices: &'a [Arc<EndpointSlice>],
    pub waiting: &'a Waiting,
    pub mode: &'a Mode,
}

fn port_entries(service: &Service) -> impl Iterator<Item = &k8s_openapi::api::core::v1::ServicePort> {
    service
        .spec
        .as_ref()
        .and_then(|spec| spec.ports.as_ref())
        .into_iter()
        .flatten()
}

fn node_ports(service: &Service) -> BTreeSet<u16> {
    port_entries(service)
        .filter_map(|port| port.node_port.and_then(|p| u16::try_from(p).ok()))
        .collect()
}

/// The per-pod Services' plan (`NodePort` mode). Returns the creates, for a mode switch to order
/// after the deletion of the old mode's Service.
fn node_port_services(
    inputs: &Inputs<'_>,
    plan: &mut Plan,
    after: &[StepId],
    dry_run_tolerating: Option<&BTreeSet<u16>>,
) -> Vec<StepId> {
    let set = inputs.set;
    let mut creates = Vec::new();
    for wanted in &inputs.desired.services {
        if inputs.waiting.echoes.contains(&wanted.name) {
            continue;
        }
        let actual = inputs
            .services
            .iter()
            .chain(adoptable(inputs))
            .find(|service| service.name_any() == wanted.name);
        match actual {
            Some(actual) if actual.metadata.deletion_timestamp.is_some() => {}
            Some(actual) if desired::is_up_to_date(wanted, &set.key, &set.uid, actual) => {}
            Some(actual) if !desired::node_ports_match(wanted, actual) => {
                if inputs.waiting.refused_ports.contains(&wanted.port) {
                    continue;
                }
                // A changed node port number: the Service is replaced (see the module's rules).
                let delete = plan.push(
                    Write::DeleteService {
                        name: wanted.name.clone(),
                        uid: actual.uid().unwrap_or_default(),
                    },
                    after.to_vec(),
                );
                creates.push(plan.push(create_per_pod(inputs, wanted, false, None), vec![delete]));
            }
            Some(actual) => {
                plan.push(
                    Write::PatchService {
                        name: wanted.name.clone(),
                        patch: desired::repair_patch(wanted, &set.key, &set.uid, actual),
                        node_ports: BTreeSet::from([wanted.port]),
                    },
                    after.to_vec(),
                );
            }
            None => {
                if inputs.waiting.refused_ports.contains(&wanted.port) {
                    continue;
                }
                match dry_run_tolerating {
                    Some(tolerated) => {
                        let check =
                            plan.push(create_per_pod(inputs, wanted, true, Some(tolerated)), Vec::new());
                        creates.push(check);
                    }
                    None => {
                        creates.push(plan.push(create_per_pod(inputs, wanted, false, None), after.to_vec()))
                    }
                }
            }
        }
    }
    creates
}

fn create_per_pod(
    inputs: &Inputs<'_>,
    wanted: &DesiredService,
    dry_run: bool,
    tolerated: Option<&BTreeSet<u16>>,
) -> Write {
    Write::CreateService {
        name: wanted.name.clone(),
        manifest: desired::service_manifest(wanted, &inputs.set.key, &inputs.set.uid),
        node_ports: BTreeSet::from([wanted.port]),
        dry_run,
        tolerated: tolerated.cloned().unwrap_or_default(),
    }
}

/// The orphans this plan may adopt: none while the StatefulSet is being deleted (a deletion with
/// `--cascade=orphan` is what orphans them).
fn adoptable<'a>(inputs: &'a Inputs<'_>) -> &'a [Arc<Service>] {
    if inputs.set.deleting { &[] } else { inputs.orphans }
}

/// Our per-pod Services no StatefulSet ordinal wants any more, or of `NodePort` mode while in
/// `LoadBalancer` mode. Only Services the StatefulSet controls: an orphan is adopted when wanted and
/// otherwise left alone, as the StatefulSet controller leaves orphaned pods.
///
/// None while the StatefulSet is being deleted: the garbage collector ends it. With `--cascade=orphan` it
/// strips the owner of each pod and Service one by one, so for a moment a pod no longer counts as the
/// StatefulSet's while its Service still does: deleting that Service would cut the calls of a bridge the
/// operator meant to keep. With a cascade, the collector deletes the Services itself.
fn unwanted_per_pod<'a>(inputs: &'a Inputs<'_>, mode: &Mode) -> Vec<&'a Arc<Service>> {
    if inputs.set.deleting {
        return Vec::new();
    }
    let wanted = desired::wanted(inputs.set);
    let public_name = match mode {
        Mode::LoadBalancer { name, .. } => Some(name.as_str()),
        Mode::NodePort => None,
    };
    inputs
        .services
        .iter()
        .filter(|service| service.metadata.deletion_timestamp.is_none())
        .filter(|service| {
            let name = service.name_any();
            if Some(name.as_str()) == public_name {
                return false;
            }
            match desired::ordinal_in_name(&inputs.set.key.name, &name) {
                // A per-pod Service of a wanted ordinal stays in NodePort mode (even a refused one keeps
                // what it has); in LoadBalancer mode it goes.
                Some(ordinal) => public_name.is_some() || !wanted.contains(ordinal),
                None => true,
            }
        })
        .collect()
}

pub fn plan(inputs: &Inputs<'_>) -> Plan {
    let mut plan = Plan::default();
    match inputs.mode {
        Mode::NodePort => plan_node_port(inputs, &mut plan),
        Mode::LoadBalancer { name, spec } => plan_load_balancer(inputs, name, spec, &mut plan),
    }
    plan
}

fn plan_node_port(inputs: &Inputs<'_>, plan: &mut Plan) {
    // A Service of ours that is not per-pod: the one of LoadBalancer mode, before a switch back.
    let leftovers = unwanted_per_pod(inputs, &Mode::NodePort);
    let public: Vec<&&Arc<Service>> = leftovers
        .iter()
        .filter(|service| desired::ordinal_in_name(&inputs.set.key.name, &service.name_any()).is_none())
        .collect();
    let public_ports: BTreeSet<u16> = public.iter().flat_map(|service| node_ports(service)).collect();
    if public_ports.is_empty() {
        node_port_services(inputs, plan, &[], None);
        for service in leftovers {
            plan.push(delete_service(service), Vec::new());
        }
        return;
    }
    // Switching from LoadBalancer mode: the per-pod Services need the node ports the one Service holds.
    let checks = node_port_services(inputs, plan, &[], Some(&public_ports));
    let mut deletes = Vec::new();
    for service in &leftovers {
        deletes.push(plan.push(delete_service(service), checks.clone()));
    }
    for check in checks {
        let Write::CreateService {
            name,
            manifest,
            node_ports,
            ..
        } = plan.steps[check.0].write.clone()
        else {
            continue;
        };
        plan.push(
            Write::CreateService {
                name,
                manifest,
                node_ports,
                dry_run: false,
                tolerated: BTreeSet::new(),
            },
            deletes.clone(),
        );
    }
}

fn delete_service(service: &Service) -> Write {
    Write::DeleteService {
        name: service.name_any(),
        uid: service.uid().unwrap_or_default(),
    }
}

/// The port entries of `service` that belong to `ordinals` (kept as they are: a refused ordinal keeps
/// what it had).
fn entries_of(service: &Service, ordinals: &crate::ordinals::Ordinals) -> Vec<Value> {
    port_entries(service)
        .filter(|port| {
            port.name
                .as_deref()
                .and_then(|name| name.split('-').next())
                .and_then(|ordinal| ordinal.parse::<u32>().ok())
                .is_some_and(|ordinal| ordinals.contains(ordinal))
        })
        .filter_map(|port| serde_json::to_value(port).ok())
        .collect()
}

fn plan_load_balancer(inputs: &Inputs<'_>, name: &str, spec: &PublicService, plan: &mut Plan) {
    let set = inputs.set;
    // The one Service carries every bridge of the set: while the StatefulSet is being deleted it is left
    // to the garbage collector, as the per-pod Services are (see `unwanted_per_pod`). A patch now would
    // drop the ports of pods whose owner the collector has already stripped, or give the Service back an
    // owner that is about to go.
    if set.deleting {
        return;
    }
    let public = inputs
        .services
        .iter()
        .chain(adoptable(inputs))
        .find(|service| service.name_any() == name && service.metadata.deletion_timestamp.is_none());
    let leftovers = unwanted_per_pod(inputs, inputs.mode);
    let leftover_ports: BTreeSet<u16> = leftovers.iter().flat_map(|service| node_ports(service)).collect();
    // The ports: every planned ordinal whose node port is not waiting for a retry; refused ordinals keep
    // the entries they have.
    let held = public.map(|service| node_ports(service)).unwrap_or_default();
    let planned: Vec<DesiredService> = inputs
        .desired
        .services
        .iter()
        .filter(|wanted| held.contains(&wanted.port) || !inputs.waiting.refused_ports.contains(&wanted.port))
        .cloned()
        .collect();
    let kept: Vec<Value> = public
        .map(|service| entries_of(service, &inputs.desired.refused()))
        .unwrap_or_default();
    let existing = public.and_then(|service| serde_json::to_value(service.as_ref()).ok());
    let manifest =
        public::service_manifest(name, &set.key, &set.uid, spec, &planned, &kept, existing.as_ref());
    // The node ports this Service takes: none when its load balancer reaches the pods directly.
    let wanted_ports: BTreeSet<u16> = if spec.node_ports {
        planned.iter().map(|wanted| wanted.port).collect()
    } else {
        BTreeSet::new()
    };
    let owner: Option<SliceOwner>;
    let mut after_public = Vec::new();
    match public {
        _ if inputs.waiting.echoes.contains(name) => return,
        None if planned.is_empty() && kept.is_empty() => {
            // Nothing to expose: no Service (one without ports is invalid); leftovers and slices go.
            for service in &leftovers {
                plan.push(delete_service(service), Vec::new());
            }
            for slice in inputs.slices {
                plan.push(
                    Write::DeleteSlice {
                        name: slice.name_any(),
                        uid: slice.uid().unwrap_or_default(),
                    },
                    Vec::new(),
                );
            }
            return;
        }
        None => {
            let create = |dry_run: bool, tolerated: BTreeSet<u16>| Write::CreateService {
                name: name.to_owned(),
                manifest: manifest.clone(),
                node_ports: wanted_ports.clone(),
                dry_run,
                tolerated,
            };
            let mut deletes = Vec::new();
            if leftovers.is_empty() {
                let created = plan.push(create(false, BTreeSet::new()), Vec::new());
                owner = Some(SliceOwner::CreatedBy(created));
                after_public.push(created);
            } else {
                // Switching from NodePort mode: checked first, then the per-pod Services give way.
                let check = plan.push(create(true, leftover_ports.clone()), Vec::new());
                for service in &leftovers {
                    deletes.push(plan.push(delete_service(service), vec![check]));
                }
                let created = plan.push(create(false, BTreeSet::new()), deletes);
                owner = Some(SliceOwner::CreatedBy(created));
                after_public.push(created);
            }
        }
        Some(public) => {
            // Per-pod leftovers first: the ports they hold come to the one Service after them.
            let deletes: Vec<StepId> = leftovers
                .iter()
                .map(|service| plan.push(delete_service(service), Vec::new()))
                .collect();
            let current = existing.unwrap_or_default();
            let empty_plan = planned.is_empty() && kept.is_empty();
            if !empty_plan && !public::is_up_to_date(&manifest, &current) {
                let moves_ports =
                    node_ports(public) != wanted_ports.union(&kept_ports(&kept)).copied().collect();
                let version = moves_ports.then(|| public.resource_version()).flatten();
                let patch = public::repair_patch(&manifest, public.uid().as_deref(), version.as_deref());
                let patched = plan.push(
                    Write::PatchService {
                        name: name.to_owned(),
                        patch,
                        node_ports: wanted_ports.clone(),
                    },
                    deletes,
                );
                after_public.push(patched);
            }
            owner = public.uid().map(SliceOwner::Existing);
        }
    }
    let Some(owner) = owner else { return };
    plan_slices(inputs, name, &planned, &owner, &after_public, plan);
}

fn kept_ports(kept: &[Value]) -> BTreeSet<u16> {
    kept.iter()
        .filter_map(|port| port["nodePort"].as_u64().and_then(|p| u16::try_from(p).ok()))
        .collect()
}

/// One EndpointSlice per planned pod with an address; every other slice of ours for the StatefulSet goes.
fn plan_slices(
    inputs: &Inputs<'_>,
    service: &str,
    planned: &[DesiredService],
    owner: &SliceOwner,
    after: &[StepId],
    plan: &mut Plan,
) {
    let set = inputs.set;
    let owner_uid = match owner {
        SliceOwner::Existing(uid) => uid.as_str(),
        // Filled in by the executor from the create's answer.
        SliceOwner::CreatedBy(_) => "",
    };
    let mut wanted_names = BTreeSet::new();
    for wanted in planned {
        let endpoint = set
            .pods
            .get(&wanted.ordinal)
            .filter(|pod| wanted.pod.as_ref().is_some_and(|owner| owner.uid == pod.uid))
            .and_then(|pod| pod.endpoint.as_ref());
        let Some(endpoint) = endpoint else { continue };
        let manifest = public::slice_manifest(service, owner_uid, &set.key, wanted, endpoint);
        let name = public::slice_name(service, wanted.ordinal);
        wanted_names.insert(name.clone());
        let actual = inputs.slices.iter().find(|slice| slice.name_any() == name);
        match actual {
            Some(actual) => {
                let current = serde_json::to_value(actual.as_ref()).unwrap_or_default();
                if !public::is_up_to_date(&manifest, &current) {
                    plan.push(
                        Write::PatchSlice {
                            name,
                            patch: public::repair_patch(&manifest, actual.uid().as_deref(), None),
                        },
                        after.to_vec(),
                    );
                }
            }
            None => {
                plan.push(
                    Write::CreateSlice {
                        name,
                        manifest,
                        owner: owner.clone(),
                    },
                    after.to_vec(),
                );
            }
        }
    }
    for slice in inputs
        .slices
        .iter()
        .filter(|slice| !wanted_names.contains(&slice.name_any()))
    {
        plan.push(
            Write::DeleteSlice {
                name: slice.name_any(),
                uid: slice.uid().unwrap_or_default(),
            },
            Vec::new(),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::annotations::{DEFAULT_LABEL, Expose, OptIn, Protocol};
    use crate::desired::{Limits, NodePortRange, PodView, SetKey};
    use crate::grants::Grants;
    use crate::public::Endpoint;

    const BASE: u16 = 30300;

    fn set(replicas: u32, protocols: &[Protocol], pods: &[u32]) -> SetView {
        SetView {
            key: SetKey {
                namespace: "jitsi".to_owned(),
                name: "jvb".to_owned(),
            },
            uid: "set-uid".to_owned(),
            opt_in: OptIn {
                base_port: BASE,
                protocols: protocols.to_vec(),
                selector_label: DEFAULT_LABEL.to_owned(),
                reserve: None,
                expose: Expose::NodePort,
            },
            replicas,
            start: 0,
            deleting: false,
            created: 1,
            pods: Arc::new(
                pods.iter()
                    .map(|ordinal| {
                        let view = PodView {
                            name: format!("jvb-{ordinal}"),
                            uid: format!("pod-{ordinal}"),
                            base_port: Some(BASE),
                            endpoint: Some(Endpoint {
                                ip: format!("10.244.0.{ordinal}"),
                                node: None,
                                ready: true,
                                serving: true,
                                terminating: false,
                            }),
                            terminating: false,
                        };
                        (*ordinal, view)
                    })
                    .collect(),
            ),
        }
    }

    fn limits() -> Limits {
        let range = NodePortRange {
            first: 30000,
            last: 32767,
        };
        Limits {
            range,
            direct_range: desired::DEFAULT_DIRECT_RANGE,
            grants: Grants::whole_range("jitsi", range),
        }
    }

    fn desired_of(set: &SetView) -> desired::Plan {
        desired::plan(set, &limits(), &BTreeMap::new())
    }

    /// A Service as the API server keeps what `manifest` created.
    fn existing(manifest: Value, uid: &str) -> Arc<Service> {
        let mut service: Service = serde_json::from_value(manifest).unwrap();
        service.metadata.uid = Some(uid.to_owned());
        service.metadata.resource_version = Some("7".to_owned());
        Arc::new(service)
    }

    fn per_pod(set: &SetView, ordinal: u32) -> Arc<Service> {
        let wanted = desired_of(set)
            .services
            .into_iter()
            .find(|s| s.ordinal == ordinal)
            .unwrap();
        existing(
            desired::service_manifest(&wanted, &set.key, &set.uid),
            &format!("svc-{ordinal}"),
        )
    }

    fn run(
        set: &SetView,
        services: &[Arc<Service>],
        orphans: &[Arc<Service>],
        waiting: &Waiting,
        mode: &Mode,
    ) -> Plan {
        plan(&Inputs {
            set,
            desired: &desired_of(set),
            services,
            orphans,
            slices: &[],
            waiting,
            mode,
        })
    }

    fn kinds(plan: &Plan) -> Vec<String> {
        plan.steps.iter().map(|step| step.write.describe()).collect()
    }

    #[test]
    fn node_port_mode_creates_what_is_missing_and_leaves_what_is_right() {
        let set = set(2, &[Protocol::Udp], &[0, 1]);
        let plan = run(
            &set,
            &[per_pod(&set, 0)],
            &[],
            &Waiting::default(),
            &Mode::NodePort,
        );
        assert_eq!(kinds(&plan), ["create Service jvb-1"]);
    }

    #[test]
    fn a_new_protocol_is_patched_in_place_and_a_new_number_replaces() {
        let before = set(1, &[Protocol::Udp], &[0]);
        let mut after = set(1, &[Protocol::Udp, Protocol::Tcp], &[0]);
        let plan = run(
            &after,
            &[per_pod(&before, 0)],
            &[],
            &Waiting::default(),
            &Mode::NodePort,
        );
        assert_eq!(
            kinds(&plan),
            ["update Service jvb-0"],
            "UDP → UDP,TCP keeps the Service"
        );
        // A pod whose port number changed (its own base port): delete, then create after it.
        Arc::make_mut(&mut after.pods).get_mut(&0).unwrap().base_port = Some(BASE + 50);
        let plan = run(
            &after,
            &[per_pod(&before, 0)],
            &[],
            &Waiting::default(),
            &Mode::NodePort,
        );
        assert_eq!(kinds(&plan), ["delete Service jvb-0", "create Service jvb-0"]);
        assert_eq!(plan.steps[1].after, [StepId(0)]);
    }

    #[test]
    fn an_unwanted_service_goes_and_a_refused_ordinal_keeps_its_own() {
        let big = set(3, &[Protocol::Udp], &[]);
        let services = [per_pod(&big, 0), per_pod(&big, 1), per_pod(&big, 2)];
        let mut small = set(2, &[Protocol::Udp], &[]);
        // Ordinal 1's port now belongs to another StatefulSet: refused, but its Service is not taken away.
        let winners = BTreeMap::from([(
            BASE + 1,
            SetKey {
                namespace: "jitsi".to_owned(),
                name: "older".to_owned(),
            },
        )]);
        small.replicas = 2;
        let desired = desired::plan(&small, &limits(), &winners);
        assert_eq!(desired.refusals.len(), 1);
        let plan = plan(&Inputs {
            set: &small,
            desired: &desired,
            services: &services,
            orphans: &[],
            slices: &[],
            waiting: &Waiting::default(),
            mode: &Mode::NodePort,
        });
        assert_eq!(kinds(&plan), ["delete Service jvb-2"]);
    }

    #[test]
    fn an_orphan_of_ours_is_adopted_not_posted_again() {
        let set = set(1, &[Protocol::Udp], &[0]);
        let mut orphan = (*per_pod(&set, 0)).clone();
        orphan.metadata.owner_references = None;
        let plan = run(
            &set,
            &[],
            &[Arc::new(orphan)],
            &Waiting::default(),
            &Mode::NodePort,
        );
        assert_eq!(kinds(&plan), ["update Service jvb-0"]);
        let Write::PatchService { patch, .. } = &plan.steps[0].write else {
            unreachable!()
        };
        assert_eq!(patch["metadata"]["ownerReferences"][0]["uid"], "set-uid");
        assert_eq!(
            patch["metadata"]["uid"], "svc-0",
            "bound to the Service we looked at"
        );
    }

    #[test]
    fn an_unwanted_orphan_is_left_alone_and_none_is_adopted_while_the_statefulset_goes() {
        let two = set(2, &[Protocol::Udp], &[]);
        let mut orphan = (*per_pod(&two, 1)).clone();
        orphan.metadata.owner_references = None;
        let orphans = [Arc::new(orphan)];
        let one = set(1, &[Protocol::Udp], &[]);
        let plan = run(
            &one,
            &[per_pod(&one, 0)],
            &orphans,
            &Waiting::default(),
            &Mode::NodePort,
        );
        assert!(plan.steps.is_empty(), "{:?}", kinds(&plan));
        let mut going = set(2, &[Protocol::Udp], &[1]);
        going.deleting = true;
        let plan = run(&going, &[], &orphans, &Waiting::default(), &Mode::NodePort);
        assert_eq!(
            kinds(&plan),
            ["create Service jvb-1"],
            "its pod's Service, not the orphan's adoption"
        );
    }

    #[test]
    fn a_refused_node_port_waits_without_holding_up_the_others() {
        let set = set(3, &[Protocol::Udp], &[]);
        let waiting = Waiting {
            refused_ports: BTreeSet::from([BASE + 1]),
            ..Waiting::default()
        };
        let plan = run(&set, &[], &[], &waiting, &Mode::NodePort);
        assert_eq!(kinds(&plan), ["create Service jvb-0", "create Service jvb-2"]);
        let public = Mode::LoadBalancer {
            name: "jvb-public".to_owned(),
            spec: PublicService::default(),
        };
        let plan = run(&set, &[], &[], &waiting, &public);
        assert_eq!(kinds(&plan), ["create Service jvb-public"]);
        let Write::CreateService { node_ports, .. } = &plan.steps[0].write else {
            unreachable!()
        };
        assert_eq!(*node_ports, BTreeSet::from([BASE, BASE + 2]));
    }

    #[test]
    fn switching_to_load_balancer_checks_first_then_moves_the_ports() {
        let set = set(2, &[Protocol::Udp], &[0, 1]);
        let services = [per_pod(&set, 0), per_pod(&set, 1)];
        let mode = Mode::LoadBalancer {
            name: "jvb-public".to_owned(),
            spec: PublicService::default(),
        };
        let plan = run(&set, &services, &[], &Waiting::default(), &mode);
        assert_eq!(
            kinds(&plan),
            [
                "dry-run create of Service jvb-public",
                "delete Service jvb-0",
                "delete Service jvb-1",
                "create Service jvb-public",
                "create EndpointSlice jvb-public-0",
                "create EndpointSlice jvb-public-1",
            ]
        );
        let Write::CreateService { tolerated, .. } = &plan.steps[0].write else {
            unreachable!()
        };
        assert_eq!(
            *tolerated,
            BTreeSet::from([BASE, BASE + 1]),
            "the per-pod Services' ports"
        );
        assert_eq!(
            plan.steps[1].after,
            [StepId(0)],
            "deleted only once the check passed"
        );
        assert_eq!(plan.steps[3].after, [StepId(1), StepId(2)]);
        assert_eq!(plan.steps[4].after, [StepId(3)]);
    }

    #[test]
    fn switching_back_checks_every_per_pod_service_before_the_one_service_goes() {
        let set = set(2, &[Protocol::Udp], &[0, 1]);
        let desired = desired_of(&set);
        let public = existing(
            public::service_manifest(
                "jvb-public",
                &set.key,
                &set.uid,
                &PublicService::default(),
                &desired.services,
                &[],
                None,
            ),
            "public-uid",
        );
        let plan = run(&set, &[public], &[], &Waiting::default(), &Mode::NodePort);
        assert_eq!(
            kinds(&plan),
            [
                "dry-run create of Service jvb-0",
                "dry-run create of Service jvb-1",
                "delete Service jvb-public",
                "create Service jvb-0",
                "create Service jvb-1",
            ]
        );
        assert_eq!(plan.steps[2].after, [StepId(0), StepId(1)]);
        assert_eq!(plan.steps[3].after, [StepId(2)]);
    }

    #[test]
    fn an_empty_load_balancer_set_gets_no_service_and_keeps_the_one_it_has() {
        let empty = set(0, &[Protocol::Udp], &[]);
        let mode = Mode::LoadBalancer {
            name: "jvb-public".to_owned(),
            spec: PublicService::default(),
        };
        assert!(run(&empty, &[], &[], &Waiting::default(), &mode).steps.is_empty());
        let two = set(2, &[Protocol::Udp], &[]);
        let public = existing(
            public::service_manifest(
                "jvb-public",
                &two.key,
                &two.uid,
                &PublicService::default(),
                &desired_of(&two).services,
                &[],
                None,
            ),
            "public-uid",
        );
        assert!(
            run(&empty, &[public], &[], &Waiting::default(), &mode)
                .steps
                .is_empty(),
            "no patch to an invalid Service without ports"
        );
    }

    #[test]
    fn a_load_balancer_patch_that_moves_node_ports_is_bound_to_the_version() {
        let one = set(1, &[Protocol::Udp], &[]);
        let two = set(2, &[Protocol::Udp], &[]);
        let mode = Mode::LoadBalancer {
            name: "jvb-public".to_owned(),
            spec: PublicService::default(),
        };
        let public = existing(
            public::service_manifest(
                "jvb-public",
                &one.key,
                &one.uid,
                &PublicService::default(),
                &desired_of(&one).services,
                &[],
                None,
            ),
            "public-uid",
        );
        let plan = run(
            &two,
            std::slice::from_ref(&public),
            &[],
            &Waiting::default(),
            &mode,
        );
        let Write::PatchService { patch, .. } = &plan.steps[0].write else {
            unreachable!()
        };
        assert_eq!(patch["metadata"]["resourceVersion"], "7");
        // The same ports with another owner: no version (the garbage collector may edit it meanwhile).
        let mut with_pod = set(1, &[Protocol::Udp], &[0]);
        with_pod.replicas = 1;
        let plan = run(&with_pod, &[public], &[], &Waiting::default(), &mode);
        let Write::PatchService { patch, .. } = &plan.steps[0].write else {
            unreachable!()
        };
        assert!(patch["metadata"].get("resourceVersion").is_none(), "{patch}");
        assert_eq!(patch["metadata"]["uid"], "public-uid");
    }

    #[test]
    fn a_statefulset_being_deleted_keeps_only_its_pods_services() {
        let mut going = set(3, &[Protocol::Udp], &[1]);
        going.deleting = true;
        let plan = run(&going, &[], &[], &Waiting::default(), &Mode::NodePort);
        assert_eq!(kinds(&plan), ["create Service jvb-1"]);
    }

    #[test]
    fn a_statefulset_whose_pods_are_orphaned_before_its_services_removes_nothing() {
        // `--cascade=orphan`: the garbage collector has stripped pods 0 and 2 of their owner, not yet
        // their Services.
        let mut going = set(3, &[Protocol::Udp], &[1]);
        going.deleting = true;
        let all = set(3, &[Protocol::Udp], &[0, 1, 2]);
        let services: Vec<_> = (0..3).map(|ordinal| per_pod(&all, ordinal)).collect();
        let plan = run(&going, &services, &[], &Waiting::default(), &Mode::NodePort);
        assert!(plan.steps.is_empty(), "{:?}", kinds(&plan));

        let mode = Mode::LoadBalancer {
            name: "jvb-public".to_owned(),
            spec: PublicService::default(),
        };
        let public = existing(
            public::service_manifest(
                "jvb-public",
                &all.key,
                &all.uid,
                &PublicService::default(),
                &desired_of(&all).services,
                &[],
                None,
            ),
            "public-uid",
        );
        let plan = run(&going, &[public], &[], &Waiting::default(), &mode);
        assert!(plan.steps.is_empty(), "{:?}", kinds(&plan));
    }

    #[test]
    fn ordinals_start_where_the_statefulset_says() {
        let mut shifted = set(2, &[Protocol::Udp], &[]);
        shifted.start = 5;
        let plan = run(&shifted, &[], &[], &Waiting::default(), &Mode::NodePort);
        assert_eq!(kinds(&plan), ["create Service jvb-5", "create Service jvb-6"]);
        let Write::CreateService { manifest, .. } = &plan.steps[0].write else {
            unreachable!()
        };
        assert_eq!(manifest["spec"]["ports"][0]["nodePort"], json!(BASE + 5));
    }

    #[test]
    fn a_write_on_its_way_to_the_cache_is_not_made_twice() {
        let set = set(1, &[Protocol::Udp], &[]);
        let waiting = Waiting {
            echoes: BTreeSet::from(["jvb-0".to_owned()]),
            ..Waiting::default()
        };
        assert!(run(&set, &[], &[], &waiting, &Mode::NodePort).steps.is_empty());
    }
}
