//! The watch caches of pods, Services and EndpointSlices, indexed as the events arrive: a reconcile
//! finds a StatefulSet's pods, its Services and the node ports every StatefulSet holds by lookups, never
//! by walking every object of the cluster. A watch's relist (after an outage, a 410) files what it lists
//! as it comes and, when the list is complete, drops what it did not name. Pods are kept as `PodView`s
//! and Services as `CachedService`s: only what a reconcile reads.
//!
//! Pods are indexed by namespace *and* owner UID: a pod in another namespace that names a StatefulSet's
//! UID as its owner (a forged owner reference, kept alive by a finalizer) is never that StatefulSet's.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::runtime::watcher::Event;

use crate::annotations;
use crate::cached_pod::{CachedPod, POD_INDEX_LABEL};
use crate::cached_service::CachedService;
use crate::desired::{self, PodView, STATEFULSET_LABEL, SetKey};
use crate::public::Endpoint;

/// Namespace and name, or namespace and UID.
type Key = (String, String);

/// A StatefulSet's pods by ordinal, shared with the reconciles that read them.
pub type Pods = Arc<BTreeMap<u32, PodView>>;

#[derive(Debug, Default)]
struct PodIndex {
    /// (namespace, owner UID) → the owner's pods.
    by_owner: HashMap<Key, Pods>,
    /// (namespace, pod name) → (owner UID, ordinal): where a pod is filed, to move or remove it.
    filed: HashMap<Key, (String, u32)>,
}

#[derive(Debug, Default)]
struct ServiceIndex {
    by_name: HashMap<Key, CachedService>,
    /// (namespace, controller UID) → names.
    by_controller: HashMap<Key, BTreeSet<String>>,
    /// (namespace, StatefulSet name of our label) → names: orphans are found here.
    by_set_label: HashMap<Key, BTreeSet<String>>,
    /// Node port → the Service that holds it, and the StatefulSet that Service belongs to.
    held: BTreeMap<u16, (Key, SetKey)>,
}

#[derive(Debug, Default)]
struct SliceIndex {
    /// (namespace, StatefulSet name of our label) → slices by name.
    by_set: HashMap<Key, BTreeMap<String, Arc<EndpointSlice>>>,
    /// (namespace, slice name) → the StatefulSet name it is filed under.
    filed: HashMap<Key, String>,
}

/// A relist under way: the listed objects are filed as they come (their state is at least as fresh as
/// what they replace) and their keys noted; when the list is complete, whatever it did not name is
/// dropped. (Buffering the list to swap it in whole held two copies of every object for as long as a
/// relist took: after an API server restart, all four watches at once.)
#[derive(Debug, Default)]
struct Relists {
    pods: Option<HashSet<Key>>,
    services: Option<HashSet<Key>>,
    slices: Option<HashSet<Key>>,
}

#[derive(Debug, Default)]
struct State {
    pods: PodIndex,
    services: ServiceIndex,
    slices: SliceIndex,
    relists: Relists,
}

/// The index; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Index {
    state: Arc<RwLock<State>>,
}

/// One part of the index: objects of one kind, filed as they arrive.
trait SubIndex<K> {
    fn apply(&mut self, object: &K);
    fn remove(&mut self, namespace: &str, name: &str);
    /// The (namespace, name) of every object filed.
    fn keys(&self) -> Vec<Key>;
}

impl SubIndex<CachedPod> for PodIndex {
    fn apply(&mut self, pod: &CachedPod) {
        self.file(pod);
    }

    fn remove(&mut self, namespace: &str, name: &str) {
        self.unfile(namespace, name);
    }

    fn keys(&self) -> Vec<Key> {
        self.filed.keys().cloned().collect()
    }
}

impl SubIndex<Service> for ServiceIndex {
    fn apply(&mut self, service: &Service) {
        self.file(service);
    }

    fn remove(&mut self, namespace: &str, name: &str) {
        self.unfile(namespace, name);
    }

