#![allow(clippy::cloned_ref_to_slice_refs)] // bundles written out as arrays read better here

use super::*;
use crate::certs::x509::BACKDATE;
use std::time::UNIX_EPOCH;

const T0: u64 = 1_000_000;

fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(T0 + seconds)
}

/// Short lifetimes as in the rotation test: CA 100 s (overlap 40 s), serving 30 s (overlap 10 s).
fn config() -> RotationConfig {
    RotationConfig {
        ca_rotate: Duration::from_secs(100),
        ca_overlap: Duration::from_secs(40),
        cert_rotate: Duration::from_secs(30),
        cert_overlap: Duration::from_secs(10),
    }
}

fn names() -> Vec<String> {
    vec!["nmstate-webhook.nmstate.svc".into(), "127.0.0.1".into()]
}

fn ca(issued: u64) -> CertificateInfo {
    CertificateInfo {
        pem: format!("ca-{issued}"),
        subject: format!("CN=nmstate-ca@{issued}"),
        issuer: format!("CN=nmstate-ca@{issued}"),
        not_before: at(issued) - BACKDATE,
        not_after: at(issued + 100),
        names: vec![],
    }
}

fn serving(by: &CertificateInfo, issued: u64, lifetime: u64) -> CertificateInfo {
    CertificateInfo {
        pem: format!("serving-{issued}"),
        subject: "CN=nmstate-webhook.nmstate.svc".into(),
        issuer: by.subject.clone(),
        not_before: at(issued) - BACKDATE,
        not_after: at(issued + lifetime),
        names: names(),
    }
}

fn step(
    now: u64,
    authority: Option<&CertificateInfo>,
    bundle: &[CertificateInfo],
    cert: Option<&CertificateInfo>,
) -> Plan {
    plan(at(now), &config(), authority, bundle, cert, &names())
}

#[test]
fn nothing_yet_makes_a_ca_then_a_serving_certificate() {
    assert_eq!(step(0, None, &[], None).step, Step::NewAuthority);
    let ca = ca(0);
    assert_eq!(
        step(0, Some(&ca), &[ca.clone()], None).step,
        Step::NewServingCertificate
    );
}

#[test]
fn a_current_pair_waits_until_the_first_renewal() {
    let ca = ca(0);
    let cert = serving(&ca, 0, 30);
    let plan = step(5, Some(&ca), &[ca.clone()], Some(&cert));
    assert_eq!(plan.step, Step::Wait);
    assert_eq!(
        plan.recheck_in,
        Duration::from_secs(15),
        "serving renewal at 30 - 10"
    );
}

#[test]
fn the_serving_certificate_is_renewed_in_its_overlap() {
    let ca = ca(0);
    let cert = serving(&ca, 0, 30);
    assert_eq!(
        step(20, Some(&ca), &[ca.clone()], Some(&cert)).step,
        Step::NewServingCertificate
    );
    assert_eq!(
        step(31, Some(&ca), &[ca.clone()], Some(&cert)).step,
        Step::NewServingCertificate
    );
}

#[test]
fn the_ca_is_renewed_in_its_overlap_and_signs_after_propagation() {
    let old = ca(0);
    let cert = serving(&old, 50, 30);
    assert_eq!(step(59, Some(&old), &[old.clone()], Some(&cert)).step, Step::Wait);
    assert_eq!(
        step(60, Some(&old), &[old.clone()], Some(&cert)).step,
        Step::NewAuthority
    );

    let new = ca(60);
    let bundle = [new.clone(), old.clone()];
    let waiting = step(60, Some(&new), &bundle, Some(&cert));
    assert_eq!(
        waiting.step,
        Step::Wait,
        "the new CA must reach the API servers first"
    );
    assert_eq!(waiting.recheck_in, config().ca_propagation());
    let after = 60 + config().ca_propagation().as_secs();
    assert_eq!(
        step(after, Some(&new), &bundle, Some(&cert)).step,
        Step::NewServingCertificate
    );
}

#[test]
fn a_certificate_from_an_untrusted_ca_is_replaced_at_once() {
    let stranger = ca(0);
    let cert = serving(&stranger, 0, 30);
    let ours = ca(1);
    assert_eq!(
        step(1, Some(&ours), &[ours.clone()], Some(&cert)).step,
        Step::NewServingCertificate
    );
}

#[test]
fn a_certificate_for_other_names_is_replaced() {
    let ca = ca(0);
    let mut cert = serving(&ca, 0, 30);
    cert.names = vec!["old-service.nmstate.svc".into()];
    assert_eq!(
        step(1, Some(&ca), &[ca.clone()], Some(&cert)).step,
        Step::NewServingCertificate
    );
}

#[test]
fn an_expired_ca_is_replaced() {
    let old = ca(0);
    assert_eq!(
        step(500, Some(&old), &[old.clone()], None).step,
        Step::NewAuthority
    );
}

#[test]
fn old_cas_stay_trusted_until_they_expire() {
    let old = ca(0);
    let new = ca(60);
    let previous = [old.clone(), new.clone()];
    let subjects = |now| -> Vec<String> {
        trusted(at(now), &new, &previous)
            .iter()
            .map(|ca| ca.subject.clone())
            .collect()
    };
    assert_eq!(subjects(70), [new.subject.clone(), old.subject.clone()]);
    assert_eq!(subjects(100), [new.subject.clone()]);
    // The bundle's expiry is a recheck point, so the old CA leaves it on time.
    let cert = serving(&new, 70, 60);
    let plan = step(90, Some(&new), &[new.clone(), old.clone()], Some(&cert));
    assert_eq!(plan.recheck_in, Duration::from_secs(10));
}
