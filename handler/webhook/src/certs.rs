//! The webhook's self-signed CA and serving certificate: made, rotated and published into
//! Secrets and the webhook configurations' `caBundle` by one leader-elected writer.

pub mod config;
pub mod manager;
pub mod rotation;
pub mod x509;
