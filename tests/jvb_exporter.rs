//! jvb-exporter as a real process in front of a stub bridge that serves every real recorded output of
//! `/colibri/stats` (and the HTML 404, invalid JSON, slowness, a dead port). Every response is checked
//! with `promtool check metrics`.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use testbed::bridge_stub::{BridgeStub, Fault, StubConfig};
use testbed::daemon::Daemon;
use testbed::promtool::{self, samples};

/// Starts the exporter in front of `url`, `extra` flags added.
async fn exporter(url: &str, extra: &[&str]) -> Daemon {
    let mut args = vec![format!("--jvb-url={url}")];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    // The exporter's listener is its admin listener: `--listen` is what `Daemon` calls --admin-addr.
    let mut daemon = Daemon::start_with_addr_flag("jvb-exporter", &args, &[], "--listen");
    daemon.ready().await;
    daemon
}

async fn scrape(daemon: &Daemon) -> String {
    let response = reqwest::get(format!("http://{}/metrics", daemon.admin))
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "always 200, whatever the bridge does");
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    response.text().await.unwrap()
}

fn types(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' ').map(|(n, t)| (n.to_owned(), t.to_owned())))
        .collect()
}

fn assert_lint_clean(text: &str) {
    if let Err(problems) = promtool::check_metrics(text) {
        panic!("promtool check metrics:\n{problems}\n--- output ---\n{text}");
    }
}

async fn scrape_fixture(fixture: &str) -> (BTreeMap<String, f64>, String) {
    let bridge = BridgeStub::start(StubConfig {
        stats_fixture: fixture.to_owned(),
        ..StubConfig::default()
    })
    .await;
    let daemon = exporter(&bridge.url(), &[]).await;
    let text = scrape(&daemon).await;
    assert_lint_clean(&text);
    assert_eq!(
        bridge.requests("GET /colibri/stats"),
        1,
        "one scrape, one upstream request"
    );
    (samples(&text), text)
}

#[tokio::test]
async fn the_2026_bridge_with_relays() {
    let (m, text) = scrape_fixture("2026-jvb-2.3.63-relay.json").await;
    let expected = [
        ("jitsi_up", 1.0),
        ("jitsi_conferences_created_total", 10.0),
        ("jitsi_total_conferences_created", 10.0),
        ("jitsi_participants_total", 19.0),
        ("jitsi_bytes_sent_octo_total", 681918558.0),
        ("jitsi_video_stream_seconds_received_total", 3357.131),
        ("jitsi_conference_seconds_total", 16771.0),
        ("jitsi_threads", 58.0),
        ("jitsi_average_participant_stress", 0.01),
        ("jitsi_healthy", 1.0),
        ("jitsi_drain", 0.0),
        ("jitsi_endpoints_with_spurious_remb", 1.0),
        ("jitsi_endpoints_disconnected_total", 2.0),
        ("jitsi_version_info{version=\"2.3.63-g2a4cc2f8\"}", 1.0),
        ("jitsi_region_info{region=\"all\"}", 1.0),
        ("jitsi_relay_id_info{relay_id=\"jitsi-jvb-0\"}", 1.0),
    ];
    for (name, value) in expected {
        assert_eq!(m.get(name), Some(&value), "{name}\n{text}");
    }
    let t = types(&text);
    assert_eq!(t["jitsi_conferences_created_total"], "counter");
    assert_eq!(t["jitsi_total_conferences_created"], "untyped");
    assert_eq!(t["jitsi_conferences"], "gauge");
    assert!(
        !text.contains("current_timestamp"),
        "the bridge's clock is not a label"
    );
    assert!(!m.contains_key("jitsi_exporter_field_errors_total{field=\"other\"}"));
}

#[tokio::test]
async fn the_2021_active_bridge_with_fractional_values() {
    let (m, text) = scrape_fixture("2021-jvb-2.1.508-active.json").await;
    let stats: serde_json::Value =
        serde_json::from_str(&testbed::testdata("colibri/2021-jvb-2.1.508-active.json")).unwrap();
    for field in [
        "participants",
        "conferences",
        "stress_level",
        "bit_rate_download",
        "rtt_aggregate",
        "largest_conference",
    ] {
        let expected = stats[field].as_f64().unwrap();
        let got = m.get(&format!("jitsi_{field}")).copied();
        assert!(
            got.is_some_and(|v| (v - expected).abs() < 1e-9),
            "jitsi_{field}: {got:?} vs {expected}\n{text}"
        );
    }
    assert_eq!(m["jitsi_participants"], 2.0);
}

