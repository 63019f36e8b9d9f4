//! Control-plane faults: etcd and kube-apiserver killed and restarted while a StatefulSet scales. The
//! controller must survive, reconnect within seconds of the API server's `/readyz` and converge — no
//! Service lost, none duplicated — and serve a scale-down as soon as the pods are gone.
//! It holds the cluster exclusively (`testbed::exclusive_cluster`): tests of other binaries wait, and
//! this one waits for them, however cargo schedules the test binaries.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams};
use serde_json::json;
use testbed::control_plane;
use testbed::eventually;
use testbed::service_per_pod::{Fixture, ports, statefulset};

/// Whether the API server answers `/readyz` with ok.
async fn api_server_ready(fx: &Fixture) -> bool {
    let request = http::Request::get("/readyz").body(Vec::new()).unwrap();
    matches!(
        tokio::time::timeout(Duration::from_secs(2), fx.cluster.admin().request_text(request)).await,
        Ok(Ok(text)) if text.trim() == "ok"
    )
}

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
    eventually("the API server ready again", Duration::from_secs(120), || async {
        api_server_ready(&fx).await.then_some(())
    })
    .await;
    let ready = Instant::now();

    // It reconnects and converges on 6 Services — with the dataplane, six more clients (three
    // kube-proxies, three kube-routers) relist everything meanwhile, and the restarted API server refuses
    // our ServiceAccount (403) for a while as its RBAC caches fill.
    let names = ["jvb-0", "jvb-1", "jvb-2", "jvb-3", "jvb-4", "jvb-5"];
    let services = fx.wait_for_services(&names, Duration::from_secs(60)).await;
    println!("scale-up served {:?} after /readyz", ready.elapsed());
    let node_ports: BTreeSet<i32> = services.values().filter_map(|s| ports(s)[0].1).collect();
    assert_eq!(
        node_ports,
        (base..base + 6).collect(),
        "one Service per ordinal, each on its own port"
    );
    // ...and keeps following the StatefulSet: a scale-down, served once the pods are gone. The pods go
    // when kube-controller-manager's StatefulSet controller has caught up after the outage (its
    // consistency check waits for its cache); the Services follow the pods within seconds.
    let asked = Instant::now();
    fx.sets()
        .patch(
            "jvb",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": 2 } })),
        )
        .await
        .unwrap();
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = fx.namespace.api();
    eventually("pods 2–5 gone", Duration::from_secs(240), || async {
        let list = pods.list(&kube::api::ListParams::default()).await.ok()?;
        (list.items.len() == 2).then_some(())
    })
    .await;
    let pods_gone = Instant::now();
    fx.wait_for_services(&["jvb-0", "jvb-1"], Duration::from_secs(30))
        .await;
    let served = asked.elapsed();
    println!(
        "scale-down: pods gone {:?} after the request, their Services {:?} after that",
        pods_gone - asked,
        pods_gone.elapsed()
    );
    assert!(
        pods_gone.elapsed() < Duration::from_secs(15),
        "the Services of the removed pods went {:?} after them",
        pods_gone.elapsed()
    );
    assert!(
        served < Duration::from_secs(120) + (pods_gone - asked),
        "the scale-down was served {served:?} after the request"
    );
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
