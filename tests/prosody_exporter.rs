//! prosody-exporter in front of a real Prosody with real XMPP clients in its rooms, and in front of the
//! recorded outputs in `testdata/prosody/`. Every response is checked with `promtool`.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::routing::get;
use testbed::daemon::Daemon;
use testbed::prosody::{Occupants, Prosody, ProsodyOptions};
use testbed::{eventually, promtool};

async fn exporter(prosody_url: &str) -> Daemon {
    let args = vec![format!("--prosody-url={prosody_url}"), "--timeout=2s".to_owned()];
    let mut daemon = Daemon::start_with_addr_flag("prosody-exporter", &args, &[], "--listen");
    daemon.ready().await;
    daemon
}

/// `name{labels}` → value, after checking the whole response with promtool.
async fn scrape(daemon: &Daemon) -> BTreeMap<String, f64> {
    let response = reqwest::get(format!("http://{}/metrics", daemon.admin))
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "always 200, whatever Prosody does");
    let text = response.text().await.unwrap();
    if let Err(problems) = promtool::check_metrics(&text) {
        panic!("promtool check metrics:\n{problems}\n--- output ---\n{text}");
    }
    promtool::samples(&text)
}

const CONNECTIONS: &str = "prosody_mod_c2s__connections{host=\"meet.test\",type=\"c2s\",ip_family=\"ipv4\"}";
const LIVE_ROOMS: &str = "prosody_mod_muc__live_room{host=\"conference.meet.test\"}";

fn census(m: &BTreeMap<String, f64>) -> (f64, f64, f64, f64) {
    (
        m["jitsi_prosody_rooms"],
        m["jitsi_prosody_participants"],
        m["jitsi_prosody_largest_room"],
        m["jitsi_prosody_leaked_rooms"],
    )
}

#[tokio::test]
async fn real_rooms_of_1_2_and_5_occupants_and_their_leaving() {
    let prosody = Prosody::start(ProsodyOptions::default());
    // What ships: the jitsi/prosody image runs Prosody 13.
    assert!(
        prosody.version().starts_with("13."),
        "Prosody {}",
        prosody.version()
    );
    let daemon = exporter(&prosody.url()).await;
    let empty = scrape(&daemon).await;
    assert_eq!(
        (empty["prosody_up"], empty["jitsi_prosody_census_up"]),
        (1.0, 1.0)
    );
    assert_eq!(census(&empty), (0.0, 0.0, 0.0, 0.0));

    // Joining and leaving block this thread; the exporter and Prosody are other processes, so that is fine.
    let mut occupants = Occupants::join(&prosody, &[("alpha", 1), ("beta", 2), ("gamma", 5)]);
    let m = scrape(&daemon).await;
    assert_eq!(census(&m), (3.0, 8.0, 5.0, 0.0));
    for (bucket, rooms) in [
        ("1", 1.0),
        ("2", 2.0),
        ("3", 2.0),
        ("4", 2.0),
        ("5", 3.0),
        ("100", 3.0),
        ("+Inf", 3.0),
    ] {
        assert_eq!(
            m[&format!("jitsi_prosody_room_participants_bucket{{le=\"{bucket}\"}}")],
            rooms,
            "le={bucket}"
        );
    }
    assert_eq!(m["jitsi_prosody_room_participants_sum"], 8.0);
    assert_eq!(m["jitsi_prosody_room_participants_count"], 3.0);
    assert_eq!(m[CONNECTIONS], 8.0, "Prosody's own statistics, re-exposed");
    assert_eq!(m[LIVE_ROOMS], 3.0);

    // The five leave: the numbers drop.
    occupants.leave("gamma");
    let after = eventually("gamma gone from the census", Duration::from_secs(10), || async {
        let m = scrape(&daemon).await;
        (m["jitsi_prosody_rooms"] == 2.0).then_some(m)
    })
    .await;
    assert_eq!(census(&after), (2.0, 3.0, 2.0, 0.0));
    assert_eq!(after["jitsi_prosody_room_participants_bucket{le=\"5\"}"], 2.0);
    assert_eq!(after[CONNECTIONS], 3.0);

    // Everybody leaves.
    drop(occupants);
    let gone = eventually("all rooms gone", Duration::from_secs(10), || async {
        let m = scrape(&daemon).await;
        (m["jitsi_prosody_rooms"] == 0.0).then_some(m)
    })
    .await;
    assert_eq!(census(&gone), (0.0, 0.0, 0.0, 0.0));
    drop(prosody);
}

#[tokio::test]
async fn metrics_refused_by_the_allow_list_give_prosody_up_0() {
    let prosody = Prosody::start(ProsodyOptions {
        openmetrics_allow_ips: Some(vec!["192.0.2.1".into()]),
        ..ProsodyOptions::default()
    });
    let direct = reqwest::get(format!("{}/metrics", prosody.url())).await.unwrap();
    assert_eq!(direct.status(), 403, "Prosody itself refuses this address");
    let daemon = exporter(&prosody.url()).await;
    let m = scrape(&daemon).await;
    assert_eq!(m["prosody_up"], 0.0);
    assert_eq!(
        m["prosody_exporter_scrape_errors_total{source=\"prosody\",reason=\"forbidden\"}"],
        1.0
    );
    assert_eq!(
        m["jitsi_prosody_census_up"], 1.0,
        "the census is a separate source"
    );
    assert!(!m.contains_key(CONNECTIONS));
}