#[tokio::test]
async fn the_2021_idle_bridge_printing_integers_as_floats() {
    let (m, _) = scrape_fixture("2021-jvb-2.1.508-idle-floats.json").await;
    assert_eq!(m["jitsi_up"], 1.0);
    assert_eq!(m["jitsi_bit_rate_download"], 0.0);
    assert_eq!(m["jitsi_participants"], 0.0);
}

#[tokio::test]
async fn the_2020_bridge_with_conference_sizes_as_an_array() {
    let (m, text) = scrape_fixture("2020-jvb-2.1.169-idle.json").await;
    assert_eq!(m["jitsi_up"], 1.0);
    let sizes = m
        .keys()
        .filter(|k| k.starts_with("jitsi_conference_sizes{"))
        .count();
    assert_eq!(sizes, 22, "one series per size of the 22-element array\n{text}");
    assert_eq!(m["jitsi_conference_sizes{conference_size=\"0\"}"], 0.0);
    assert!(m.contains_key("jitsi_videochannels"));
}

#[tokio::test]
async fn conference_sizes_as_an_object_and_scientific_notation() {
    let (m, text) = scrape_fixture("quirk-conference-sizes-object-jicofo.json").await;
    assert_eq!(m["jitsi_up"], 1.0);
    assert!(
        m.keys().any(|k| k.starts_with("jitsi_conference_sizes{")),
        "{text}"
    );
    let stats: serde_json::Value = serde_json::from_str(&testbed::testdata(
        "colibri/quirk-conference-sizes-object-jicofo.json",
    ))
    .unwrap();
    // Jicofo's histogram summary: its ranges become the label, its percentiles are not counts.
    let buckets = stats["conference_sizes"]["buckets"].as_object().unwrap();
    for (range, count) in buckets.iter().filter(|(range, _)| range.contains("_to_")) {
        assert_eq!(
            m[&format!("jitsi_conference_sizes{{conference_size=\"{range}\"}}")],
            count.as_f64().unwrap(),
            "{range}"
        );
    }
    assert!(!text.contains("p99_upper_bound"));
    assert_eq!(m["jitsi_conferences_created_total"], 3.0);
}

async fn assert_down(daemon: &Daemon, source: &str, reason: &str) -> String {
    let text = scrape(daemon).await;
    assert_lint_clean(&text);
    let m = samples(&text);
    assert_eq!(m["jitsi_up"], 0.0, "{text}");
    let key = format!("jitsi_exporter_scrape_errors_total{{source=\"{source}\",reason=\"{reason}\"}}");
    assert!(m.get(&key).is_some_and(|v| *v >= 1.0), "{key}\n{text}");
    assert!(!m.contains_key("jitsi_conferences"), "no stale values:\n{text}");
    text
}

#[tokio::test]
async fn a_bridge_with_its_rest_api_disabled_answers_html_404() {
    let bridge = BridgeStub::start(StubConfig {
        rest_enabled: false,
        ..StubConfig::default()
    })
    .await;
    let daemon = exporter(&bridge.url(), &[]).await;
    assert_down(&daemon, "colibri", "http_status").await;
}

#[tokio::test]
async fn invalid_json_and_no_stale_values_after_a_good_scrape() {
    let bridge = BridgeStub::start(StubConfig::default()).await;
    let daemon = exporter(&bridge.url(), &[]).await;
    assert_eq!(samples(&scrape(&daemon).await)["jitsi_conferences"], 0.0);
    bridge.set_stats_raw("{\"conferences\": 1, \"participants\": ");
    assert_down(&daemon, "colibri", "not_json").await;
    bridge.set_stats_raw("[1, 2, 3]");
    assert_down(&daemon, "colibri", "not_an_object").await;
}

#[tokio::test]
async fn a_slow_bridge_gives_up_0_within_the_timeout() {
    let bridge = BridgeStub::start(StubConfig {
        delay: Duration::from_secs(5),
        ..StubConfig::default()
    })
    .await;
    let daemon = exporter(&bridge.url(), &["--timeout=500ms"]).await;
    let started = Instant::now();
    assert_down(&daemon, "colibri", "timeout").await;
    let took = started.elapsed();
    println!("slow bridge: answered jitsi_up 0 after {took:?}");
    assert!(
        took < Duration::from_millis(600),
        "within timeout + 100 ms, took {took:?}"
    );
}

#[tokio::test]
async fn a_dead_bridge_gives_up_0() {
    let closed = format!("127.0.0.1:{}", testbed::free_tcp_port().unwrap());
    let daemon = exporter(&format!("http://{closed}"), &[]).await;
    assert_down(&daemon, "colibri", "connect").await;
    let health = reqwest::get(format!("http://{}/livez", daemon.admin))
        .await
        .unwrap();
    assert_eq!(
        health.status(),
        200,
        "a dead upstream never makes the exporter unhealthy"
    );
}

