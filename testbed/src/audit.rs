//! The API server's audit log (the local cluster writes one for Service and Lease writes): who wrote
//! what and when, as the API server saw it — the proof that two controllers never wrote at once.

use serde_json::Value;

/// One write the API server accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// `User-Agent` of the request (our controller names its replica there).
    pub user_agent: String,
    pub verb: String,
    pub resource: String,
    pub namespace: String,
    pub name: String,
    /// RFC 3339 with microseconds, as the API server prints it: sorts as text.
    pub at: String,
}

/// Successful writes (create, update, patch, delete) of `resource` in `namespace`, oldest first.
pub fn writes(namespace: &str, resource: &str) -> Vec<Write> {
    let path = local_cluster::ClusterDir::discover().logs().join("audit.log");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading the API server's audit log {}: {e}", path.display()));
    let mut writes: Vec<Write> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["stage"] == "ResponseComplete")
        .filter(|event| {
            matches!(
                event["verb"].as_str(),
                Some("create" | "update" | "patch" | "delete")
            )
        })
        .filter(|event| {
            event["responseStatus"]["code"]
                .as_u64()
                .is_some_and(|code| code < 300)
        })
        .filter(|event| {
            event["objectRef"]["resource"] == resource && event["objectRef"]["namespace"] == namespace
        })
        .map(|event| Write {
            user_agent: event["userAgent"].as_str().unwrap_or_default().to_owned(),
            verb: event["verb"].as_str().unwrap_or_default().to_owned(),
            resource: resource.to_owned(),
            namespace: namespace.to_owned(),
            name: event["objectRef"]["name"].as_str().unwrap_or_default().to_owned(),
            at: event["requestReceivedTimestamp"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        })
        .collect();
    writes.sort_by(|a, b| a.at.cmp(&b.at));
    writes
}
