//! Every PromQL expression the manifests ship — dashboards, alerts, ScaledObject queries, prometheus-adapter rules — is valid for
//! Prometheus (`promtool check rules`), and every metric name in it is one our exporters really produce
//! (read from their output against a bridge stub, a real Prosody and a real controller) or a standard name
//! on an explicit list.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::process::Command;

use promql_parser::parser::{self, Expr};
use serde_json::{Value, json};
use testbed::bridge_stub::{BridgeStub, StubConfig};
use testbed::daemon::Daemon;
use testbed::manifests::{self, of_kind};
use testbed::promql::{HAPROXY_METRICS, KUBERNETES_METRICS};
use testbed::prosody::{Occupants, Prosody, ProsodyOptions};
use testbed::service_per_pod::{Fixture, statefulset};

/// Where an expression comes from, and the expression as Prometheus will see it.
#[derive(Debug)]
struct Query {
    origin: String,
    expr: String,
}

/// Grafana's variables, replaced by values of the right shape.
fn without_grafana_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$namespace", "jitsi")
        .replace("$shard", "shard-0")
        .replace("$pod", ".*")
}

/// The selector inside Grafana's `label_values(selector, label)`.
fn label_values_selector(query: &str) -> Option<String> {
    let inner = query.strip_prefix("label_values(")?.strip_suffix(')')?;
    let (selector, _label) = inner.rsplit_once(',')?;
    Some(selector.trim().to_owned())
}

fn dashboard_queries(objects: &[Value]) -> Vec<Query> {
    let mut queries = Vec::new();
    for config_map in of_kind(objects, "ConfigMap") {
        if config_map["metadata"]["labels"]["grafana_dashboard"] != "1" {
            continue;
        }
        for (file, text) in config_map["data"].as_object().unwrap() {
            let dashboard: Value = serde_json::from_str(text.as_str().unwrap()).unwrap();
            for panel in dashboard["panels"].as_array().unwrap() {
                for target in panel["targets"].as_array().into_iter().flatten() {
                    queries.push(Query {
                        origin: format!("{file}: panel {:?}", panel["title"]),
                        expr: without_grafana_variables(target["expr"].as_str().unwrap()),
                    });
                }
            }
            for variable in dashboard["templating"]["list"].as_array().unwrap() {
                if variable["type"] != "query" {
                    continue;
                }
                let query = variable["query"]["query"].as_str().unwrap();
                let selector = label_values_selector(query)
                    .unwrap_or_else(|| panic!("{file}: variable query {query} is not label_values(...)"));
                queries.push(Query {
                    origin: format!("{file}: variable {}", variable["name"]),
                    expr: without_grafana_variables(&selector),
                });
            }
        }
    }
    queries
}

fn alert_queries(objects: &[Value]) -> Vec<Query> {
    let mut queries = Vec::new();
    for rule_set in of_kind(objects, "PrometheusRule") {
        for group in rule_set["spec"]["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                queries.push(Query {
                    origin: format!("alert {}", rule["alert"]),
                    expr: rule["expr"].as_str().unwrap().to_owned(),
                });
            }
        }
    }
    queries
}

/// Each ScaledObject's Prometheus query, as KEDA sends it.
fn scaled_object_queries(objects: &[Value]) -> Vec<Query> {
    of_kind(objects, "ScaledObject")
        .map(|scaler| Query {
            origin: format!("ScaledObject {}", scaler["metadata"]["name"]),
            expr: scaler["spec"]["triggers"][0]["metadata"]["query"]
                .as_str()
                .unwrap()
                .to_owned(),
        })
        .collect()
}