#[tokio::test]
async fn statistics_turned_off_answer_404() {
    let prosody = Prosody::start(ProsodyOptions {
        statistics: false,
        ..ProsodyOptions::default()
    });
    let daemon = exporter(&prosody.url()).await;
    let m = scrape(&daemon).await;
    assert_eq!(m["prosody_up"], 0.0);
    assert_eq!(
        m["prosody_exporter_scrape_errors_total{source=\"prosody\",reason=\"not_found\"}"],
        1.0
    );
}

#[tokio::test]
async fn prosody_stopped_gives_up_0_and_no_stale_values() {
    let mut prosody = Prosody::start(ProsodyOptions::default());
    let daemon = exporter(&prosody.url()).await;
    let before = scrape(&daemon).await;
    let from_prosody = |m: &BTreeMap<String, f64>| m.keys().filter(|k| k.starts_with("prosody_mod_")).count();
    assert!(from_prosody(&before) > 0, "Prosody's statistics while it runs");
    prosody.stop();
    let m = scrape(&daemon).await;
    assert_eq!((m["prosody_up"], m["jitsi_prosody_census_up"]), (0.0, 0.0));
    assert_eq!(
        m["prosody_exporter_scrape_errors_total{source=\"prosody\",reason=\"connect\"}"],
        1.0
    );
    assert_eq!(from_prosody(&m), 0, "no stale values from Prosody");
    assert!(!m.contains_key("jitsi_prosody_rooms"), "no stale census");
    let live = reqwest::get(format!("http://{}/livez", daemon.admin))
        .await
        .unwrap();
    assert_eq!(
        live.status(),
        200,
        "Prosody down never makes the exporter unhealthy"
    );
}

/// Serves a recorded `/metrics` body and the recorded census, as Prosody would; returns its address.
async fn recorded_prosody(openmetrics_file: &str) -> std::net::SocketAddr {
    let openmetrics = testbed::testdata(openmetrics_file);
    let census_body = testbed::testdata("prosody/room-census-2022.json");
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = openmetrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=0.0.4",
                        )],
                        body,
                    )
                }
            }),
        )
        .route(
            "/room-census",
            get(move || {
                let body = census_body.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], body) }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// What both recorded versions share once re-encoded: valid text (checked in `scrape`), the census, no
/// OpenMetrics-only samples, nothing skipped.
fn assert_recorded(m: &BTreeMap<String, f64>) {
    assert_eq!((m["prosody_up"], m["jitsi_prosody_census_up"]), (1.0, 1.0));
    assert_eq!(
        census(m),
        (1.0, 0.0, 0.0, 0.0),
        "one room with 0 participants, no leaked key"
    );
    assert_eq!(m[LIVE_ROOMS], 0.0);
    assert!(
        !m.keys().any(|k| k.ends_with("_created")),
        "_created samples are OpenMetrics-only"
    );
    assert_eq!(m["prosody_exporter_skipped_lines_total"], 0.0);
}

#[tokio::test]
async fn the_recorded_prosody_13_output() {
    let addr = recorded_prosody("prosody/prosody-13.0.1-openmetrics.txt").await;
    let daemon = exporter(&format!("http://{addr}")).await;
    let m = scrape(&daemon).await;
    assert_recorded(&m);
    assert_eq!(
        m["prosody_mod_s2s__accepted_tcp_total"], 0.0,
        "counters keep their _total samples"
    );
}

#[tokio::test]
async fn the_recorded_prosody_0_12_output() {
    let addr = recorded_prosody("prosody/prosody-0.12.3-openmetrics-idle.txt").await;
    let daemon = exporter(&format!("http://{addr}")).await;
    let m = scrape(&daemon).await;
    assert_recorded(&m);
    assert_eq!(m[CONNECTIONS], 0.0);
    assert_eq!(
        m["prosody_mod_bosh__new_sid_total"], 0.0,
        "OpenMetrics counters keep their _total samples"
    );
}

/// Prosody's one thread is also the shard's signalling: fifty scrapes at once must reach it as one.
#[tokio::test]
async fn fifty_concurrent_scrapes_make_one_upstream_request() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let openmetrics = testbed::testdata("prosody/prosody-13.0.1-openmetrics.txt");
    let census_body = testbed::testdata("prosody/room-census-2022.json");
    let (metrics_requests, census_requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (m, c) = (Arc::clone(&metrics_requests), Arc::clone(&census_requests));
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                m.fetch_add(1, Ordering::SeqCst);
                let body = openmetrics.clone();
                async move {
                    // A Prosody busy with signalling: slow enough for every scrape to overlap.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=0.0.4",
                        )],
                        body,
                    )
                }
            }),
        )
        .route(
            "/room-census",
            get(move || {
                c.fetch_add(1, Ordering::SeqCst);
                let body = census_body.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    ([(header::CONTENT_TYPE, "application/json")], body)
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let daemon = exporter(&format!("http://{addr}")).await;
    let scrapes: Vec<_> = (0..50).map(|_| scrape(&daemon)).collect();
    let results = futures::future::join_all(scrapes).await;
    assert!(
        results
            .iter()
            .all(|m| m["prosody_up"] == 1.0 && m["jitsi_prosody_census_up"] == 1.0)
    );
    assert_eq!(
        metrics_requests.load(Ordering::SeqCst),
        1,
        "50 scrapes, one /metrics request"
    );
    assert_eq!(
        census_requests.load(Ordering::SeqCst),
        1,
        "and one /room-census request"
    );
}
