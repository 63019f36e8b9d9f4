//! `cargo xtask bench exporter`: our jvb-exporter and the Go exporter operators run today, side by
//! side in the same run against the same upstream — a small keep-alive HTTP server replaying the real
//! recorded `2026-jvb-2.3.63-relay.json` — each scraped by wrk over one connection. Measures CPU time
//! per 10 000 scrapes (from /proc/<pid>/stat), p50/p99 latency (wrk), peak RSS (VmHWM), and the ratios.
//! Writes the table to `bench/results/exporter.md`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::gobuild;
use crate::packages;
use crate::paths::Paths;

#[derive(Debug, clap::Subcommand)]
pub enum Bench {
    /// jvb-exporter vs github.com/systemli/prometheus-jitsi-meet-exporter.
    Exporter {
        /// How long wrk scrapes each exporter, in seconds.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// service-per-pod with 24 StatefulSets × 100 pods on a fresh local cluster (about 12 minutes).
    Controller,
    /// What prosody-exporter adds over fetching Prosody's /metrics directly, with 1 000 rooms.
    ProsodyExporter {
        /// How long wrk scrapes each side, in seconds.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
}

const FIXTURE: &str = "colibri/2026-jvb-2.3.63-relay.json";

pub fn run(paths: &Paths, bench: Bench) -> Result<ExitCode> {
    match bench {
        Bench::Exporter { seconds } => exporter(paths, Duration::from_secs(seconds)),
        Bench::ProsodyExporter { seconds } => prosody_exporter(paths, Duration::from_secs(seconds)),
        Bench::Controller => crate::bench_controller::run(paths),
    }
}

/// One exporter's figures.
#[derive(Debug)]
struct Figures {
    requests: u64,
    cpu_seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    peak_rss_mib: f64,
}

impl Figures {
    fn cpu_per_10k(&self) -> f64 {
        self.cpu_seconds / self.requests.max(1) as f64 * 10_000.0
    }
}

fn exporter(paths: &Paths, duration: Duration) -> Result<ExitCode> {
    packages::ensure_commands(&[("wrk", "wrk")])?;
    let fixture = paths.repo.join("../shared/fixtures").join(FIXTURE);
    let body = std::fs::read(&fixture).with_context(|| format!("reading {}", fixture.display()))?;
    let upstream = serve_forever(vec![("/", "application/json", body)])?;
    println!("==> upstream replaying {FIXTURE} on 127.0.0.1:{upstream}");

    println!("==> building jvb-exporter (release)");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&paths.repo)
        .args(["build", "--release", "--locked", "--package", "jvb-exporter"])
        .status()?;
    if !status.success() {
        bail!("building jvb-exporter failed");
    }
    let ours_bin = paths.repo.join("target/release/jvb-exporter");
    let go_program = &gobuild::JITSI_MEET_EXPORTER;
    let go_bin = go_program
        .ensure_built(&paths.go_tools(), &paths.cache)
        .map(|dir| dir.join("prometheus-jitsi-meet-exporter"))
        // A failed build usually means the module cannot be downloaded: quote the proxy's own answer.
        .map_err(|build| match go_program.module_dir(&paths.go_tools()) {
            Err(download) => download.context(build.to_string()),
            Ok(_) => build,
        });

    let ours_port = free_port()?;
    let ours = measure(
        "jvb-exporter (ours)",
        &ours_bin,
        &[
            format!("--jvb-url=http://127.0.0.1:{upstream}"),
            format!("--listen=127.0.0.1:{ours_port}"),
        ],
        ours_port,
        duration,
    )?;

    let go = match &go_bin {
        Ok(bin) => {
            let port = free_port()?;
            Some(measure(
                "prometheus-jitsi-meet-exporter (Go)",
                bin,
                &[
                    format!("-videobridge-url=http://127.0.0.1:{upstream}/colibri/stats"),
                    format!("-web.listen-address=127.0.0.1:{port}"),
                ],
                port,
                duration,
            )?)
        }
        Err(error) => {
            println!("==> the Go exporter could not be built, so it is not measured: {error:#}");
            None
        }
    };

    let report = report(&ours, go.as_ref(), go_bin.as_ref().err(), duration)?;
    println!("\n{report}");
    let results = paths.repo.join("bench/results");
    std::fs::create_dir_all(&results)?;
    std::fs::write(results.join("exporter.md"), &report)?;
    println!("==> written to {}", results.join("exporter.md").display());
    Ok(ExitCode::SUCCESS)
}

fn measure(name: &str, binary: &Path, args: &[String], port: u16, duration: Duration) -> Result<Figures> {
    println!("==> {name}: {}s of wrk -t1 -c1", duration.as_secs());
    let mut child = Command::new(binary)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let result = (|| {
        wait_for_http(port, &mut child)?;
        // Warm up caches and connections before measuring.
        wrk(port, Duration::from_secs(2))?;
        let cpu_before = cpu_seconds(child.id())?;
        let out = wrk(port, duration)?;
        let cpu_after = cpu_seconds(child.id())?;
        Ok(Figures {
            requests: wrk_requests(&out)?,
            cpu_seconds: cpu_after - cpu_before,
            p50_ms: wrk_percentile(&out, "50%")?,
            p99_ms: wrk_percentile(&out, "99%")?,
            peak_rss_mib: peak_rss_mib(child.id())?,
        })
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn report(
    ours: &Figures,
    go: Option<&Figures>,
    go_error: Option<&anyhow::Error>,
    duration: Duration,
) -> Result<String> {
    let mut text = format!(
        "# jvb-exporter benchmark\n\nMachine: {}.\n\
         Upstream: a keep-alive HTTP server replaying `{FIXTURE}`; load: `wrk -t1 -c1 -d{}s --latency` on `/metrics`.\n\n",
        machine_line(),
        duration.as_secs()
    );
    let row = |label: &str, ours: String, go: Option<String>, ratio: Option<f64>| {
        format!(
            "| {label} | {ours} | {} | {} |\n",
            go.unwrap_or_else(|| "not measured".into()),
            ratio.map(|r| format!("{r:.2}×")).unwrap_or_else(|| "–".into())
        )
    };
    text.push_str("| measure | ours | Go exporter | ours / Go |\n|---|---|---|---|\n");
    text.push_str(&row(
        "CPU time per 10 000 scrapes",
        format!("{:.2} s", ours.cpu_per_10k()),
        go.map(|g| format!("{:.2} s", g.cpu_per_10k())),
        go.map(|g| ours.cpu_per_10k() / g.cpu_per_10k()),
    ));
    text.push_str(&row(
        "CPU per scrape",
        format!("{:.0} µs", ours.cpu_per_10k() * 100.0),
        go.map(|g| format!("{:.0} µs", g.cpu_per_10k() * 100.0)),
        None,
    ));
    text.push_str(&row(
        "scrape latency p50",
        format!("{:.3} ms", ours.p50_ms),
        go.map(|g| format!("{:.3} ms", g.p50_ms)),
        go.map(|g| ours.p50_ms / g.p50_ms),
    ));
    text.push_str(&row(
        "scrape latency p99",
        format!("{:.3} ms", ours.p99_ms),
        go.map(|g| format!("{:.3} ms", g.p99_ms)),
        go.map(|g| ours.p99_ms / g.p99_ms),
    ));
    text.push_str(&row(
        "peak RSS",
        format!("{:.1} MiB", ours.peak_rss_mib),
        go.map(|g| format!("{:.1} MiB", g.peak_rss_mib)),
        go.map(|g| ours.peak_rss_mib / g.peak_rss_mib),
    ));
    text.push_str(&row(
        "scrapes served",
        ours.requests.to_string(),
        go.map(|g| g.requests.to_string()),
        None,
    ));
    if let Some(error) = go_error {
        // Registries are named, not their addresses.
        let error = without_hosts(&format!("{error:#}"));
        text.push_str(&format!(
            "\nThe Go exporter was not measured: building it from the Go module proxy failed:\n\n```\n{error}\n```\n\n\
             For scale only (measured elsewhere, not in this run, so not comparable as a ratio): the issue reports \
             about 190 µs of CPU per scrape, p50 0.23 ms, p99 0.7–0.8 ms and 14.7 MB peak RSS for the Go exporter \
             under the same kind of load.\n"
        ));
    }
    Ok(text)
}

/// Registries are named, never their addresses: `https://<host>/path` becomes `<registry>/path`.
pub fn without_hosts(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("https://") {
        out.push_str(&rest[..start]);
        let after = &rest[start + "https://".len()..];
        let host_end = after.find('/').unwrap_or(after.len());
        out.push_str("<registry>");
        rest = &after[host_end..];
    }
    out.push_str(rest);
    out
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for_http(port: u16, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("the exporter exited before serving ({status})");
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listened on port {port} within 10 s")
}

fn wrk(port: u16, duration: Duration) -> Result<String> {
    wrk_path(port, "/metrics", duration)
}

fn wrk_path(port: u16, path: &str, duration: Duration) -> Result<String> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            "-c1",
            &format!("-d{}s", duration.as_secs()),
            "--latency",
            &format!("http://127.0.0.1:{port}{path}"),
        ])
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || text.contains("Non-2xx") {
        bail!(
            "wrk failed or saw errors:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

fn wrk_requests(out: &str) -> Result<u64> {
    out.lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in")
                .and_then(|(n, _)| n.trim().parse().ok())
        })
        .context("no request count in wrk's output")
}

/// A latency line of wrk's distribution (`99%  712.00us`), in milliseconds.
fn wrk_percentile(out: &str, which: &str) -> Result<f64> {
    let value = out
        .lines()
        .find_map(|l| l.trim().strip_prefix(which).map(|v| v.trim().to_owned()))
        .with_context(|| format!("no {which} latency in wrk's output"))?;
    let split = value
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().with_context(|| format!("latency {value:?}"))?;
    Ok(match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        _ => bail!("unknown latency unit in {value:?}"),
    })
}

fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("odd /proc stat")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: state is field 3 of the whole line; utime and stime are fields 14 and 15.
    let ticks: f64 = fields.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let per_second: f64 = command_output("getconf", &["CLK_TCK"])
        .and_then(|v| v.parse().ok())
        .unwrap_or(100.0);
    Ok(ticks / per_second)
}

fn peak_rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM")?;
    Ok(kib / 1024.0)
}

