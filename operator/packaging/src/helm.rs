//! The Helm chart `manifests/helm/kubernetes-nmstate`, generated from the operator's install
//! objects: the same objects as every other channel, with Helm expressions in their slots.
//!
//! An object is built with marker strings where a value comes from Helm ([`Exprs`]),
//! serialized to YAML, and the markers are then replaced by the expressions: an inline one
//! where the value was, a block one under its key with the right indentation.

use super::{InstallError, Slots, values};
use kube::CustomResourceExt as _;
use serde_json::{Value, json};

pub const CHART_NAME: &str = "kubernetes-nmstate";
/// The first Kubernetes version the chart installs on (the CRDs drop their CEL rules before
/// 1.25; the webhook enforces the same rules everywhere).
pub const KUBE_VERSION: &str = ">=1.20.0-0";

/// The Helm expressions of one generated file, referred to by marker strings.
#[derive(Default)]
struct Exprs {
    exprs: Vec<(Placement, String)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// `{{ expr }}` where the value was.
    Inline,
    /// `{{- expr | nindent N }}` under the value's key.
    Block,
}

impl Exprs {
    fn marker(&mut self, placement: Placement, expr: &str) -> Value {
        self.exprs.push((placement, expr.to_string()));
        json!(format!("@@helm{}@@", self.exprs.len() - 1))
    }

    fn inline(&mut self, expr: &str) -> Value {
        self.marker(Placement::Inline, expr)
    }

    fn block(&mut self, expr: &str) -> Value {
        self.marker(Placement::Block, expr)
    }

    /// `objects` as YAML documents with every marker replaced.
    fn yaml(&self, objects: &[Value]) -> Result<String, InstallError> {
        let mut out = String::new();
        for object in objects {
            out.push_str("---\n");
            for line in serde_yaml::to_string(object)?.lines() {
                out.push_str(&self.substitute(&escape_braces(line))?);
                out.push('\n');
            }
        }
        Ok(out)
    }

    fn substitute(&self, line: &str) -> Result<String, InstallError> {
        let Some(start) = line.find("@@helm") else {
            return Ok(line.to_string());
        };
        let rest = &line[start + "@@helm".len()..];
        let end = rest
            .find("@@")
            .ok_or_else(|| InstallError::Marker(line.to_string()))?;
        let index: usize = rest[..end]
            .parse()
            .map_err(|_| InstallError::Marker(line.to_string()))?;
        let (placement, expr) = self
            .exprs
            .get(index)
            .ok_or_else(|| InstallError::Marker(line.to_string()))?;
        // serde_yaml quotes a value that starts with `@`.
        let quoted = |text: &str, at: usize| text[..at].ends_with('\'') || text[..at].ends_with('"');
        let (before, after) = if quoted(line, start) {
            (&line[..start - 1], &rest[end + 3..])
        } else {
            (&line[..start], &rest[end + 2..])
        };
        match placement {
            Placement::Inline => Ok(format!("{before}{{{{ {expr} }}}}{after}")),
            Placement::Block => {
                let key = before.trim_end();
                if !key.ends_with(':') || !after.is_empty() {
                    return Err(InstallError::Marker(line.to_string()));
                }
                let indent = key.len() - key.trim_start_matches([' ', '-']).len() + 2;
                Ok(format!("{key}\n{{{{- {expr} | nindent {indent} }}}}"))
            }
        }
    }
}

/// `line` with every `{{` and `}}` of its text (descriptions mention nmpolicy's
/// `{{ capture.<name> }}`) written as a Helm string, so Helm prints it instead of evaluating it.
fn escape_braces(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(position) = rest.find("{{").into_iter().chain(rest.find("}}")).min() {
        out.push_str(&rest[..position]);
        out.push_str(&format!("{{{{ \"{}\" }}}}", &rest[position..position + 2]));
        rest = &rest[position + 2..];
    }
    out.push_str(rest);
    out
}