    fn keys(&self) -> Vec<Key> {
        self.by_name.keys().cloned().collect()
    }
}

impl SubIndex<EndpointSlice> for SliceIndex {
    fn apply(&mut self, slice: &EndpointSlice) {
        self.file(slice.clone());
    }

    fn remove(&mut self, namespace: &str, name: &str) {
        self.unfile(namespace, name);
    }

    fn keys(&self) -> Vec<Key> {
        self.filed.keys().cloned().collect()
    }
}

/// How a pod is filed: the StatefulSet that controls it (by UID) and its ordinal.
fn filing(pod: &CachedPod) -> Option<(String, u32)> {
    let owner = pod
        .owner_references()
        .iter()
        .find(|owner| owner.controller == Some(true) && owner.kind == "StatefulSet")?;
    let ordinal = pod
        .labels()
        .get(POD_INDEX_LABEL)
        .and_then(|index| index.parse().ok())
        .or_else(|| desired::ordinal_in_name(&owner.name, &pod.name_any()))?;
    Some((owner.uid.clone(), ordinal))
}

/// Where a pod is reached and whether it serves, as its EndpointSlice says it in `LoadBalancer` mode:
/// every pod with an address serves — its probes have no say, as in NodePort mode, where the Services
/// publish unready pods — and a terminating one is no longer `ready` (no new conference) but still
/// `serving` (its calls go on).
fn endpoint_of(pod: &CachedPod) -> Option<Endpoint> {
    let ip = pod.status.pod_ip.clone().filter(|ip| !ip.is_empty())?;
    let terminating = pod.metadata.deletion_timestamp.is_some();
    Some(Endpoint {
        ip,
        node: pod.spec.node_name.clone(),
        ready: !terminating,
        serving: true,
        terminating,
    })
}

fn pod_view(pod: &CachedPod) -> PodView {
    PodView {
        name: pod.name_any(),
        uid: pod.uid().unwrap_or_default(),
        base_port: annotations::pod_base_port(pod.annotations()),
        endpoint: endpoint_of(pod),
        terminating: pod.metadata.deletion_timestamp.is_some(),
    }
}

impl PodIndex {
    fn unfile(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        if let Some((owner, ordinal)) = self.filed.remove(&key) {
            let owner_key = (namespace.to_owned(), owner);
            if let Some(pods) = self.by_owner.get_mut(&owner_key) {
                Arc::make_mut(pods).remove(&ordinal);
                if pods.is_empty() {
                    self.by_owner.remove(&owner_key);
                }
            }
        }
    }

    fn file(&mut self, pod: &CachedPod) {
        let namespace = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        self.unfile(&namespace, &name);
        let Some((owner, ordinal)) = filing(pod) else {
            return;
        };
        let pods = self
            .by_owner
            .entry((namespace.clone(), owner.clone()))
            .or_default();
        Arc::make_mut(pods).insert(ordinal, pod_view(pod));
        self.filed.insert((namespace, name), (owner, ordinal));
    }
}

fn set_label_key(namespace: &str, labels: &BTreeMap<String, String>) -> Option<Key> {
    labels
        .get(STATEFULSET_LABEL)
        .map(|set| (namespace.to_owned(), set.clone()))
}

impl ServiceIndex {
    fn unfile(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        let Some(old) = self.by_name.remove(&key) else {
            return;
        };
        if let Some(uid) = old.controller_uid() {
            let owner = (namespace.to_owned(), uid.to_owned());
            if let Some(names) = self.by_controller.get_mut(&owner) {
                names.remove(name);
                if names.is_empty() {
                    self.by_controller.remove(&owner);
                }
            }
        }
        if let Some(set) = old.label(STATEFULSET_LABEL) {
            let set = (namespace.to_owned(), set.to_owned());
            if let Some(names) = self.by_set_label.get_mut(&set) {
                names.remove(name);
                if names.is_empty() {
                    self.by_set_label.remove(&set);
                }
            }
        }
        for node_port in old.node_ports() {
            if self
                .held
                .get(&node_port)
                .is_some_and(|(holder, _)| *holder == key)
            {
                self.held.remove(&node_port);
            }
        }
    }