/// A minimal HTTP/1.1 server (keep-alive) answering each request with the body of the first route whose
/// path prefixes the request's, so the upstream costs next to nothing and is the same for every side.
fn serve_forever(routes: Vec<(&'static str, &'static str, Vec<u8>)>) -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let responses: Vec<(&'static str, Vec<u8>)> = routes
        .into_iter()
        .map(|(path, content_type, body)| {
            let header = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let mut response = header.into_bytes();
            response.extend_from_slice(&body);
            (path, response)
        })
        .collect();
    let responses = std::sync::Arc::new(responses);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let responses = std::sync::Arc::clone(&responses);
            std::thread::spawn(move || answer(stream, &responses));
        }
    });
    Ok(port)
}

fn answer(mut stream: TcpStream, responses: &[(&'static str, Vec<u8>)]) {
    let _ = stream.set_nodelay(true);
    let mut pending: Vec<u8> = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(n) => pending.extend_from_slice(&buffer[..n]),
        }
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let request = String::from_utf8_lossy(&pending[..end]).into_owned();
            pending.drain(..end + 4);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let Some((_, response)) = responses.iter().find(|(prefix, _)| path.starts_with(prefix)) else {
                return;
            };
            if stream.write_all(response).is_err() {
                return;
            }
        }
    }
}

