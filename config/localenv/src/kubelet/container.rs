//! The kubelet's part, where no kubelet runs: what a container of a pod runs (program,
//! arguments, environment), read from the pod template the operator or an installer rendered,
//! so the local environment starts the same programs with the same settings as a cluster would,
//! from the objects themselves rather than from a second copy of their settings.

use k8s_openapi::api::core::v1::{Container, PodSpec};
use std::path::Path;

/// What the downward API knows about the pod.
#[derive(Clone, Copy, Debug)]
pub struct PodFacts<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub node: &'a str,
    pub service_account: &'a str,
}

impl PodFacts<'_> {
    /// The user the pod's API requests are made as: its ServiceAccount.
    pub fn user(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }
}

/// A container's program, arguments and environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    /// `command[0]`: a program name, looked up like the image's `PATH` would.
    pub program: String,
    /// The rest of `command`, then `args`.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KubeletError {
    #[error("container {0} has no command: the image's entrypoint is unknown here")]
    NoCommand(String),
    #[error(
        "container {container}: env {variable} comes from {source_kind}, which the local environment does not provide"
    )]
    UnsupportedSource {
        container: String,
        variable: String,
        source_kind: String,
    },
}

impl Invocation {
    /// Sets the environment variable `name`, replacing the template's value if it has one.
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.env.retain(|(existing, _)| existing != name);
        self.env.push((name.to_string(), value.to_string()));
    }
}

/// What `container` runs in the pod `pod`. Environment values and the downward-API fields
/// `metadata.name`, `metadata.namespace`, `spec.nodeName` and `spec.serviceAccountName` are
/// resolved; any other source is an error, not a silently empty variable.
pub fn invocation(container: &Container, pod: &PodFacts<'_>) -> Result<Invocation, KubeletError> {
    let mut command = container.command.iter().flatten().cloned();
    let program = command
        .next()
        .ok_or_else(|| KubeletError::NoCommand(container.name.clone()))?;
    let args = command.chain(container.args.iter().flatten().cloned()).collect();
    let mut env = Vec::new();
    for variable in container.env.iter().flatten() {
        let value = match &variable.value_from {
            None => variable.value.clone().unwrap_or_default(),
            Some(from) => {
                let field = from.field_ref.as_ref().map(|field| field.field_path.as_str());
                match field {
                    Some("metadata.name") => pod.name.to_string(),
                    Some("metadata.namespace") => pod.namespace.to_string(),
                    Some("spec.nodeName") => pod.node.to_string(),
                    Some("spec.serviceAccountName") => pod.service_account.to_string(),
                    other => {
                        let source_kind = match other {
                            Some(path) => format!("fieldRef {path}"),
                            None if from.secret_key_ref.is_some() => "a Secret".into(),
                            None if from.config_map_key_ref.is_some() => "a ConfigMap".into(),
                            None => "resourceFieldRef".into(),
                        };
                        return Err(KubeletError::UnsupportedSource {
                            container: container.name.clone(),
                            variable: variable.name.clone(),
                            source_kind,
                        });
                    }
                }
            }
        };
        env.push((variable.name.clone(), value));
    }
    Ok(Invocation { program, args, env })
}

