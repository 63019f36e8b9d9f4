//! The startup decision: from the pod's identity and the flags, the bridge's port, the addresses it
//! advertises, and the environment it is started with. Pure: no environment reads, no network.

use std::fmt;
use std::net::IpAddr;

pub use daemon_kit::flags::NodePortRange;

/// What the bridge is told about its public address, and where that came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AddressSource {
    /// `--advertise-ip` / `JVB_ADVERTISE_IP`.
    Flag,
    /// The shard's LoadBalancer Service (`--advertise-from-service`).
    ServiceIngress,
    /// The Node's ExternalIP (`--advertise-from-node`).
    NodeExternalIp,
    /// The Node's InternalIP, when it has no ExternalIP (`--advertise-from-node`).
    NodeInternalIp,
    /// `HOST_IP` (downward API `status.hostIP`).
    HostIp,
}

impl fmt::Display for AddressSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressSource::Flag => "--advertise-ip",
            AddressSource::ServiceIngress => "the load balancer of --advertise-from-service",
            AddressSource::NodeExternalIp => "the Node's ExternalIP",
            AddressSource::NodeInternalIp => "the Node's InternalIP",
            AddressSource::HostIp => "HOST_IP",
        })
    }
}

/// The outcome of looking the Node up, when `--advertise-from-node` asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeLookup {
    NotRequested,
    Found {
        name: String,
        external: Vec<IpAddr>,
        internal: Vec<IpAddr>,
    },
    /// The reason, in one sentence (no NODE_NAME, forbidden, not found, unreachable, ...).
    Failed(String),
}

/// Everything the decision depends on, already read from flags and environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inputs {
    /// `--pod-name`, `POD_NAME`, else `HOSTNAME`.
    pub pod_name: Option<String>,
    /// `--base-port` / `JVB_BASE_PORT`, as given.
    pub base_port: Option<String>,
    /// `--advertise-ip` / `JVB_ADVERTISE_IP`, as given (a comma list).
    pub advertise_ip: Option<String>,
    /// The load balancer's addresses, when `--advertise-from-service` found them (else empty).
    pub service_addresses: Vec<IpAddr>,
    pub node: NodeLookup,
    /// `HOST_IP`, as given.
    pub host_ip: Option<String>,
    /// `JVB_MUC_NICKNAME` if already set: kept.
    pub muc_nickname: Option<String>,
    /// The cluster's NodePort range: a port outside it only warns (the bridge may be reached otherwise).
    pub node_port_range: NodePortRange,
    /// The operator says the nodes' own addresses are private (`JVB_REQUIRE_PUBLIC_ADDRESS`): a decision
    /// that advertises no public address is refused.
    pub require_public: bool,
}

/// What `exec` will do.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Plan {
    pub pod_name: String,
    pub ordinal: u32,
    pub port: u16,
    pub advertise_ips: Vec<IpAddr>,
    pub address_source: AddressSource,
    pub muc_nickname: String,
    /// Variables set for the command; every other variable is passed on unchanged.
    pub env: Vec<(String, String)>,
    pub warnings: Vec<String>,
}

/// Why the bridge cannot be started: each is one sentence for the operator.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("no pod name: set --pod-name or POD_NAME (downward API metadata.name), or HOSTNAME")]
    MissingPodName,
    #[error("pod name {0:?} does not end in -<ordinal>, so the bridge's port cannot be derived from it")]
    NoOrdinal(String),
    #[error("no base port: set --base-port or JVB_BASE_PORT")]
    MissingBasePort,
    #[error("base port {0:?} is not a number between 1 and 65535")]
    InvalidBasePort(String),
    #[error("base port {base} + ordinal {ordinal} = {port}, which is not a valid port (1-65535)")]
    PortOutOfRange { base: u16, ordinal: u32, port: u64 },
    #[error("advertised address {0:?} is not an IPv4 or IPv6 address")]
    InvalidAddress(String),
    #[error(
        "no address to advertise: set --advertise-ip, or --advertise-from-node with NODE_NAME, or HOST_IP (downward API status.hostIP)"
    )]
    NoAddress,
    #[error(
        "refusing to advertise {addresses} (from {from}): JVB_REQUIRE_PUBLIC_ADDRESS says the nodes are private, and no participant outside the cluster can reach such an address; expose the shard through components/jvb-load-balancer, or advertise the nodes' public addresses (components/jvb-advertise-from-node on nodes with an ExternalIP, or JVB_ADVERTISE_IP)"
    )]
    PrivateAddress { addresses: String, from: AddressSource },
}

/// An address no participant on the internet can reach: private (RFC 1918, IPv6 unique local), shared
/// (RFC 6598, carrier-grade NAT), loopback, link-local or unspecified. Documentation ranges count as
/// public: they stand in for public addresses in examples and tests.
pub fn is_private(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            let [first, second, ..] = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || (first == 100 && (64..128).contains(&second))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(|v4| is_private(IpAddr::V4(v4)))
        }
    }
}

