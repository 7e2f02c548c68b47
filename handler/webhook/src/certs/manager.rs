//! Applies [`rotation::plan`] to the cluster: the CA Secret, the serving Secret, and the
//! `caBundle` of every webhook in the webhook configurations. Runs on the leader only.

use super::{
    config::RotationConfig,
    rotation::{self, Step},
    x509::{self, CertificateInfo, KeyedCertificate},
};
use crate::tls::{CERTIFICATE_KEY, PRIVATE_KEY_KEY};
use futures::{StreamExt, stream::BoxStream};
use json_patch::{AddOperation, Patch as JsonPatch, PatchOperation, TestOperation, jsonptr::PointerBuf};
use k8s_openapi::{
    ByteString,
    api::{
        admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration},
        core::v1::Secret,
    },
};
use kube::{
    Api, Client, Resource,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use nmstate_api::labels;
use nmstate_runtime::watch;
use serde::de::DeserializeOwned;
use std::{collections::BTreeMap, fmt::Debug, time::Duration, time::SystemTime};
use tracing::{info, warn};

/// The field manager of everything the certificate writer changes.
const FIELD_MANAGER: &str = nmstate_api::names::WEBHOOK_CERTS;
/// The CA Secret's bundle of trusted CAs (current first).
pub const BUNDLE_KEY: &str = "ca-bundle.crt";
/// The serving Secret's copy of the bundle (the usual `ca.crt` of a TLS Secret).
pub const SERVING_BUNDLE_KEY: &str = "ca.crt";
/// How many plan steps one reconcile may take (new CA, bundle, serving certificate).
const MAX_STEPS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum CertManagerError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Certificate(#[from] x509::CertificateError),
    #[error("the certificates did not settle after {MAX_STEPS} steps; retrying")]
    Unsettled,
}

impl CertManagerError {
    /// A bounded category, for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            CertManagerError::Kube(_) => "kube",
            CertManagerError::Certificate(_) => "certificate",
            CertManagerError::Unsettled => "unsettled",
        }
    }
}

/// Where the certificates live and what they are for.
#[derive(Clone, Debug)]
pub struct CertSettings {
    pub namespace: String,
    pub ca_secret: String,
    pub serving_secret: String,
    /// The MutatingWebhookConfiguration and ValidatingWebhookConfiguration to inject into.
    pub webhook_configuration: String,
    /// The serving certificate's DNS names and IP addresses.
    pub names: Vec<String>,
    pub rotation: RotationConfig,
}

/// What the Secrets hold, read leniently: what does not parse counts as missing.
struct Stored {
    authority: Option<(CertificateInfo, KeyedCertificate)>,
    bundle: Vec<CertificateInfo>,
    serving: Option<CertificateInfo>,
    ca_secret: Option<Secret>,
    serving_secret: Option<Secret>,
}

