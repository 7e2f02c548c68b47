//! When to make a new CA or serving certificate, and which CAs to trust: a pure function of the
//! time, the configuration and what the Secrets hold.
//!
//! A rotation never fails a request:
//! - a new CA is made `caOverlapInterval` before the current one expires, and both are in the
//!   `caBundle` until the old one expires;
//! - serving certificates switch to the new CA only [`RotationConfig::ca_propagation`] after it
//!   was published, so API servers trust it first;
//! - a serving certificate is replaced `certOverlapInterval` before it expires, so replicas
//!   that load the new one a little later still serve a valid one.

use super::{config::RotationConfig, x509::CertificateInfo};
use std::time::{Duration, SystemTime};

/// Rechecks at least this often, whatever the certificates say (a clock jump, a lost watch).
pub const MAX_RECHECK: Duration = Duration::from_secs(3600);
const MIN_RECHECK: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Make a new CA (none usable, or the current one is in its overlap window).
    NewAuthority,
    /// Sign a new serving certificate with the current CA.
    NewServingCertificate,
    /// Nothing to make now.
    Wait,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub step: Step,
    /// When to look again if nothing changes before.
    pub recheck_in: Duration,
}

/// What to do next. `authority` is the current CA (with a usable key), `serving` the serving
/// certificate, `bundle` the CAs trusted now, `names` the names the serving certificate must
/// carry.
pub fn plan(
    now: SystemTime,
    config: &RotationConfig,
    authority: Option<&CertificateInfo>,
    bundle: &[CertificateInfo],
    serving: Option<&CertificateInfo>,
    names: &[String],
) -> Plan {
    let due = |certificate: &CertificateInfo, overlap: Duration| {
        certificate
            .not_after
            .checked_sub(overlap)
            .unwrap_or(certificate.not_before)
    };
    let Some(authority) = authority.filter(|ca| now < due(ca, config.ca_overlap)) else {
        return Plan {
            step: Step::NewAuthority,
            recheck_in: MIN_RECHECK,
        };
    };
    let mut recheck_at = vec![due(authority, config.ca_overlap)];
    // Old CAs leave the bundle when they expire.
    recheck_at.extend(
        bundle
            .iter()
            .map(|ca| ca.not_after)
            .filter(|expiry| *expiry > now),
    );

    let step = match serving {
        Some(certificate)
            if certificate.issuer == authority.subject
                && now < due(certificate, config.cert_overlap)
                && same_names(&certificate.names, names) =>
        {
            recheck_at.push(due(certificate, config.cert_overlap));
            Step::Wait
        }
        // Signed by a CA that is still trusted, and otherwise fine: switch to the new CA once
        // the API servers had time to see it.
        Some(certificate)
            if certificate.issuer != authority.subject
                && now < due(certificate, config.cert_overlap)
                && same_names(&certificate.names, names)
                && bundle
                    .iter()
                    .any(|ca| ca.subject == certificate.issuer && now < ca.not_after)
                && now < authority.issued_at() + config.ca_propagation() =>
        {
            recheck_at.push(authority.issued_at() + config.ca_propagation());
            Step::Wait
        }
        _ => Step::NewServingCertificate,
    };
    let next = recheck_at
        .into_iter()
        .map(|at| at.duration_since(now).unwrap_or_default())
        .min()
        .unwrap_or(MAX_RECHECK);
    Plan {
        step,
        recheck_in: next.clamp(MIN_RECHECK, MAX_RECHECK),
    }
}

fn same_names(present: &[String], wanted: &[String]) -> bool {
    let mut present = present.to_vec();
    let mut wanted = wanted.to_vec();
    present.sort();
    wanted.sort();
    present == wanted
}

/// The CAs to trust: the current one first, then older ones until they expire.
pub fn trusted<'a>(
    now: SystemTime,
    authority: &'a CertificateInfo,
    previous: &'a [CertificateInfo],
) -> Vec<&'a CertificateInfo> {
    let mut trusted = vec![authority];
    for ca in previous {
        if now < ca.not_after && !trusted.iter().any(|kept| kept.pem == ca.pem) {
            trusted.push(ca);
        }
    }
    trusted
}

#[cfg(test)]
mod tests;
