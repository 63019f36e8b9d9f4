//! Control-plane faults: etcd and kube-apiserver killed and restarted while a StatefulSet scales. The
//! controller must survive, reconnect and converge — no Service lost, none duplicated.
//! It holds the cluster exclusively (`testbed::exclusive_cluster`): tests of other binaries wait, and
//! this one waits for them, however cargo schedules the test binaries.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use serde_json::json;
use testbed::control_plane;
use testbed::eventually;
use testbed::service_per_pod::{Fixture, ports, statefulset};

#[tokio::test]
async fn the_controller_survives_an_api_server_and_etcd_restart_while_scaling() {
    testbed::exclusive_cluster();
    let mut fx = Fixture::start("spp-faults").await;
    let base = i32::from(fx.namespace.node_port_block().await);
    fx.create(&statefulset(
        "jvb",
        3,
        &[("service-per-pod/base-port", &*base.to_string())],
    ))
    .await;
    fx.wait_for_services(&["jvb-0", "jvb-1", "jvb-2"], Duration::from_secs(10))
        .await;

    // Scale up, and take the control plane down while that is under way.
    fx.sets()
        .patch(
            "jvb",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": 6 } })),
        )
        .await
        .unwrap();
    let etcd = control_plane::kill("etcd");
    let apiserver = control_plane::kill("kube-apiserver");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        fx.controller.is_running(),
        "the controller must not crash while the API server is gone"
    );
    etcd.start();
    apiserver.start();

    // It reconnects and converges on 6 Services...
    let names = ["jvb-0", "jvb-1", "jvb-2", "jvb-3", "jvb-4", "jvb-5"];
    // With the dataplane, six more clients (three kube-proxies, three kube-routers) relist everything
    // after the outage; the controller's watches have taken up to two minutes to resume then.
    let services = fx.wait_for_services(&names, Duration::from_secs(180)).await;
    let node_ports: BTreeSet<i32> = services.values().filter_map(|s| ports(s)[0].1).collect();
    assert_eq!(
        node_ports,
        (base..base + 6).collect(),
        "one Service per ordinal, each on its own port"
    );
    // ...and keeps following the StatefulSet.
    fx.sets()
        .patch(
            "jvb",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": 2 } })),
        )
        .await
        .unwrap();
    // The pods go only once kube-controller-manager's StatefulSet controller has caught up after the
    // outage (its consistency check waits for its cache: 30–50 s here); Services follow the pods. This
    // also leaves the cluster healthy for the test binaries that run after this one.
    fx.wait_for_services(&["jvb-0", "jvb-1"], Duration::from_secs(240))
        .await;
    assert!(fx.controller.is_running());
    eventually("the controller ready again", Duration::from_secs(10), || async {
        let response = reqwest::get(format!("http://{}/readyz", fx.controller.admin))
            .await
            .ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
    fx.controller.kill();
    fx.namespace.delete().await;
}