fn text(secret: Option<&Secret>, key: &str) -> Option<String> {
    let bytes = secret?.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn first_certificate(pem: Option<String>, what: &str) -> Option<CertificateInfo> {
    match x509::parse_bundle(&pem?) {
        Ok(mut certificates) if !certificates.is_empty() => Some(certificates.remove(0)),
        Ok(_) => None,
        Err(error) => {
            warn!("replacing the {what}: {error}");
            None
        }
    }
}

async fn read(secrets: &Api<Secret>, settings: &CertSettings) -> Result<Stored, kube::Error> {
    let ca_secret = secrets.get_opt(&settings.ca_secret).await?;
    let serving_secret = secrets.get_opt(&settings.serving_secret).await?;
    let authority = first_certificate(text(ca_secret.as_ref(), CERTIFICATE_KEY), "CA").and_then(|info| {
        let key = text(ca_secret.as_ref(), PRIVATE_KEY_KEY)?;
        rcgen::KeyPair::from_pem(&key).ok()?;
        let keyed = KeyedCertificate {
            certificate: info.pem.clone(),
            key,
        };
        Some((info, keyed))
    });
    let bundle = text(ca_secret.as_ref(), BUNDLE_KEY)
        .and_then(|pem| x509::parse_bundle(&pem).ok())
        .unwrap_or_default();
    let serving = first_certificate(
        text(serving_secret.as_ref(), CERTIFICATE_KEY),
        "serving certificate",
    );
    Ok(Stored {
        authority,
        bundle,
        serving,
        ca_secret,
        serving_secret,
    })
}

/// Brings the certificates up to date; returns when to look again.
pub async fn reconcile(client: &Client, settings: &CertSettings) -> Result<Duration, CertManagerError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    for _ in 0..MAX_STEPS {
        let now = SystemTime::now();
        let stored = read(&secrets, settings).await?;
        let authority = stored.authority.as_ref().map(|(info, _)| info);
        let plan = rotation::plan(
            now,
            &settings.rotation,
            authority,
            &stored.bundle,
            stored.serving.as_ref(),
            &settings.names,
        );
        match (plan.step, &stored.authority) {
            (Step::NewAuthority, _) => {
                let new = x509::new_authority("nmstate-webhook", now, settings.rotation.ca_rotate)?;
                let new_info = first_certificate(Some(new.certificate.clone()), "new CA").ok_or(
                    x509::CertificateError::Parse("the new CA does not read back".into()),
                )?;
                let mut previous = stored.bundle.clone();
                previous.extend(authority.cloned());
                let bundle = bundle_pem(&rotation::trusted(now, &new_info, &previous));
                let data = [
                    (CERTIFICATE_KEY, new.certificate.clone()),
                    (PRIVATE_KEY_KEY, new.key.clone()),
                    (BUNDLE_KEY, bundle),
                ];
                write_secret(&secrets, &settings.ca_secret, stored.ca_secret, &data).await?;
                info!(secret = %settings.ca_secret, "made a new CA ({})", new_info.subject);
            }
            (step, Some((authority, keyed))) => {
                let bundle = bundle_pem(&rotation::trusted(now, authority, &stored.bundle));
                if text(stored.ca_secret.as_ref(), BUNDLE_KEY).as_deref() != Some(bundle.as_str()) {
                    let data = [
                        (CERTIFICATE_KEY, keyed.certificate.clone()),
                        (PRIVATE_KEY_KEY, keyed.key.clone()),
                        (BUNDLE_KEY, bundle.clone()),
                    ];
                    write_secret(&secrets, &settings.ca_secret, stored.ca_secret, &data).await?;
                    continue;
                }
                publish_bundle(client, &settings.webhook_configuration, &bundle).await?;
                let serving_bundle = text(stored.serving_secret.as_ref(), SERVING_BUNDLE_KEY);
                if step == Step::NewServingCertificate {
                    let not_after = (now + settings.rotation.cert_rotate).min(authority.not_after);
                    let new = x509::new_serving_certificate(keyed, &settings.names, now, not_after)?;
                    let data = [
                        (CERTIFICATE_KEY, new.certificate),
                        (PRIVATE_KEY_KEY, new.key),
                        (SERVING_BUNDLE_KEY, bundle),
                    ];
                    write_secret(&secrets, &settings.serving_secret, stored.serving_secret, &data).await?;
                    info!(secret = %settings.serving_secret, "made a new serving certificate ({})", authority.subject);
                } else if serving_bundle.as_deref() != Some(bundle.as_str())
                    && let Some(mut secret) = stored.serving_secret
                {
                    secret
                        .data
                        .get_or_insert_default()
                        .insert(SERVING_BUNDLE_KEY.into(), ByteString(bundle.into_bytes()));
                    secrets
                        .replace(&settings.serving_secret, &post_params(), &secret)
                        .await?;
                } else {
                    return Ok(plan.recheck_in);
                }
            }
            (_, None) => return Err(CertManagerError::Unsettled),
        }
    }
    Err(CertManagerError::Unsettled)
}

fn bundle_pem(authorities: &[&CertificateInfo]) -> String {
    authorities.iter().map(|ca| ca.pem.as_str()).collect()
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    }
}

/// Creates the Secret, or replaces its data at the version read (a concurrent writer makes
/// this fail with a conflict, and the next reconcile starts over).
async fn write_secret(
    secrets: &Api<Secret>,
    name: &str,
    existing: Option<Secret>,
    data: &[(&str, String)],
) -> Result<(), kube::Error> {
    let data: BTreeMap<String, ByteString> = data
        .iter()
        .map(|(key, value)| (key.to_string(), ByteString(value.clone().into_bytes())))
        .collect();
    match existing {
        Some(mut secret) => {
            secret.data = Some(data);
            secrets.replace(name, &post_params(), &secret).await?;
        }
        None => {
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    labels: Some(BTreeMap::from([
                        (labels::APP.into(), labels::APP_VALUE.into()),
                        (labels::COMPONENT.into(), labels::COMPONENT_WEBHOOK.into()),
                    ])),
                    ..ObjectMeta::default()
                },
                type_: Some("kubernetes.io/tls".into()),
                data: Some(data),
                ..Secret::default()
            };
            secrets.create(&post_params(), &secret).await?;
        }
    }
    Ok(())
}