#[tokio::test]
async fn concurrent_scrapes_share_one_upstream_request() {
    let bridge = BridgeStub::start(StubConfig {
        delay: Duration::from_millis(300),
        ..StubConfig::default()
    })
    .await;
    let daemon = exporter(&bridge.url(), &[]).await;
    let scrapes: Vec<_> = (0..20).map(|_| scrape(&daemon)).collect();
    let bodies = futures::future::join_all(scrapes).await;
    assert!(bodies.iter().all(|b| samples(b)["jitsi_up"] == 1.0));
    assert_eq!(
        bridge.requests("GET /colibri/stats"),
        1,
        "20 concurrent scrapes, 1 upstream request"
    );
}

/// The native endpoint failing says nothing about the colibri stats: `jitsi_up` stays 1, and the
/// failure shows in `jitsi_native_up` (which its own alert reads).
#[tokio::test]
async fn a_failing_native_endpoint_is_its_own_up_metric() {
    let bridge = BridgeStub::start(StubConfig::default()).await;
    let daemon = exporter(&bridge.url(), &["--source=both"]).await;
    bridge.inject("/metrics", [Fault::Status(500)]);
    let text = scrape(&daemon).await;
    assert_lint_clean(&text);
    let m = samples(&text);
    assert_eq!(m["jitsi_up"], 1.0, "{text}");
    assert_eq!(m["jitsi_native_up"], 0.0, "{text}");
    assert_eq!(
        m["jitsi_exporter_scrape_errors_total{source=\"native\",reason=\"http_status\"}"],
        1.0
    );
    let again = samples(&scrape(&daemon).await);
    assert_eq!((again["jitsi_up"], again["jitsi_native_up"]), (1.0, 1.0));
}

/// Lines the bridge's native endpoint gets wrong are left out and counted; the rest is served.
#[tokio::test]
async fn bad_native_lines_are_skipped_and_counted() {
    let native = format!(
        "{}jitsi_jvb_broken{{a=\"unterminated}} 1\nnot a metric\n",
        testbed::bridge_stub::NATIVE_METRICS
    );
    let upstream = testbed::replay_server::start(vec![
        (
            "/colibri/stats",
            "application/json",
            testbed::testdata("colibri/2026-jvb-2.3.63-relay.json").into_bytes(),
        ),
        ("/metrics", "text/plain; version=0.0.4", native.into_bytes()),
    ])
    .unwrap();
    let daemon = exporter(&format!("http://127.0.0.1:{upstream}"), &["--source=both"]).await;
    let text = scrape(&daemon).await;
    assert_lint_clean(&text);
    let m = samples(&text);
    assert_eq!(m["jitsi_native_up"], 1.0);
    assert_eq!(m["jitsi_jvb_stress"], 0.05);
    assert_eq!(
        m["jitsi_exporter_skipped_total{reason=\"native_bad_line\"}"], 2.0,
        "{text}"
    );
}

/// 5 000 fields nobody knows: the output stays valid, and bounded.
#[tokio::test]
async fn five_thousand_unknown_fields_give_valid_capped_output() {
    let bridge = BridgeStub::start(StubConfig::default()).await;
    let mut stats: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&testbed::testdata("colibri/2026-jvb-2.3.63-relay.json")).unwrap();
    for i in 0..5000 {
        stats.insert(format!("invented_field_{i}"), i.into());
    }
    bridge.set_stats_raw(&serde_json::Value::Object(stats).to_string());
    let daemon = exporter(&bridge.url(), &[]).await;
    let text = scrape(&daemon).await;
    assert_lint_clean(&text);
    let m = samples(&text);
    let invented = m
        .keys()
        .filter(|name| name.starts_with("jitsi_invented_field_"))
        .count();
    println!(
        "{invented} of 5 000 unknown fields exported, {} lines in all",
        text.lines().count()
    );
    assert_eq!(invented, 200);
    assert_eq!(
        m["jitsi_exporter_skipped_total{reason=\"too_many_fields\"}"],
        4800.0
    );
    assert_eq!(m["jitsi_up"], 1.0);
    assert!(
        m.contains_key("jitsi_conferences"),
        "known fields are never the ones left out"
    );
}

