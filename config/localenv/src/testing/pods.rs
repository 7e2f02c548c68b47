//! Tests that install the product the way users do (the Helm chart, the plain manifest, a
//! bundle's CSV, upgrades) run it on real pods: [`pods_env`] is a control plane with a scheduler
//! and every controller, and a real Kubernetes node ([`crate::kube_node`]) running the images
//! built from the workspace's binaries, also under the names the manifests give them
//! ([`ReleaseImages`]), so those manifests install as written.
//!
//! [`DeployedOperator`] is the operator such a test installed, as its Deployment runs it.

use super::{NodeProcess, kubectl, start_operator_as_deployed, workspace_binary};
use crate::{KubeRelease, LocalEnv, LocalEnvError, Result, Workloads, daemon::run, images, pods};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use std::{collections::BTreeMap, time::Duration};
use tokio::sync::OnceCell;

static PODS: OnceCell<LocalEnv> = OnceCell::const_new();

/// The real nodes of [`pods_env`], labelled as workers.
pub const POD_NODES: [&str; 2] = ["pods01", "pods02"];
/// How long a Deployment or DaemonSet of the product may take to roll out there.
pub const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(180);

/// The environment with real nodes of `NMSTATE_PODS_LOCALENV_DIR` (or `target/localenv-pods`),
/// started if it is not running, its nodes given the images of this build. Like
/// [`super::shared_env`] it is left running for the next test process (`make integration`
/// stops it at the end). Needs the current release: no kubelet of v1.20.2 is built here.
pub async fn pods_env() -> Result<LocalEnv> {
    PODS.get_or_try_init(|| async {
        if KubeRelease::from_env()? != KubeRelease::Current {
            return Err(LocalEnvError::Usage(
                "tests on real pods need the current release's kubelet (NMSTATE_KUBE_RELEASE=current); none is built for the oldest".into(),
            ));
        }
        let env = match std::env::var_os("NMSTATE_PODS_LOCALENV_DIR") {
            Some(dir) => LocalEnv::new(dir),
            None => LocalEnv::new(crate::workspace_dir().join("target/localenv-pods")),
        };
        env.up_for(Workloads::Kubelets).await?;
        let operator = workspace_binary("nmstate-operator");
        let bin_dir = operator.parent().unwrap_or(std::path::Path::new("."));
        let archives = env.build_images(bin_dir)?;
        let labels = BTreeMap::from([("node-role.kubernetes.io/worker".to_string(), String::new())]);
        for name in POD_NODES {
            env.node_up(name, &labels).await?;
            env.kubelet_up(name, &archives).await?;
        }
        Ok(env)
    })
    .await
    .cloned()
}

/// The images built here under the names a release's manifests give them, on every real node
/// while it lives: a test that installs release `v0.2.0` gets exactly the images it tagged, never
/// tags an earlier run left behind.
pub struct ReleaseImages {
    env: LocalEnv,
    references: Vec<String>,
}

impl ReleaseImages {
    /// `(image, reference)` pairs: `image` one of [`images::reference`]'s (operator, handler),
    /// `reference` for example `quay.io/nmstate/kubernetes-nmstate-rs-handler:v0.2.0`.
    pub fn tag(env: &LocalEnv, names: &[(&str, String)]) -> Result<Self> {
        let mut tagged = ReleaseImages {
            env: env.clone(),
            references: Vec::new(),
        };
        for (image, reference) in names {
            env.tag_image(&images::reference(image), reference)?;
            tagged.references.push(reference.clone());
        }
        Ok(tagged)
    }
}

impl Drop for ReleaseImages {
    fn drop(&mut self) {
        for reference in &self.references {
            if let Err(error) = self.env.untag_image(reference) {
                eprintln!("removing the image name {reference}: {error}");
            }
        }
    }
}

/// The name the operator gives its operand `name` when its `HANDLER_PREFIX` is `prefix`.
pub fn operand_name(prefix: &str, name: &str) -> String {
    format!("{}{name}", nmstate_api::names::operand_prefix(prefix))
}

/// The operator a test installed (from the chart, the plain manifest or a CSV), run as its
/// Deployment says: its pods, where the environment has kubelets; else a host process with
/// that Deployment's environment and ServiceAccount ([`start_operator_as_deployed`]), with its
/// operands named with a prefix so that they stay apart from other tests' (the environment of
/// the oldest release, where no kubelet runs).
pub struct DeployedOperator {
    env: LocalEnv,
    namespace: String,
    deployment: String,
    process: Option<(NodeProcess, String)>,
}

impl DeployedOperator {
    /// Waits for the Deployment `deployment` of `namespace` to roll out (real pods), or
    /// starts it as a process whose operands are named with `prefix`.
    pub async fn start(env: &LocalEnv, namespace: &str, deployment: &str, prefix: &str) -> Result<Self> {
        let mut operator = DeployedOperator {
            env: env.clone(),
            namespace: namespace.to_string(),
            deployment: deployment.to_string(),
            process: None,
        };
        if env.control_plane().workloads() == Workloads::Kubelets {
            operator.rollout()?;
        } else {
            operator.process = Some((operator.start_process(prefix).await?, prefix.to_string()));
        }
        Ok(operator)
    }

    /// The name of its operand `name` (`nmstate-handler`, `nmstate-webhook`, `nmstate`…).
    pub fn operand(&self, name: &str) -> String {
        operand_name(self.process.as_ref().map_or("", |(_, prefix)| prefix), name)
    }

    /// After its Deployment changed (an upgrade): waits for the new pods, or restarts the
    /// process from the new Deployment.
    pub async fn follow_upgrade(&mut self) -> Result<()> {
        match self.process.take() {
            None => self.rollout(),
            Some((mut process, prefix)) => {
                process.terminate(Duration::from_secs(10));
                self.process = Some((self.start_process(&prefix).await?, prefix));
                Ok(())
            }
        }
    }

    /// What it logged: the process's log, or the Deployment's pod's log with the namespace's
    /// pods report.
    pub fn log(&self) -> String {
        match &self.process {
            Some((process, _)) => process.log(),
            None => {
                let deployment = format!("deployment/{}", self.deployment);
                let logs =
                    run(kubectl(&self.env).args(["logs", "-n", &self.namespace, &deployment, "--tail=400"]))
                        .unwrap_or_else(|error| error.to_string());
                format!("{logs}\n{}", pods::report(&self.env, &self.namespace))
            }
        }
    }

    fn rollout(&self) -> Result<()> {
        pods::rollout_status(
            &self.env,
            &self.namespace,
            &format!("deployment/{}", self.deployment),
            ROLLOUT_TIMEOUT,
        )
    }

    async fn start_process(&self, prefix: &str) -> Result<NodeProcess> {
        let deployment = Api::<Deployment>::namespaced(self.env.client().await?, &self.namespace)
            .get(&self.deployment)
            .await?;
        let pod = deployment
            .spec
            .and_then(|spec| spec.template.spec)
            .ok_or_else(|| {
                LocalEnvError::Pods(format!("deployment/{} has no pod template", self.deployment))
            })?;
        let pod_name = format!("{}-{prefix}", self.deployment);
        start_operator_as_deployed(&self.env, &pod, (&self.namespace, &pod_name), prefix)
    }
}
