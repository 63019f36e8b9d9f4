//! Prometheus's own linter, from Debian's `prometheus` package: what every exposition we serve must pass.

use std::process::Command;

use local_cluster::process::output_with_stdin;

/// The one complaint our output may draw: a name the Go exporter used, which jvb-exporter keeps (with
/// `--legacy-names`, the default) because dashboards query it.
pub const KNOWN_LEGACY_LINT: &str =
    "jitsi_total_video_stream_milliseconds_received use base unit \"seconds\" instead of \"milliseconds\"";

/// Runs `promtool check metrics` on `text`; `Err` carries promtool's complaints. The one known legacy
/// name's complaint ([`KNOWN_LEGACY_LINT`]) is not one: every other line is.
pub fn check_metrics(text: &str) -> Result<(), String> {
    let output = output_with_stdin(
        Command::new("promtool").args(["check", "metrics"]),
        text.as_bytes(),
    )
    .expect("promtool is installed (Debian package prometheus; cargo xtask test installs it)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let problems: Vec<&str> = said
        .lines()
        .filter(|line| !line.trim().is_empty() && line.trim() != KNOWN_LEGACY_LINT)
        .collect();
    // promtool exits 3 for lint findings alone; any other failure, or any other finding, counts.
    let only_known_lint = output.status.success() || output.status.code() == Some(3);
    if only_known_lint && problems.is_empty() {
        Ok(())
    } else {
        Err(said)
    }
}

/// Every sample of an exposition, `name{labels}` → value, as printed.
pub fn samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}
