//! TURN on 443 (`components/turn`) with real packets: a participant on a network that lets no UDP out
//! (nftables drops every datagram it sends) gets time-limited TURN credentials from the real Prosody 13
//! (XEP-0215, configured by the jitsi/prosody image's own template from what the component sets),
//! allocates a relay on the real coturn (Debian's package, the component's `turnserver.conf`, in the
//! relay's pod network behind its Service's stood-in load balancer address, port 443 → 5349) over TLS,
//! and exchanges datagrams with a bridge stand-in on its node port through the real kube-proxy. The same
//! participant with UDP allowed reaches the bridge directly. The relay's NetworkPolicy (enforced by the
//! dataplane's kube-router) lets it send only to the bridges' port block.
//!
//! XMPP itself is TCP (websockets on 443 in production), so the credentials are read from the test's own
//! namespace, which reaches Prosody on loopback; the media leg is what the blocked network would stop.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use testbed::dataplane::{self, Internet, PodNet, node_ip};
use testbed::jitsi_images::{self, Sources};
use testbed::manifests::{self, edit, render_dir};
use testbed::prosody::{self, DOMAIN, Prosody, ProsodyOptions, xmpp_python};
use testbed::service_per_pod::{Fixture, statefulset_annotating_pods};
use testbed::{eventually, repo_root};

const SECOND: Duration = Duration::from_secs(1);
/// The relay's public address, as a cloud would give its Service: the name in `TURNS_HOST` and its
/// certificate.
const RELAY_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 250, 1, 20);

/// The production overlay with `components/turn`, as its header says to add it.
fn production_with_turn() -> Vec<Value> {
    let copy = manifests::copy_of_manifests("turn");
    let production = copy.join("manifests/overlays/production");
    edit(
        &production.join("kustomization.yaml"),
        "  - ../../components/service-per-pod-namespaced\n",
        "  - ../../components/service-per-pod-namespaced\n  - ../../components/turn\n",
    );
    let kustomization = production.join("kustomization.yaml");
    let mut text = std::fs::read_to_string(&kustomization).unwrap();
    text.push_str(&format!(
        "configMapGenerator:\n  - name: jitsi-turn\n    literals:\n      - TURNS_HOST={RELAY_ADDRESS}\n      - TURNS_PORT=443\n"
    ));
    std::fs::write(&kustomization, text).unwrap();
    let objects = render_dir(&production);
    std::fs::remove_dir_all(&copy).unwrap();
    objects
}

/// From a rendered Prosody configuration: the line that starts with `start`, and with `through` the
/// lines up to the one that ends the block.
fn lua_setting(config: &str, start: &str, through: Option<&str>) -> String {
    let mut lines = config.lines().skip_while(|l| !l.starts_with(start));
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("no {start:?} in the rendered configuration:\n{config}"));
    let mut setting = vec![first.to_owned()];
    if let Some(end) = through {
        setting.extend(lines.by_ref().take_while(|l| l.trim() != end).map(str::to_owned));
        setting.push(end.to_owned());
    }
    setting.join("\n")
}

