//! `nmstate-webhook`: the admission webhook for policies (validation and upstream's mutations,
//! over HTTPS), and the leader-elected writer of its self-signed CA and serving certificate.

/// The CA and serving certificate: made, rotated and published by one writer.
pub mod certs;
/// Kubernetes' label key and value formats, with apimachinery's messages.
pub mod label_format;
/// Admission counts and latencies per webhook and answer.
pub mod metrics;
/// Upstream's three mutations: conditions reset, Unknown conditions, the timestamp annotation.
pub mod mutation;
/// The HTTPS server: one path per webhook of the rendered configurations.
pub mod server;
/// The serving certificate, reloaded from its Secret's files without a restart.
pub mod tls;
/// The policy rules, with upstream's messages (pure).
pub mod validation;
