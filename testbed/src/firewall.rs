//! The firewall commands of docs/deploying.md ("Opening the media ports"), rendered from an overlay: the
//! UDP ports its bridges use — each shard's block, `base port … base port + block − 1` — merged into as
//! few ranges as they make, and the command that opens exactly those on each cloud. A test compares the
//! guide's section with this rendering, so the two cannot drift apart.

use std::collections::BTreeMap;

use serde_json::Value;

/// Bridges per shard when its StatefulSet reserves no count (`service-per-pod/max-replicas`): the block
/// the shard folders give each shard (base ports 100 apart).
pub const DEFAULT_BLOCK: u32 = 100;

/// Each shard's block of UDP ports, by shard (the StatefulSet's `jitsi.org/shard` label, else its name).
pub fn blocks(objects: &[Value]) -> BTreeMap<String, (u32, u32)> {
    objects
        .iter()
        .filter(|o| o["kind"] == "StatefulSet")
        .filter_map(|set| {
            let annotations = &set["metadata"]["annotations"];
            let base: u32 = annotations["service-per-pod/base-port"]
                .as_str()?
                .trim()
                .parse()
                .ok()?;
            let count = annotations["service-per-pod/max-replicas"]
                .as_str()
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(DEFAULT_BLOCK);
            let shard = set["metadata"]["labels"]["jitsi.org/shard"]
                .as_str()
                .or_else(|| set["metadata"]["name"].as_str())?
                .to_owned();
            Some((shard, (base, (base + count - 1).min(65535))))
        })
        .collect()
}

/// The blocks merged where they touch or overlap, lowest first.
pub fn ranges(blocks: &BTreeMap<String, (u32, u32)>) -> Vec<(u32, u32)> {
    let mut sorted: Vec<(u32, u32)> = blocks.values().copied().collect();
    sorted.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::new();
    for (first, last) in sorted {
        match merged.last_mut() {
            Some(previous) if first <= previous.1 + 1 => previous.1 = previous.1.max(last),
            _ => merged.push((first, last)),
        }
    }
    merged
}

/// The guide's section for `overlay` (its path, for the reader), from its rendered objects.
pub fn section(overlay: &str, objects: &[Value]) -> String {
    let blocks = blocks(objects);
    let ranges = ranges(&blocks);
    let dashed: Vec<String> = ranges.iter().map(|(a, b)| format!("{a}-{b}")).collect();
    let shards: Vec<String> = blocks
        .iter()
        .map(|(shard, (a, b))| format!("{shard} {a}-{b}"))
        .collect();
    let gcloud = dashed
        .iter()
        .map(|r| format!("udp:{r}"))
        .collect::<Vec<_>>()
        .join(",");
    let aws: Vec<String> = ranges
        .iter()
        .map(|(a, b)| format!("IpProtocol=udp,FromPort={a},ToPort={b},IpRanges=[{{CidrIp=0.0.0.0/0}}]"))
        .collect();
    let azure = dashed.join(" ");
    let lines = [
        format!(
            "<!-- firewall: rendered from {overlay} by tests/manifests.rs; `UPDATE_DOCS=1 cargo test -p integration-tests --test manifests firewall` rewrites it -->"
        ),
        format!(
            "`{overlay}` gives its bridges UDP {} ({}). Open those to the internet and nothing else:",
            dashed.join(", "),
            shards.join(", ")
        ),
        String::new(),
        "```sh".to_owned(),
        "# Google Cloud (GKE): the nodes' network tag (gcloud compute instances describe <node> --format='value(tags.items)')".to_owned(),
        "gcloud compute firewall-rules create jitsi-media --network=<vpc> --direction=INGRESS --action=ALLOW \\".to_owned(),
        format!("  --rules={gcloud} --source-ranges=0.0.0.0/0 --target-tags=<node-tag>"),
        String::new(),
        "# AWS (EKS): the nodes' security group (aws eks describe-cluster … or the node group's launch template)".to_owned(),
        "aws ec2 authorize-security-group-ingress --group-id <node-security-group> \\".to_owned(),
        format!("  --ip-permissions '{}'", aws.join("' '")),
        String::new(),
        "# Azure (AKS): the node resource group's network security group (az aks show --query nodeResourceGroup)".to_owned(),
        "az network nsg rule create --resource-group <node-resource-group> --nsg-name <aks-agentpool-nsg> \\".to_owned(),
        "  --name jitsi-media --priority 400 --direction Inbound --access Allow --protocol Udp \\".to_owned(),
        format!("  --source-address-prefixes Internet --destination-port-ranges {azure}"),
        "```".to_owned(),
        "<!-- firewall: end -->".to_owned(),
    ];
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(shard: &str, base: &str, max: Option<&str>) -> Value {
        let mut annotations = json!({ "service-per-pod/base-port": base });
        if let Some(max) = max {
            annotations["service-per-pod/max-replicas"] = json!(max);
        }
        json!({ "kind": "StatefulSet", "metadata": {
            "name": format!("{shard}-jvb"), "labels": { "jitsi.org/shard": shard }, "annotations": annotations } })
    }

    #[test]
    fn touching_blocks_merge_and_apart_ones_stay_apart() {
        let objects = [
            set("shard-1", "30400", None),
            set("shard-0", "30300", None),
            set("shard-2", "31000", Some("10")),
            json!({ "kind": "Deployment", "metadata": { "name": "web" } }),
        ];
        let blocks = blocks(&objects);
        assert_eq!(blocks["shard-2"], (31000, 31009));
        assert_eq!(ranges(&blocks), [(30300, 30499), (31000, 31009)]);
        let text = section("overlays/x", &objects);
        assert!(text.contains("--rules=udp:30300-30499,udp:31000-31009"), "{text}");
        assert!(
            text.contains("--destination-port-ranges 30300-30499 31000-31009"),
            "{text}"
        );
        assert!(text.contains("FromPort=31000,ToPort=31009"), "{text}");
    }
}
