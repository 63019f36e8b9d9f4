//! Node ports for tests, handed out by the API server itself so that tests running at the same time —
//! in one test binary or in several — never use the same port, whatever order cargo runs them in.
//!
//! A block is held by a Lease `ports-<first>` in the namespace [`REGISTRY`], owned by the test's
//! namespace: creating it is the atomic claim (a second claimant gets 409 Conflict), and the garbage
//! collector releases it once that namespace — and with it every Service holding one of the ports — is
//! gone. A failed test keeps its namespace for inspection; once the process that claimed a block has
//! ended, the next claimant deletes that namespace's Services (freeing the ports) and takes the block over,
//! so one failed test does not make every later test of the same block wait and fail.

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
            "annotations": { CLAIMANT: this_process() },
        },
        "spec": { "holderIdentity": namespace },
    }))
    .expect("a Lease");
    let leases = Api::<Lease>::namespaced(client.clone(), REGISTRY);
    for _ in 0..2 {
        match leases.create(&PostParams::default(), &lease).await {
            Ok(_) => return true,
            Err(kube::Error::Api(status)) if status.code == 409 => {
                if !take_over_if_abandoned(client, &leases, &format!("ports-{first}")).await {
                    return false;
                }
            }
            Err(error) => panic!("claiming node ports {first}..: {error}"),
        }
    }
    false
}

/// The annotation naming the process that claimed a block: `<pid>:<start time in clock ticks>`.
const CLAIMANT: &str = "jitsi-k8s.test/claimant";

/// This process, as [`CLAIMANT`] names it.
fn this_process() -> String {
    process_identity(std::process::id()).unwrap_or_default()
}

/// `<pid>:<start time>` of a running process (the start time tells a reused PID apart).
fn process_identity(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let start_time = after_name.split_whitespace().nth(19)?;
    Some(format!("{pid}:{start_time}"))
}

/// When the process that holds `name` has ended (a failed test), frees the ports its namespace's
/// Services hold and deletes the claim; true when the block may be claimed again.
async fn take_over_if_abandoned(client: &Client, leases: &Api<Lease>, name: &str) -> bool {
    let Ok(Some(lease)) = leases.get_opt(name).await else {
        // Released meanwhile.
        return true;
    };
    let Some(claimant) = lease.metadata.annotations.as_ref().and_then(|a| a.get(CLAIMANT)) else {
        return false;
    };
    let alive = claimant
        .split_once(':')
        .and_then(|(pid, _)| pid.parse().ok())
        .and_then(process_identity)
        .is_some_and(|running| &running == claimant);
    if alive {
        return false;
    }
    let holder = lease
        .spec
        .as_ref()
        .and_then(|spec| spec.holder_identity.clone())
        .unwrap_or_default();
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), &holder);
    if let Ok(list) = services.list(&Default::default()).await {
        for service in list.items {
            let name = service.metadata.name.unwrap_or_default();
            let _ = services.delete(&name, &Default::default()).await;
        }
    }
    let precondition = kube::api::DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: lease.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    let _ = leases.delete(name, &precondition).await;
    println!("node ports: took over {name} from {holder}, whose test process ended");
    true
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimant_is_alive_only_while_its_process_runs() {
        let me = this_process();
        assert!(me.starts_with(&format!("{}:", std::process::id())), "{me}");
        assert_eq!(process_identity(std::process::id()), Some(me));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(process_identity(pid), None, "a reaped process");
    }
}
