//! Soak: 100 000 scrapes of each sidecar while its upstream flaps between recorded outputs, errors,
//! garbage, slowness and timeouts. Every response must be valid and tell the truth (`up` 1 or 0 as the
//! upstream was), memory must stay flat after warm-up (less than 10 % growth) and no file descriptor may
//! leak. The figures are printed as a table.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use testbed::bridge_stub::{BridgeStub, StubConfig};
use testbed::daemon::Daemon;
use testbed::fault_proxy::{Fault, FaultProxy};
use testbed::promtool;
use testbed::prosody::{Occupants, Prosody, ProsodyOptions};

const SCRAPES: usize = 100_000;
const CYCLE: usize = 10_000;
const CONCURRENCY: usize = 8;
/// The exporters' upstream timeout in this test; the slow phases sit on either side of it.
const TIMEOUT: &str = "100ms";

/// A stretch of scrapes with the upstream in one state, and the `up` every response must report.
struct Phase {
    what: &'static str,
    scrapes: usize,
    up: f64,
}

/// Resident memory (KiB) and open descriptors of a process.
fn usage(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    (rss, fds)
}

/// Scrapes `url` `count` times, `CONCURRENCY` at once, checking every response; returns the slowest.
async fn scrape_phase(
    client: &reqwest::Client,
    url: &str,
    up_metric: &str,
    phase: &Phase,
    checked: &AtomicUsize,
) -> Duration {
    let slowest = std::sync::Mutex::new(Duration::ZERO);
    futures::stream::iter(0..phase.scrapes)
        .for_each_concurrent(CONCURRENCY, |_| async {
            let started = Instant::now();
            let response = client.get(url).send().await.unwrap();
            assert_eq!(response.status(), 200, "{}: always 200", phase.what);
            let text = response.text().await.unwrap();
            let samples = promtool::samples(&text);
            assert_eq!(
                samples.get(up_metric),
                Some(&phase.up),
                "{}: {up_metric} must be {} — response:\n{text}",
                phase.what,
                phase.up
            );
            // promtool on a sample of the responses (it takes milliseconds each).
            if checked.fetch_add(1, Ordering::Relaxed).is_multiple_of(5000)
                && let Err(problems) = promtool::check_metrics(&text)
            {
                panic!("{}: promtool check metrics:\n{problems}\n{text}", phase.what);
            }
            let took = started.elapsed();
            let mut slowest = slowest.lock().unwrap();
            *slowest = (*slowest).max(took);
        })
        .await;
    slowest.into_inner().unwrap()
}

struct Report {
    exporter: &'static str,
    rss_after_warmup: u64,
    rss_end: u64,
    fds_after_warmup: usize,
    fds_end: usize,
    took: Duration,
    slowest: Duration,
}