/// A self-signed certificate for the relay's address (the `turn-tls` Secret's stand-in): cert, key.
fn certificate(dir: &Path) -> (String, String) {
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
        ])
        .arg("/CN=turn.meet.example")
        .arg("-addext")
        .arg(format!("subjectAltName=IP:{RELAY_ADDRESS}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success(), "openssl req failed");
    (cert.display().to_string(), key.display().to_string())
}

/// A running coturn; stopped when dropped.
struct Coturn(Child);

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How the kubelet would start the relay's container, as `setpriv` arguments: its user and group, no new
/// privileges when it may not escalate, and a bounding set of only the capabilities it adds.
fn container_settings(deployment: &Value) -> Vec<String> {
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let id = |field: &str| {
        container["securityContext"][field]
            .as_u64()
            .or_else(|| pod["securityContext"][field].as_u64())
            .unwrap_or_else(|| panic!("the relay's {field}"))
    };
    let security = &container["securityContext"];
    let added: Vec<String> = security["capabilities"]["add"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| format!(",+{}", c.as_str().unwrap().to_lowercase()))
        .collect();
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    let mut settings = vec![
        format!("--reuid={}", id("runAsUser")),
        format!("--regid={}", id("runAsGroup")),
        "--clear-groups".to_owned(),
        format!("--bounding-set=-all{}", added.concat()),
        "--inh-caps=-all".to_owned(),
    ];
    if security["allowPrivilegeEscalation"] == false {
        settings.push("--no-new-privs".to_owned());
    }
    settings
}

/// coturn in a relay pod's network, started as the rendered Deployment starts it — its command and
/// arguments, user, capabilities — on the component's configuration (paths moved to `dir`). The binary is
/// Debian's given the file capability the image gives its own (coturn's docker/coturn/debian/Dockerfile).
fn start_coturn(net: &PodNet, deployment: &Value, config: &str, secret: &str, dir: &Path) -> Coturn {
    let (cert, key) = certificate(dir);
    let config = config
        .replace("/etc/coturn/tls/tls.crt", &cert)
        .replace("/etc/coturn/tls/tls.key", &key)
        .replace(
            "/tmp/turnserver.pid",
            &dir.join("turnserver.pid").display().to_string(),
        );
    let path = dir.join("turnserver.conf");
    std::fs::write(&path, config).unwrap();
    let binary = dir.join("turnserver");
    std::fs::copy("/usr/bin/turnserver", &binary)
        .expect("turnserver (Debian package coturn; cargo xtask test installs it)");
    let status = Command::new("setcap")
        .arg("CAP_NET_BIND_SERVICE=+ep")
        .arg(&binary)
        .status()
        .expect("setcap (Debian package libcap2-bin)");
    assert!(status.success(), "setcap failed");
    let settings = container_settings(deployment);
    let user: u32 = settings[0].trim_start_matches("--reuid=").parse().unwrap();
    for file in [dir.to_path_buf(), path.clone(), cert.into(), key.into()] {
        std::os::unix::fs::chown(&file, Some(user), Some(user)).unwrap();
    }
    // Why the container adds NET_BIND_SERVICE: without it in the bounding set the kernel will not even
    // execute a binary that carries it as a file capability.
    let stripped: Vec<String> = settings
        .iter()
        .map(|s| s.replace(",+net_bind_service", ""))
        .collect();
    let refused = net
        .command("setpriv")
        .args(&stripped)
        .arg(&binary)
        .arg("--version")
        .output()
        .unwrap();
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("Operation not permitted"),
        "turnserver ran without NET_BIND_SERVICE: {refused:?}"
    );
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["command"], json!(["turnserver"]));
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a.as_str()
                .unwrap()
                .replace("/etc/coturn/turnserver.conf", &path.display().to_string())
                .replace("$(TURN_SECRET)", secret)
        })
        .collect();
    let log = std::fs::File::create(dir.join("coturn.log")).unwrap();
    let coturn = Coturn(
        net.command("setpriv")
            .args(&settings)
            .arg(&binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting turnserver through setpriv"),
    );
    let deadline = Instant::now() + 10 * SECOND;
    loop {
        let listening = net
            .command("ss")
            .args(["-Hltn", "sport = :5349"])
            .output()
            .unwrap();
        if !String::from_utf8_lossy(&listening.stdout).trim().is_empty() {
            return coturn;
        }
        assert!(
            Instant::now() < deadline,
            "coturn does not listen on 5349: {}",
            std::fs::read_to_string(dir.join("coturn.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `testbed/turn/relay_client.py` from `internet`: its JSON report and whether every datagram was
/// answered.
fn media(internet: &Internet, peer: (Ipv4Addr, u16), relay: Option<(&Path, &Value)>) -> (bool, Value) {
    let mut command = internet.command(xmpp_python());
    command
        .arg(repo_root().join("testbed/turn/relay_client.py"))
        .args(["--peer", &format!("{}:{}", peer.0, peer.1), "--count", "20"]);
    if let Some((ca, service)) = relay {
        command
            .args([
                "--turn",
                &format!(
                    "{}:{}",
                    service["host"].as_str().unwrap(),
                    service["port"].as_str().unwrap()
                ),
            ])
            .arg("--ca")
            .arg(ca)
            .args(["--username", service["username"].as_str().unwrap()])
            .args(["--password", service["password"].as_str().unwrap()]);
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "relay_client.py said {stdout:?} {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.success(), report)
}

#[tokio::test]
async fn a_participant_whose_network_drops_udp_gets_media_through_turn_on_443() {
    dataplane::require();
    let fx = Fixture::start("turn").await;
    let base = fx.namespace.node_port_block().await;
    let pods: Api<Pod> = fx.namespace.api();

    // The bridge stand-in: one bridge with its NodePort Service from service-per-pod.
    fx.create(&statefulset_annotating_pods(
        "jvb",
        1,
        &[("service-per-pod/base-port", &base.to_string())],
    ))
    .await;
    fx.wait_until_settled(&["jvb-0"], 60 * SECOND).await;
    let bridge_pod = eventually("jvb-0 Running with an IP", 60 * SECOND, || async {
        let pod = pods.get_opt("jvb-0").await.ok()??;
        pod.status.as_ref()?.pod_ip.as_ref()?;
        Some(pod)
    })
    .await;
    let mut bridge = PodNet::attach(&bridge_pod);
    bridge.serve_udp(base);
    let bridge_address = (node_ip(&bridge.node), base);

    // The component as production renders it, through the images' contract; Prosody's rendered TURN
    // settings.
    let objects = production_with_turn();
    let work = repo_root().join("target/image-contract/turn");
    let reports = jitsi_images::check(&objects, &work, &mut Sources::resolve_once);
    let findings: Vec<String> = reports
        .iter()
        .flat_map(|r| r.findings.iter().map(ToString::to_string))
        .collect();
    assert!(!reports.is_empty() && findings.is_empty(), "{findings:?}");
    let rendered = std::fs::read_to_string(
        work.join("shard-0/shard-0-prosody-prosody/sandbox/root/run/prosody/config/prosody.cfg.lua"),
    )
    .unwrap();
    assert!(rendered.contains("\"external_services\";"), "module not enabled");
    let secret_line = lua_setting(&rendered, "external_service_secret = ", None);
    let services = lua_setting(&rendered, "external_services = {", Some("};"));
    println!("the image's rendered prosody.cfg.lua:\n{secret_line}\n{services}");
    let secret = secret_line.split('"').nth(1).expect("a quoted secret").to_owned();

    // Prosody 13 with those settings; a participant asks it for the relay.
    let server = Prosody::start(ProsodyOptions {
        global: format!("{secret_line}\n{services}\n"),
        modules: vec!["external_services".to_owned()],
        ..ProsodyOptions::default()
    });
    let offered = prosody::external_services(&server, DOMAIN).unwrap();
    let relay = offered
        .iter()
        .find(|service| service["type"] == "turns")
        .unwrap_or_else(|| panic!("no turns service: {offered:?}"))
        .clone();
    assert_eq!(relay["host"], RELAY_ADDRESS.to_string());
    assert_eq!(relay["port"], "443");
    assert_eq!(relay["transport"], "tcp");
    let username = relay["username"].as_str().unwrap();
    let expires: u64 = username.split(':').next().unwrap().parse().unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(
        expires > now && expires <= now + 86_400 + 60,
        "time-limited: {username}"
    );
    println!("XEP-0215 from Prosody: {relay}");

    // The relay: the component's objects in the test's namespace, under Pod Security "restricted";
    // its egress policy narrowed to the test's port block (production's names the shards' blocks).
    let namespaces: Api<Namespace> = Api::all(testbed::Cluster::connect().await.admin());
    let restricted =
        json!({ "metadata": { "labels": { "pod-security.kubernetes.io/enforce": "restricted" } } });
    namespaces
        .patch(
            &fx.namespace.name,
            &PatchParams::default(),
            &Patch::Merge(restricted),
        )
        .await
        .unwrap();
    let mut relay_objects: Vec<Value> = objects
        .iter()
        .filter(|o| {
            let name = o["metadata"]["name"].as_str().unwrap_or_default();
            name == "turn" || name.starts_with("turnserver-")
        })
        .cloned()
        .collect();
    let kinds: Vec<&str> = relay_objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.len(),
        5,
        "ConfigMap, Service, Deployment, PodDisruptionBudget, NetworkPolicy: {kinds:?}"
    );
    let mut turnserver_conf = String::new();
    let mut deployment = Value::Null;
    for object in &mut relay_objects {
        object["metadata"]["namespace"] = json!(fx.namespace.name);
        if object["kind"] == "NetworkPolicy" {
            let ports = &mut object["spec"]["egress"][0]["ports"][0];
            assert_eq!(
                *ports,
                json!({ "protocol": "UDP", "port": 30300, "endPort": 30499 })
            );
            *ports = json!({ "protocol": "UDP", "port": base, "endPort": base + 9 });
        }
        if object["kind"] == "Deployment" {
            deployment = object.clone();
        }
        if object["kind"] == "ConfigMap" {
            turnserver_conf = object["data"]["turnserver.conf"].as_str().unwrap().to_owned();
        }
    }
    manifests::apply_list(&relay_objects);
    let relay_pods = eventually("2 relay pods Running with an IP", 60 * SECOND, || async {
        let list = pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=turn"))
            .await
            .ok()?;
        let running: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some())
            .collect();
        (running.len() == 2).then_some(running)
    })
    .await;
    let dir = repo_root().join(format!("target/turn-{}", fx.namespace.name));
    let mut relays = Vec::new();
    for pod in &relay_pods {
        let pod_dir = dir.join(pod.name_any());
        std::fs::create_dir_all(&pod_dir).unwrap();
        let net = PodNet::attach(pod);
        let coturn = start_coturn(&net, &deployment, &turnserver_conf, &secret, &pod_dir);
        relays.push((net, coturn, pod_dir));
    }
    let cloud = json!({ "status": { "loadBalancer": { "ingress": [{ "ip": RELAY_ADDRESS.to_string() }] } } });
    fx.services()
        .patch_status("turn", &PatchParams::default(), &Patch::Merge(cloud))
        .await
        .unwrap();

    // The blocked network: no UDP leaves it. Straight to the bridge: nothing; through the relay: all.
    let blocked = Internet::join("tblk", 150, true);
    // A cloud's load balancer sends to nodes with a relay pod (externalTrafficPolicy: Local).
    blocked.route_via(RELAY_ADDRESS, &relays[0].0.node);
    let (ok, direct) = media(&blocked, bridge_address, None);
    assert!(!ok && direct["answered"].as_u64().unwrap_or(0) == 0, "{direct}");
    assert!(blocked.udp_dropped() > 0, "the firewall dropped nothing");
    let ca = relays[0].2.join("tls.crt");
    let relayed = eventually("media through the relay", 30 * SECOND, || async {
        let (ok, report) = media(&blocked, bridge_address, Some((&ca, &relay)));
        ok.then_some(report)
    })
    .await;
    assert_eq!(relayed["answers"], json!(["jvb-0"]));
    println!(
        "UDP-blocked participant ({} datagrams dropped by its firewall): direct {direct}\n  through TURN: {relayed}",
        blocked.udp_dropped()
    );

    // Credentials that do not come from Prosody's secret: refused.
    let mut forged = relay.clone();
    forged["password"] = json!("bm90IHRoZSByaWdodCBvbmU=");
    let (ok, refused) = media(&blocked, bridge_address, Some((&ca, &forged)));
    assert!(
        !ok && refused["error"]
            .as_str()
            .unwrap_or_default()
            .contains("allocation failed"),
        "{refused}"
    );

    // The relay may send to the bridges' block only (its NetworkPolicy): the same bridge on a port
    // outside it stays out of reach.
    // To the bridge pod's own address (as after a load balancer that targets pods): inside the block it
    // answers, outside it does not — the port alone makes the difference.
    let (ok, inside) = media(&blocked, (bridge.ip, base), Some((&ca, &relay)));
    assert!(
        ok,
        "the relay could not reach the bridge pod inside the block: {inside}"
    );
    bridge.serve_udp(base + 50);
    let (ok, outside) = media(&blocked, (bridge.ip, base + 50), Some((&ca, &relay)));
    assert!(
        !ok && outside["answered"] == 0,
        "the relay reached a port outside the block: {outside}"
    );

    // The same participant on an open network goes direct.
    let open = Internet::join("topen", 151, false);
    let (ok, direct) = media(&open, bridge_address, None);
    assert!(ok, "{direct}");
    println!("open network: {direct}\nrelayed to a port outside the bridges' block: {outside}");

    drop(open);
    drop(blocked);
    for (net, coturn, _) in relays {
        drop(coturn);
        drop(net);
    }
    drop(bridge);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    fx.namespace.delete().await;
}
