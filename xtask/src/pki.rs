//! The local cluster's PKI: a CA, the apiserver's serving certificate, and the service-account key.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Files written under `<cluster>/pki/`.
#[derive(Debug)]
pub struct Pki {
    pub ca_cert: std::path::PathBuf,
    pub serving_cert: std::path::PathBuf,
    pub serving_key: std::path::PathBuf,
    pub service_account_key: std::path::PathBuf,
    pub service_account_pub: std::path::PathBuf,
    /// The aggregation layer's: the CA the API server trusts for `X-Remote-User` headers
    /// (`--requestheader-client-ca-file`), and the client certificate it proxies with
    /// (`--proxy-client-cert-file`), whose name extension API servers accept.
    pub front_proxy_ca: std::path::PathBuf,
    pub front_proxy_client_cert: std::path::PathBuf,
    pub front_proxy_client_key: std::path::PathBuf,
}

/// The common name of the API server's proxy client certificate (`--requestheader-allowed-names`).
pub const FRONT_PROXY_CLIENT: &str = "front-proxy-client";

/// `service_ip` is the first address of the Service CIDR: in-cluster clients reach `kubernetes.default` there.
pub fn generate(dir: &Path, service_ip: Ipv4Addr) -> Result<Pki> {
    std::fs::create_dir_all(dir)?;
    let (ca_cert, issuer) = new_ca("jitsi-k8s local cluster CA")?;

    let mut serving = CertificateParams::new(vec![
        "localhost".to_owned(),
        "kubernetes".to_owned(),
        "kubernetes.default".to_owned(),
        "kubernetes.default.svc".to_owned(),
        "kubernetes.default.svc.cluster.local".to_owned(),
    ])
    .context("serving certificate names")?;
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    serving
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(service_ip)));
    leaf_usages(&mut serving, &[ExtendedKeyUsagePurpose::ServerAuth]);
    let serving_key = KeyPair::generate().context("generating the serving key")?;
    let serving_cert = serving
        .signed_by(&serving_key, &issuer)
        .context("signing the serving certificate")?;

    let service_account = KeyPair::generate().context("generating the service-account key")?;

    // A CA of its own, as kubeadm does: a certificate from the cluster CA must not be able to pass
    // as the aggregator.
    let (front_proxy_ca, front_proxy_issuer) = new_ca("jitsi-k8s local front-proxy CA")?;
    let mut proxy_client = CertificateParams::new(Vec::<String>::new()).context("proxy client")?;
    proxy_client
        .distinguished_name
        .push(DnType::CommonName, FRONT_PROXY_CLIENT);
    leaf_usages(&mut proxy_client, &[ExtendedKeyUsagePurpose::ClientAuth]);
    let proxy_client_key = KeyPair::generate().context("generating the proxy client key")?;
    let proxy_client_cert = proxy_client
        .signed_by(&proxy_client_key, &front_proxy_issuer)
        .context("signing the proxy client certificate")?;

    let pki = Pki {
        ca_cert: dir.join("ca.crt"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        service_account_key: dir.join("service-account.key"),
        service_account_pub: dir.join("service-account.pub"),
        front_proxy_ca: dir.join("front-proxy-ca.crt"),
        front_proxy_client_cert: dir.join("front-proxy-client.crt"),
        front_proxy_client_key: dir.join("front-proxy-client.key"),
    };
    std::fs::write(&pki.ca_cert, ca_cert.pem())?;
    std::fs::write(&pki.serving_cert, serving_cert.pem())?;
    std::fs::write(&pki.serving_key, serving_key.serialize_pem())?;
    std::fs::write(&pki.service_account_key, service_account.serialize_pem())?;
    std::fs::write(&pki.service_account_pub, service_account.public_key_pem())?;
    std::fs::write(&pki.front_proxy_ca, front_proxy_ca.pem())?;
    std::fs::write(&pki.front_proxy_client_cert, proxy_client_cert.pem())?;
    std::fs::write(&pki.front_proxy_client_key, proxy_client_key.serialize_pem())?;
    Ok(pki)
}

/// What a TLS leaf certificate may be used for: signing and key exchange, for `purposes`.
fn leaf_usages(params: &mut CertificateParams, purposes: &[ExtendedKeyUsagePurpose]) {
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = purposes.to_vec();
}

fn new_ca(name: &str) -> Result<(rcgen::Certificate, Issuer<'static, KeyPair>)> {
    let key = KeyPair::generate().context("generating a CA key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).context("self-signing a CA")?;
    Ok((cert, Issuer::new(params, key)))
}

/// KEDA's certificates, as its operator's certificate rotation would make them (`pkg/certificates`):
/// one CA, and one key pair serving both the operator's gRPC metrics service and the metrics API
/// server, also used as the gRPC client certificate — for every name of their two Services, and
/// loopback, where they listen here. Written as `ca.crt`, `tls.crt`, `tls.key` into `dir`, the files
/// KEDA reads from its `--cert-dir`. Returns the CA's PEM (the APIService's `caBundle`).
pub fn keda_certificates(dir: &Path, namespace: &str) -> Result<String> {
    std::fs::create_dir_all(dir)?;
    let (ca, issuer) = new_ca("KEDA")?;
    let mut names = Vec::new();
    for service in ["keda-operator", "keda-metrics-apiserver"] {
        names.extend([
            service.to_owned(),
            format!("{service}.{namespace}"),
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
        ]);
    }
    let mut leaf = CertificateParams::new(names).context("KEDA's certificate names")?;
    leaf.distinguished_name.push(DnType::CommonName, "keda-operator");
    leaf.subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    leaf_usages(
        &mut leaf,
        &[
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    );
    let key = KeyPair::generate().context("generating KEDA's key")?;
    let cert = leaf
        .signed_by(&key, &issuer)
        .context("signing KEDA's certificate")?;
    std::fs::write(dir.join("ca.crt"), ca.pem())?;
    std::fs::write(dir.join("tls.crt"), cert.pem())?;
    std::fs::write(dir.join("tls.key"), key.serialize_pem())?;
    Ok(ca.pem())
}
