//! A webhook test's world: `nmstate-webhook` running on 127.0.0.1, its Secrets and Lease in a
//! namespace of its own, and the rendered webhook configurations (templates/webhook) pointed at
//! it by URL and limited to policies labelled for this test, so other tests never meet it.

#![allow(dead_code)] // shared by the webhook tests and the webhook benchmark

use k8s_openapi::api::{
    admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration},
    core::v1::Secret,
};
use kube::{
    Api, Client,
    api::{DynamicObject, Patch, PatchParams, PostParams},
};
use nmstate_localenv::{
    LocalEnv,
    testing::{NodeProcess, create_namespace, eventually, free_port, install_crds, kubectl, shared_env},
};
use serde_json::{Value, json};
use std::{io::Write, time::Duration};

/// The webhook program: the workspace's build (the handler's soak starts it too).
pub fn webhook_binary() -> std::path::PathBuf {
    nmstate_localenv::testing::workspace_binary("nmstate-webhook")
}
/// What the API server says when it could not get an answer from the policy webhooks.
pub const UNREACHABLE: &str = "failed calling webhook \"nodenetworkconfigurationpolicies-";
/// Policies carrying this label (value: the test's id) go through this test's webhook.
pub const SELECTOR: &str = "nmstate-test/webhook";

pub struct Fixture {
    pub env: LocalEnv,
    pub client: Client,
    /// The namespace, and the name of both webhook configurations.
    pub id: String,
    pub port: u16,
    pub webhook: Option<NodeProcess>,
    rotation: Vec<(String, String)>,
}

/// The webhook configurations and Service as the operator renders them for `namespace`.
pub fn rendered(namespace: &str) -> Vec<Value> {
    let config = nmstate_operator::config::OperatorConfig::from_lookup(|name| {
        (name == "HANDLER_NAMESPACE").then(|| namespace.to_string())
    })
    .unwrap();
    let facts = nmstate_operator::render::ClusterFacts {
        server_minor: 20,
        tolerated_infra_taints: 0,
    };
    nmstate_operator::render::render(&Default::default(), &config, &facts)
        .unwrap()
        .into_iter()
        .filter(|object| {
            let kind = object["kind"].as_str().unwrap_or_default();
            kind.ends_with("WebhookConfiguration")
                || (kind == "Service" && object["metadata"]["name"] == "nmstate-webhook")
        })
        .collect()
}

impl Fixture {
    /// Starts the webhook with `rotation` (CA_ROTATE_INTERVAL etc.) and waits until the API
    /// server admits through it.
    pub async fn start(rotation: &[(&str, &str)]) -> Fixture {
        let env = shared_env().await.unwrap();
        let client = env.client().await.unwrap();
        install_crds(&client).await.unwrap();
        let id = create_namespace(&client, "webhook").await.unwrap();
        let mut fixture = Fixture {
            env,
            client,
            id,
            port: free_port(),
            webhook: None,
            rotation: rotation
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
        };
        fixture.register().await;
        fixture.start_webhook();
        fixture.wait_until_admitting().await;
        fixture
    }

    /// Creates both configurations from the template, by URL, for this test's policies only.
    async fn register(&self) {
        for mut object in rendered(&self.id) {
            if object["kind"] == "Service" {
                continue;
            }
            object["metadata"]["name"] = json!(self.id);
            for webhook in object["webhooks"].as_array_mut().unwrap() {
                let path = webhook["clientConfig"]["service"]["path"]
                    .as_str()
                    .unwrap()
                    .to_string();
                webhook["clientConfig"] = json!({"url": format!("https://127.0.0.1:{}{path}", self.port)});
                webhook["objectSelector"] = json!({"matchLabels": {SELECTOR: self.id}});
            }
            let params = PostParams::default();
            if object["kind"] == "MutatingWebhookConfiguration" {
                let configuration: MutatingWebhookConfiguration = serde_json::from_value(object).unwrap();
                Api::all(self.client.clone())
                    .create(&params, &configuration)
                    .await
                    .unwrap();
            } else {
                let configuration: ValidatingWebhookConfiguration = serde_json::from_value(object).unwrap();
                Api::all(self.client.clone())
                    .create(&params, &configuration)
                    .await
                    .unwrap();
            }
        }
    }

