//! jvb-startup as the bridge container runs it: the real binary, `exec` replacing itself, the Node
//! lookup on the real local control plane under a ServiceAccount, and `drain` against a stub bridge
//! that behaves like the real API.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Service, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use testbed::bridge_stub::{BridgeStub, Fault, StubConfig};
use testbed::daemon::binary;
use testbed::manifests::{self, kind};
use testbed::{Cluster, eventually};

/// Runs jvb-startup with only the given environment (plus PATH), as a container would start it.
fn jvb_startup(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(binary("jvb-startup"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn exec_replaces_itself_with_the_command_and_its_decided_environment() {
    let dir = std::env::temp_dir().join(format!("jvb-startup-exec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("custom-jvb.conf");
    let config_arg = config.display().to_string();
    let child = jvb_startup(
        &[
            "exec",
            "--base-port",
            "30300",
            "--write-config",
            &config_arg,
            "--",
            "sh",
            "-c",
            "echo pid=$$; env",
        ],
        &[
            ("POD_NAME", "shard-0-jvb-7"),
            ("JVB_ADVERTISE_IP", "203.0.113.9"),
            ("POD_IP", "10.244.0.7"),
            ("KEEP_ME", "kept"),
        ],
    )
    .spawn()
    .unwrap();
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains(&format!("pid={pid}\n")),
        "the command must run as the same process ({pid}):\n{stdout}"
    );
    for line in [
        "JVB_PORT=30307",
        "JVB_ADVERTISE_IPS=203.0.113.9",
        "JVB_MUC_NICKNAME=shard-0-jvb-7",
        "COLIBRI_REST_ENABLED=true",
        "SHUTDOWN_REST_ENABLED=true",
        "KEEP_ME=kept",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "{line} missing from the environment:\n{stdout}"
        );
    }
    let stderr = text(&output.stderr);
    assert_eq!(
        stderr.lines().count(),
        1,
        "one log line saying what it decided:\n{stderr}"
    );
    assert!(
        stderr.contains("UDP port 30307") && stderr.contains("203.0.113.9"),
        "{stderr}"
    );
    let hocon = std::fs::read_to_string(&config).unwrap();
    assert!(hocon.contains("ice.udp.port = 30307"), "{hocon}");
    assert!(
        hocon.contains(r#"local-address = "10.244.0.7", public-address = "203.0.113.9""#),
        "{hocon}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_existing_muc_nickname_is_kept_and_hostname_stands_in_for_pod_name() {
    let output = jvb_startup(
        &["exec", "--", "sh", "-c", "env"],
        &[
            ("HOSTNAME", "jvb-2"),
            ("JVB_BASE_PORT", "30400"),
            ("HOST_IP", "2001:db8::2"),
            ("JVB_MUC_NICKNAME", "eu-bridge"),
        ],
    )
    .output()
    .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    for line in [
        "JVB_PORT=30402",
        "JVB_ADVERTISE_IPS=2001:db8::2",
        "JVB_MUC_NICKNAME=eu-bridge",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line}:\n{stdout}");
    }
}

#[test]
fn bad_input_exits_2_with_one_sentence_and_never_runs_the_command() {
    let cases: [(&[(&str, &str)], &str); 6] = [
        (
            &[("JVB_BASE_PORT", "30300"), ("HOST_IP", "192.0.2.1")],
            "no pod name",
        ),
        (
            &[
                ("POD_NAME", "jvb"),
                ("JVB_BASE_PORT", "30300"),
                ("HOST_IP", "192.0.2.1"),
            ],
            "does not end in -<ordinal>",
        ),
        (&[("POD_NAME", "jvb-1"), ("HOST_IP", "192.0.2.1")], "no base port"),
        (
            &[
                ("POD_NAME", "jvb-1"),
                ("JVB_BASE_PORT", "3o300"),
                ("HOST_IP", "192.0.2.1"),
            ],
            "is not a number",
        ),
        (
            &[
                ("POD_NAME", "jvb-9"),
                ("JVB_BASE_PORT", "65530"),
                ("HOST_IP", "192.0.2.1"),
            ],
            "not a valid port",
        ),
        (
            &[("POD_NAME", "jvb-1"), ("JVB_BASE_PORT", "30300")],
            "no address to advertise",
        ),
    ];
    for (env, expected) in cases {
        let output = jvb_startup(&["exec", "--", "sh", "-c", "echo RAN"], env)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{env:?}");
        assert!(
            output.stdout.is_empty(),
            "the command must not run: {}",
            text(&output.stdout)
        );
        let stderr = text(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{env:?}: one line:\n{stderr}");
        assert!(stderr.contains(expected), "{env:?}: {stderr}");
    }
}

/// Every combination of malformed and valid pod names, base ports (environment and flag), host and
/// advertised addresses: either exit code 2 with one sentence and the command never run, or the command
/// runs with exactly base port + ordinal. Inputs that are certainly malformed must be refused.
#[test]
fn every_combination_of_bad_input_is_refused_or_gets_exactly_base_plus_ordinal() {
    let pod_names = [
        None,
        Some(""),
        Some("jvb"),
        Some("jvb-"),
        Some("jvb-x"),
        Some("shard-0-jvb-3"),
        Some("jvb-007"),
        Some("jvb-99999999999999999999"),
        Some("jvb-65535"),
    ];
    let base_ports = [
        None,
        Some(""),
        Some("30300"),
        Some("3o300"),
        Some("-1"),
        Some("0"),
        Some("65535"),
        Some(" 30300 "),
        Some("99999"),
    ];
    let host_ips = [None, Some("192.0.2.1"), Some("not-an-ip"), Some("2001:db8::1")];
    let advertise_ips = [None, Some("198.51.100.7"), Some("198.51.100.7,bad")];
    let flags: [&[&str]; 2] = [&[], &["--base-port", "abc"]];
    let mut runs = 0;
    let mut started = 0;
    for pod_name in pod_names {
        for base_port in base_ports {
            for host_ip in host_ips {
                for advertise_ip in advertise_ips {
                    for flag in flags {
                        let mut env = Vec::new();
                        for (name, value) in [
                            ("POD_NAME", pod_name),
                            ("JVB_BASE_PORT", base_port),
                            ("HOST_IP", host_ip),
                            ("JVB_ADVERTISE_IP", advertise_ip),
                        ] {
                            if let Some(value) = value {
                                env.push((name, value));
                            }
                        }
                        let mut args = vec!["exec"];
                        args.extend_from_slice(flag);
                        args.extend_from_slice(&["--", "sh", "-c", "echo \"$JVB_PORT\""]);
                        let output = jvb_startup(&args, &env).output().unwrap();
                        runs += 1;
                        let case = format!("{env:?} {flag:?}");
                        let stderr = text(&output.stderr);
                        let ordinal = pod_name
                            .and_then(|n| n.rsplit_once('-'))
                            .and_then(|(_, digits)| digits.parse::<u64>().ok());
                        let base = base_port.and_then(|b| b.trim().parse::<u64>().ok());
                        let certainly_bad = ordinal.is_none()
                            || !flag.is_empty()
                            || base.is_none()
                            || (host_ip.is_none() && advertise_ip.is_none())
                            || advertise_ip == Some("198.51.100.7,bad");
                        match output.status.code() {
                            Some(2) => {
                                assert!(output.stdout.is_empty(), "{case}: the command ran");
                                assert_eq!(stderr.lines().count(), 1, "{case}: one sentence:\n{stderr}");
                            }
                            Some(0) => {
                                assert!(!certainly_bad, "{case}: accepted malformed input");
                                started += 1;
                                let port: u64 = text(&output.stdout).trim().parse().unwrap();
                                assert_eq!(Some(port), base.zip(ordinal).map(|(b, o)| b + o), "{case}");
                                assert!(port <= 65535, "{case}");
                            }
                            other => panic!("{case}: exit {other:?}: {stderr}"),
                        }
                    }
                }
            }
        }
    }
    assert_eq!(runs, 9 * 9 * 4 * 3 * 2);
    assert!(started > 0, "some combinations are valid");
    println!("{runs} combinations, {started} started with the right port, the rest refused");
}

#[test]
fn dry_run_prints_the_decision_as_json_without_exec() {
    let output = jvb_startup(
        &["exec", "--dry-run", "--output", "json"],
        &[
            ("POD_NAME", "jvb-4"),
            ("JVB_BASE_PORT", "30500"),
            ("HOST_IP", "192.0.2.4"),
        ],
    )
    .output()
    .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let decision: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(decision["port"], 30504);
    assert_eq!(decision["advertise_ips"], json!(["192.0.2.4"]));
    assert_eq!(decision["address_source"], "host-ip");
}

#[test]
fn install_copies_a_working_binary() {
    let dir = std::env::temp_dir().join(format!("jvb-startup-install-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let output = jvb_startup(&["install", &dir.display().to_string()], &[])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let installed = dir.join("jvb-startup");
    assert_eq!(
        std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let version = Command::new(&installed).arg("--version").output().unwrap();
    assert!(
        text(&version.stdout).starts_with("jvb-startup "),
        "{}",
        text(&version.stdout)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

async fn create_node(cluster: &Cluster, name: &str, addresses: &[(&str, &str)]) {
    let addresses: Vec<Value> = addresses
        .iter()
        .map(|(t, a)| json!({ "type": t, "address": a }))
        .collect();
    let node: Node = serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "jitsi-k8s.test/node": "jvb-startup" } },
        "status": { "addresses": addresses }
    }))
    .unwrap();
    let nodes: Api<Node> = Api::all(cluster.admin());
    let _ = nodes.delete(name, &DeleteParams::default()).await;
    eventually(
        &format!("node {name} created"),
        Duration::from_secs(10),
        || async { nodes.create(&PostParams::default(), &node).await.ok() },
    )
    .await;
}

fn decide_from_node(kubeconfig: &str, node: &str) -> (Value, String) {
    let output = jvb_startup(
        &["exec", "--dry-run", "--output", "json", "--advertise-from-node"],
        &[
            ("POD_NAME", "jvb-1"),
            ("JVB_BASE_PORT", "30300"),
            ("HOST_IP", "192.0.2.99"),
            ("NODE_NAME", node),
            ("KUBECONFIG", kubeconfig),
        ],
    )
    .output()
    .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    (
        serde_json::from_slice(&output.stdout).unwrap(),
        text(&output.stderr),
    )
}

#[tokio::test]
async fn the_node_lookup_reads_external_then_internal_ip_and_falls_back_when_forbidden() {
    let cluster = Cluster::connect().await;
    let namespace = cluster.namespace("jvb-startup").await;
    let suffix = &namespace.name[namespace.name.len() - 8..];
    let external = format!("jvb-test-external-{suffix}");
    let internal = format!("jvb-test-internal-{suffix}");
    create_node(
        &cluster,
        &external,
        &[
            ("InternalIP", "10.1.0.5"),
            ("ExternalIP", "198.51.100.5"),
            ("ExternalIP", "2001:db8::5"),
        ],
    )
    .await;
    create_node(&cluster, &internal, &[("InternalIP", "10.1.0.6")]).await;

    // The JVB ServiceAccount with the RBAC from manifests/components/jvb-advertise-from-node.
    let accounts: Api<ServiceAccount> = namespace.api();
    let jvb: ServiceAccount = serde_json::from_value(json!({ "metadata": { "name": "jvb" } })).unwrap();
    accounts.create(&PostParams::default(), &jvb).await.unwrap();
    let mut rbac = manifests::render(
        &namespace.name,
        &[],
        &["manifests/components/jvb-advertise-from-node"],
    );
    // Rendered alone the component has no ServiceAccount, so kustomize leaves the subject's namespace;
    // in a shard it is rendered with the `jvb` ServiceAccount and kustomize sets it.
    for object in rbac.iter_mut().filter(|o| kind(o) == "ClusterRoleBinding") {
        object["subjects"][0]["namespace"] = json!(namespace.name);
    }
    assert_eq!(
        rbac.iter().find(|o| kind(o) == "ClusterRole").unwrap()["rules"],
        json!([{ "apiGroups": [""], "resources": ["nodes"], "verbs": ["get"] }])
    );
    manifests::apply(&rbac);
    let token = cluster.service_account_token(&namespace.name, "jvb").await;
    let kubeconfig = cluster
        .kubeconfig_file_with_token(&format!("{}/jvb", namespace.name), &token)
        .display()
        .to_string();

    let (decision, _) = decide_from_node(&kubeconfig, &external);
    assert_eq!(decision["advertise_ips"], json!(["198.51.100.5", "2001:db8::5"]));
    assert_eq!(decision["address_source"], "node-external-ip");
    let (decision, _) = decide_from_node(&kubeconfig, &internal);
    assert_eq!(decision["advertise_ips"], json!(["10.1.0.6"]));
    assert_eq!(decision["address_source"], "node-internal-ip");

    // Nodes declared private (JVB_REQUIRE_PUBLIC_ADDRESS): the InternalIP is refused in one sentence, exit
    // 2, the bridge never started; the node with an ExternalIP is fine.
    let private_nodes = |node: &str| {
        jvb_startup(
            &["exec", "--advertise-from-node", "--", "/bin/echo", "STARTED"],
            &[
                ("POD_NAME", "jvb-1"),
                ("JVB_BASE_PORT", "30300"),
                ("NODE_NAME", node),
                ("KUBECONFIG", &kubeconfig),
                ("JVB_REQUIRE_PUBLIC_ADDRESS", "true"),
            ],
        )
        .output()
        .unwrap()
    };
    let refused = private_nodes(&internal);
    let stderr = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(!text(&refused.stdout).contains("STARTED"));
    assert!(
        stderr.contains("refusing to advertise 10.1.0.6 (from the Node's InternalIP): JVB_REQUIRE_PUBLIC_ADDRESS says the nodes are private"),
        "{stderr}"
    );
    println!("nodes declared private, InternalIP only: {}", stderr.trim());
    let started = private_nodes(&external);
    assert!(
        text(&started.stdout).contains("STARTED"),
        "{}",
        text(&started.stderr)
    );

    // A ServiceAccount without the binding: forbidden, so HOST_IP with a warning.
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": "other" } })).unwrap(),
        )
        .await
        .unwrap();
    let token = cluster.service_account_token(&namespace.name, "other").await;
    let kubeconfig = cluster
        .kubeconfig_file_with_token(&format!("{}/other", namespace.name), &token)
        .display()
        .to_string();
    let (decision, stderr) = decide_from_node(&kubeconfig, &external);
    assert_eq!(decision["advertise_ips"], json!(["192.0.2.99"]));
    assert_eq!(decision["address_source"], "host-ip");
    assert!(
        stderr.contains("forbidden (403)") && stderr.contains("falling back to HOST_IP"),
        "{stderr}"
    );

    let nodes: Api<Node> = Api::all(cluster.admin());
    for name in [&external, &internal] {
        let _ = nodes.delete(name, &DeleteParams::default()).await;
    }
    namespace.delete().await;
}

fn drain(url: &str, extra: &[&str]) -> std::process::Child {
    let mut args = vec!["drain", "--jvb-url", url, "--interval", "100ms"];
    args.extend_from_slice(extra);
    jvb_startup(&args, &[]).spawn().unwrap()
}

async fn finish(child: std::process::Child) -> Output {
    tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn drain_waits_through_the_real_shutdown_states() {
    let bridge = BridgeStub::start(StubConfig {
        participants: Some(5),
        ..StubConfig::default()
    })
    .await;
    let started = Instant::now();
    let output = finish(drain(&bridge.url(), &["--timeout", "30s"])).await;
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(bridge.requests("POST /colibri/shutdown"), 1);
    assert!(stderr.contains("graceful shutdown requested"), "{stderr}");
    assert!(
        stderr.contains("participants=4") || stderr.contains("participants=3"),
        "progress is logged:\n{stderr}"
    );
    assert!(stderr.contains("no participants left"), "{stderr}");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "it waited for the participants to leave"
    );
}

/// The kubelet keeps nothing a preStop hook prints; the manifests point the hook at /proc/1/fd/1, the
/// container's log. Here a process stands in for PID 1, its stdout a file as the container log would be.
#[tokio::test]
async fn drain_progress_reaches_the_container_log_through_the_main_process_stdout() {
    let bridge = BridgeStub::start(StubConfig {
        participants: Some(3),
        ..StubConfig::default()
    })
    .await;
    let log = std::env::temp_dir().join(format!("jvb-container-log-{}", std::process::id()));
    let mut main_process = Command::new("sleep")
        .arg("60")
        .stdout(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let target = format!("/proc/{}/fd/1", main_process.id());
    let output = finish(drain(&bridge.url(), &["--timeout", "30s", "--log-to", &target])).await;
    main_process.kill().unwrap();
    main_process.wait().unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let container_log = std::fs::read_to_string(&log).unwrap();
    std::fs::remove_file(&log).unwrap();
    assert!(
        container_log.contains("graceful shutdown requested"),
        "{container_log}"
    );
    assert!(container_log.contains("no participants left"), "{container_log}");

    // A target that cannot be opened: stderr, with the reason first.
    let output = finish(drain(
        &bridge.url(),
        &["--timeout", "5s", "--log-to", "/proc/0/fd/1"],
    ))
    .await;
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr
            .lines()
            .next()
            .unwrap_or_default()
            .contains("cannot write to /proc/0/fd/1"),
        "{stderr}"
    );
}

#[tokio::test]
async fn drain_ends_when_the_bridge_exits_by_itself() {
    // Polling slower than the bridge takes to empty and exit: the next poll finds the port closed.
    let bridge = BridgeStub::start(StubConfig {
        participants: Some(2),
        leave_every: Some(Duration::from_millis(50)),
        exit_after_empty: Duration::from_millis(50),
        ..StubConfig::default()
    })
    .await;
    let mut args = vec!["drain", "--jvb-url"];
    let url = bridge.url();
    args.push(&url);
    args.extend_from_slice(&["--interval", "1s", "--timeout", "30s", "--gone-after", "1s"]);
    let output = finish(jvb_startup(&args, &[]).spawn().unwrap()).await;
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("refuses connections: it has exited"), "{stderr}");
}

#[tokio::test]
async fn drain_explains_a_disabled_rest_api_and_fails() {
    let bridge = BridgeStub::start(StubConfig {
        rest_enabled: false,
        ..StubConfig::default()
    })
    .await;
    let output = finish(drain(&bridge.url(), &["--timeout", "5s"])).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("404") && stderr.contains("REST API is disabled"),
        "{stderr}"
    );
}

#[tokio::test]
async fn drain_gives_up_at_the_timeout_on_a_bridge_that_never_empties() {
    let bridge = BridgeStub::start(StubConfig {
        participants: Some(3),
        leave_every: None,
        ..StubConfig::default()
    })
    .await;
    let started = Instant::now();
    let output = finish(drain(&bridge.url(), &["--timeout", "1s"])).await;
    assert!(
        output.status.success(),
        "a timeout lets the pod stop: {}",
        text(&output.stderr)
    );
    assert!(started.elapsed() >= Duration::from_secs(1) && started.elapsed() < Duration::from_secs(5));
    assert!(
        text(&output.stderr).contains("timeout"),
        "{}",
        text(&output.stderr)
    );
}

#[tokio::test]
async fn drain_of_a_bridge_that_is_not_running_succeeds_once_its_port_keeps_refusing() {
    let closed = format!("127.0.0.1:{}", testbed::free_tcp_port().unwrap());
    let started = Instant::now();
    let output = finish(drain(
        &format!("http://{closed}"),
        &["--timeout", "30s", "--gone-after", "1s"],
    ))
    .await;
    let took = started.elapsed();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(
        text(&output.stderr).contains("not running"),
        "{}",
        text(&output.stderr)
    );
}

#[tokio::test]
async fn drain_only_enables_drain_mode_and_waits() {
    let bridge = BridgeStub::start(StubConfig {
        participants: Some(2),
        ..StubConfig::default()
    })
    .await;
    let output = finish(drain(&bridge.url(), &["--drain-only", "--timeout", "30s"])).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(bridge.drain_enabled());
    assert_eq!(bridge.requests("POST /colibri/drain/enable"), 1);
    assert_eq!(
        bridge.requests("POST /colibri/shutdown"),
        0,
        "drain mode only, no shutdown"
    );
}

/// A busy bridge answers badly while it drains: errors, a long pause, a reset connection. None of it
/// means the bridge is gone — the hook keeps waiting, and returns when the last participant has left.
#[tokio::test]
async fn drain_waits_through_errors_a_stall_and_a_reset_until_the_last_participant_leaves() {
    let bridge = BridgeStub::start(StubConfig {
        participants: Some(5),
        leave_every: Some(Duration::from_millis(1500)),
        // It does not exit by itself during the test: only the participants can end the wait.
        exit_after_empty: Duration::from_secs(120),
        ..StubConfig::default()
    })
    .await;
    // The shutdown request itself is refused twice before it is taken.
    bridge.inject("/colibri/shutdown", [Fault::Status(503), Fault::Status(500)]);
    bridge.inject(
        "/colibri/stats",
        [
            Fault::Status(500),
            Fault::Status(503),
            Fault::Reset,
            Fault::Stall(Duration::from_secs(10)),
        ],
    );
    let started = Instant::now();
    let output = finish(drain(
        &bridge.url(),
        &[
            "--timeout",
            "60s",
            "--request-timeout",
            "2s",
            "--gone-after",
            "2s",
        ],
    ))
    .await;
    let took = started.elapsed();
    let stderr = text(&output.stderr);
    println!("{stderr}");
    assert!(output.status.success(), "{stderr}");
    assert_eq!(bridge.pending_faults(), 0, "every fault was met");
    assert_eq!(bridge.requests("POST /colibri/shutdown"), 3, "asked until taken");
    assert!(
        stderr.contains("refused the graceful shutdown request"),
        "{stderr}"
    );
    assert!(
        stderr.contains("status=500") && stderr.contains("status=503"),
        "{stderr}"
    );
    assert!(
        stderr.contains("did not answer"),
        "the reset and the stall: {stderr}"
    );
    assert!(stderr.contains("no participants left"), "{stderr}");
    assert!(
        !stderr.contains("exited") && !stderr.contains("not running"),
        "{stderr}"
    );
    assert!(
        took >= Duration::from_secs(10),
        "it waited through the stall: {took:?}"
    );
}

/// A LoadBalancer Service of the test namespace with `ingress` as its status (none when empty), created
/// by the admin as service-per-pod would, its status set as a cloud controller would.
async fn load_balancer(namespace: &testbed::TestNamespace, name: &str, kind: &str, ingress: Value) {
    let services: Api<Service> = namespace.api();
    let service: Service = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "type": kind,
            // No node ports: this test takes none from the cluster's range.
            "allocateLoadBalancerNodePorts": if kind == "LoadBalancer" { Some(false) } else { None },
            "ports": [{ "name": "jvb-0", "port": 30300, "protocol": "UDP" }]
        }
    }))
    .unwrap();
    services.create(&PostParams::default(), &service).await.unwrap();
    if ingress != json!([]) {
        let status = json!({ "status": { "loadBalancer": { "ingress": ingress } } });
        services
            .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .unwrap();
    }
}