    fn file(&mut self, service: &Service) {
        let namespace = service.namespace().unwrap_or_default();
        let name = service.name_any();
        self.unfile(&namespace, &name);
        let cached = CachedService::new(service);
        let key = (namespace.clone(), name.clone());
        if let Some(uid) = cached.controller_uid() {
            self.by_controller
                .entry((namespace.clone(), uid.to_owned()))
                .or_default()
                .insert(name.clone());
        }
        if let Some(set) = set_label_key(&namespace, service.labels()) {
            // The StatefulSet that controls the Service holds its ports; the label only speaks for an
            // orphan (a label anyone who may edit the Service can change).
            let holder = SetKey {
                namespace: namespace.clone(),
                name: cached
                    .controlling_statefulset()
                    .map_or_else(|| set.1.clone(), str::to_owned),
            };
            for node_port in cached.node_ports() {
                self.held.insert(node_port, (key.clone(), holder.clone()));
            }
            self.by_set_label.entry(set).or_default().insert(name);
        }
        self.by_name.insert(key, cached);
    }
}

impl SliceIndex {
    fn unfile(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        if let Some(set) = self.filed.remove(&key) {
            let set_key = (namespace.to_owned(), set);
            if let Some(slices) = self.by_set.get_mut(&set_key) {
                slices.remove(name);
                if slices.is_empty() {
                    self.by_set.remove(&set_key);
                }
            }
        }
    }

    fn file(&mut self, slice: EndpointSlice) {
        let namespace = slice.namespace().unwrap_or_default();
        let name = slice.name_any();
        self.unfile(&namespace, &name);
        let Some(set) = set_label_key(&namespace, slice.labels()) else {
            return;
        };
        self.filed.insert((namespace, name.clone()), set.1.clone());
        self.by_set.entry(set).or_default().insert(name, Arc::new(slice));
    }
}

/// What a watch event did to the index: `Relisted` when a relist completed (a reconcile of everything
/// then catches what the relist replaced, deletions included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Object,
    Relisted,
    None,
}

impl Index {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies one watch event to the part of the index `part` picks; a relist's keys are noted in
    /// `relist`, and what it did not name is dropped when it is complete.
    fn on_event<K, I>(
        &self,
        event: &Event<K>,
        part: impl Fn(&mut State) -> (&mut I, &mut Option<HashSet<Key>>),
    ) -> Change
    where
        K: kube::Resource,
        I: SubIndex<K>,
    {
        let mut state = self.write();
        let (index, relist) = part(&mut state);
        match event {
            Event::Apply(object) => {
                index.apply(object);
                Change::Object
            }
            Event::Delete(object) => {
                index.remove(&object.namespace().unwrap_or_default(), &object.name_any());
                Change::Object
            }
            Event::Init => {
                *relist = Some(HashSet::new());
                Change::None
            }
            Event::InitApply(object) => {
                index.apply(object);
                if let Some(listed) = relist.as_mut() {
                    listed.insert((object.namespace().unwrap_or_default(), object.name_any()));
                }
                Change::None
            }
            Event::InitDone => {
                if let Some(listed) = relist.take() {
                    for (namespace, name) in index.keys() {
                        if !listed.contains(&(namespace.clone(), name.clone())) {
                            index.remove(&namespace, &name);
                        }
                    }
                }
                Change::Relisted
            }
        }
    }

    pub fn apply_pod(&self, event: &Event<CachedPod>) -> Change {
        self.on_event(event, |state| (&mut state.pods, &mut state.relists.pods))
    }