impl Report {
    fn print_and_check(&self) {
        println!(
            "| exporter | scrapes | RSS after warm-up | RSS at end | growth | fds after warm-up | fds at end | wall time | slowest scrape |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        let growth = (self.rss_end as f64 / self.rss_after_warmup as f64 - 1.0) * 100.0;
        println!(
            "| {} | {SCRAPES} | {} KiB | {} KiB | {growth:+.1} % | {} | {} | {:.1?} | {:.0?} |",
            self.exporter,
            self.rss_after_warmup,
            self.rss_end,
            self.fds_after_warmup,
            self.fds_end,
            self.took,
            self.slowest
        );
        assert!(
            growth < 10.0,
            "{}: memory grew {growth:.1} % after warm-up",
            self.exporter
        );
        assert!(
            self.fds_end <= self.fds_after_warmup + 4,
            "{}: descriptors {} → {}",
            self.exporter,
            self.fds_after_warmup,
            self.fds_end
        );
    }
}

fn client() -> reqwest::Client {
    // A new connection per scrape, as Prometheus's many targets look to the exporter; and idle
    // keep-alive connections cannot blur the descriptor count.
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jvb_exporter_stays_flat_through_100_000_scrapes_of_a_flapping_bridge() {
    let bridge = BridgeStub::start(StubConfig::default()).await;
    let env = [
        ("JVB_URL", bridge.url()),
        ("SOURCE", "both".to_owned()),
        ("TIMEOUT", TIMEOUT.to_owned()),
    ];
    let mut exporter = Daemon::start_with_addr_flag("jvb-exporter", &[], &env, "--listen");
    exporter.ready().await;
    let url = format!("http://{}/metrics", exporter.admin);
    let client = client();
    let checked = AtomicUsize::new(0);
    let phases = [
        ("2026 bridge", 2000, 1.0),
        ("invalid JSON", 500, 0.0),
        ("2020 bridge", 2000, 1.0),
        ("REST API off: HTML 404", 500, 0.0),
        ("slower than the timeout", 100, 0.0),
        ("conference_sizes as an object", 2000, 1.0),
        ("slow but within the timeout", 400, 1.0),
        ("2021 bridge, floats", 2500, 1.0),
    ];
    assert_eq!(phases.iter().map(|p| p.1).sum::<usize>(), CYCLE);
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut after_warmup = None;
    for cycle in 0..SCRAPES / CYCLE {
        for (what, scrapes, up) in phases {
            bridge.set_delay(Duration::ZERO);
            bridge.set_rest_enabled(true);
            match what {
                "2026 bridge" => bridge.set_stats_fixture("2026-jvb-2.3.63-relay.json"),
                "invalid JSON" => bridge.set_stats_raw("{\"conferences\": 3, \"participants\": [tr"),
                "2020 bridge" => bridge.set_stats_fixture("2020-jvb-2.1.169-idle.json"),
                "REST API off: HTML 404" => bridge.set_rest_enabled(false),
                "slower than the timeout" => bridge.set_delay(Duration::from_millis(150)),
                "conference_sizes as an object" => {
                    bridge.set_stats_fixture("quirk-conference-sizes-object-jicofo.json")
                }
                "slow but within the timeout" => bridge.set_delay(Duration::from_millis(20)),
                _ => bridge.set_stats_fixture("2021-jvb-2.1.508-idle-floats.json"),
            }
            let phase = Phase { what, scrapes, up };
            slowest = slowest.max(scrape_phase(&client, &url, "jitsi_up", &phase, &checked).await);
        }
        if cycle == 0 {
            after_warmup = Some(usage(exporter.pid()));
        }
    }
    let (rss_after_warmup, fds_after_warmup) = after_warmup.unwrap();
    let (rss_end, fds_end) = usage(exporter.pid());
    assert!(exporter.is_running());
    Report {
        exporter: "jvb-exporter",
        rss_after_warmup,
        rss_end,
        fds_after_warmup,
        fds_end,
        took: started.elapsed(),
        slowest,
    }
    .print_and_check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_exporter_stays_flat_through_100_000_scrapes_of_a_flapping_prosody() {
    let prosody = Prosody::start(ProsodyOptions::default());
    let mut occupants = Occupants::join(&prosody, &[("soak-a", 3), ("soak-b", 1)]);
    let proxy = FaultProxy::start(&prosody.url()).await;
    let args = vec![
        format!("--prosody-url={}", proxy.url()),
        format!("--timeout={TIMEOUT}"),
    ];
    let mut exporter = Daemon::start_with_addr_flag("prosody-exporter", &args, &[], "--listen");
    exporter.ready().await;
    let url = format!("http://{}/metrics", exporter.admin);
    let client = client();
    let checked = AtomicUsize::new(0);
    let phases = [
        ("Prosody as it is", 3000, 1.0),
        ("500 from the upstream", 500, 0.0),
        ("Prosody, slow but within the timeout", 400, 1.0),
        ("garbage", 500, 0.0),
        ("slower than the timeout", 100, 0.0),
        ("Prosody as it is, later", 5500, 1.0),
    ];
    assert_eq!(phases.iter().map(|p| p.1).sum::<usize>(), CYCLE);
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut after_warmup = None;
    for cycle in 0..SCRAPES / CYCLE {
        for (what, scrapes, up) in phases {
            proxy.set(match what {
                "500 from the upstream" => Fault::ServerError,
                "garbage" => Fault::Garbage,
                "slower than the timeout" => Fault::Delay(Duration::from_millis(150)),
                "Prosody, slow but within the timeout" => Fault::Delay(Duration::from_millis(20)),
                _ => Fault::None,
            });
            let phase = Phase { what, scrapes, up };
            slowest = slowest.max(scrape_phase(&client, &url, "prosody_up", &phase, &checked).await);
        }
        // The rooms change under the census while the soak runs.
        if cycle == 4 {
            occupants.leave("soak-b");
        }
        if cycle == 0 {
            after_warmup = Some(usage(exporter.pid()));
        }
    }
    let (rss_after_warmup, fds_after_warmup) = after_warmup.unwrap();
    let (rss_end, fds_end) = usage(exporter.pid());
    assert!(exporter.is_running());
    Report {
        exporter: "prosody-exporter",
        rss_after_warmup,
        rss_end,
        fds_after_warmup,
        fds_end,
        took: started.elapsed(),
        slowest,
    }
    .print_and_check();
}