    pub fn start_webhook(&mut self) {
        self.webhook = Some(self.start_replica(self.port, "a"));
    }

    /// Another `nmstate-webhook` of this test, serving on `port`, named `name` in the
    /// certificate writer's election.
    pub fn start_replica(&self, port: u16, name: &str) -> NodeProcess {
        let bind = format!("127.0.0.1:{port}");
        let identity = format!("{}-{name}", self.id);
        let mut variables = vec![
            ("POD_NAMESPACE", self.id.as_str()),
            ("POD_NAME", identity.as_str()),
            ("WEBHOOK_BIND_ADDRESS", bind.as_str()),
            ("WEBHOOK_CONFIGURATION", self.id.as_str()),
            ("WEBHOOK_EXTRA_NAMES", "127.0.0.1"),
            ("LEASE_DURATION_SECONDS", "4"),
            ("RUST_LOG", "info"),
        ];
        variables.extend(
            self.rotation
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_str())),
        );
        let log = self.env.dir().join(format!("{identity}.log"));
        NodeProcess::start_on_host(&self.env, &webhook_binary(), &[], &variables, log).unwrap()
    }

    /// Waits until a dry-run creation goes through the webhook (it carries the timestamp).
    pub async fn wait_until_admitting(&self) {
        let probe = self.policy("probe", json!({}));
        eventually("the webhook admits policies", Duration::from_secs(30), || async {
            let created = self.dry_run(&probe).await.ok()?;
            created["metadata"]["annotations"][nmstate_api::labels::WEBHOOK_MUTATING_TIMESTAMP]
                .as_str()
                .map(|_| ())
        })
        .await
        .unwrap_or_else(|error| panic!("{error}\n{}", self.log()));
    }

    pub fn log(&self) -> String {
        self.webhook.as_ref().map(NodeProcess::log).unwrap_or_default()
    }

    /// Policies as dynamic objects, so tests can send what the typed API would not.
    pub fn policies(&self) -> Api<DynamicObject> {
        let resource = kube::api::ApiResource {
            group: "nmstate.io".into(),
            version: "v1".into(),
            api_version: "nmstate.io/v1".into(),
            kind: "NodeNetworkConfigurationPolicy".into(),
            plural: "nodenetworkconfigurationpolicies".into(),
        };
        Api::all_with(self.client.clone(), &resource)
    }

    /// Creates `policy` (as JSON); what the API server stored, as JSON.
    pub async fn create(&self, policy: &Value) -> Result<Value, kube::Error> {
        self.create_with(policy, &PostParams::default()).await
    }

    /// Admits `policy` (as JSON) without storing it: every webhook runs.
    pub async fn dry_run(&self, policy: &Value) -> Result<Value, kube::Error> {
        let params = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        self.create_with(policy, &params).await
    }

    async fn create_with(&self, policy: &Value, params: &PostParams) -> Result<Value, kube::Error> {
        let object: DynamicObject = serde_json::from_value(policy.clone()).unwrap();
        let created = self.policies().create(params, &object).await?;
        Ok(serde_json::to_value(created).unwrap())
    }

    /// Merge-patches policy `name` (its status when `status`); the result as JSON.
    pub async fn merge(&self, name: &str, patch: &Value, status: bool) -> Result<Value, kube::Error> {
        let params = PatchParams::default();
        let api = self.policies();
        let patched = if status {
            api.patch_status(name, &params, &Patch::Merge(patch)).await?
        } else {
            api.patch(name, &params, &Patch::Merge(patch)).await?
        };
        Ok(serde_json::to_value(patched).unwrap())
    }

    /// A policy named `<id>-<suffix>`, labelled for this test's webhook, selecting no node.
    pub fn policy(&self, suffix: &str, mut spec: Value) -> Value {
        if spec.get("nodeSelector").is_none() {
            spec["nodeSelector"] = json!({SELECTOR: self.id});
        }
        json!({
            "apiVersion": "nmstate.io/v1",
            "kind": "NodeNetworkConfigurationPolicy",
            "metadata": {"name": format!("{}-{suffix}", self.id), "labels": {SELECTOR: self.id}},
            "spec": spec,
        })
    }

    /// `kubectl apply` of `object`: its output, or the error kubectl printed.
    pub fn kubectl_apply(&self, object: &Value) -> Result<String, String> {
        nmstate_localenv::testing::kubectl_apply(&self.env, object)
    }

    /// The CA bundle the API server verifies the webhook with (PEM).
    pub async fn published_bundle(&self) -> Option<String> {
        let configuration = Api::<ValidatingWebhookConfiguration>::all(self.client.clone())
            .get(&self.id)
            .await
            .ok()?;
        let bundle = configuration.webhooks?.first()?.client_config.ca_bundle.clone()?;
        String::from_utf8(bundle.0).ok()
    }

    pub async fn secret(&self, name: &str) -> Option<Secret> {
        Api::<Secret>::namespaced(self.client.clone(), &self.id)
            .get_opt(name)
            .await
            .ok()
            .flatten()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mut webhook) = self.webhook.take() {
            webhook.terminate(Duration::from_secs(10));
        }
        // Synchronous, so it also runs when a test panics.
        let _ = kubectl(&self.env)
            .args(["delete", "--ignore-not-found", "--wait=false"])
            .args(["mutatingwebhookconfiguration", &self.id])
            .output();
        let _ = kubectl(&self.env)
            .args([
                "delete",
                "--ignore-not-found",
                "--wait=false",
                "validatingwebhookconfiguration",
                &self.id,
            ])
            .output();
        let _ = kubectl(&self.env)
            .args(["delete", "nncp", "--ignore-not-found", "--wait=false", "-l"])
            .arg(format!("{SELECTOR}={}", self.id))
            .output();
        let _ = kubectl(&self.env)
            .args([
                "delete",
                "namespace",
                "--ignore-not-found",
                "--wait=false",
                &self.id,
            ])
            .output();
    }
}

