//! Leader election when the leader's connection to the API server hangs (a fault proxy holds it open
//! and silent): the leader stops writing at its renew deadline, before the standby may take over, and
//! the API server's audit log shows no two writers at once.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use testbed::audit;
use testbed::eventually;
use testbed::service_per_pod::{Fixture, Tweaks, start_controller_with, statefulset};
use testbed::tcp_proxy::TcpProxy;

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn a_leader_whose_connection_hangs_stops_writing_before_the_standby_starts() {
    let cluster = testbed::Cluster::connect().await;
    let proxy = TcpProxy::start(cluster.apiserver_addr()).await;
    // The first replica reaches the API server only through the proxy; it starts first and leads.
    let fx = Fixture::start_with("spp-hang", |_| Tweaks {
        env: Vec::new(),
        via: Some(proxy.addr),
    })
    .await;
    let leases: Api<Lease> = fx.namespace.api();
    eventually("replica 0 to lead", 15 * SECOND, || async {
        let holder = leases
            .get_opt("service-per-pod")
            .await
            .ok()??
            .spec?
            .holder_identity?;
        (holder == "service-per-pod-0").then_some(())
    })
    .await;
    let standby = start_controller_with(
        &fx.cluster,
        &fx.namespace.name,
        &fx.deployment,
        "service-per-pod-1",
        &Tweaks::default(),
    )
    .await;
    let base = fx.namespace.node_port_block().await;
    fx.create(&statefulset(
        "jvb",
        1,
        &[("service-per-pod/base-port", &base.to_string())],
    ))
    .await;
    fx.wait_for_services(&["jvb-0"], 15 * SECOND).await;

    // Work for the leader, and its connection hangs while it is at it.
    fx.sets()
        .patch(
            "jvb",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": 10 } })),
        )
        .await
        .unwrap();
    eventually("the leader at work", 15 * SECOND, || async {
        (fx.services()
            .get_opt("jvb-1")
            .await
            .ok()??
            .metadata
            .name
            .is_some())
        .then_some(())
    })
    .await;
    proxy.hang();
    let hung = Instant::now();

    // Both replicas' own view, every 100 ms: the old leader must let go before the standby leads.
    let mut old_stopped = None;
    let mut new_started = None;
    while new_started.is_none() && hung.elapsed() < 30 * SECOND {
        if old_stopped.is_none() && fx.controller.metric("service_per_pod_leader").await == 0.0 {
            old_stopped = Some(hung.elapsed());
        }
        if standby.metric("service_per_pod_leader").await == 1.0 {
            new_started = Some(hung.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (old_stopped, new_started) = (old_stopped.unwrap(), new_started.unwrap());
    println!(
        "after the hang: the old leader stepped down at {old_stopped:?}, the standby led at {new_started:?}"
    );
    assert!(old_stopped < new_started);
    let names: Vec<String> = (0..10).map(|i| format!("jvb-{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    fx.wait_for_services(&names, 15 * SECOND).await;

    // The path comes back: the old leader reconnects as a standby and writes nothing.
    proxy.heal();
    tokio::time::sleep(5 * SECOND).await;
    assert_eq!(fx.controller.metric("service_per_pod_leader").await, 0.0);
    assert_eq!(standby.metric("service_per_pod_leader").await, 1.0);

    // The API server's own record: every write of the first replica came before any of the second.
    let writes: Vec<audit::Write> = audit::writes(&fx.namespace.name, "services")
        .into_iter()
        .chain(audit::writes(&fx.namespace.name, "leases"))
        .collect();
    let by = |replica: &str| -> Vec<&audit::Write> {
        writes
            .iter()
            .filter(|write| write.user_agent.contains(replica))
            .collect()
    };
    let (first, second) = (by("(service-per-pod-0)"), by("(service-per-pod-1)"));
    let last_of_first = first.iter().map(|write| write.at.as_str()).max().unwrap();
    let first_of_second = second.iter().map(|write| write.at.as_str()).min().unwrap();
    println!(
        "audit: {} writes by replica 0, the last at {last_of_first}; {} by replica 1, the first at {first_of_second}",
        first.len(),
        second.len()
    );
    assert!(
        last_of_first < first_of_second,
        "two writers at once: replica 0 wrote at {last_of_first}, after replica 1 began at {first_of_second}"
    );
    assert!(
        first.iter().any(|write| write.resource == "services"),
        "replica 0 wrote Services before the hang"
    );
    assert!(
        second.iter().any(|write| write.resource == "services"),
        "replica 1 wrote the rest"
    );
    drop(standby);
    fx.namespace.delete().await;
}
