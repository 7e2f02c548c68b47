//! The checks `operator-sdk bundle validate --select-optional suite=operatorframework` runs
//! (operator-framework/api `pkg/validation/internal`: csv, bundle, operatorhub,
//! good-practices), for a registry+v1 bundle. operator-sdk cannot be installed on these
//! machines, so they are re-implemented here and each is tested with a CSV that breaks it.

use super::InstallError;
use base64::Engine as _;
use serde_json::Value;
use std::collections::BTreeSet;

/// A registry+v1 bundle, read from `bundle/manifests` and `bundle/metadata`.
#[derive(Clone, Debug, Default)]
pub struct Bundle {
    pub csv: Value,
    /// Every other manifest (CRDs and any extra objects).
    pub manifests: Vec<Value>,
    /// `metadata/annotations.yaml`'s `annotations`.
    pub annotations: Value,
}

impl Bundle {
    /// Reads the bundle from `(path under the bundle directory, content)` pairs, as OLM
    /// reads its image: the CSV and every other object of `manifests/`, and
    /// `metadata/annotations.yaml`.
    pub fn from_files<'a>(
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Bundle, InstallError> {
        let mut bundle = Bundle::default();
        for (path, content) in files {
            if !path.ends_with(".yaml") {
                continue;
            }
            if path.starts_with("manifests/") {
                let object: Value = serde_yaml::from_str(content)?;
                if object["kind"] == "ClusterServiceVersion" {
                    bundle.csv = object;
                } else {
                    bundle.manifests.push(object);
                }
            } else if path == "metadata/annotations.yaml" {
                let metadata: Value = serde_yaml::from_str(content)?;
                bundle.annotations = metadata["annotations"].clone();
            }
        }
        Ok(bundle)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warning,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    pub level: Level,
    /// The operator-framework validator the rule comes from.
    pub rule: &'static str,
    pub message: String,
}

const CAPABILITIES: &[&str] = &[
    "Basic Install",
    "Seamless Upgrades",
    "Full Lifecycle",
    "Deep Insights",
    "Auto Pilot",
];
const CATEGORIES: &[&str] = &[
    "AI/Machine Learning",
    "Application Runtime",
    "Big Data",
    "Cloud Provider",
    "Database",
    "Developer Tools",
    "Drivers and plugins",
    "Integration & Delivery",
    "Logging & Tracing",
    "Modernization & Migration",
    "Monitoring",
    "Networking",
    "OpenShift Optional",
    "Security",
    "Storage",
    "Streaming & Messaging",
];
const ICON_TYPES: &[&str] = &["image/gif", "image/jpeg", "image/png", "image/svg+xml"];
const INSTALL_MODES: &[&str] = &[
    "OwnNamespace",
    "SingleNamespace",
    "MultiNamespace",
    "AllNamespaces",
];

/// Every finding for `bundle`, errors first.
pub fn validate(bundle: &Bundle) -> Vec<Finding> {
    let mut findings = Findings::default();
    csv_rules(bundle, &mut findings);
    bundle_rules(bundle, &mut findings);
    operatorhub_rules(bundle, &mut findings);
    good_practices(bundle, &mut findings);
    let mut all = findings.0;
    all.sort();
    all
}

#[derive(Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn error(&mut self, rule: &'static str, message: impl Into<String>) {
        self.0.push(Finding {
            level: Level::Error,
            rule,
            message: message.into(),
        });
    }
    fn warning(&mut self, rule: &'static str, message: impl Into<String>) {
        self.0.push(Finding {
            level: Level::Warning,
            rule,
            message: message.into(),
        });
    }
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

