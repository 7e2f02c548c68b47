//! The admission webhook for policies: HTTPS, AdmissionReview v1, one path per webhook of the
//! rendered configurations (`templates/webhook`).

use crate::{
    metrics::AdmissionMetrics,
    mutation,
    tls::{self, ServingCertificate},
    validation::{self, Refusal},
};
use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use kube::core::{
    DynamicObject, Status,
    admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
};
use nmstate_api::policy::NodeNetworkConfigurationPolicy;
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tracing::{debug, warn};

/// Upstream's paths, so upstream's webhook configurations work against this server.
pub const MUTATE_PATH: &str = "/nodenetworkconfigurationpolicies-mutate";
pub const STATUS_MUTATE_PATH: &str = "/nodenetworkconfigurationpolicies-status-mutate";
pub const TIMESTAMP_MUTATE_PATH: &str = "/nodenetworkconfigurationpolicies-timestamp-mutate";
pub const VALIDATE_PATH: &str = "/nodenetworkconfigurationpolicies-validate";
pub const PATHS: [&str; 4] = [
    MUTATE_PATH,
    STATUS_MUTATE_PATH,
    TIMESTAMP_MUTATE_PATH,
    VALIDATE_PATH,
];

/// An AdmissionReview carries the object and the old object, each at most the API server's
/// 3 MiB request limit.
pub const MAX_BODY_BYTES: usize = 8 << 20;
/// Answer well before the API server's `timeoutSeconds` (10 s in the rendered configuration).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connections in flight may finish after SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Which of the webhooks a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Review {
    Mutate,
    StatusMutate,
    TimestampMutate,
    Validate,
}

impl Review {
    /// Every webhook.
    pub const ALL: [Review; 4] = [
        Review::Mutate,
        Review::StatusMutate,
        Review::TimestampMutate,
        Review::Validate,
    ];

    /// The `webhook` label of the metrics.
    fn label(self) -> &'static str {
        match self {
            Review::Mutate => "mutate",
            Review::StatusMutate => "status-mutate",
            Review::TimestampMutate => "timestamp-mutate",
            Review::Validate => "validate",
        }
    }
}

/// What the routes share.
#[derive(Clone, Default)]
pub struct WebhookState {
    pub certificate: Arc<ServingCertificate>,
    pub metrics: Arc<AdmissionMetrics>,
}

/// The routes: the four webhooks, `/metrics`, `/healthz`, and `/readyz` (ready once a
/// certificate is loaded; without one no handshake succeeds anyway).
pub fn router(state: WebhookState) -> Router {
    let webhook = |kind: Review| {
        post(move |State(state): State<WebhookState>, body: Bytes| async move {
            let started = std::time::Instant::now();
            let (result, response) = answer(kind, body).await;
            state.metrics.record(kind.label(), result, started.elapsed());
            response
        })
    };
    Router::new()
        .route(MUTATE_PATH, webhook(Review::Mutate))
        .route(STATUS_MUTATE_PATH, webhook(Review::StatusMutate))
        .route(TIMESTAMP_MUTATE_PATH, webhook(Review::TimestampMutate))
        .route(VALIDATE_PATH, webhook(Review::Validate))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route(
            "/metrics",
            get(|State(state): State<WebhookState>| async move {
                nmstate_runtime::metrics::exposition(state.metrics.encode())
            }),
        )
        .with_state(state)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

async fn ready(State(state): State<WebhookState>) -> Response {
    if state.certificate.is_loaded() {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no serving certificate yet").into_response()
    }
}

/// Serves `router` over TLS on `address` until `shutdown`, then lets requests in flight finish.
pub async fn serve(
    address: SocketAddr,
    state: WebhookState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WebhookServeError> {
    let config = tls::server_config(state.certificate.clone()).map_err(WebhookServeError::Tls)?;
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.graceful_shutdown(Some(SHUTDOWN_GRACE));
    });
    axum_server::bind_rustls(
        address,
        axum_server::tls_rustls::RustlsConfig::from_config(config),
    )
    .handle(handle)
    .serve(router(state).into_make_service())
    .await
    .map_err(|source| WebhookServeError::Serve { address, source })
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookServeError {
    #[error(transparent)]
    Tls(tls::TlsError),
    #[error("cannot serve the webhook on {address}: {source}")]
    Serve {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// Reviews one request; the `result` label of the metrics, and the HTTP answer.
async fn answer(kind: Review, body: Bytes) -> (&'static str, Response) {
    let request = match decode(&body) {
        Ok(request) => request,
        Err(message) => return ("error", bad_request(message)),
    };
    let response = AdmissionResponse::from(&request);
    let work = tokio::task::spawn_blocking(move || review_request(kind, &request, response));
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, work).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            warn!("admission review failed: {error}");
            let failed = (StatusCode::INTERNAL_SERVER_ERROR, "the review failed");
            return ("error", failed.into_response());
        }
        Err(_) => {
            let message = format!("the review took longer than {}s", REQUEST_TIMEOUT.as_secs());
            return (
                "error",
                (StatusCode::SERVICE_UNAVAILABLE, message).into_response(),
            );
        }
    };
    let result = if response.allowed { "allowed" } else { "denied" };
    (result, axum::Json(response.into_review()).into_response())
}

