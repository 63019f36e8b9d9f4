//! Reading the Node's addresses through the pod's ServiceAccount.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};

use crate::plan::NodeLookup;

const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Never fails: a failed lookup is reported as [`NodeLookup::Failed`] and the decision falls back.
pub async fn lookup(node_name: Option<&str>) -> NodeLookup {
    let Some(name) = node_name.map(str::trim).filter(|name| !name.is_empty()) else {
        return NodeLookup::Failed(
            "--advertise-from-node needs NODE_NAME (downward API spec.nodeName)".to_owned(),
        );
    };
    match tokio::time::timeout(LOOKUP_TIMEOUT, fetch(name)).await {
        Ok(Ok(node)) => found(name, &node),
        Ok(Err(reason)) => NodeLookup::Failed(reason),
        Err(_) => NodeLookup::Failed(format!(
            "looking up Node {name} took longer than {LOOKUP_TIMEOUT:?}"
        )),
    }
}

async fn fetch(name: &str) -> Result<Node, String> {
    let client = Client::try_default()
        .await
        .map_err(|e| format!("cannot reach the Kubernetes API to look up Node {name}: {e}"))?;
    Api::<Node>::all(client)
        .get(name)
        .await
        .map_err(|error| match error {
            kube::Error::Api(status) if status.code == 403 => format!(
                "looking up Node {name} was forbidden (403): the pod's ServiceAccount needs get on nodes \
             (manifests/components/jvb-advertise-from-node)"
            ),
            kube::Error::Api(status) if status.code == 404 => format!("Node {name} does not exist"),
            other => format!("looking up Node {name} failed: {other}"),
        })
}

fn found(name: &str, node: &Node) -> NodeLookup {
    let addresses = node.status.as_ref().and_then(|status| status.addresses.as_ref());
    let of_type = |wanted: &str| -> Vec<IpAddr> {
        addresses
            .into_iter()
            .flatten()
            .filter(|address| address.type_ == wanted)
            .filter_map(|address| address.address.parse().ok())
            .collect()
    };
    NodeLookup::Found {
        name: name.to_owned(),
        external: of_type("ExternalIP"),
        internal: of_type("InternalIP"),
    }
}