fn list(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// DNS-1123 subdomain: lowercase alphanumerics, `-` and `.`, at most 253 characters.
fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The (name, version) of every API the CSV owns.
fn owned(csv: &Value) -> Vec<(String, String, String)> {
    list(&csv["spec"]["customresourcedefinitions"]["owned"])
        .iter()
        .map(|crd| {
            (
                text(&crd["name"]).into(),
                text(&crd["version"]).into(),
                text(&crd["kind"]).into(),
            )
        })
        .collect()
}

fn csv_rules(bundle: &Bundle, findings: &mut Findings) {
    let csv = &bundle.csv;
    let spec = &csv["spec"];
    let name = text(&csv["metadata"]["name"]);
    if !is_dns_subdomain(name) {
        findings.error(
            "csv",
            format!("metadata.name {name:?} is not a DNS-1123 subdomain"),
        );
    }
    if let Some(replaces) = spec["replaces"].as_str()
        && !is_dns_subdomain(replaces)
    {
        findings.error(
            "csv",
            format!("spec.replaces {replaces:?} is not a DNS-1123 subdomain"),
        );
    }
    for field in ["displayName", "install"] {
        if spec[field].is_null() {
            findings.error("csv", format!("spec.{field} is required"));
        }
    }
    let modes = list(&spec["installModes"]);
    if modes.is_empty() {
        findings.error("csv", "spec.installModes is empty");
    }
    let mut seen = BTreeSet::new();
    for mode in modes {
        let kind = text(&mode["type"]);
        if !INSTALL_MODES.contains(&kind) {
            findings.error(
                "csv",
                format!("install mode {kind:?} is not one of {INSTALL_MODES:?}"),
            );
        }
        if !seen.insert(kind) {
            findings.error("csv", format!("install mode {kind} is listed twice"));
        }
    }
    if !modes.is_empty() && !modes.iter().any(|mode| mode["supported"] == true) {
        findings.error("csv", "no install mode is supported");
    }
    if let Some(version) = spec["minKubeVersion"].as_str() {
        if semver::Version::parse(version.trim_start_matches('v')).is_err() {
            findings.error(
                "csv",
                format!("spec.minKubeVersion {version:?} is not a semantic version"),
            );
        }
    } else {
        findings.warning("csv", "spec.minKubeVersion is not set");
    }
    if let Some(range) = csv["metadata"]["annotations"]["olm.skipRange"].as_str()
        && semver::VersionReq::parse(&range.replace(' ', ", ")).is_err()
    {
        findings.error("csv", format!("olm.skipRange {range:?} is not a semver range"));
    }
    alm_examples(csv, findings);
}

fn alm_examples(csv: &Value, findings: &mut Findings) {
    let owned = owned(csv);
    let Some(raw) = csv["metadata"]["annotations"]["alm-examples"].as_str() else {
        findings.warning("csv", "metadata.annotations.alm-examples is not set");
        return;
    };
    let examples: Vec<Value> = match serde_json::from_str(raw) {
        Ok(examples) => examples,
        Err(error) => {
            findings.error(
                "csv",
                format!("alm-examples is not a JSON array of objects: {error}"),
            );
            return;
        }
    };
    let mut provided = BTreeSet::new();
    for example in &examples {
        let (group, version) = text(&example["apiVersion"]).split_once('/').unwrap_or_default();
        let kind = text(&example["kind"]);
        let matches = owned.iter().find(|(name, owned_version, owned_kind)| {
            name.split_once('.').map(|(_, g)| g) == Some(group)
                && owned_version == version
                && owned_kind == kind
        });
        match matches {
            Some(api) => {
                provided.insert(api.clone());
            }
            None => findings.error(
                "csv",
                format!(
                    "example {}/{kind} must have a provided API (an owned CRD)",
                    text(&example["apiVersion"])
                ),
            ),
        }
    }
    // Objects the CSV marks internal are not meant to be created by users.
    let internal: Vec<String> =
        csv["metadata"]["annotations"]["operators.operatorframework.io/internal-objects"]
            .as_str()
            .and_then(|raw| serde_json::from_str(raw).ok())
            .unwrap_or_default();
    for api in owned
        .iter()
        .filter(|api| !provided.contains(*api) && !internal.contains(&api.0))
    {
        findings.warning(
            "csv",
            format!(
                "provided API {} {} should have an example annotation",
                api.2, api.1
            ),
        );
    }
}

fn bundle_rules(bundle: &Bundle, findings: &mut Findings) {
    let crds: Vec<&Value> = bundle
        .manifests
        .iter()
        .filter(|object| object["kind"] == "CustomResourceDefinition")
        .collect();
    let mut names = BTreeSet::new();
    for crd in &crds {
        let name = text(&crd["metadata"]["name"]);
        if !names.insert(name) {
            findings.error("bundle", format!("CRD {name} is in the bundle twice"));
        }
    }
    let owned = owned(&bundle.csv);
    for (name, version, kind) in &owned {
        let served = crds.iter().any(|crd| {
            text(&crd["metadata"]["name"]) == name
                && text(&crd["spec"]["names"]["kind"]) == kind
                && list(&crd["spec"]["versions"])
                    .iter()
                    .any(|v| text(&v["name"]) == version)
        });
        if !served {
            findings.error(
                "bundle",
                format!("owned CRD {name} {version} ({kind}) is not in the bundle"),
            );
        }
    }
    for name in names
        .iter()
        .filter(|name| !owned.iter().any(|(owned, _, _)| owned == *name))
    {
        findings.error(
            "bundle",
            format!("CRD {name} is in the bundle but not owned (nor required) by the CSV"),
        );
    }
    let accounts: BTreeSet<&str> = ["permissions", "clusterPermissions"]
        .iter()
        .flat_map(|key| list(&bundle.csv["spec"]["install"]["spec"][key]))
        .map(|permission| text(&permission["serviceAccountName"]))
        .collect();
    for object in bundle
        .manifests
        .iter()
        .filter(|object| object["kind"] == "ServiceAccount")
    {
        let name = text(&object["metadata"]["name"]);
        if accounts.contains(name) {
            findings.error(
                "bundle",
                format!("ServiceAccount {name} in the bundle clashes with the CSV's"),
            );
        }
    }
}

fn operatorhub_rules(bundle: &Bundle, findings: &mut Findings) {
    let spec = &bundle.csv["spec"];
    if text(&spec["provider"]["name"]).is_empty() {
        findings.error("operatorhub", "spec.provider.name is required");
    }
    let maintainers = list(&spec["maintainers"]);
    if maintainers.is_empty() {
        findings.error("operatorhub", "spec.maintainers is required");
    }
    for maintainer in maintainers {
        let email = text(&maintainer["email"]);
        let valid = email
            .split_once('@')
            .is_some_and(|(user, host)| !user.is_empty() && host.contains('.'));
        if text(&maintainer["name"]).is_empty() || !valid {
            findings.error(
                "operatorhub",
                format!("maintainer {maintainer} needs a name and a valid email"),
            );
        }
    }
    let links = list(&spec["links"]);
    if links.is_empty() {
        findings.error("operatorhub", "spec.links is required");
    }
    for link in links {
        let url = text(&link["url"]);
        if text(&link["name"]).is_empty() || !(url.starts_with("https://") || url.starts_with("http://")) {
            findings.error("operatorhub", format!("link {link} needs a name and a valid URL"));
        }
    }
    match semver::Version::parse(text(&spec["version"])) {
        Ok(_) => {}
        Err(error) => findings.error(
            "operatorhub",
            format!("spec.version {:?}: {error}", spec["version"]),
        ),
    }
    let icons = list(&spec["icon"]);
    if icons.len() != 1 {
        findings.error(
            "operatorhub",
            format!("spec.icon must have exactly one icon, has {}", icons.len()),
        );
    }
    for icon in icons {
        let mediatype = text(&icon["mediatype"]);
        if !ICON_TYPES.contains(&mediatype) {
            findings.error(
                "operatorhub",
                format!("icon mediatype {mediatype:?} is not one of {ICON_TYPES:?}"),
            );
        }
        let data = base64::engine::general_purpose::STANDARD.decode(text(&icon["base64data"]));
        if data.map(|bytes| bytes.is_empty()).unwrap_or(true) {
            findings.error("operatorhub", "icon base64data is empty or not base64");
        }
    }
    let annotations = &bundle.csv["metadata"]["annotations"];
    let capability = text(&annotations["capabilities"]);
    if !CAPABILITIES.contains(&capability) {
        findings.error(
            "operatorhub",
            format!("capabilities {capability:?} is not one of {CAPABILITIES:?}"),
        );
    }
    for category in text(&annotations["categories"])
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        if !CATEGORIES.contains(&category) {
            findings.error(
                "operatorhub",
                format!("category {category:?} is not a known OperatorHub category"),
            );
        }
    }
    let channels: Vec<&str> = text(&bundle.annotations["operators.operatorframework.io.bundle.channels.v1"])
        .split(',')
        .map(str::trim)
        .filter(|channel| !channel.is_empty())
        .collect();
    if channels.is_empty() {
        findings.error("operatorhub", "metadata/annotations.yaml names no channel");
    }
    if let Some(default) =
        bundle.annotations["operators.operatorframework.io.bundle.channel.default.v1"].as_str()
        && !channels.contains(&default)
    {
        findings.error(
            "operatorhub",
            format!("default channel {default:?} is not among the channels {channels:?}"),
        );
    }
    for channel in channels.iter().filter(|channel| {
        !["alpha", "beta", "stable", "fast", "candidate"]
            .iter()
            .any(|p| channel.starts_with(p))
    }) {
        findings.warning(
            "operatorhub",
            format!("channel {channel:?} does not follow the alpha/beta/stable/fast/candidate naming"),
        );
    }
}

