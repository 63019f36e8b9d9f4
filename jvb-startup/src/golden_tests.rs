//! Golden outputs of the pure decision, one case per combination of inputs that matters. The
//! expected text lives in `tests/golden/decisions.txt`; `UPDATE_GOLDEN=1 cargo test -p jvb-startup`
//! rewrites it after a deliberate change (review the diff).

use std::net::IpAddr;

use crate::hocon;
use crate::plan::{Inputs, NodeLookup, NodePortRange, plan};

fn inputs() -> Inputs {
    Inputs {
        pod_name: Some("shard-0-jvb-3".into()),
        base_port: Some("30300".into()),
        advertise_ip: None,
        service_addresses: Vec::new(),
        node: NodeLookup::NotRequested,
        host_ip: Some("192.0.2.10".into()),
        muc_nickname: None,
        node_port_range: NodePortRange::default(),
        require_public: false,
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn cases() -> Vec<(&'static str, Inputs)> {
    let found = |external: &[&str], internal: &[&str]| NodeLookup::Found {
        name: "node-a".into(),
        external: external.iter().map(|a| ip(a)).collect(),
        internal: internal.iter().map(|a| ip(a)).collect(),
    };
    vec![
        ("host ip only", inputs()),
        (
            "nodes declared private: the node's InternalIP is refused",
            Inputs {
                node: found(&[], &["10.0.3.7"]),
                require_public: true,
                ..inputs()
            },
        ),
        (
            "nodes declared private: a shared (CGNAT) host IP is refused",
            Inputs {
                host_ip: Some("100.64.0.9".into()),
                require_public: true,
                ..inputs()
            },
        ),
        (
            "nodes declared private: the load balancer's public address is advertised",
            Inputs {
                service_addresses: vec![ip("203.0.113.20")],
                node: found(&[], &["10.0.3.7"]),
                require_public: true,
                ..inputs()
            },
        ),
        (
            "nodes declared private: a private address beside a public one is a warning",
            Inputs {
                advertise_ip: Some("203.0.113.7,fd00::7".into()),
                require_public: true,
                ..inputs()
            },
        ),
        (
            "advertise-ip wins over everything",
            Inputs {
                advertise_ip: Some("203.0.113.7".into()),
                node: found(&["198.51.100.1"], &[]),
                ..inputs()
            },
        ),
        (
            "advertise-ip comma list with IPv6 and duplicates",
            Inputs {
                advertise_ip: Some(" 203.0.113.7, [2001:db8::7],203.0.113.7 ".into()),
                ..inputs()
            },
        ),
        (
            "the shard's load balancer (IPv4 and IPv6) wins over the node",
            Inputs {
                service_addresses: vec![ip("203.0.113.20"), ip("2001:db8::20")],
                node: found(&["198.51.100.1"], &["10.0.0.5"]),
                ..inputs()
            },
        ),
        (
            "advertise-ip wins over the load balancer",
            Inputs {
                advertise_ip: Some("203.0.113.7".into()),
                service_addresses: vec![ip("203.0.113.20")],
                ..inputs()
            },
        ),
        (
            "node ExternalIP",
            Inputs {
                node: found(&["198.51.100.1"], &["10.0.0.5"]),
                ..inputs()
            },
        ),
        (
            "node with only an InternalIP",
            Inputs {
                node: found(&[], &["10.0.0.5"]),
                ..inputs()
            },
        ),
        (
            "node dual-stack ExternalIPs",
            Inputs {
                node: found(&["198.51.100.1", "2001:db8::1"], &[]),
                ..inputs()
            },
        ),
        (
            "node without addresses falls back",
            Inputs {
                node: found(&[], &[]),
                ..inputs()
            },
        ),
        (
            "node lookup forbidden falls back",
            Inputs {
                node: NodeLookup::Failed("looking up Node node-a was forbidden (403)".into()),
                ..inputs()
            },
        ),
        (
            "IPv6 host ip",
            Inputs {
                host_ip: Some("2001:db8::10".into()),
                ..inputs()
            },
        ),
        (
            "existing MUC nickname kept",
            Inputs {
                muc_nickname: Some("bridge-eu-3".into()),
                ..inputs()
            },
        ),
        (
            "port outside the NodePort range warns",
            Inputs {
                base_port: Some("10000".into()),
                ..inputs()
            },
        ),
        (
            "ordinal 0",
            Inputs {
                pod_name: Some("jvb-0".into()),
                ..inputs()
            },
        ),
        (
            "missing pod name",
            Inputs {
                pod_name: None,
                ..inputs()
            },
        ),
        (
            "pod name without ordinal",
            Inputs {
                pod_name: Some("jvb".into()),
                ..inputs()
            },
        ),
        (
            "pod name with letters after the dash",
            Inputs {
                pod_name: Some("jvb-abc".into()),
                ..inputs()
            },
        ),
        (
            "missing base port",
            Inputs {
                base_port: None,
                ..inputs()
            },
        ),
        (
            "non-numeric base port",
            Inputs {
                base_port: Some("30300x".into()),
                ..inputs()
            },
        ),
        (
            "zero base port",
            Inputs {
                base_port: Some("0".into()),
                ..inputs()
            },
        ),
        (
            "port above 65535",
            Inputs {
                base_port: Some("65534".into()),
                ..inputs()
            },
        ),
        (
            "invalid advertise ip",
            Inputs {
                advertise_ip: Some("203.0.113.7,not-an-ip".into()),
                ..inputs()
            },
        ),
        (
            "invalid host ip",
            Inputs {
                host_ip: Some("localhost".into()),
                ..inputs()
            },
        ),
        (
            "no address at all",
            Inputs {
                host_ip: None,
                ..inputs()
            },
        ),
    ]
}

fn render_all() -> String {
    let mut out = String::new();
    for (name, case) in cases() {
        out.push_str(&format!("== {name}\n"));
        match plan(&case) {
            Ok(plan) => {
                out.push_str(&format!("{}\n", plan.summary()));
                for (key, value) in &plan.env {
                    out.push_str(&format!("env {key}={value}\n"));
                }
                for warning in &plan.warnings {
                    out.push_str(&format!("warning: {warning}\n"));
                }
                out.push_str(&hocon::render(&plan, Some(ip("10.244.1.9"))));
            }
            Err(error) => out.push_str(&format!("refused (exit 2): {error}\n")),
        }
        out.push('\n');
    }
    out
}

#[test]
fn decisions_match_the_golden_file() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/decisions.txt");
    let actual = render_all();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        actual == expected,
        "decisions differ from {} (UPDATE_GOLDEN=1 to accept):\n{actual}",
        path.display()
    );
}