    pub fn apply_service(&self, event: &Event<Service>) -> Change {
        self.on_event(event, |state| (&mut state.services, &mut state.relists.services))
    }

    pub fn apply_slice(&self, event: &Event<EndpointSlice>) -> Change {
        self.on_event(event, |state| (&mut state.slices, &mut state.relists.slices))
    }

    /// The pods of the StatefulSet `uid` in `namespace`.
    pub fn pods(&self, namespace: &str, uid: &str) -> Pods {
        self.read()
            .pods
            .by_owner
            .get(&(namespace.to_owned(), uid.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    /// Pods in other namespaces than `namespace` that name `uid` as their controlling StatefulSet.
    pub fn pods_claiming_from_elsewhere(&self, namespace: &str, uid: &str) -> Vec<(String, String)> {
        self.read()
            .pods
            .by_owner
            .iter()
            .filter(|((ns, owner), _)| owner == uid && ns != namespace)
            .flat_map(|((ns, _), pods)| pods.values().map(move |pod| (ns.clone(), pod.name.clone())))
            .collect()
    }

    /// The Services `uid` controls in `namespace`.
    pub fn services_of(&self, namespace: &str, uid: &str) -> Vec<Arc<Service>> {
        let state = self.read();
        let names = state
            .services
            .by_controller
            .get(&(namespace.to_owned(), uid.to_owned()));
        names
            .into_iter()
            .flatten()
            .filter_map(|name| {
                state
                    .services
                    .by_name
                    .get(&(namespace.to_owned(), name.clone()))
                    .map(|cached| Arc::new(cached.service()))
            })
            .collect()
    }

    /// Services with our labels for the StatefulSet `set` in its namespace that no object controls: left
    /// by a deletion with `--cascade=orphan`, or by a StatefulSet deleted while its pods drained.
    pub fn orphans_of(&self, set: &SetKey) -> Vec<Arc<Service>> {
        let state = self.read();
        state
            .services
            .by_set_label
            .get(&(set.namespace.clone(), set.name.clone()))
            .into_iter()
            .flatten()
            .filter_map(|name| state.services.by_name.get(&(set.namespace.clone(), name.clone())))
            .filter(|cached| cached.controller_uid().is_none())
            .map(|cached| Arc::new(cached.service()))
            .collect()
    }

    /// Whether any Service is controlled by `uid` in `namespace` (an opted-out StatefulSet's cleanup).
    pub fn has_services(&self, namespace: &str, uid: &str) -> bool {
        self.read()
            .services
            .by_controller
            .contains_key(&(namespace.to_owned(), uid.to_owned()))
    }

    /// Node ports held by Services we manage, and the StatefulSet each belongs to.
    pub fn held_ports(&self) -> BTreeMap<u16, SetKey> {
        self.read()
            .services
            .held
            .iter()
            .map(|(port, (_, set))| (*port, set.clone()))
            .collect()
    }

    /// The EndpointSlices we made for `set`.
    pub fn slices_of(&self, set: &SetKey) -> Vec<Arc<EndpointSlice>> {
        self.read()
            .slices
            .by_set
            .get(&(set.namespace.clone(), set.name.clone()))
            .map(|slices| slices.values().cloned().collect())
            .unwrap_or_default()
    }

    /// How many Services we manage.
    pub fn service_count(&self) -> usize {
        self.read().services.by_name.len()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    use super::*;

    fn pod(namespace: &str, name: &str, owner: &str, owner_uid: &str) -> CachedPod {
        CachedPod {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                uid: Some(format!("uid-{name}")),
                owner_references: Some(vec![OwnerReference {
                    api_version: "apps/v1".to_owned(),
                    kind: "StatefulSet".to_owned(),
                    name: owner.to_owned(),
                    uid: owner_uid.to_owned(),
                    controller: Some(true),
                    ..OwnerReference::default()
                }]),
                ..ObjectMeta::default()
            },
            ..CachedPod::default()
        }
    }

    #[test]
    fn a_pod_is_filed_under_its_namespace_and_owner_uid() {
        let index = Index::default();
        index.apply_pod(&Event::Apply(pod("jitsi", "jvb-0", "jvb", "set-uid")));
        // Another namespace's pod naming the same UID: not jitsi's.
        index.apply_pod(&Event::Apply(pod("tenant", "jvb-1", "jvb", "set-uid")));
        assert_eq!(
            index.pods("jitsi", "set-uid").keys().copied().collect::<Vec<_>>(),
            [0]
        );
        assert_eq!(
            index.pods_claiming_from_elsewhere("jitsi", "set-uid"),
            [("tenant".to_owned(), "jvb-1".to_owned())]
        );
        index.apply_pod(&Event::Delete(pod("jitsi", "jvb-0", "jvb", "set-uid")));
        assert!(index.pods("jitsi", "set-uid").is_empty());
    }

    #[test]
    fn a_relist_drops_what_it_did_not_name_when_it_is_complete() {
        let index = Index::default();
        index.apply_pod(&Event::Apply(pod("jitsi", "jvb-0", "jvb", "u")));
        index.apply_pod(&Event::Apply(pod("jitsi", "jvb-1", "jvb", "u")));
        // jvb-1 was deleted while the watch was down: the relist does not show it.
        assert_eq!(index.apply_pod(&Event::Init), Change::None);
        index.apply_pod(&Event::InitApply(pod("jitsi", "jvb-0", "jvb", "u")));
        assert_eq!(
            index.pods("jitsi", "u").len(),
            2,
            "nothing dropped until the list is complete"
        );
        assert_eq!(index.apply_pod(&Event::InitDone), Change::Relisted);
        assert_eq!(index.pods("jitsi", "u").keys().copied().collect::<Vec<_>>(), [0]);
    }

    #[test]
    fn a_reconcile_keeps_its_pods_while_the_index_moves_on() {
        let index = Index::default();
        index.apply_pod(&Event::Apply(pod("jitsi", "jvb-0", "jvb", "u")));
        let seen = index.pods("jitsi", "u");
        index.apply_pod(&Event::Apply(pod("jitsi", "jvb-1", "jvb", "u")));
        assert_eq!(seen.len(), 1);
        assert_eq!(index.pods("jitsi", "u").len(), 2);
    }

    fn service(name: &str, node_port: i32) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "namespace": "jitsi", "uid": format!("uid-{name}"),
                "labels": { STATEFULSET_LABEL: "jvb" },
                "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "StatefulSet", "name": "jvb",
                    "uid": "set-uid", "controller": true }] },
            "spec": { "type": "NodePort", "ports": [{ "protocol": "UDP", "port": node_port, "nodePort": node_port }] }
        }))
        .unwrap()
    }

    #[test]
    fn a_service_relist_frees_the_ports_of_what_it_no_longer_names() {
        let index = Index::default();
        index.apply_service(&Event::Apply(service("jvb-0", 30300)));
        index.apply_service(&Event::Apply(service("jvb-1", 30301)));
        // While the watch was down, jvb-1 was deleted and jvb-0 moved to 30310.
        index.apply_service(&Event::Init);
        index.apply_service(&Event::InitApply(service("jvb-0", 30310)));
        assert_eq!(
            index.held_ports().keys().copied().collect::<Vec<_>>(),
            [30301, 30310],
            "jvb-0's update is filed at once; jvb-1 stays until the list is complete"
        );
        index.apply_service(&Event::InitDone);
        assert_eq!(index.held_ports().keys().copied().collect::<Vec<_>>(), [30310]);
        assert_eq!(index.service_count(), 1);
        let services = index.services_of("jitsi", "set-uid");
        assert_eq!(services.len(), 1);
        assert_eq!(services[0].metadata.name.as_deref(), Some("jvb-0"));
        assert!(!index.has_services("jitsi", "other-uid"));
    }
}
