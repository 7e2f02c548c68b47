//! The webhook's serving certificate, swapped in place when its Secret changes: handshakes in
//! flight finish with the certificate they started with, the next ones get the new one, and
//! the process never restarts.

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use nmstate_runtime::watch;
use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use std::sync::{Arc, RwLock};
use tracing::{info, warn};

pub const CERTIFICATE_KEY: &str = "tls.crt";
pub const PRIVATE_KEY_KEY: &str = "tls.key";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the Secret has no {0}")]
    Missing(&'static str),
    #[error("{CERTIFICATE_KEY} is not a PEM certificate chain: {0}")]
    Certificate(String),
    #[error("{PRIVATE_KEY_KEY} is not a PEM private key: {0}")]
    PrivateKey(String),
    #[error("cannot use the private key: {0}")]
    Signing(rustls::Error),
    #[error("cannot set up TLS: {0}")]
    Config(rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate currently served; empty until the first one is loaded.
#[derive(Debug, Default)]
pub struct ServingCertificate(RwLock<Option<Arc<CertifiedKey>>>);

impl ServingCertificate {
    pub fn is_loaded(&self) -> bool {
        self.0.read().map(|slot| slot.is_some()).unwrap_or(false)
    }

    /// Replaces the served certificate with `certificate` and `key` (PEM).
    pub fn load(&self, certificate: &[u8], key: &[u8]) -> Result<(), TlsError> {
        let chain = CertificateDer::pem_slice_iter(certificate)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| TlsError::Certificate(error.to_string()))?;
        if chain.is_empty() {
            return Err(TlsError::Certificate("no certificate found".into()));
        }
        let key =
            PrivateKeyDer::from_pem_slice(key).map_err(|error| TlsError::PrivateKey(error.to_string()))?;
        let signing = provider()
            .key_provider
            .load_private_key(key)
            .map_err(TlsError::Signing)?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match().map_err(TlsError::Signing)?;
        if let Ok(mut slot) = self.0.write() {
            *slot = Some(Arc::new(certified));
        }
        Ok(())
    }

    /// Loads the `tls.crt` and `tls.key` of a `kubernetes.io/tls` Secret.
    pub fn load_secret(&self, secret: &Secret) -> Result<(), TlsError> {
        let data = secret.data.as_ref();
        let field = |key: &'static str| {
            data.and_then(|data| data.get(key))
                .map(|bytes| bytes.0.as_slice())
                .ok_or(TlsError::Missing(key))
        };
        self.load(field(CERTIFICATE_KEY)?, field(PRIVATE_KEY_KEY)?)
    }
}

impl ResolvesServerCert for ServingCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().and_then(|slot| slot.clone())
    }
}

/// TLS 1.2 and 1.3 with ring, HTTP/1.1 only (as upstream: no HTTP/2 rapid-reset exposure).
pub fn server_config(certificate: Arc<ServingCertificate>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Keeps `certificate` loaded from Secret `name` in `namespace`, for as long as it runs. A
/// deleted or broken Secret leaves the last good certificate in use.
pub async fn follow_secret(
    client: Client,
    namespace: String,
    name: String,
    certificate: Arc<ServingCertificate>,
) {
    let secrets: Api<Secret> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut updates = std::pin::pin!(watch::retried(watcher(secrets, config)).applied_objects());
    info!(secret = %format!("{namespace}/{name}"), "waiting for the serving certificate (tls.crt, tls.key)");
    while let Some(update) = updates.next().await {
        match update {
            Ok(secret) => match certificate.load_secret(&secret) {
                Ok(()) => info!(secret = %name, "serving certificate loaded"),
                Err(error) => warn!(secret = %name, "keeping the current serving certificate: {error}"),
            },
            Err(error) => warn!(secret = %name, "watching the serving certificate: {error}"),
        }
    }
}
