//! A container of a rendered workload as the kubelet would start it: its environment (image `ENV`,
//! `envFrom`, `env` with `$(VAR)` expansion and the downward API), its user and its volumes. What only a
//! running cluster knows is stood in for, and said so: the pod's name, IP, node and the values of
//! Secrets the overlay does not generate.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;

use super::image::Image;

/// What a running cluster would fill in.
#[derive(Clone, Debug)]
pub struct StandIns {
    pub pod_ip: &'static str,
    pub host_ip: &'static str,
    pub node_name: &'static str,
}

pub const STAND_INS: StandIns = StandIns {
    // Documentation ranges: nothing here is a real address.
    pod_ip: "10.244.7.21",
    host_ip: "192.0.2.44",
    node_name: "node-a",
};

/// Where one variable of the container's environment comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The image's `ENV`.
    Image,
    /// Set by the container runtime (`HOSTNAME`).
    Runtime,
    ConfigMap(String),
    Secret {
        name: String,
        stood_in: bool,
    },
    /// `env[].value` (after `$(VAR)` expansion).
    Literal,
    /// The downward API (`fieldRef`), with the field path.
    Field(String),
    /// Set by the program that starts the image's entrypoint (jvb-startup).
    Wrapper(String),
}

/// One container of a pod template, ready to be checked.
#[derive(Clone, Debug)]
pub struct Container {
    pub workload_kind: String,
    pub workload: String,
    pub namespace: String,
    pub name: String,
    pub pod_name: String,
    /// The final environment, in the order the kubelet builds it (later wins), and where each came from.
    pub env: BTreeMap<String, (String, Origin)>,
    pub uid: u32,
    pub gid: u32,
    pub fs_group: Option<u32>,
    pub spec: Value,
    pub pod_spec: Value,
    pub pod_labels: BTreeMap<String, String>,
}

impl Container {
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env.get(name).map(|(v, _)| v.as_str())
    }

    /// `kind/name container` for findings.
    pub fn label(&self) -> String {
        format!("{}/{} container {}", self.workload_kind, self.workload, self.name)
    }

    /// The container's ports: name → (number, protocol).
    pub fn ports(&self) -> Vec<(Option<String>, u16, String)> {
        self.spec["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let number = u16::try_from(p["containerPort"].as_u64()?).ok()?;
                Some((
                    p["name"].as_str().map(str::to_owned),
                    number,
                    p["protocol"].as_str().unwrap_or("TCP").to_owned(),
                ))
            })
            .collect()
    }

    /// A port as a probe, Service or policy names it: a number, or the name of one of this container's ports.
    pub fn resolve_port(&self, port: &Value) -> Option<u16> {
        match port {
            Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            Value::String(name) => name.parse().ok().or_else(|| {
                self.ports()
                    .into_iter()
                    .find(|(n, _, _)| n.as_deref() == Some(name))
                    .map(|(_, number, _)| number)
            }),
            _ => None,
        }
    }

    /// `resources.limits.memory` in MiB.
    pub fn memory_limit_mib(&self) -> Option<u64> {
        quantity_mib(self.spec["resources"]["limits"]["memory"].as_str()?)
    }

    /// The volume mounted at `path`, with its definition.
    pub fn volume_at(&self, path: &str) -> Option<(&Value, &Value)> {
        let mount = self.spec["volumeMounts"]
            .as_array()?
            .iter()
            .find(|m| m["mountPath"] == path)?;
        let volume = self.pod_spec["volumes"]
            .as_array()?
            .iter()
            .find(|v| v["name"] == mount["name"])?;
        Some((mount, volume))
    }
}

/// A Kubernetes memory quantity in MiB (`3Gi`, `768Mi`, `2560M`, bytes).
pub fn quantity_mib(quantity: &str) -> Option<u64> {
    let quantity = quantity.trim();
    let split = quantity
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(quantity.len());
    let (number, unit) = quantity.split_at(split);
    let number: f64 = number.parse().ok()?;
    let bytes = number
        * match unit {
            "" => 1.0,
            "Ki" => 1024.0,
            "Mi" => 1024.0 * 1024.0,
            "Gi" => 1024.0 * 1024.0 * 1024.0,
            "k" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            _ => return None,
        };
    Some((bytes / (1024.0 * 1024.0)) as u64)
}