/// The bridge asks for its shard's load balancer Service with a token that may `get` exactly that one.
fn decide_from_service(kubeconfig: &str, namespace: &str, service: &str, wait: &str) -> std::process::Child {
    jvb_startup(
        &["exec", "--dry-run", "--output", "json"],
        &[
            ("POD_NAME", "jvb-2"),
            ("JVB_BASE_PORT", "30300"),
            ("HOST_IP", "192.0.2.99"),
            ("POD_NAMESPACE", namespace),
            ("JVB_ADVERTISE_FROM_SERVICE", service),
            ("JVB_SERVICE_WAIT", wait),
            ("KUBECONFIG", kubeconfig),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

#[tokio::test]
async fn the_load_balancer_address_is_waited_for_then_advertised_or_refused_in_one_sentence() {
    let cluster = Cluster::connect().await;
    let namespace = cluster.namespace("jvb-startup-lb").await;
    // The ServiceAccount may get the shard's public Service and nothing else.
    let accounts: Api<ServiceAccount> = namespace.api();
    for name in ["jvb", "other"] {
        let account: ServiceAccount =
            serde_json::from_value(json!({ "metadata": { "name": name } })).unwrap();
        accounts.create(&PostParams::default(), &account).await.unwrap();
    }
    let public = ["jvb-public", "by-hostname", "never", "cluster-ip"];
    manifests::apply(&[
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": { "name": "jvb-public-reader", "namespace": namespace.name },
                "rules": [{ "apiGroups": [""], "resources": ["services"], "resourceNames": public,
                            "verbs": ["get"] }] }),
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": { "name": "jvb-public-reader", "namespace": namespace.name },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "jvb-public-reader" },
                "subjects": [{ "kind": "ServiceAccount", "name": "jvb", "namespace": namespace.name }] }),
    ]);
    let kubeconfig_of = |account: &'static str| {
        let cluster = &cluster;
        let namespace = &namespace.name;
        async move {
            let token = cluster.service_account_token(namespace, account).await;
            cluster
                .kubeconfig_file_with_token(&format!("{namespace}/{account}"), &token)
                .display()
                .to_string()
        }
    };
    let jvb = kubeconfig_of("jvb").await;

    // Started before the Service exists; the address arrives a second later.
    let started = Instant::now();
    let waiting = decide_from_service(&jvb, &namespace.name, "jvb-public", "30s");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    load_balancer(
        &namespace,
        "jvb-public",
        "LoadBalancer",
        json!([{ "ip": "203.0.113.20" }]),
    )
    .await;
    let output = tokio::task::spawn_blocking(|| waiting.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let decision: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(decision["advertise_ips"], json!(["203.0.113.20"]));
    assert_eq!(decision["address_source"], "service-ingress");
    assert_eq!(
        decision["port"], 30302,
        "the bridge's own port on the shared address"
    );

    // A hostname (as AWS gives) is resolved.
    load_balancer(
        &namespace,
        "by-hostname",
        "LoadBalancer",
        json!([{ "hostname": "localhost" }]),
    )
    .await;
    let output = decide_from_service(&jvb, &namespace.name, "by-hostname", "10s")
        .wait_with_output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let decision: Value = serde_json::from_slice(&output.stdout).unwrap();
    let advertised = decision["advertise_ips"].as_array().unwrap();
    assert!(advertised.contains(&json!("127.0.0.1")), "{decision}");

    // No address in time: exit 3 and one sentence naming the Service; nothing printed as a decision.
    load_balancer(&namespace, "never", "LoadBalancer", json!([])).await;
    let started = Instant::now();
    let output = decide_from_service(&jvb, &namespace.name, "never", "3s")
        .wait_with_output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{}", text(&output.stderr));
    assert!(started.elapsed() >= Duration::from_secs(3) && started.elapsed() < Duration::from_secs(10));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "Service {}/never got no load balancer address within 3s",
            namespace.name
        )) && stderr.contains("status.loadBalancer.ingress is empty"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());

    // A Service that can never have one, and a token without the right: refused at once, exit 2.
    load_balancer(&namespace, "cluster-ip", "ClusterIP", json!([])).await;
    let output = decide_from_service(&jvb, &namespace.name, "cluster-ip", "1m")
        .wait_with_output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("is of type ClusterIP, not LoadBalancer"),
        "{}",
        text(&output.stderr)
    );
    let other = kubeconfig_of("other").await;
    let started = Instant::now();
    let output = decide_from_service(&other, &namespace.name, "jvb-public", "1m")
        .wait_with_output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        text(&output.stderr).contains("forbidden (403)"),
        "{}",
        text(&output.stderr)
    );
    namespace.delete().await;
}
