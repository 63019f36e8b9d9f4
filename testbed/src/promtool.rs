//! Prometheus's own linter, from Debian's `prometheus` package: what every exposition we serve must pass.

use std::process::Command;

use local_cluster::process::output_with_stdin;

/// Runs `promtool check metrics` on `text`; `Err` carries promtool's complaints.
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
    if output.status.success() && said.trim().is_empty() {
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
