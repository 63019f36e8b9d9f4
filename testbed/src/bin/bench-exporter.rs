//! The exporter benchmarks (`cargo xtask bench exporter` / `prosody-exporter` build everything and run
//! this): each exporter against a keep-alive server replaying recorded outputs from `testdata/`, scraped
//! by `wrk -t1 -c1`. Measures CPU time per scrape (from /proc), p50/p99 latency (wrk) and peak RSS.
//! Prints the report as markdown on stdout; progress goes to stderr.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use testbed::measure::{WrkRun, machine_line, usage, wrk};
use testbed::{daemon, free_tcp_port, replay_server, testdata};

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// jvb-exporter, and the Go exporter operators run today when its binary is given.
    Jvb {
        /// How long wrk scrapes each exporter.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// The built Go exporter (github.com/systemli/prometheus-jitsi-meet-exporter).
        #[arg(long)]
        go_exporter: Option<PathBuf>,
        /// Why the Go exporter could not be built, for the report.
        #[arg(long)]
        go_exporter_missing: Option<String>,
    },
    /// What prosody-exporter adds over fetching Prosody's /metrics directly, with a 1 000-room census.
    Prosody {
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
}

const STATS: &str = "colibri/2026-jvb-2.3.63-relay.json";
const PROSODY_METRICS: &str = "prosody/prosody-13.0.1-openmetrics.txt";

fn main() -> ExitCode {
    let result = match Cli::parse().bench {
        Bench::Jvb {
            seconds,
            go_exporter,
            go_exporter_missing,
        } => jvb(
            Duration::from_secs(seconds),
            go_exporter.as_deref(),
            go_exporter_missing.as_deref(),
        ),
        Bench::Prosody { seconds } => prosody(Duration::from_secs(seconds)),
    };
    match result {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("bench-exporter: {error}");
            ExitCode::FAILURE
        }
    }
}

/// One exporter's figures.
#[derive(Debug)]
struct Figures {
    wrk: WrkRun,
    cpu_seconds: f64,
    peak_rss_mib: f64,
}

impl Figures {
    fn cpu_per_scrape_us(&self) -> f64 {
        self.cpu_seconds / self.wrk.requests.max(1) as f64 * 1e6
    }
}

/// The recorded `/colibri/stats` of each bridge era in the test data: the exporters are compared on each.
const ERAS: [(&str, &str); 4] = [
    ("2020, JVB 2.1.169, idle", "colibri/2020-jvb-2.1.169-idle.json"),
    (
        "2021, JVB 2.1.508, active",
        "colibri/2021-jvb-2.1.508-active.json",
    ),
    (
        "2021, JVB 2.1.508, idle (floats)",
        "colibri/2021-jvb-2.1.508-idle-floats.json",
    ),
    ("2026, JVB 2.3.63, relay", STATS),
];

fn jvb(duration: Duration, go: Option<&Path>, go_missing: Option<&str>) -> Result<String, String> {
    let mut text = format!(
        "# jvb-exporter benchmark\n\nMachine: {}.\n\
         For each recorded bridge era in `testdata/colibri/`: a keep-alive HTTP server replays its \
         `/colibri/stats`; each exporter is scraped with `wrk -t1 -c1 -d{}s --latency` on `/metrics`, one \
         after the other, in the same run. Ours is the release build as the image builds it \
         (`cargo build --release -p jvb-exporter`), the Go exporter built with `CGO_ENABLED=0 go build`.\n\n\
         | stats era | measure | ours | Go exporter | ours / Go |\n|---|---|---|---|---|\n",
        machine_line(),
        duration.as_secs()
    );
    for (era, fixture) in ERAS {
        let upstream = replay_server::start(vec![("/", "application/json", testdata(fixture).into_bytes())])
            .map_err(|e| format!("starting the upstream: {e}"))?;
        eprintln!("==> {era}: upstream replaying testdata/{fixture} on 127.0.0.1:{upstream}");
        let port = free_port()?;
        let ours = measure(
            "jvb-exporter (ours)",
            &daemon::binary("jvb-exporter"),
            &[
                format!("--jvb-url=http://127.0.0.1:{upstream}"),
                format!("--listen=127.0.0.1:{port}"),
            ],
            port,
            duration,
        )?;
        let theirs = match go {
            Some(binary) => {
                let port = free_port()?;
                Some(measure(
                    "prometheus-jitsi-meet-exporter (Go)",
                    binary,
                    &[
                        format!("-videobridge-url=http://127.0.0.1:{upstream}/colibri/stats"),
                        format!("-web.listen-address=127.0.0.1:{port}"),
                    ],
                    port,
                    duration,
                )?)
            }
            None => None,
        };
        let row = |label: &str, ours: String, go: Option<String>, ratio: Option<f64>| {
            format!(
                "| {era} | {label} | {ours} | {} | {} |\n",
                go.unwrap_or_else(|| "not measured".into()),
                ratio.map_or_else(|| "–".into(), |r| format!("{r:.2}×"))
            )
        };
        let go = theirs.as_ref();
        text.push_str(&row(
            "CPU per scrape",
            format!("{:.0} µs", ours.cpu_per_scrape_us()),
            go.map(|g| format!("{:.0} µs", g.cpu_per_scrape_us())),
            go.map(|g| ours.cpu_per_scrape_us() / g.cpu_per_scrape_us()),
        ));
        text.push_str(&row(
            "scrape latency p50",
            format!("{:.3} ms", ours.wrk.p50_ms),
            go.map(|g| format!("{:.3} ms", g.wrk.p50_ms)),
            go.map(|g| ours.wrk.p50_ms / g.wrk.p50_ms),
        ));
        text.push_str(&row(
            "scrape latency p99",
            format!("{:.3} ms", ours.wrk.p99_ms),
            go.map(|g| format!("{:.3} ms", g.wrk.p99_ms)),
            go.map(|g| ours.wrk.p99_ms / g.wrk.p99_ms),
        ));
        text.push_str(&row(
            "peak RSS",
            format!("{:.1} MiB", ours.peak_rss_mib),
            go.map(|g| format!("{:.1} MiB", g.peak_rss_mib)),
            go.map(|g| ours.peak_rss_mib / g.peak_rss_mib),
        ));
        text.push_str(&row(
            "scrapes served",
            ours.wrk.requests.to_string(),
            go.map(|g| g.wrk.requests.to_string()),
            None,
        ));
    }
    if let Some(why) = go_missing {
        text.push_str(&format!(
            "\nThe Go exporter was not measured: it could not be built here:\n\n```\n{why}\n```\n"
        ));
    }
    Ok(text)
}

