//! `custom-jvb.conf`: the same decision as HOCON, for images that read configuration rather than
//! environment. The `jitsi/jvb` image includes `/config/custom-jvb.conf` last, so it wins.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

use crate::plan::Plan;

fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The configuration text. `local_address` (the pod's IP) is what ice4j maps each advertised address
/// from; without it no static mappings are written and the image's own handling of
/// `JVB_ADVERTISE_IPS` applies.
pub fn render(plan: &Plan, local_address: Option<IpAddr>) -> String {
    let mut text = format!(
        "# Written by jvb-startup at container start for pod {}; rewritten at every start, do not edit.\n",
        plan.pod_name
    );
    text.push_str("videobridge {\n");
    let _ = writeln!(text, "  ice.udp.port = {}", plan.port);
    text.push_str("  apis.rest.enabled = true\n");
    text.push_str("  rest.shutdown.enabled = true\n");
    text.push_str("}\n");
    if let Some(local) = local_address {
        text.push_str("ice4j.harvest.mapping.static-mappings = [\n");
        // ice4j maps a local address to a public one of the same family; others cannot be mapped.
        let same_family = plan
            .advertise_ips
            .iter()
            .filter(|public| public.is_ipv4() == local.is_ipv4());
        for (index, public) in same_family.enumerate() {
            let _ = writeln!(
                text,
                "  {{ name = {}, local-address = {}, public-address = {} }}",
                quoted(&format!("jvb-startup-{index}")),
                quoted(&local.to_string()),
                quoted(&public.to_string())
            );
        }
        text.push_str("]\n");
    }
    text
}

/// Writes `text` to `path` atomically: a reader sees the old file or the new one, never half of one.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_escaped() {
        assert_eq!(quoted(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn write_atomically_replaces_the_file() {
        let dir = std::env::temp_dir().join(format!("jvb-startup-hocon-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("custom-jvb.conf");
        write_atomically(&path, "one").unwrap();
        write_atomically(&path, "two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
