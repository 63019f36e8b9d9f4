//! The exposition text of the bridge's metrics: the families and encoder shared by the exporters
//! ([`daemon_kit::exposition`]), plus the passthrough of the bridge's native families.

pub use daemon_kit::exposition::*;

/// The bridge's own `jitsi_jvb_*` families from its native `/metrics`, passed through unchanged:
/// their HELP, TYPE and sample lines. Anything else (other families, `# UNIT`, `# EOF`) is dropped.
pub fn native_jvb_families(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let name = match line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
        {
            Some(rest) => rest,
            None if line.starts_with('#') => continue,
            None => line,
        };
        if name.starts_with("jitsi_jvb_") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_passthrough_keeps_only_jitsi_jvb_families() {
        let native = "# HELP jitsi_jvb_stress Stress\n# TYPE jitsi_jvb_stress gauge\njitsi_jvb_stress 0.1\n# HELP jvm_memory x\n# TYPE jvm_memory gauge\njvm_memory 5\n# UNIT jitsi_jvb_x seconds\n# EOF\n";
        assert_eq!(
            native_jvb_families(native),
            "# HELP jitsi_jvb_stress Stress\n# TYPE jitsi_jvb_stress gauge\njitsi_jvb_stress 0.1\n"
        );
    }
}