fn prosody(duration: Duration) -> Result<String, String> {
    let upstream = replay_server::start(vec![
        (
            "/metrics",
            "application/openmetrics-text; version=0.0.4",
            testdata(PROSODY_METRICS).into_bytes(),
        ),
        ("/room-census", "application/json", census_of(1000).into_bytes()),
    ])
    .map_err(|e| format!("starting the upstream: {e}"))?;
    eprintln!(
        "==> upstream replaying Prosody's recorded /metrics and a 1 000-room census on 127.0.0.1:{upstream}"
    );
    eprintln!(
        "==> Prosody's /metrics directly: {}s of wrk -t1 -c1",
        duration.as_secs()
    );
    let direct_url = format!("http://127.0.0.1:{upstream}/metrics");
    wrk(&direct_url, Duration::from_secs(2))?;
    let direct = wrk(&direct_url, duration)?;
    let port = free_port()?;
    let ours = measure(
        "prosody-exporter",
        &daemon::binary("prosody-exporter"),
        &[
            format!("--prosody-url=http://127.0.0.1:{upstream}"),
            format!("--listen=127.0.0.1:{port}"),
        ],
        port,
        duration,
    )?;
    Ok(format!(
        "# prosody-exporter benchmark\n\nMachine: {}.\n\
         Upstream: a keep-alive HTTP server replaying Prosody 13's recorded `/metrics` \
         (`testdata/{PROSODY_METRICS}`) and a census of 1 000 rooms in mod_muc_census's shape; load: \
         `wrk -t1 -c1 -d{}s --latency`.\n\n\
         | measure | Prosody's /metrics directly | through prosody-exporter | added |\n|---|---|---|---|\n\
         | latency p50 | {:.3} ms | {:.3} ms | {:.3} ms |\n\
         | latency p99 | {:.3} ms | {:.3} ms | {:.3} ms |\n\
         | sidecar CPU per scrape | – | {:.0} µs | |\n\
         | sidecar peak RSS | – | {:.1} MiB | |\n\
         | scrapes | {} | {} | |\n",
        machine_line(),
        duration.as_secs(),
        direct.p50_ms,
        ours.wrk.p50_ms,
        ours.wrk.p50_ms - direct.p50_ms,
        direct.p99_ms,
        ours.wrk.p99_ms,
        ours.wrk.p99_ms - direct.p99_ms,
        ours.cpu_per_scrape_us(),
        ours.peak_rss_mib,
        direct.requests,
        ours.wrk.requests,
    ))
}

fn free_port() -> Result<u16, String> {
    free_tcp_port().map_err(|e| format!("finding a free port: {e}"))
}

/// Starts `binary`, warms it up, and measures one wrk run against its `/metrics`.
fn measure(
    name: &str,
    binary: &Path,
    args: &[String],
    port: u16,
    duration: Duration,
) -> Result<Figures, String> {
    eprintln!("==> {name}: {}s of wrk -t1 -c1", duration.as_secs());
    let mut child = Command::new(binary)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", binary.display()))?;
    let url = format!("http://127.0.0.1:{port}/metrics");
    let result = (|| {
        wait_for_http(port, &mut child)?;
        wrk(&url, Duration::from_secs(2))?;
        let before = usage(child.id()).ok_or("the exporter is gone")?;
        let run = wrk(&url, duration)?;
        let after = usage(child.id()).ok_or("the exporter is gone")?;
        Ok(Figures {
            wrk: run,
            cpu_seconds: after.cpu_seconds - before.cpu_seconds,
            peak_rss_mib: after.peak_rss_mib,
        })
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn wait_for_http(port: u16, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the exporter exited before serving ({status})"));
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("nothing listened on port {port} within 10 s"))
}

/// A census of `rooms` rooms in mod_muc_census's JSON shape, sizes spread from 1 to 20.
fn census_of(rooms: usize) -> String {
    let entries: Vec<String> = (0..rooms)
        .map(|i| {
            format!(
                "{{\"room_name\":\"room-{i}@conference.meet.example\",\"participants\":{},\"created_time\":1795500000000,\"leaked\":{}}}",
                1 + (i * 7) % 20,
                i % 100 == 0
            )
        })
        .collect();
    format!("{{\"room_census\":[{}]}}", entries.join(","))
}