/// The request of an AdmissionReview body, or why the body is not one.
fn decode(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, String> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(|error| format!("not an AdmissionReview: {error}"))?;
    review
        .try_into()
        .map_err(|_| "the AdmissionReview has no request".to_string())
}

/// Reviews an AdmissionReview body as the server does, without the server: the answer, or why
/// the body is not a review (a 400 from the server). For the fuzz targets.
pub fn review(kind: Review, body: &[u8]) -> Result<AdmissionResponse, String> {
    let request = decode(body)?;
    let response = AdmissionResponse::from(&request);
    Ok(review_request(kind, &request, response))
}

fn bad_request(message: String) -> Response {
    debug!("{message}");
    (StatusCode::BAD_REQUEST, message).into_response()
}

fn review_request(
    kind: Review,
    request: &AdmissionRequest<DynamicObject>,
    response: AdmissionResponse,
) -> AdmissionResponse {
    let object = request
        .object
        .as_ref()
        .and_then(|object| serde_json::to_value(object).ok());
    let patched = |patch: Option<json_patch::Patch>| match patch {
        None => response.clone(),
        Some(patch) => response
            .clone()
            .with_patch(patch)
            .unwrap_or_else(|error| response.clone().deny(format!("cannot encode the patch: {error}"))),
    };
    let is_write = matches!(request.operation, Operation::Create | Operation::Update);
    let Some(object) = object.filter(|_| is_write) else {
        return response;
    };
    match kind {
        Review::Mutate => response,
        Review::TimestampMutate => patched(Some(mutation::timestamp(&object, std::time::SystemTime::now()))),
        Review::StatusMutate => patched(mutation::initial_conditions(&object)),
        Review::Validate => validate(request, object, response),
    }
}

fn validate(
    request: &AdmissionRequest<DynamicObject>,
    object: serde_json::Value,
    response: AdmissionResponse,
) -> AdmissionResponse {
    let decode = |value: Result<serde_json::Value, serde_json::Error>| {
        value
            .and_then(serde_json::from_value::<NodeNetworkConfigurationPolicy>)
            .map_err(|error| Refusal::Invalid(format!("failed decoding policy: {error}")))
    };
    let policy = match decode(Ok(object)) {
        Ok(policy) => policy,
        Err(refusal) => return refuse(response, &refusal),
    };
    let old = match &request.old_object {
        Some(old) if request.operation == Operation::Update => match decode(serde_json::to_value(old)) {
            Ok(old) => Some(old),
            Err(refusal) => return refuse(response, &refusal),
        },
        _ => None,
    };
    match validation::validate(&policy, old.as_ref()) {
        Ok(()) => response,
        Err(refusal) => refuse(response, &refusal),
    }
}

fn refuse(response: AdmissionResponse, refusal: &Refusal) -> AdmissionResponse {
    let (reason, code) = match refusal {
        Refusal::Invalid(_) => ("Invalid", 422),
        Refusal::Forbidden(_) => ("Forbidden", 403),
    };
    let mut response = response.deny(refusal.message());
    response.result = Status::failure(refusal.message(), reason).with_code(code);
    response
}