/// An upstream that sends 100 MiB: the sidecar reads no more than its limit, stays small, and answers
/// `jitsi_up 0` (reason `too_large`) within its timeout.
#[tokio::test]
async fn a_100_mib_body_gives_up_0_and_costs_no_memory() {
    for with_length in [true, false] {
        let upstream = huge_body_server(100 << 20, with_length).await;
        let daemon = exporter(&format!("http://{upstream}"), &["--timeout=3s"]).await;
        let started = Instant::now();
        let text = scrape(&daemon).await;
        let took = started.elapsed();
        let m = samples(&text);
        let memory = testbed::measure::usage(daemon.pid()).unwrap();
        println!(
            "Content-Length {with_length}: answered in {took:?}, peak RSS {:.1} MiB",
            memory.peak_rss_mib
        );
        assert_eq!(m["jitsi_up"], 0.0);
        assert_eq!(
            m["jitsi_exporter_scrape_errors_total{source=\"colibri\",reason=\"too_large\"}"], 1.0,
            "{text}"
        );
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert!(memory.peak_rss_mib < 32.0, "{memory:?}");
    }
}

/// Serves `size` bytes of JSON-looking garbage on any request, with or without a Content-Length.
async fn huge_body_server(size: usize, with_length: bool) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let header = if with_length {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
                    )
                } else {
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
                        .to_owned()
                };
                if stream.write_all(header.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'7'; 64 * 1024];
                let mut sent = 0;
                while sent < size {
                    if stream.write_all(&chunk).await.is_err() {
                        return;
                    }
                    sent += chunk.len();
                }
            });
        }
    });
    addr
}

/// A thousand connections opened and held without a word: a scrape still gets in, at once, and the
/// sidecar's memory stays bounded.
#[tokio::test]
async fn a_thousand_idle_connections_do_not_keep_a_scrape_out() {
    let bridge = BridgeStub::start(StubConfig::default()).await;
    let daemon = exporter(&bridge.url(), &[]).await;
    let addr = daemon.admin;
    let held = tokio::task::spawn_blocking(move || {
        (0..1000)
            .filter_map(|_| std::net::TcpStream::connect(addr).ok())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(held.len() >= 990, "{} connections held", held.len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let text = scrape(&daemon).await;
    let took = started.elapsed();
    let memory = testbed::measure::usage(daemon.pid()).unwrap();
    println!(
        "with {} idle connections held: a scrape answered in {took:?}; peak RSS {:.1} MiB",
        held.len(),
        memory.peak_rss_mib
    );
    assert_eq!(samples(&text)["jitsi_up"], 1.0);
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(memory.peak_rss_mib < 32.0, "{memory:?}");
    drop(held);
}

#[tokio::test]
async fn native_metrics_pass_through_with_the_accept_header() {
    let bridge = BridgeStub::start(StubConfig::default()).await;
    let daemon = exporter(&bridge.url(), &["--source=both"]).await;
    let text = scrape(&daemon).await;
    assert_lint_clean(&text);
    let m = samples(&text);
    assert_eq!(m["jitsi_up"], 1.0, "{text}");
    assert_eq!(m["jitsi_jvb_stress"], 0.05);
    assert_eq!(m["jitsi_jvb_conferences_by_size_bucket{le=\"3.0\"}"], 1.0);
    assert!(
        m.contains_key("jitsi_conferences_created_total"),
        "colibri stats too"
    );
    assert!(!text.contains("jvm_threads_current"), "only jitsi_jvb_* families");
    assert!(
        text.contains(testbed::bridge_stub::NATIVE_METRICS.lines().next().unwrap()),
        "unchanged"
    );
    assert_eq!(m["jitsi_native_up"], 1.0);
    assert_eq!(bridge.requests("GET /metrics"), 1);
}

#[tokio::test]
async fn legacy_names_can_be_turned_off() {
    let bridge = BridgeStub::start(StubConfig::default()).await;
    let daemon = exporter(&bridge.url(), &["--legacy-names=false"]).await;
    let text = scrape(&daemon).await;
    assert!(text.contains("jitsi_conferences_created_total "));
    assert!(!text.contains("jitsi_total_conferences_created "), "{text}");
}

/// The bridge is a sidecar on localhost over plain HTTP: anything else is refused at start with one
/// sentence and exit code 2, never a running exporter that reports the bridge down.
#[test]
fn a_bridge_url_that_is_not_plain_http_is_refused_at_start() {
    for url in ["https://localhost:8080", "localhost:8080", "http://"] {
        let output = std::process::Command::new(testbed::daemon::binary("jvb-exporter"))
            .args([&format!("--jvb-url={url}"), "--listen=127.0.0.1:0"])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{url}");
        let said = String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
        assert!(
            said.contains("--jvb-url") && said.contains("not a plain http:// URL"),
            "{url}: {said}"
        );
    }
}