fn slots(exprs: &mut Exprs) -> Slots {
    Slots {
        namespace: exprs.inline(r#"include "kubernetes-nmstate.namespace" . | quote"#),
        handler_namespace_env: json!({"valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}),
        handler_namespace: exprs.inline(r#"include "kubernetes-nmstate.namespace" . | quote"#),
        labels: exprs.block(r#"include "kubernetes-nmstate.labels" ."#),
        selector: exprs.block(r#"include "kubernetes-nmstate.selectorLabels" ."#),
        operator_image: exprs.inline(
            r#"include "kubernetes-nmstate.image" (list .Values.operator.image .Chart.AppVersion) | quote"#,
        ),
        handler_image: exprs.inline(
            r#"include "kubernetes-nmstate.image" (list .Values.handler.image .Chart.AppVersion) | quote"#,
        ),
        pull_policy: exprs.inline(".Values.operator.image.pullPolicy | quote"),
        handler_pull_policy: exprs.inline(".Values.handler.image.pullPolicy | quote"),
        replicas: exprs.inline(".Values.operator.replicas"),
        resources: exprs.block("toYaml .Values.operator.resources"),
        node_selector: exprs.block("toYaml .Values.operator.nodeSelector"),
        tolerations: exprs.block("toYaml .Values.operator.tolerations"),
        affinity: exprs.block("toYaml .Values.operator.affinity"),
        log_level: exprs.inline(".Values.operator.logLevel | quote"),
        image_pull_secrets: exprs.block("toYaml .Values.imagePullSecrets"),
        manage_crds: "nmstate",
    }
}

const HELPERS: &str = r#"{{/* Generated by `make generate` from operator/packaging/src/helm.rs; do not edit. */}}
{{- define "kubernetes-nmstate.namespace" -}}
{{ .Values.namespace | default .Release.Namespace }}
{{- end }}

{{- define "kubernetes-nmstate.selectorLabels" -}}
app: kubernetes-nmstate-operator
name: kubernetes-nmstate-operator
{{- end }}

{{- define "kubernetes-nmstate.commonLabels" -}}
app.kubernetes.io/name: kubernetes-nmstate
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: kubernetes-nmstate
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubernetes-nmstate.labels" -}}
{{ include "kubernetes-nmstate.selectorLabels" . }}
{{ include "kubernetes-nmstate.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* An image reference from (list {repository, tag} appVersion); the tag defaults to v<appVersion>. */}}
{{- define "kubernetes-nmstate.image" -}}
{{- $image := index . 0 -}}
{{ $image.repository }}:{{ $image.tag | default (printf "v%s" (index . 1)) }}
{{- end }}
"#;

const NOTES: &str = r#"kubernetes-nmstate {{ .Chart.AppVersion }} is installed in namespace {{ include "kubernetes-nmstate.namespace" . }}.

{{- if .Values.nmstate.create }}

The NMState "{{ .Values.nmstate.name }}" was created: the operator now installs the handler
on every node it selects. Wait for it:

  kubectl wait nmstate/{{ .Values.nmstate.name }} --for condition=Available --timeout 5m
{{- else }}

Next, ask the operator to install the handler on the nodes:

  kubectl apply -f - <<EOF
  apiVersion: nmstate.io/v1
  kind: NMState
  metadata:
    name: nmstate
  EOF
  kubectl wait nmstate/nmstate --for condition=Available --timeout 5m
{{- end }}

Then configure node networks with NodeNetworkConfigurationPolicies, and watch them:

  kubectl get nncp
  kubectl get nnce

Uninstalling the chart keeps the nmstate.io CRDs, and with them every policy and node state.
"#;

/// Every file of the chart: (path inside the chart directory, content).
pub fn chart(version: &semver::Version) -> Result<Vec<(String, String)>, InstallError> {
    let header = super::files::HEADER;
    Ok(vec![
        (
            "Chart.yaml".into(),
            format!("{header}{}", serde_yaml::to_string(&chart_yaml(version))?),
        ),
        ("values.yaml".into(), values_yaml()?),
        (
            "values.schema.json".into(),
            format!("{}\n", serde_json::to_string_pretty(&values::schema())?),
        ),
        ("templates/_helpers.tpl".into(), HELPERS.into()),
        ("templates/NOTES.txt".into(), NOTES.into()),
        (
            format!("crds/{}.yaml", nmstate_api::NMState::crd_name()),
            format!(
                "{CRDS_DIR_HEADER}{}",
                serde_yaml::to_string(&nmstate_api::crd::nmstates())?
            ),
        ),
        ("templates/crds.yaml".into(), format!("{header}{}", crds()?)),
        (
            "templates/operator.yaml".into(),
            format!("{header}{}", operator()?),
        ),
        ("templates/nmstate.yaml".into(), format!("{header}{}", nmstate()?)),
    ])
}

fn chart_yaml(version: &semver::Version) -> Value {
    json!({
        "apiVersion": "v2",
        "name": CHART_NAME,
        "description": "Declarative node network configuration for Kubernetes, driven by nmstate and NetworkManager",
        "type": "application",
        "version": version.to_string(),
        "appVersion": version.to_string(),
        "kubeVersion": KUBE_VERSION,
        "home": "https://nmstate.io/kubernetes-nmstate/",
        "sources": [env!("CARGO_PKG_REPOSITORY")],
        "icon": super::olm::ICON_URL,
        "keywords": ["networking", "nmstate", "networkmanager", "operator"],
        "maintainers": [{"name": "kubernetes-nmstate maintainers", "email": super::olm::MAINTAINER_EMAIL}],
    })
}

/// `values.yaml`: the defaults, each top-level section under the description its schema gives.
fn values_yaml() -> Result<String, InstallError> {
    let defaults = serde_json::to_value(values::Values::default())?;
    let schema = values::schema();
    let mut out = String::from(
        "# Generated by `make generate` from operator/packaging/src/values.rs; do not edit.\n\
         # values.schema.json checks every value on install and upgrade.\n",
    );
    for (key, value) in defaults.as_object().into_iter().flatten() {
        let description = super::olm::description_of(&schema, key);
        for line in description.lines() {
            out.push_str(&format!("\n# {line}").replace("# \n", "#\n"));
        }
        out.push('\n');
        out.push_str(&serde_yaml::to_string(&json!({ key: value }))?);
    }
    Ok(out)
}

const CRDS_DIR_HEADER: &str = "# Generated by `make generate` from operator/packaging; do not edit.\n\
# Helm installs this CRD before it builds the release (so the release can create an NMState) and\n\
# never changes it; the operator applies its own version of it at start (MANAGE_CRDS=nmstate).\n";

/// The operand CRDs, each kept on uninstall; NNCP's CEL rules only where the server runs them.
/// (The NMState CRD is in `crds/`.)
fn crds() -> Result<String, InstallError> {
    let exprs = Exprs::default();
    let mut out = String::from("{{- if .Values.crds.install }}\n");
    let keep = |mut crd: Value| {
        crd["metadata"]["annotations"] = json!({"helm.sh/resource-policy": "keep"});
        crd
    };
    let operand = |crds: Vec<Value>| -> Vec<Value> {
        crds.into_iter()
            .filter(|crd| crd["metadata"]["name"] != nmstate_api::NMState::crd_name())
            .collect()
    };
    let pairs = operand(super::crds(u32::MAX)?)
        .into_iter()
        .zip(operand(super::crds(0)?));
    for (with_rules, without_rules) in pairs {
        if with_rules == without_rules {
            out.push_str(&exprs.yaml(&[keep(with_rules)])?);
        } else {
            let minor = nmstate_api::crd::VALIDATION_RULES_SINCE_MINOR;
            out.push_str(&format!(
                "{{{{- if semverCompare \">=1.{minor}.0-0\" .Capabilities.KubeVersion.Version }}}}\n"
            ));
            out.push_str(&exprs.yaml(&[keep(with_rules)])?);
            out.push_str("{{- else }}\n");
            out.push_str(&exprs.yaml(&[keep(without_rules)])?);
            out.push_str("{{- end }}\n");
        }
    }
    out.push_str("{{- end }}\n");
    Ok(out)
}

fn operator() -> Result<String, InstallError> {
    let mut exprs = Exprs::default();
    let slots = slots(&mut exprs);
    exprs.yaml(&super::operator_objects(&slots)?)
}

/// The NMState, an ordinary release object: its CRD comes from `crds/`, which Helm installs
/// before it builds the release.
fn nmstate() -> Result<String, InstallError> {
    let mut exprs = Exprs::default();
    let object = json!({
        "apiVersion": "nmstate.io/v1",
        "kind": "NMState",
        "metadata": {
            "name": exprs.inline(".Values.nmstate.name | quote"),
            "labels": exprs.block(r#"include "kubernetes-nmstate.commonLabels" ."#),
        },
        "spec": exprs.block("toYaml .Values.nmstate.spec"),
    });
    Ok(format!(
        "{{{{- if .Values.nmstate.create }}}}\n{}{{{{- end }}}}\n",
        exprs.yaml(&[object])?
    ))
}