/// A TLS client session for 127.0.0.1 that trusts the CAs of `bundle` (PEM), as the API server
/// does with a webhook configuration's `caBundle`.
pub fn client_connection(bundle: &str) -> Result<rustls::ClientConnection, String> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        roots
            .add(certificate.map_err(|error| error.to_string())?)
            .map_err(|error| error.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|error| error.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").map_err(|error| error.to_string())?;
    rustls::ClientConnection::new(std::sync::Arc::new(config), name).map_err(|error| error.to_string())
}

/// A fresh TLS connection to the webhook, verified with `bundle` (PEM) for 127.0.0.1 as the
/// API server does for a new connection; sends `request` (an HTTP/1.1 request) and returns
/// the response status line and body, and the served certificate (DER).
pub fn fresh_tls_request(port: u16, bundle: &str, request: &str) -> Result<(String, Vec<u8>), String> {
    use std::io::Read;
    let mut connection = client_connection(bundle)?;
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|error| error.to_string())?;
    socket.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut stream = rustls::Stream::new(&mut connection, &mut socket);
    // A server that refuses a body by its length may answer and close before reading all of it.
    let written = stream.write_all(request.as_bytes());
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let served = connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|certificate| certificate.to_vec())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text.lines().next().unwrap_or_default().to_string();
    if status.is_empty() {
        return Err(match written {
            Err(error) => format!("TLS: {error}"),
            Ok(()) => "no response".into(),
        });
    }
    Ok((format!("{status}\n{}", body_of(&text)), served))
}

fn body_of(response: &str) -> &str {
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// An HTTP/1.1 POST of `body` to `path` that closes the connection afterwards.
pub fn post(path: &str, body: &[u8]) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        String::from_utf8_lossy(body)
    )
}
