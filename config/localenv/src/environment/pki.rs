//! The control plane's credentials: a self-signed CA, the API server's serving certificate,
//! the service-account signing key pair and a static admin token.

use crate::error::{LocalEnvError, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::{io::Read, path::Path};

/// File names inside the PKI directory.
pub const CA_CERT: &str = "ca.crt";
pub const SERVER_CERT: &str = "apiserver.crt";
pub const SERVER_KEY: &str = "apiserver.key";
pub const SERVICE_ACCOUNT_KEY: &str = "sa.key";
pub const SERVICE_ACCOUNT_PUB: &str = "sa.pub";
pub const TOKENS: &str = "tokens.csv";

/// Names and addresses the serving certificate is valid for: loopback, the fabric's management
/// gateway (where nodes reach it), and the in-cluster names clients inside a pod would use.
const SERVER_NAMES: &[&str] = &[
    "127.0.0.1",
    crate::fabric::MGMT_GATEWAY,
    "localhost",
    "10.96.0.1",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

/// Writes a fresh CA, serving certificate, service-account keys and admin token into `dir`;
/// returns the admin token.
pub fn generate(dir: &Path) -> Result<String> {
    std::fs::create_dir_all(dir).map_err(LocalEnvError::io("create", dir))?;

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kubernetes-nmstate localenv CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca = Issuer::new(ca_params, ca_key);

    let mut server_params = CertificateParams::new(
        SERVER_NAMES
            .iter()
            .map(|name| name.to_string())
            .collect::<Vec<_>>(),
    )?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate()?;
    let server_cert = server_params.signed_by(&server_key, &ca)?;

    let service_account_key = KeyPair::generate()?;
    let token = random_hex(16)?;

    let files = [
        (CA_CERT, ca_cert.pem()),
        (SERVER_CERT, server_cert.pem()),
        (SERVER_KEY, server_key.serialize_pem()),
        (SERVICE_ACCOUNT_KEY, service_account_key.serialize_pem()),
        (SERVICE_ACCOUNT_PUB, service_account_key.public_key_pem()),
        // token,user,uid,"groups": the admin is in system:masters.
        (
            TOKENS,
            format!("{token},localenv-admin,localenv-admin,\"system:masters\"\n"),
        ),
    ];
    for (name, content) in files {
        let path = dir.join(name);
        std::fs::write(&path, content).map_err(LocalEnvError::io("write", &path))?;
    }
    Ok(token)
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buffer = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut buffer))
        .map_err(LocalEnvError::io("read", "/dev/urandom"))?;
    Ok(buffer.iter().map(|byte| format!("{byte:02x}")).collect())
}
