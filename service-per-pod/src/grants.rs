//! Which namespaces may claim which node ports: the administrator's word, so that a tenant who may
//! create a StatefulSet cannot take ports that belong to someone else — or every free port of the cluster.
//!
//! Written as `namespace=first-last` entries separated by commas (`--port-grants`, `PORT_GRANTS`):
//! `jitsi=30300-30499,jitsi-staging=31000-31099`. `*` as the namespace grants a range to every namespace.
//! A namespace may have several entries. Nothing is granted that is not listed.

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

use daemon_kit::flags::NodePortRange;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// `None`: every namespace.
    pub namespace: Option<String>,
    pub ports: RangeInclusive<u16>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants(Vec<Grant>);

impl Grants {
    /// The whole node-port range to one namespace: what a controller that watches only its own
    /// namespace grants it.
    pub fn whole_range(namespace: &str, range: NodePortRange) -> Self {
        Self(vec![Grant {
            namespace: Some(namespace.to_owned()),
            ports: range.first..=range.last,
        }])
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn allows(&self, namespace: &str, port: u16) -> bool {
        self.0.iter().any(|grant| {
            grant
                .namespace
                .as_deref()
                .is_none_or(|granted| granted == namespace)
                && grant.ports.contains(&port)
        })
    }

    /// What `namespace` is granted, for messages: `30300-30499` or `nothing`.
    pub fn describe(&self, namespace: &str) -> String {
        let ranges: Vec<String> = self
            .0
            .iter()
            .filter(|grant| {
                grant
                    .namespace
                    .as_deref()
                    .is_none_or(|granted| granted == namespace)
            })
            .map(|grant| format!("{}-{}", grant.ports.start(), grant.ports.end()))
            .collect();
        if ranges.is_empty() {
            "nothing".to_owned()
        } else {
            ranges.join(", ")
        }
    }

    /// Every grant must lie inside the API server's node-port range: one outside it is a typo.
    /// Grants `ports` to `namespace` as well.
    pub fn and(mut self, namespace: &str, ports: NodePortRange) -> Self {
        self.0.push(Grant {
            namespace: Some(namespace.to_owned()),
            ports: ports.first..=ports.last,
        });
        self
    }

    /// Every grant must lie in one of `ranges` (the node-port range, the range of ports without node
    /// ports): a grant beyond them is a typo that would grant nothing.
    pub fn check_within(&self, ranges: &[NodePortRange]) -> Result<(), String> {
        for grant in &self.0 {
            let inside = ranges
                .iter()
                .any(|range| range.contains(*grant.ports.start()) && range.contains(*grant.ports.end()));
            if !inside {
                let ranges: Vec<String> = ranges.iter().map(ToString::to_string).collect();
                return Err(format!(
                    "the port grant {grant} is outside the port ranges {}",
                    ranges.join(" and ")
                ));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={}-{}",
            self.namespace.as_deref().unwrap_or("*"),
            self.ports.start(),
            self.ports.end()
        )
    }
}

impl FromStr for Grants {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut grants = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
            let invalid = || {
                format!(
                    "{entry:?} is not a port grant like jitsi=30300-30499 (namespace, or *, then a port range)"
                )
            };
            let (namespace, ports) = entry.split_once('=').ok_or_else(invalid)?;
            let namespace = namespace.trim();
            let namespace = match namespace {
                "*" => None,
                name if is_namespace_name(name) => Some(name.to_owned()),
                _ => return Err(invalid()),
            };
            let range: NodePortRange = ports.parse().map_err(|_| invalid())?;
            grants.push(Grant {
                namespace,
                ports: range.first..=range.last,
            });
        }
        Ok(Self(grants))
    }
}

/// A namespace name: a DNS-1123 label.
fn is_namespace_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_and_allow_exactly_what_they_say() {
        let grants: Grants = "jitsi=30300-30499, staging=31000-31099,jitsi=32000-32000"
            .parse()
            .unwrap();
        assert!(
            grants.allows("jitsi", 30300) && grants.allows("jitsi", 30499) && grants.allows("jitsi", 32000)
        );
        assert!(!grants.allows("jitsi", 30500) && !grants.allows("jitsi", 31000));
        assert!(grants.allows("staging", 31050) && !grants.allows("staging", 30300));
        assert!(!grants.allows("tenant", 30300));
        assert_eq!(grants.describe("jitsi"), "30300-30499, 32000-32000");
        assert_eq!(grants.describe("tenant"), "nothing");
        assert!(grants.check_within(&[NodePortRange::default()]).is_ok());
    }

    #[test]
    fn a_star_grants_every_namespace_and_nothing_is_granted_by_default() {
        let all: Grants = "*=30000-32767".parse().unwrap();
        assert!(all.allows("anyone", 31234));
        let none: Grants = "".parse().unwrap();
        assert!(none.is_empty() && !none.allows("jitsi", 30300));
    }

    #[test]
    fn malformed_grants_are_refused_in_one_sentence() {
        for bad in [
            "jitsi",
            "jitsi=",
            "=30300-30400",
            "Jitsi=30300-30400",
            "jitsi=30400-30300",
            "jitsi=a-b",
            "j_s=1-2",
        ] {
            let error = bad.parse::<Grants>().unwrap_err();
            assert!(error.contains("is not a port grant"), "{bad}: {error}");
        }
        let outside: Grants = "jitsi=20000-20099".parse().unwrap();
        assert!(
            outside
                .check_within(&[NodePortRange::default()])
                .unwrap_err()
                .contains("outside the port ranges 30000-32767")
        );
    }

    #[test]
    fn a_namespaced_controller_grants_its_namespace_the_whole_range() {
        let grants = Grants::whole_range("jitsi", NodePortRange::default());
        assert!(grants.allows("jitsi", 30000) && grants.allows("jitsi", 32767));
        assert!(!grants.allows("other", 30000));
    }
}
