//! Making the webhook's certificates (rcgen) and reading back the ones kept in Secrets
//! (x509-parser): just the facts rotation decides on.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Certificates start this long before they are made, so a peer whose clock is a little behind
/// accepts them at once. Also how a certificate's issue time is told from its `notBefore`.
pub const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("not a PEM certificate: {0}")]
    Pem(String),
    #[error("not an X.509 certificate: {0}")]
    Parse(String),
}

/// What rotation needs to know about one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    pub pem: String,
    pub subject: String,
    pub issuer: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// DNS names and IP addresses, as text.
    pub names: Vec<String>,
}

impl CertificateInfo {
    /// When it was made (for certificates made here, which are backdated by [`BACKDATE`]).
    pub fn issued_at(&self) -> SystemTime {
        self.not_before + BACKDATE
    }
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyedCertificate {
    pub certificate: String,
    pub key: String,
}

/// Every certificate in a PEM bundle, in order; what does not parse is an error.
pub fn parse_bundle(pem: &str) -> Result<Vec<CertificateInfo>, CertificateError> {
    let mut certificates = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|error| CertificateError::Pem(error.to_string()))?;
        let certificate = block
            .parse_x509()
            .map_err(|error| CertificateError::Parse(error.to_string()))?;
        let names = certificate
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|extension| {
                extension
                    .value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
                        x509_parser::extensions::GeneralName::IPAddress(bytes) => ip_text(bytes),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let time = |seconds: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
        certificates.push(CertificateInfo {
            pem: to_pem(&block.contents),
            subject: certificate.subject().to_string(),
            issuer: certificate.issuer().to_string(),
            not_before: time(certificate.validity().not_before.timestamp()),
            not_after: time(certificate.validity().not_after.timestamp()),
            names,
        });
    }
    Ok(certificates)
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|v4| std::net::Ipv4Addr::from(v4).to_string()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|v6| std::net::Ipv6Addr::from(v6).to_string()),
        _ => None,
    }
}

fn to_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

/// Standard base64 with padding, as Kubernetes writes bytes (e.g. `caBundle`).
pub fn base64(bytes: &[u8]) -> String {
    match serde_json::to_value(k8s_openapi::ByteString(bytes.to_vec())) {
        Ok(serde_json::Value::String(encoded)) => encoded,
        _ => String::new(),
    }
}

fn validity(params: &mut CertificateParams, now: SystemTime, lifetime_end: SystemTime) {
    params.not_before = (now - BACKDATE).into();
    params.not_after = lifetime_end.into();
}

/// A new self-signed CA valid from now for `lifetime`.
pub fn new_authority(
    name: &str,
    now: SystemTime,
    lifetime: Duration,
) -> Result<KeyedCertificate, CertificateError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    // Each CA has its own subject, so a serving certificate's issuer names its CA exactly.
    let stamp = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{name}-ca@{stamp}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, now, now + lifetime);
    let key = KeyPair::generate()?;
    let certificate = params.self_signed(&key)?;
    Ok(KeyedCertificate {
        certificate: certificate.pem(),
        key: key.serialize_pem(),
    })
}

/// A serving certificate for `names` (DNS names or IP addresses), signed by `authority`,
/// valid from now until `not_after`.
pub fn new_serving_certificate(
    authority: &KeyedCertificate,
    names: &[String],
    now: SystemTime,
    not_after: SystemTime,
) -> Result<KeyedCertificate, CertificateError> {
    let authority_key = KeyPair::from_pem(&authority.key)?;
    let issuer = Issuer::from_ca_cert_pem(&authority.certificate, authority_key)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = names
        .iter()
        .map(|name| match name.parse::<std::net::IpAddr>() {
            Ok(address) => Ok(SanType::IpAddress(address)),
            Err(_) => Ok(SanType::DnsName(name.clone().try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()?;
    if let Some(first) = names.first() {
        params.distinguished_name.push(DnType::CommonName, first.clone());
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    validity(&mut params, now, not_after);
    let key = KeyPair::generate()?;
    let certificate = params.signed_by(&key, &issuer)?;
    Ok(KeyedCertificate {
        certificate: certificate.pem(),
        key: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn made_certificates_read_back() {
        let now = SystemTime::now();
        let ca = new_authority("nmstate", now, Duration::from_secs(3600)).unwrap();
        let names = vec!["nmstate-webhook.nmstate.svc".to_string(), "127.0.0.1".to_string()];
        let serving = new_serving_certificate(&ca, &names, now, now + Duration::from_secs(600)).unwrap();

        let ca_info = &parse_bundle(&ca.certificate).unwrap()[0];
        let serving_info = &parse_bundle(&serving.certificate).unwrap()[0];
        assert_eq!(serving_info.issuer, ca_info.subject);
        assert!(ca_info.subject.starts_with("CN=nmstate-ca@"));
        assert_eq!(serving_info.names, names);
        let seconds = |time: SystemTime| time.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(
            seconds(serving_info.not_after),
            seconds(now + Duration::from_secs(600))
        );
        assert_eq!(seconds(serving_info.issued_at()), seconds(now));
        assert_eq!(parse_bundle(&ca_info.pem).unwrap()[0], *ca_info, "PEM round trip");

        let both = format!("{}{}", ca.certificate, serving.certificate);
        assert_eq!(parse_bundle(&both).unwrap().len(), 2);
        assert!(parse_bundle("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err());
    }
}