/// prometheus-adapter's rules (components/hpa-prometheus-adapter): `seriesQuery` is a selector;
/// `metricsQuery` a Go template over PromQL, filled in as the adapter does for one pod. The file is YAML
/// with one quoted value per line.
fn adapter_queries() -> Vec<Query> {
    let text = std::fs::read_to_string(
        testbed::repo_root()
            .join("manifests/components/hpa-prometheus-adapter/prometheus-adapter-rules.yaml"),
    )
    .unwrap();
    let value = |line: &str, key: &str| -> Option<String> {
        let raw = line.trim().trim_start_matches("- ").strip_prefix(key)?.trim();
        let unquoted = raw.strip_prefix('\'')?.strip_suffix('\'')?;
        Some(unquoted.replace("''", "'"))
    };
    let mut queries = Vec::new();
    let mut series = None;
    for line in text.lines() {
        if let Some(selector) = value(line, "seriesQuery:") {
            queries.push(Query {
                origin: "adapter seriesQuery".to_owned(),
                expr: selector.clone(),
            });
            series = Some(selector);
        }
        if let Some(template) = value(line, "metricsQuery:") {
            let selector = series.take().expect("seriesQuery before metricsQuery");
            let name = selector.split('{').next().unwrap();
            queries.push(Query {
                origin: format!("adapter metricsQuery for {name}"),
                expr: template
                    .replace("<<.Series>>", name)
                    .replace("<<.LabelMatchers>>", "namespace=\"jitsi\",pod=~\"shard-0-jvb-0\"")
                    .replace("<<.GroupBy>>", "pod"),
            });
        }
    }
    let rules = text.matches("- seriesQuery:").count();
    assert_eq!(queries.len(), 2 * rules, "read every adapter rule: {queries:?}");
    queries
}

fn all_queries() -> (Vec<Query>, Vec<Value>) {
    let objects = manifests::render_overlay("render-only", "manifests/overlays/production", &[]);
    let mut queries = dashboard_queries(&objects);
    let dashboards = queries.len();
    queries.extend(alert_queries(&objects));
    queries.extend(scaled_object_queries(&objects));
    queries.extend(adapter_queries());
    assert!(
        dashboards >= 20 && queries.len() > dashboards + 10,
        "found only {queries:?}"
    );
    (queries, objects)
}

#[test]
fn promtool_accepts_every_expression_and_every_alert() {
    let (queries, objects) = all_queries();
    // The alerts as they are (promtool also checks their templates), and every other expression as a
    // recording rule.
    let mut groups: Vec<Value> = of_kind(&objects, "PrometheusRule")
        .flat_map(|r| r["spec"]["groups"].as_array().unwrap().clone())
        .collect();
    let records: Vec<Value> = queries
        .iter()
        .filter(|q| !q.origin.starts_with("alert "))
        .enumerate()
        .map(|(i, q)| json!({ "record": format!("check:expression_{i}"), "expr": q.expr }))
        .collect();
    groups.push(json!({ "name": "dashboards-and-adapter", "rules": records }));
    let dir = testbed::repo_root().join("target/promql-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rules.json");
    // JSON is YAML: promtool reads it as a rules file.
    std::fs::write(&file, json!({ "groups": groups }).to_string()).unwrap();
    let output = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Our own parser agrees, so the names below come from a real AST.
    for query in &queries {
        parser::parse(&query.expr).unwrap_or_else(|e| panic!("{}: {}: {e}", query.origin, query.expr));
    }
    // Each alert the issue asks for exists.
    let alerts: BTreeSet<String> = queries
        .iter()
        .filter_map(|q| q.origin.strip_prefix("alert "))
        .map(|a| a.trim_matches('"').to_owned())
        .collect();
    for alert in [
        "JitsiBridgeUnreachable",
        "JitsiBridgeOverloaded",
        "JitsiBridgeDrainingLong",
        "JitsiBridgeAutoscalerAtMaximum",
        "ServicePerPodReconcileErrors",
        "ServicePerPodPortConflict",
        "ServicePerPodNoLeader",
        "ProsodyDown",
        "JicofoDown",
    ] {
        assert!(alerts.contains(alert), "no alert {alert}: {alerts:?}");
    }
}

