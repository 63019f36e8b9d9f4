//! Waiting for a LoadBalancer Service's external address, read through the pod's ServiceAccount (`get` on
//! that one Service): what a bridge advertises when its shard is exposed through one shared load balancer.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use kube::{Api, Client};

/// Why the address could not be had; each is one sentence for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot reach the Kubernetes API to read Service {name}: {reason}")]
    Unreachable { name: String, reason: String },
    #[error(
        "reading Service {namespace}/{name} was forbidden (403): the pod's ServiceAccount needs get on that Service"
    )]
    Forbidden { namespace: String, name: String },
    #[error(
        "Service {namespace}/{name} is of type {kind}, not LoadBalancer: it never gets an external address to advertise"
    )]
    NotALoadBalancer {
        namespace: String,
        name: String,
        kind: String,
    },
    #[error(
        "Service {namespace}/{name} got no load balancer address within {waited:?} ({last}); the bridge is not started"
    )]
    NoAddress {
        namespace: String,
        name: String,
        waited: Duration,
        last: String,
    },
}

/// What a Service's status says, as addresses to advertise: IPs as given, hostnames resolved.
async fn addresses(service: &Service) -> Result<Vec<IpAddr>, String> {
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .filter(|ingress| !ingress.is_empty())
        .ok_or_else(|| "status.loadBalancer.ingress is empty".to_owned())?;
    let mut found = Vec::new();
    for entry in ingress {
        if let Some(ip) = entry.ip.as_deref() {
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| format!("ingress address {ip:?} is not an IP address"))?;
            found.push(ip);
        } else if let Some(hostname) = entry.hostname.as_deref() {
            let resolved = tokio::net::lookup_host((hostname, 0))
                .await
                .map_err(|e| format!("ingress hostname {hostname} does not resolve yet: {e}"))?;
            found.extend(resolved.map(|address| address.ip()));
        }
    }
    found.dedup();
    if found.is_empty() {
        return Err("status.loadBalancer.ingress holds no address".to_owned());
    }
    Ok(found)
}

/// Polls Service `name` (in `namespace`, else the client's default) until its load balancer has an
/// address, for at most `wait`. A Service not yet created, or without an address yet, is waited for; a
/// refusal or a Service that can never have one ends the wait at once.
pub async fn wait_for_address(
    name: &str,
    namespace: Option<&str>,
    wait: Duration,
    every: Duration,
) -> Result<Vec<IpAddr>, ServiceError> {
    let client = Client::try_default()
        .await
        .map_err(|e| ServiceError::Unreachable {
            name: name.to_owned(),
            reason: e.to_string(),
        })?;
    let namespace = namespace
        .map(str::to_owned)
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let services: Api<Service> = Api::namespaced(client, &namespace);
    let started = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let last = match services.get(name).await {
            Ok(service) => {
                let kind = service
                    .spec
                    .as_ref()
                    .and_then(|s| s.type_.clone())
                    .unwrap_or_else(|| "ClusterIP".to_owned());
                if kind != "LoadBalancer" {
                    return Err(ServiceError::NotALoadBalancer {
                        namespace,
                        name: name.to_owned(),
                        kind,
                    });
                }
                match addresses(&service).await {
                    Ok(found) => return Ok(found),
                    Err(why) => why,
                }
            }
            Err(kube::Error::Api(status)) if status.code == 403 => {
                return Err(ServiceError::Forbidden {
                    namespace,
                    name: name.to_owned(),
                });
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {
                "the Service does not exist yet".to_owned()
            }
            Err(other) => format!("reading it failed: {other}"),
        };
        if started.elapsed() >= wait {
            return Err(ServiceError::NoAddress {
                namespace,
                name: name.to_owned(),
                waited: wait,
                last,
            });
        }
        if last_report.elapsed() >= Duration::from_secs(30) {
            tracing::info!(service = name, waited = ?started.elapsed(), "waiting for the load balancer address: {last}");
            last_report = Instant::now();
        }
        tokio::time::sleep(every.min(wait.saturating_sub(started.elapsed()))).await;
    }
}