fn good_practices(bundle: &Bundle, findings: &mut Findings) {
    let csv = &bundle.csv;
    for crd in list(&csv["spec"]["customresourcedefinitions"]["owned"]) {
        if text(&crd["description"]).is_empty() {
            findings.error(
                "good-practices",
                format!(
                    "owned CRD {} {} has no description",
                    text(&crd["name"]),
                    text(&crd["version"])
                ),
            );
        }
    }
    for deployment in list(&csv["spec"]["install"]["spec"]["deployments"]) {
        for container in list(&deployment["spec"]["template"]["spec"]["containers"]) {
            for resource in ["cpu", "memory"] {
                if container["resources"]["requests"][resource].is_null() {
                    findings.error(
                        "good-practices",
                        format!(
                            "container {} of {} has no {resource} request",
                            text(&container["name"]),
                            text(&deployment["name"])
                        ),
                    );
                }
            }
        }
    }
    let name = text(&csv["metadata"]["name"]);
    let version = text(&csv["spec"]["version"]);
    let expected_suffix = format!(".v{version}");
    let package = text(&bundle.annotations["operators.operatorframework.io.bundle.package.v1"]);
    if !name.ends_with(&expected_suffix)
        || (!package.is_empty() && name != format!("{package}{expected_suffix}"))
    {
        findings.error(
            "good-practices",
            format!("CSV name {name:?} is not <package>.v<spec.version> ({package}.v{version})"),
        );
    }
    let creates_crds = list(&csv["spec"]["install"]["spec"]["clusterPermissions"])
        .iter()
        .flat_map(|permission| list(&permission["rules"]))
        .any(|rule| {
            list(&rule["resources"])
                .iter()
                .any(|r| r == "customresourcedefinitions")
                && list(&rule["verbs"])
                    .iter()
                    .any(|verb| verb == "create" || verb == "*")
        });
    if creates_crds {
        findings.warning(
            "good-practices",
            "the CSV may create CRDs: OLM expects that of meta operators only",
        );
    }
}

#[cfg(test)]
mod tests;
