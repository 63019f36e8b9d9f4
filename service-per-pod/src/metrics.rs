//! The controller's own metrics, all prefixed `service_per_pod_`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Bounded error categories: never a name, so the series count stays fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum Category {
    /// The API server could not be reached or answered an unexpected error (transient).
    Api,
    InvalidAnnotation,
    PortOutOfRange,
    /// Ports not granted to the StatefulSet's namespace.
    PortNotGranted,
    PortConflict,
    InvalidServiceName,
    /// A Service of the wanted name exists and belongs to something else.
    ForeignService,
    /// The API server refused the node port (allocated by another Service).
    NodePortRefused,
    /// The API server refused a write for another reason: a quota, an admission policy, RBAC.
    WriteRefused,
    /// A mode switch the API server would refuse: the old mode's objects stay.
    ModeSwitchRefused,
    /// Pods in another namespace that name a StatefulSet as their owner: ignored.
    ForeignOwner,
}

impl Category {
    pub const ALL: [Category; 11] = [
        Category::Api,
        Category::InvalidAnnotation,
        Category::PortOutOfRange,
        Category::PortNotGranted,
        Category::PortConflict,
        Category::InvalidServiceName,
        Category::ForeignService,
        Category::NodePortRefused,
        Category::WriteRefused,
        Category::ModeSwitchRefused,
        Category::ForeignOwner,
    ];

    /// From the CamelCase reasons used in Events; `None` for what is news, not a problem.
    pub fn from_reason(reason: &str) -> Option<Self> {
        match reason {
            "InvalidAnnotation" => Some(Category::InvalidAnnotation),
            "PortOutOfRange" => Some(Category::PortOutOfRange),
            "PortNotGranted" => Some(Category::PortNotGranted),
            "PortConflict" => Some(Category::PortConflict),
            "InvalidServiceName" => Some(Category::InvalidServiceName),
            "ForeignService" => Some(Category::ForeignService),
            "NodePortRefused" => Some(Category::NodePortRefused),
            "WriteRefused" => Some(Category::WriteRefused),
            "ApiUnavailable" => Some(Category::Api),
            "ModeSwitchRefused" => Some(Category::ModeSwitchRefused),
            "ForeignOwner" => Some(Category::ForeignOwner),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ErrorLabels {
    pub category: Category,
}

/// One opted-in StatefulSet. Not `namespace`: Prometheus gives every scraped series the namespace of
/// the controller's own pod, and would rename ours to `exported_namespace`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SetLabels {
    pub statefulset_namespace: String,
    pub statefulset: String,
}

#[derive(Clone, Debug)]
pub struct Metrics {
    pub reconciles: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub managed_services: Gauge,
    pub port_conflicts: Gauge,
    pub refused_node_ports: Gauge,
    pub foreign_owner_pods: Gauge,
    pub leader: Gauge,
    pub writes: Family<WriteLabels, Counter>,
    pub held_ordinals: Family<SetLabels, Gauge>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct WriteLabels {
    pub verb: Verb,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum Verb {
    Create,
    Patch,
    Delete,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Counter::default(),
            errors: Family::default(),
            // 1 ms .. ~4 s: a reconcile is a few cache reads and, rarely, a few API calls.
            reconcile_duration: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 4.0,
            ]),
            managed_services: Gauge::default(),
            port_conflicts: Gauge::default(),
            refused_node_ports: Gauge::default(),
            foreign_owner_pods: Gauge::default(),
            leader: Gauge::default(),
            writes: Family::default(),
            held_ordinals: Family::default(),
        };
        let prefixed = registry.sub_registry_with_prefix("service_per_pod");
        prefixed.register(
            "reconciles",
            "StatefulSet reconciles run",
            metrics.reconciles.clone(),
        );
        prefixed.register(
            "reconcile_errors",
            "Reconcile problems by category (API failures, bad annotations, port conflicts, ...)",
            metrics.errors.clone(),
        );
        prefixed.register_with_unit(
            "reconcile_duration",
            "Time one reconcile took",
            prometheus_client::registry::Unit::Seconds,
            metrics.reconcile_duration.clone(),
        );
        prefixed.register(
            "managed_services",
            "Services this controller manages",
            metrics.managed_services.clone(),
        );
        prefixed.register(
            "port_conflicts",
            "Pod ordinals currently without a Service because another StatefulSet holds their port",
            metrics.port_conflicts.clone(),
        );
        prefixed.register(
            "refused_node_ports",
            "Node ports the API server refused (allocated elsewhere), each retried within 30 s",
            metrics.refused_node_ports.clone(),
        );
        prefixed.register(
            "foreign_owner_pods",
            "Pods in another namespace than the StatefulSet they name as owner: never given its Services",
            metrics.foreign_owner_pods.clone(),
        );
        prefixed.register(
            "leader",
            "1 while this replica is the leader and may write",
            metrics.leader.clone(),
        );
        prefixed.register(
            "service_writes",
            "Service writes sent to the API server",
            metrics.writes.clone(),
        );
        prefixed.register(
            "ordinals_held_by_terminating_pods",
            "Ordinals spec.replicas asks for whose pod is still terminating (a bridge draining after the count \
             went up again): the StatefulSet recreates them only once that pod is gone",
            metrics.held_ordinals.clone(),
        );
        // Every series exists from the start at 0: a dashboard shows 0 rather than "no data", and
        // rate() sees the first error as an increase.
        for category in Category::ALL {
            let _ = metrics.errors.get_or_create(&ErrorLabels { category });
        }
        for verb in [Verb::Create, Verb::Patch, Verb::Delete] {
            let _ = metrics.writes.get_or_create(&WriteLabels { verb });
        }
        metrics
    }

    pub fn error(&self, category: Category) {
        self.errors.get_or_create(&ErrorLabels { category }).inc();
    }

    pub fn write(&self, verb: Verb) {
        self.writes.get_or_create(&WriteLabels { verb }).inc();
    }
}