/// Sets `caBundle` on every webhook of both configurations named `name` that lacks it. A
/// configuration that does not exist yet is skipped (its creation wakes the writer up).
async fn publish_bundle(client: &Client, name: &str, bundle: &str) -> Result<(), kube::Error> {
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let bundles = mutating.get_opt(name).await?.map(|configuration| {
        let webhooks = configuration.webhooks.unwrap_or_default();
        webhooks
            .into_iter()
            .map(|webhook| (webhook.name, webhook.client_config.ca_bundle))
            .collect()
    });
    patch_bundles(&mutating, name, bundles, bundle).await?;
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let bundles = validating.get_opt(name).await?.map(|configuration| {
        let webhooks = configuration.webhooks.unwrap_or_default();
        webhooks
            .into_iter()
            .map(|webhook| (webhook.name, webhook.client_config.ca_bundle))
            .collect()
    });
    patch_bundles(&validating, name, bundles, bundle).await
}

/// Patches the `caBundle` of each `(webhook name, caBundle)` that differs from `bundle`;
/// nothing when the configuration does not exist (`None`).
async fn patch_bundles<K>(
    api: &Api<K>,
    name: &str,
    webhooks: Option<Vec<(String, Option<ByteString>)>>,
    bundle: &str,
) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let encoded = x509::base64(bundle.as_bytes());
    let mut operations = Vec::new();
    for (index, (webhook, current)) in webhooks.into_iter().flatten().enumerate() {
        if current.is_some_and(|bytes| bytes.0 == bundle.as_bytes()) {
            continue;
        }
        let index = index.to_string();
        // The test pins the index to the webhook, so a concurrent edit cannot misplace it.
        operations.push(PatchOperation::Test(TestOperation {
            path: PointerBuf::from_tokens(["webhooks", index.as_str(), "name"]),
            value: serde_json::Value::String(webhook),
        }));
        operations.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["webhooks", index.as_str(), "clientConfig", "caBundle"]),
            value: serde_json::Value::String(encoded.to_string()),
        }));
    }
    if !operations.is_empty() {
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        api.patch(name, &params, &Patch::<()>::Json(JsonPatch(operations)))
            .await?;
        info!(configuration = %name, "published the CA bundle");
    }
    Ok(())
}

/// What wakes the writer besides its timer: any change to the two Secrets or the two
/// webhook configurations (e.g. the operator re-creating one without a `caBundle`).
pub fn changes(client: &Client, settings: &CertSettings) -> BoxStream<'static, ()> {
    fn named<K>(api: Api<K>, name: &str) -> BoxStream<'static, ()>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        watch::retried(watcher(api, config))
            .touched_objects()
            .map(|_| ())
            .boxed()
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    futures::stream::select_all([
        named(secrets.clone(), &settings.ca_secret),
        named(secrets, &settings.serving_secret),
        named(
            Api::<MutatingWebhookConfiguration>::all(client.clone()),
            &settings.webhook_configuration,
        ),
        named(
            Api::<ValidatingWebhookConfiguration>::all(client.clone()),
            &settings.webhook_configuration,
        ),
    ])
    .boxed()
}

/// Keeps the certificates up to date for as long as it runs (while leading). Failures are
/// retried after 1 s, doubling up to a minute while they last.
pub async fn run(client: Client, settings: CertSettings) {
    let mut changes = changes(&client, &settings);
    let mut failures = 0u32;
    loop {
        let wait = match reconcile(&client, &settings).await {
            Ok(recheck_in) => {
                failures = 0;
                recheck_in
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let retry = Duration::from_secs(1 << (failures - 1).min(6)).min(Duration::from_secs(60));
                warn!(
                    category = error.category(),
                    "webhook certificates: {error}; retrying in {}s",
                    retry.as_secs()
                );
                retry
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            change = changes.next() => if change.is_none() { return },
        }
        // A burst of changes (our own writes among them) makes one reconcile.
        tokio::time::sleep(Duration::from_millis(50)).await;
        while let Some(Some(())) = futures::FutureExt::now_or_never(changes.next()) {}
    }
}
