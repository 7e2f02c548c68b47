//! The API answers the programs act on rather than fail for: written once.

/// Whether a write lost a race (409): an update at a stale resourceVersion, or a create of an
/// object that exists by now. Read again, and retry or take what is there.
pub fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

/// Whether the object is not there (404): already deleted, or not created yet.
pub fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}
