//! Node ports for tests, handed out by the API server itself so that tests running at the same time —
//! in one test binary or in several — never use the same port, whatever order cargo runs them in.
//!
//! A block is held by a Lease `ports-<first>` in the namespace [`REGISTRY`], owned by the test's
//! namespace: creating it is the atomic claim (a second claimant gets 409 Conflict), and the garbage
//! collector releases it once that namespace — and with it every Service holding one of the ports — is
//! gone. A failed test keeps its namespace, and so its ports, until the next run of that test deletes it.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;

use crate::{TestNamespace, eventually};

/// Ports in a block.
pub const BLOCK: u16 = 10;
/// Where the claims live.
pub const REGISTRY: &str = "jitsi-k8s-test-node-ports";
/// Blocks handed out to tests that ask for any: above the blocks the overlays use (30300, 30400, …).
const POOL: std::ops::RangeInclusive<u16> = 30500..=32750;

impl TestNamespace {
    /// A block of [`BLOCK`] node ports that no other test holds; its first port. Held until this
    /// namespace is deleted.
    pub async fn node_port_block(&self) -> u16 {
        let blocks: Vec<u16> = POOL.step_by(usize::from(BLOCK)).collect();
        // Start where the namespace's name points, so concurrent tests rarely try the same block first.
        let start = self.name.bytes().map(usize::from).sum::<usize>() % blocks.len();
        for first in blocks.iter().cycle().skip(start).take(blocks.len()) {
            if claim(&self.client, &self.name, *first).await {
                return *first;
            }
        }
        panic!(
            "every block of node ports in {POOL:?} is held: delete the test namespaces left by failed runs"
        );
    }

    /// The block starting at `first` (a port the test cannot choose, such as an overlay's own base port),
    /// waiting while another test holds it.
    pub async fn reserve_node_ports(&self, first: u16) {
        assert_eq!(first % BLOCK, 0, "blocks start at a multiple of {BLOCK}");
        eventually(
            &format!("node ports {first}..{} to be free", first + BLOCK),
            Duration::from_secs(300),
            || async { claim(&self.client, &self.name, first).await.then_some(()) },
        )
        .await;
    }
}

/// Tries to claim the block at `first` for `namespace`: true when this call got it.
async fn claim(client: &Client, namespace: &str, first: u16) -> bool {
    let owner = Api::<Namespace>::all(client.clone())
        .get(namespace)
        .await
        .unwrap_or_else(|e| panic!("reading namespace {namespace}: {e}"));
    let uid = owner.metadata.uid.expect("a namespace has a UID");
    ensure_registry(client).await;
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {
            "name": format!("ports-{first}"),
            "ownerReferences": [{ "apiVersion": "v1", "kind": "Namespace", "name": namespace, "uid": uid }],
        },
        "spec": { "holderIdentity": namespace },
    }))
    .expect("a Lease");
    match Api::<Lease>::namespaced(client.clone(), REGISTRY)
        .create(&PostParams::default(), &lease)
        .await
    {
        Ok(_) => true,
        Err(kube::Error::Api(status)) if status.code == 409 => false,
        Err(error) => panic!("claiming node ports {first}..: {error}"),
    }
}

async fn ensure_registry(client: &Client) {
    let namespace: Namespace =
        serde_json::from_value(json!({ "metadata": { "name": REGISTRY } })).expect("a Namespace");
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => panic!("creating namespace {REGISTRY}: {error}"),
    }
}