/// Mounts `container`'s hostPath volumes with `root` as the node's `/`: every environment value
/// and argument under a hostPath mount path is rewritten to the matching path below `root`
/// (`/var/k8s_nmstate/lock` with hostPath `/var/k8s_nmstate` becomes
/// `<root>/var/k8s_nmstate/lock`), and `DirectoryOrCreate` directories are created there. A
/// sandbox node shares the host's file system, so this keeps the nodes' files apart, as their
/// own disks would. Other volume kinds are not mounted; the programs here only name paths.
pub fn mount_host_paths(
    run: &mut Invocation,
    pod: &PodSpec,
    container: &Container,
    root: &Path,
) -> std::io::Result<()> {
    let mut mounts = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let host_path = pod
            .volumes
            .iter()
            .flatten()
            .find(|volume| volume.name == mount.name)
            .and_then(|volume| volume.host_path.as_ref());
        if let Some(host_path) = host_path {
            let on_node = root.join(host_path.path.trim_start_matches('/'));
            if host_path.type_.as_deref() == Some("DirectoryOrCreate") {
                std::fs::create_dir_all(&on_node)?;
            }
            mounts.push((mount.mount_path.trim_end_matches('/').to_string(), on_node));
        }
    }
    let rewrite = |value: &mut String| {
        for (mount_path, on_node) in &mounts {
            let rest = value.strip_prefix(mount_path.as_str());
            if let Some(rest) = rest.filter(|rest| rest.is_empty() || rest.starts_with('/')) {
                *value = format!("{}{rest}", on_node.display());
                return;
            }
        }
    };
    run.env.iter_mut().for_each(|(_, value)| rewrite(value));
    run.args.iter_mut().for_each(rewrite);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use super::*;
    use serde_json::json;

    const POD: PodFacts<'static> = PodFacts {
        namespace: "nmstate",
        name: "nmstate-handler-x",
        node: "node01",
        service_account: "nmstate-handler",
    };

    fn container(value: serde_json::Value) -> Container {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn command_args_values_and_downward_fields_are_resolved() {
        let container = container(json!({
            "name": "handler", "command": ["nmstate-handler", "run"], "args": ["--v", "debug"],
            "env": [
                {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "RUST_LOG", "value": "info"},
                {"name": "EMPTY"},
            ],
        }));
        let run = invocation(&container, &POD).unwrap();
        assert_eq!(run.program, "nmstate-handler");
        assert_eq!(run.args, ["run", "--v", "debug"]);
        let env: Vec<(&str, &str)> = run.env.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        assert_eq!(
            env,
            [
                ("NODE_NAME", "node01"),
                ("POD_NAMESPACE", "nmstate"),
                ("POD_NAME", "nmstate-handler-x"),
                ("RUST_LOG", "info"),
                ("EMPTY", ""),
            ]
        );
    }

    #[test]
    fn what_cannot_be_provided_is_an_error() {
        let from_secret = container(json!({"name": "c", "command": ["x"], "env": [
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}));
        assert_eq!(
            invocation(&from_secret, &POD).unwrap_err().to_string(),
            "container c: env TOKEN comes from a Secret, which the local environment does not provide"
        );
        let from_status = container(json!({"name": "c", "command": ["x"], "env": [
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]}));
        assert!(
            invocation(&from_status, &POD)
                .unwrap_err()
                .to_string()
                .contains("fieldRef status.podIP")
        );
        let no_command = container(json!({"name": "c", "args": ["x"]}));
        assert_eq!(
            invocation(&no_command, &POD).unwrap_err(),
            KubeletError::NoCommand("c".into())
        );
    }

    #[test]
    fn host_path_volumes_are_mounted_below_the_node_root() {
        let pod: PodSpec = serde_json::from_value(json!({
            "containers": [{"name": "handler", "command": ["h"],
                "env": [{"name": "LOCK", "value": "/var/k8s_nmstate/handler_lock"},
                        {"name": "OTHER", "value": "/var/k8s_nmstate_other"}],
                "volumeMounts": [{"name": "lock", "mountPath": "/var/k8s_nmstate"},
                                 {"name": "bus", "mountPath": "/run/dbus/system_bus_socket"}]}],
            "volumes": [{"name": "lock", "hostPath": {"path": "/var/k8s_nmstate", "type": "DirectoryOrCreate"}},
                        {"name": "bus", "hostPath": {"path": "/run/dbus/system_bus_socket", "type": "Socket"}}],
        }))
        .unwrap();
        let root = std::env::temp_dir().join(format!("kubelet-mount-test-{}", std::process::id()));
        let mut run = invocation(&pod.containers[0], &POD).unwrap();
        run.args = vec!["/run/dbus/system_bus_socket".into()];
        mount_host_paths(&mut run, &pod, &pod.containers[0], &root).unwrap();
        assert_eq!(
            run.env[0].1,
            root.join("var/k8s_nmstate/handler_lock").display().to_string()
        );
        assert_eq!(
            run.env[1].1, "/var/k8s_nmstate_other",
            "only whole path components match"
        );
        assert_eq!(
            run.args[0],
            root.join("run/dbus/system_bus_socket").display().to_string()
        );
        assert!(
            root.join("var/k8s_nmstate").is_dir(),
            "DirectoryOrCreate is created"
        );
        assert!(!root.join("run/dbus").exists(), "a Socket is not created");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