/// The ordinal a StatefulSet pod name carries: the digits after its last `-`.
pub fn ordinal(pod_name: &str) -> Option<u32> {
    let (_, digits) = pod_name.rsplit_once('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn parse_addresses(list: &str) -> Result<Vec<IpAddr>, PlanError> {
    let mut addresses = Vec::new();
    for item in list.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        // IPv6 may come in brackets, as in URLs.
        let bare = item
            .strip_prefix('[')
            .and_then(|i| i.strip_suffix(']'))
            .unwrap_or(item);
        let address = bare
            .parse()
            .map_err(|_| PlanError::InvalidAddress(item.to_owned()))?;
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    Ok(addresses)
}

pub fn plan(inputs: &Inputs) -> Result<Plan, PlanError> {
    let pod_name = inputs
        .pod_name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .ok_or(PlanError::MissingPodName)?;
    let ordinal = ordinal(pod_name).ok_or_else(|| PlanError::NoOrdinal(pod_name.to_owned()))?;
    let raw_base = inputs
        .base_port
        .as_deref()
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .ok_or(PlanError::MissingBasePort)?;
    let base: u16 = match raw_base.parse() {
        Ok(base) if base > 0 => base,
        _ => return Err(PlanError::InvalidBasePort(raw_base.to_owned())),
    };
    let sum = u64::from(base) + u64::from(ordinal);
    let port = u16::try_from(sum).map_err(|_| PlanError::PortOutOfRange {
        base,
        ordinal,
        port: sum,
    })?;

    let mut warnings = Vec::new();
    let range = inputs.node_port_range;
    if !range.contains(port) {
        warnings.push(format!(
            "port {port} is outside the NodePort range {range}: no per-pod NodePort Service can expose it"
        ));
    }

    let (advertise_ips, address_source) = choose_addresses(inputs, &mut warnings)?;
    if inputs.require_public {
        let private: Vec<String> = advertise_ips
            .iter()
            .filter(|address| is_private(**address))
            .map(IpAddr::to_string)
            .collect();
        if private.len() == advertise_ips.len() {
            return Err(PlanError::PrivateAddress {
                addresses: private.join(","),
                from: address_source,
            });
        }
        if !private.is_empty() {
            warnings.push(format!(
                "advertising private address(es) {} beside public ones: JVB_REQUIRE_PUBLIC_ADDRESS says the nodes are private, so only the public ones will carry media",
                private.join(",")
            ));
        }
    }
    let muc_nickname = inputs
        .muc_nickname
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| pod_name.to_owned());
    let advertise_list = advertise_ips
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let env = vec![
        ("JVB_PORT".to_owned(), port.to_string()),
        ("JVB_ADVERTISE_IPS".to_owned(), advertise_list),
        ("JVB_MUC_NICKNAME".to_owned(), muc_nickname.clone()),
        ("COLIBRI_REST_ENABLED".to_owned(), "true".to_owned()),
        ("SHUTDOWN_REST_ENABLED".to_owned(), "true".to_owned()),
    ];
    Ok(Plan {
        pod_name: pod_name.to_owned(),
        ordinal,
        port,
        advertise_ips,
        address_source,
        muc_nickname,
        env,
        warnings,
    })
}

fn choose_addresses(
    inputs: &Inputs,
    warnings: &mut Vec<String>,
) -> Result<(Vec<IpAddr>, AddressSource), PlanError> {
    if let Some(list) = inputs.advertise_ip.as_deref() {
        let addresses = parse_addresses(list)?;
        if !addresses.is_empty() {
            return Ok((addresses, AddressSource::Flag));
        }
    }
    if !inputs.service_addresses.is_empty() {
        return Ok((inputs.service_addresses.clone(), AddressSource::ServiceIngress));
    }
    match &inputs.node {
        NodeLookup::NotRequested => {}
        NodeLookup::Found { external, .. } if !external.is_empty() => {
            return Ok((external.clone(), AddressSource::NodeExternalIp));
        }
        NodeLookup::Found { internal, .. } if !internal.is_empty() => {
            return Ok((internal.clone(), AddressSource::NodeInternalIp));
        }
        NodeLookup::Found { name, .. } => {
            warnings.push(format!(
                "Node {name} has no ExternalIP or InternalIP; falling back to HOST_IP"
            ));
        }
        NodeLookup::Failed(reason) => warnings.push(format!("{reason}; falling back to HOST_IP")),
    }
    if let Some(host_ip) = inputs.host_ip.as_deref() {
        let addresses = parse_addresses(host_ip)?;
        if !addresses.is_empty() {
            return Ok((addresses, AddressSource::HostIp));
        }
    }
    Err(PlanError::NoAddress)
}

impl Plan {
    /// The one log line (and the plain `--dry-run` output).
    pub fn summary(&self) -> String {
        let addresses = self
            .advertise_ips
            .iter()
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(",");
        format!(
            "pod {} (ordinal {}): UDP port {}, advertising {} (from {}), MUC nickname {}",
            self.pod_name, self.ordinal, self.port, addresses, self.address_source, self.muc_nickname
        )
    }
}

#[cfg(test)]
mod tests {
    use super::is_private;

    #[test]
    fn private_shared_loopback_and_link_local_addresses_are_private_and_the_rest_public() {
        for private in [
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "fd00::1",
            "fe80::1",
            "::1",
            "::",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private(private.parse().unwrap()), "{private}");
        }
        for public in [
            "203.0.113.7",
            "198.51.100.1",
            "100.128.0.1",
            "8.8.8.8",
            "172.32.0.1",
            "2001:db8::7",
            "2a00::1",
        ] {
            assert!(!is_private(public.parse().unwrap()), "{public}");
        }
    }
}