/// `cargo xtask bench prosody-exporter`: wrk on the upstream's /metrics directly (what Prometheus would
/// do without the sidecar), then on the sidecar, which fetches /metrics and a 1 000-room census.
fn prosody_exporter(paths: &Paths, duration: Duration) -> Result<ExitCode> {
    packages::ensure_commands(&[("wrk", "wrk")])?;
    let fixtures = paths.repo.join("../shared/fixtures/prosody");
    let openmetrics = std::fs::read(fixtures.join("prosody-0.12.3-openmetrics-idle.txt"))
        .context("reading the Prosody fixture")?;
    let upstream = serve_forever(vec![
        (
            "/metrics",
            "application/openmetrics-text; version=0.0.4",
            openmetrics,
        ),
        ("/room-census", "application/json", census_of(1000).into_bytes()),
    ])?;
    println!(
        "==> upstream replaying Prosody's recorded /metrics and a 1 000-room census on 127.0.0.1:{upstream}"
    );
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&paths.repo)
        .args(["build", "--release", "--locked", "--package", "prosody-exporter"])
        .status()?;
    if !status.success() {
        bail!("building prosody-exporter failed");
    }

    println!(
        "==> Prosody's /metrics directly: {}s of wrk -t1 -c1",
        duration.as_secs()
    );
    wrk_path(upstream, "/metrics", Duration::from_secs(2))?;
    let direct = wrk_path(upstream, "/metrics", duration)?;
    let (direct_p50, direct_p99) = (wrk_percentile(&direct, "50%")?, wrk_percentile(&direct, "99%")?);

    let port = free_port()?;
    let binary = paths.repo.join("target/release/prosody-exporter");
    let args = [
        format!("--prosody-url=http://127.0.0.1:{upstream}"),
        format!("--listen=127.0.0.1:{port}"),
    ];
    let ours = measure("prosody-exporter", &binary, &args, port, duration)?;
    let report = format!(
        "# prosody-exporter benchmark\n\nMachine: {}.\n\
         Upstream: a keep-alive HTTP server replaying Prosody 0.12's recorded `/metrics` \
         (`shared/fixtures/prosody/prosody-0.12.3-openmetrics-idle.txt`) and a census of 1 000 rooms in \
         mod_muc_census's shape; load: `wrk -t1 -c1 -d{}s --latency`.\n\n\
         | measure | Prosody's /metrics directly | through prosody-exporter | added |\n|---|---|---|---|\n\
         | latency p50 | {direct_p50:.3} ms | {:.3} ms | {:.3} ms |\n\
         | latency p99 | {direct_p99:.3} ms | {:.3} ms | {:.3} ms |\n\
         | sidecar CPU per scrape | – | {:.0} µs | |\n\
         | sidecar peak RSS | – | {:.1} MiB | |\n\
         | scrapes | {} | {} | |\n",
        machine_line(),
        duration.as_secs(),
        ours.p50_ms,
        ours.p50_ms - direct_p50,
        ours.p99_ms,
        ours.p99_ms - direct_p99,
        ours.cpu_per_10k() * 100.0,
        ours.peak_rss_mib,
        wrk_requests(&direct)?,
        ours.requests,
    );
    println!("\n{report}");
    let results = paths.repo.join("bench/results");
    std::fs::create_dir_all(&results)?;
    std::fs::write(results.join("prosody-exporter.md"), &report)?;
    println!("==> written to {}", results.join("prosody-exporter.md").display());
    Ok(ExitCode::SUCCESS)
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

pub fn machine_line() -> String {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = command_output("uname", &["-r"]).unwrap_or_default();
    let rustc = command_output("rustc", &["--version"]).unwrap_or_default();
    format!("{cores} cores, {cpu_model}, Linux {kernel}; {rustc}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 10s test @ http://127.0.0.1:1/metrics
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   254.93us  100.00us   5.00ms   90.00%
  Latency Distribution
     50%  230.00us
     75%  260.00us
     90%  300.00us
     99%    1.20ms
  39000 requests in 10.00s, 150.00MB read
Requests/sec:   3900.00
";

    #[test]
    fn hosts_are_left_out() {
        assert_eq!(
            without_hosts("reading https://example.org/a/b: 403"),
            "reading <registry>/a/b: 403"
        );
        assert_eq!(without_hosts("no address"), "no address");
    }

    #[test]
    fn parses_wrk() {
        assert_eq!(wrk_requests(WRK).unwrap(), 39000);
        assert!((wrk_percentile(WRK, "50%").unwrap() - 0.23).abs() < 1e-9);
        assert!((wrk_percentile(WRK, "99%").unwrap() - 1.2).abs() < 1e-9);
    }
}