fn metric_names(expr: &Expr, names: &mut BTreeSet<String>) {
    match expr {
        Expr::VectorSelector(selector) => names.extend(selector.name.clone()),
        Expr::MatrixSelector(matrix) => names.extend(matrix.vs.name.clone()),
        Expr::Aggregate(aggregate) => {
            metric_names(&aggregate.expr, names);
            if let Some(param) = &aggregate.param {
                metric_names(param, names);
            }
        }
        Expr::Unary(unary) => metric_names(&unary.expr, names),
        Expr::Binary(binary) => {
            metric_names(&binary.lhs, names);
            metric_names(&binary.rhs, names);
        }
        Expr::Paren(paren) => metric_names(&paren.expr, names),
        Expr::Subquery(subquery) => metric_names(&subquery.expr, names),
        Expr::Call(call) => call.args.args.iter().for_each(|arg| metric_names(arg, names)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// The series names an exposition offers: sample names, plus what each `# TYPE` family expands to.
fn exposed_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(declaration) = line.strip_prefix("# TYPE ") {
            let mut words = declaration.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" if name.ends_with("_total") => &[""],
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|suffix| format!("{name}{suffix}")));
        } else if !line.starts_with('#')
            && let Some(name) = line.split(['{', ' ']).next().filter(|n| !n.is_empty())
        {
            names.insert(name.to_owned());
        }
    }
    names
}

