//! What the benchmarks measure with: the API server's own write counts, signed latencies, percentiles, a
//! process's CPU time and memory, wrk runs, and the machine they ran on.

use std::collections::HashMap;
use std::time::Instant;

use kube::Client;

/// Write requests (create, update, patch, apply, delete) the API server served, by resource (its own
/// `apiserver_request_total`).
pub async fn apiserver_writes(client: &Client) -> HashMap<String, f64> {
    let request = http::Request::get("/metrics").body(Vec::new()).expect("request");
    let text = client.request_text(request).await.expect("apiserver /metrics");
    let mut writes = HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let label = |name: &str| {
            let start = line.find(&format!("{name}=\""))? + name.len() + 2;
            Some(line[start..].split('"').next()?.to_owned())
        };
        let (Some(verb), Some(resource)) = (label("verb"), label("resource")) else {
            continue;
        };
        if !matches!(
            verb.as_str(),
            "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE" | "DELETECOLLECTION"
        ) {
            continue;
        }
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *writes.entry(resource).or_insert(0.0) += value;
    }
    writes
}

/// Milliseconds from `from` to `to`; negative when `to` came first.
pub fn signed_ms(from: Instant, to: Instant) -> f64 {
    if to >= from {
        to.duration_since(from).as_secs_f64() * 1000.0
    } else {
        -(from.duration_since(to).as_secs_f64() * 1000.0)
    }
}

/// The `p`th percentile of sorted values (NaN when there are none).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// CPU time (user + system, seconds), RSS and peak RSS (MiB) of a process, from /proc.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
}

/// Reads [`Usage`] of `pid`; `None` when the process is gone.
pub fn usage(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (in parentheses, may contain spaces): state is field 3 of the whole line,
    // utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> f64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0)
    };
    Some(Usage {
        cpu_seconds: ticks / clock_ticks_per_second(),
        rss_mib: kib("VmRSS:") / 1024.0,
        peak_rss_mib: kib("VmHWM:") / 1024.0,
    })
}

fn clock_ticks_per_second() -> f64 {
    command_output("getconf", &["CLK_TCK"])
        .and_then(|text| text.parse().ok())
        .unwrap_or(100.0)
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program).args(args).output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The machine a benchmark ran on, for its report: cores, CPU model, kernel, compiler.
pub fn machine_line() -> String {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|line| {
                line.strip_prefix("model name")
                    .map(|model| model.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = command_output("uname", &["-r"]).unwrap_or_default();
    let rustc = command_output("rustc", &["--version"]).unwrap_or_default();
    format!("{cores} cores, {cpu_model}, Linux {kernel}; {rustc}")
}

/// What `wrk --latency` reported.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WrkRun {
    pub requests: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Runs `wrk -t1 -c1 --latency` on `url` for `duration`; fails on any non-2xx answer.
pub fn wrk(url: &str, duration: std::time::Duration) -> Result<WrkRun, String> {
    let out = std::process::Command::new("wrk")
        .args([
            "-t1",
            "-c1",
            &format!("-d{}s", duration.as_secs()),
            "--latency",
            url,
        ])
        .output()
        .map_err(|e| format!("running wrk (Debian package wrk): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || text.contains("Non-2xx") {
        return Err(format!(
            "wrk failed or saw errors:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse_wrk(&text)
}

fn parse_wrk(text: &str) -> Result<WrkRun, String> {
    let requests = text
        .lines()
        .find_map(|line| {
            line.trim()
                .split_once(" requests in")
                .and_then(|(n, _)| n.trim().parse().ok())
        })
        .ok_or("no request count in wrk's output")?;
    Ok(WrkRun {
        requests,
        p50_ms: wrk_percentile(text, "50%")?,
        p99_ms: wrk_percentile(text, "99%")?,
    })
}

/// A latency line of wrk's distribution (`99%  712.00us`), in milliseconds.
fn wrk_percentile(text: &str, which: &str) -> Result<f64, String> {
    let value = text
        .lines()
        .find_map(|line| line.trim().strip_prefix(which).map(|v| v.trim().to_owned()))
        .ok_or_else(|| format!("no {which} latency in wrk's output"))?;
    let split = value
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("latency {value:?}"))?;
    match unit {
        "us" => Ok(number / 1000.0),
        "ms" => Ok(number),
        "s" => Ok(number * 1000.0),
        _ => Err(format!("unknown latency unit in {value:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 10s test @ http://127.0.0.1:1/metrics
  1 threads and 1 connections
  Latency Distribution
     50%  230.00us
     75%  260.00us
     99%    1.20ms
  39000 requests in 10.00s, 150.00MB read
Requests/sec:   3900.00
";

    #[test]
    fn parses_wrk() {
        let run = parse_wrk(WRK).unwrap();
        assert_eq!(run.requests, 39000);
        assert!((run.p50_ms - 0.23).abs() < 1e-9);
        assert!((run.p99_ms - 1.2).abs() < 1e-9);
    }

    #[test]
    fn percentiles_and_signed_latencies() {
        let sorted = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&sorted, 50.0), 2.0);
        assert_eq!(percentile(&sorted, 100.0), 4.0);
        assert!(percentile(&[], 50.0).is_nan());
        let now = Instant::now();
        let later = now + std::time::Duration::from_millis(5);
        assert!((signed_ms(now, later) - 5.0).abs() < 1e-6);
        assert!((signed_ms(later, now) + 5.0).abs() < 1e-6);
    }

    #[test]
    fn this_process_has_usage() {
        let usage = usage(std::process::id()).unwrap();
        assert!(usage.rss_mib > 0.0 && usage.peak_rss_mib >= usage.rss_mib);
    }
}