/// Kubernetes' `$(VAR)` expansion (k8s.io/kubernetes third_party/forked/golang/expansion): `$(NAME)`
/// becomes the value when NAME is defined and stays as it is otherwise; `$$` is a literal `$`.
pub fn expand(input: &str, defined: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let bytes: Vec<char> = input.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == '$' && i + 1 < bytes.len() {
            match bytes[i + 1] {
                '$' => {
                    out.push('$');
                    i += 2;
                    continue;
                }
                '(' => {
                    if let Some(close) = bytes[i + 2..].iter().position(|c| *c == ')') {
                        let name: String = bytes[i + 2..i + 2 + close].iter().collect();
                        match defined(&name) {
                            Some(value) => out.push_str(&value),
                            None => out.push_str(&format!("$({name})")),
                        }
                        i += close + 3;
                        continue;
                    }
                }
                _ => {}
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

/// The pod name a workload's first pod gets (StatefulSet ordinal 0; a Deployment's pods get hash suffixes).
fn pod_name(kind: &str, workload: &str) -> String {
    match kind {
        "StatefulSet" => format!("{workload}-0"),
        _ => format!("{workload}-5c7d9b6f4d-x2k9p"),
    }
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect()
}

fn secret_data(objects: &[Value], name: &str) -> Option<BTreeMap<String, String>> {
    let object = find(objects, "Secret", name)?;
    let secret: Secret = serde_json::from_value(object.clone()).ok()?;
    let mut data: BTreeMap<String, String> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    data.extend(secret.string_data.unwrap_or_default());
    Some(data)
}

/// A Secret that only the operator creates (the production overlay's `jitsi-secrets`): its value stood in.
fn stand_in_secret(name: &str, key: &str) -> String {
    format!("stand-in-{name}-{key}").to_lowercase()
}

/// The downward API's value of `field_path` for the first pod of the workload.
fn field(
    path: &str,
    pod: &str,
    namespace: &str,
    template: &Value,
    stand_ins: &StandIns,
) -> Result<String, String> {
    let metadata = &template["metadata"];
    let keyed = |prefix: &str, map: &Value| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix("']"))
            .map(|key| map[key].as_str().unwrap_or_default().to_owned())
    };
    if let Some(value) = keyed("metadata.labels['", &metadata["labels"]) {
        return Ok(value);
    }
    if let Some(value) = keyed("metadata.annotations['", &metadata["annotations"]) {
        return Ok(value);
    }
    Ok(match path {
        "metadata.name" => pod.to_owned(),
        "metadata.namespace" => namespace.to_owned(),
        "spec.nodeName" => stand_ins.node_name.to_owned(),
        "spec.serviceAccountName" => template["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default")
            .to_owned(),
        "status.hostIP" | "status.hostIPs" => stand_ins.host_ip.to_owned(),
        "status.podIP" | "status.podIPs" => stand_ins.pod_ip.to_owned(),
        other => return Err(format!("the downward API field {other} is not stood in for")),
    })
}

/// The container `container_name` of `workload` (a Deployment or StatefulSet of the rendering) as the
/// kubelet would start it from `image`.
pub fn container(
    objects: &[Value],
    workload: &Value,
    container_name: &str,
    image: &Image,
) -> Result<Container, String> {
    let kind = workload["kind"].as_str().unwrap_or_default().to_owned();
    let workload_name = workload["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let namespace = workload["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_owned();
    let template = &workload["spec"]["template"];
    let pod_spec = &template["spec"];
    let spec = ["initContainers", "containers"]
        .iter()
        .flat_map(|f| pod_spec[f].as_array().cloned().unwrap_or_default())
        .find(|c| c["name"] == container_name)
        .ok_or_else(|| format!("{kind}/{workload_name} has no container {container_name}"))?;
    let pod = pod_name(&kind, &workload_name);
    let mut env: BTreeMap<String, (String, Origin)> = image
        .env
        .iter()
        .map(|(k, v)| (k.clone(), (v.clone(), Origin::Image)))
        .collect();
    env.insert("HOSTNAME".to_owned(), (pod.clone(), Origin::Runtime));
    // The kubelet's order: envFrom (each source in turn), then env; a later definition wins.
    let mut own: BTreeMap<String, (String, Origin)> = BTreeMap::new();
    for source in spec["envFrom"].as_array().into_iter().flatten() {
        let prefix = source["prefix"].as_str().unwrap_or_default();
        if let Some(name) = source["configMapRef"]["name"].as_str() {
            let config_map = find(objects, "ConfigMap", name).ok_or_else(|| {
                format!("{kind}/{workload_name}: envFrom names ConfigMap {name}, which the rendering lacks")
            })?;
            for (key, value) in string_map(&config_map["data"]) {
                own.insert(
                    format!("{prefix}{key}"),
                    (value, Origin::ConfigMap(name.to_owned())),
                );
            }
        }
        if let Some(name) = source["secretRef"]["name"].as_str() {
            let data = secret_data(objects, name).ok_or_else(|| {
                format!(
                    "{kind}/{workload_name}: envFrom names Secret {name}: its keys are unknown without it"
                )
            })?;
            for (key, value) in data {
                own.insert(
                    format!("{prefix}{key}"),
                    (
                        value,
                        Origin::Secret {
                            name: name.to_owned(),
                            stood_in: false,
                        },
                    ),
                );
            }
        }
    }
    for variable in spec["env"].as_array().into_iter().flatten() {
        let name = variable["name"].as_str().unwrap_or_default().to_owned();
        let resolved = if let Some(value) = variable.get("value").and_then(Value::as_str) {
            let defined = |n: &str| own.get(n).map(|(v, _)| v.clone());
            (expand(value, &defined), Origin::Literal)
        } else if let Some(path) = variable["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            (
                field(path, &pod, &namespace, template, &STAND_INS)?,
                Origin::Field(path.to_owned()),
            )
        } else if let Some(reference) = variable["valueFrom"]["secretKeyRef"].as_object() {
            let secret = reference["name"].as_str().unwrap_or_default();
            let key = reference["key"].as_str().unwrap_or_default();
            match secret_data(objects, secret) {
                Some(data) => (
                    data.get(key)
                        .cloned()
                        .ok_or_else(|| format!("{kind}/{workload_name}: Secret {secret} has no key {key}"))?,
                    Origin::Secret {
                        name: secret.to_owned(),
                        stood_in: false,
                    },
                ),
                None => (
                    stand_in_secret(secret, key),
                    Origin::Secret {
                        name: secret.to_owned(),
                        stood_in: true,
                    },
                ),
            }
        } else if let Some(reference) = variable["valueFrom"]["configMapKeyRef"].as_object() {
            let map = reference["name"].as_str().unwrap_or_default();
            let key = reference["key"].as_str().unwrap_or_default();
            let data = find(objects, "ConfigMap", map)
                .map(|m| string_map(&m["data"]))
                .ok_or_else(|| {
                    format!("{kind}/{workload_name}: env names ConfigMap {map}, which the rendering lacks")
                })?;
            (
                data.get(key)
                    .cloned()
                    .ok_or_else(|| format!("ConfigMap {map} has no key {key}"))?,
                Origin::ConfigMap(map.to_owned()),
            )
        } else {
            (String::new(), Origin::Literal)
        };
        own.insert(name, resolved);
    }
    env.extend(own);
    let security = |field: &str| {
        spec["securityContext"][field]
            .as_u64()
            .or_else(|| pod_spec["securityContext"][field].as_u64())
            .and_then(|v| u32::try_from(v).ok())
    };
    Ok(Container {
        workload_kind: kind,
        workload: workload_name,
        namespace,
        name: container_name.to_owned(),
        pod_name: pod,
        env,
        uid: security("runAsUser").unwrap_or(image.uid),
        gid: security("runAsGroup").unwrap_or(image.gid),
        fs_group: pod_spec["securityContext"]["fsGroup"]
            .as_u64()
            .and_then(|v| u32::try_from(v).ok()),
        spec,
        pod_spec: pod_spec.clone(),
        pod_labels: string_map(&template["metadata"]["labels"]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes() {
        let defined = |n: &str| (n == "SHARD").then(|| "shard-0".to_owned());
        assert_eq!(expand("$(SHARD)-prosody", &defined), "shard-0-prosody");
        assert_eq!(expand("$(MISSING)-x", &defined), "$(MISSING)-x");
        assert_eq!(expand("$$(SHARD)", &defined), "$(SHARD)");
        assert_eq!(expand("a$b", &defined), "a$b");
        assert_eq!(expand("$(open", &defined), "$(open");
    }

    #[test]
    fn quantities_in_mib() {
        assert_eq!(quantity_mib("3Gi"), Some(3072));
        assert_eq!(quantity_mib("768Mi"), Some(768));
        assert_eq!(quantity_mib("1G"), Some(953));
    }
}