async fn scrape(daemon: &Daemon) -> String {
    reqwest::get(format!("http://{}/metrics", daemon.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn every_metric_name_used_is_produced_by_our_exporters_or_listed_as_standard() {
    let (queries, objects) = all_queries();
    let mut used = BTreeSet::new();
    for query in &queries {
        metric_names(&parser::parse(&query.expr).unwrap(), &mut used);
    }

    // jvb-exporter configured as the JVB StatefulSet configures it, against the stub of a current bridge.
    let bridges = of_kind(&objects, "StatefulSet")
        .find(|s| s["metadata"]["name"] == "shard-0-jvb")
        .unwrap();
    let pod = &bridges["spec"]["template"]["spec"];
    let sidecar = ["initContainers", "containers"]
        .iter()
        .flat_map(|field| pod[field].as_array().into_iter().flatten())
        .find(|c| c["name"] == "jvb-exporter")
        .unwrap();
    let stub = BridgeStub::start(StubConfig::default()).await;
    let mut env: Vec<(&str, String)> = sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| !matches!(v["name"].as_str(), Some("LISTEN" | "JVB_URL" | "LOG_FORMAT")))
        .map(|v| {
            (
                v["name"].as_str().unwrap(),
                v["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    env.push(("JVB_URL", stub.url()));
    let mut jvb_exporter = Daemon::start_with_addr_flag("jvb-exporter", &[], &env, "--listen");
    jvb_exporter.ready().await;
    let mut produced = exposed_names(&scrape(&jvb_exporter).await);

    // prosody-exporter against a real Prosody with real clients in a room.
    let prosody = Prosody::start(ProsodyOptions::default());
    let _occupants = Occupants::join(&prosody, &[("names", 2)]);
    let args = vec![format!("--prosody-url={}", prosody.url())];
    let mut prosody_exporter = Daemon::start_with_addr_flag("prosody-exporter", &args, &[], "--listen");
    prosody_exporter.ready().await;
    produced.extend(exposed_names(&scrape(&prosody_exporter).await));

    // The controller, as its manifest runs it, with a StatefulSet to report on (its per-StatefulSet
    // series exist once it has one).
    let fixture = Fixture::start("promql-names").await;
    let base = fixture.namespace.node_port_block().await.to_string();
    fixture
        .create(&statefulset("jvb", 1, &[("service-per-pod/base-port", &base)]))
        .await;
    let mut exposed = BTreeSet::new();
    for _ in 0..100 {
        exposed = exposed_names(&scrape(&fixture.controller).await);
        if exposed.contains("service_per_pod_ordinals_held_by_terminating_pods") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    produced.extend(exposed);

    let standard: BTreeSet<String> = HAPROXY_METRICS
        .iter()
        .chain(KUBERNETES_METRICS)
        .map(|name| (*name).to_owned())
        .collect();
    let unknown: Vec<&String> = used
        .iter()
        .filter(|name| !produced.contains(*name) && !standard.contains(*name))
        .collect();
    assert!(
        unknown.is_empty(),
        "metric names nothing produces: {unknown:?}\nused: {used:?}\nproduced: {produced:?}"
    );
    // The explicit list carries nothing the manifests do not use.
    let unused: Vec<&String> = standard.iter().filter(|name| !used.contains(*name)).collect();
    assert!(unused.is_empty(), "listed as standard but unused: {unused:?}");
    fixture.namespace.delete().await;
}

const RUNBOOKS: &str = "https://github.com/jitsi-k8s/jitsi-k8s/blob/main/docs/runbooks.md#";

/// Every alert links its section of docs/runbooks.md, and every section there belongs to an alert.
#[test]
fn every_alert_has_its_runbook() {
    let objects = manifests::render_overlay("render-only", "manifests/overlays/production", &[]);
    let runbooks = std::fs::read_to_string(testbed::repo_root().join("docs/runbooks.md")).unwrap();
    let sections: BTreeSet<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(str::to_owned)
        .collect();
    let mut alerts = BTreeSet::new();
    for rule in of_kind(&objects, "PrometheusRule")
        .flat_map(|r| r["spec"]["groups"].as_array().unwrap().iter())
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
    {
        let Some(alert) = rule["alert"].as_str() else {
            continue;
        };
        let url = rule["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_else(|| panic!("{alert} has no runbook_url"));
        // GitHub's anchor of a heading `## Name` is its lowercase text.
        assert_eq!(url, format!("{RUNBOOKS}{}", alert.to_lowercase()), "{alert}");
        let section = runbooks
            .split(&format!("## {alert}\n"))
            .nth(1)
            .unwrap_or_default();
        let section = section.split("\n## ").next().unwrap();
        for part in ["**Means.**", "**Impact.**", "**Check.**", "**Fix.**"] {
            assert!(section.contains(part), "docs/runbooks.md: {alert} has no {part}");
        }
        alerts.insert(alert.to_owned());
    }
    assert_eq!(
        sections, alerts,
        "docs/runbooks.md's sections and the alerts differ"
    );
}

/// The Jitsi dashboard follows its shard variable in every panel: directly, or through `$pod`, whose
/// values the shard filters.
#[test]
fn every_panel_of_the_jitsi_dashboard_follows_the_shard() {
    let objects = manifests::render_overlay("render-only", "manifests/overlays/production", &[]);
    let dashboard = of_kind(&objects, "ConfigMap")
        .find_map(|c| c["data"]["jitsi-meet.json"].as_str())
        .unwrap();
    let dashboard: Value = serde_json::from_str(dashboard).unwrap();
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let shard = variables
        .iter()
        .find(|v| v["name"] == "shard")
        .expect("a shard variable");
    assert_eq!(shard["multi"], true);
    assert!(
        shard["query"]["query"]
            .as_str()
            .unwrap()
            .contains("jitsi_org_shard")
    );
    let pod = variables.iter().find(|v| v["name"] == "pod").unwrap();
    assert!(pod["query"]["query"].as_str().unwrap().contains("$shard"));
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            // HAProxy's own state is global: one stick table and every shard's servers.
            let global =
                expr.contains("haproxy_sticktable_used") || expr.contains("haproxy_backend_active_servers");
            assert!(
                global || expr.contains("$shard") || expr.contains("$pod"),
                "panel {:?} ignores the shard: {expr}",
                panel["title"]
            );
        }
    }
}
