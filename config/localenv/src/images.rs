//! Container images built here, offline and without a container engine: the project's own
//! Containerfiles (FROM scratch, the few instructions they use) turned into OCI image archives
//! that a node's containerd imports (`ctr images import`). Releases build the same
//! Containerfiles from the same `config/images/rootfs.sh` layout with podman (`make images`), so
//! what runs in the sandbox is what ships.

use crate::error::{LocalEnvError, Result};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The images' repository prefix and tag in the sandbox: nothing pulls them (no registry is
/// reachable), pods use `imagePullPolicy: IfNotPresent`.
pub const REPOSITORY: &str = "localhost/kubernetes-nmstate";
pub const TAG: &str = "local";

/// The instructions of a FROM-scratch Containerfile, as far as this project uses them.
#[derive(Debug, Default, PartialEq)]
pub struct Containerfile {
    /// `COPY <dir>/ /`: directories of the build context laid over the image's root.
    pub copies: Vec<String>,
    pub env: Vec<String>,
    pub user: Option<String>,
    pub entrypoint: Vec<String>,
}

impl Containerfile {
    /// Reads the instructions; anything else (another base, RUN, ADD, a COPY elsewhere than
    /// `/`) is refused with its line, since it would build differently with podman.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut file = Containerfile::default();
        let mut from_scratch = false;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (instruction, argument) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let argument = argument.trim();
            let refuse = || format!("line {}: `{line}` is not supported here", number + 1);
            match instruction.to_ascii_uppercase().as_str() {
                "FROM" if argument == "scratch" => from_scratch = true,
                "COPY" => match argument.split_whitespace().collect::<Vec<_>>()[..] {
                    [source, "/"] if !source.starts_with("--") => {
                        file.copies.push(source.trim_end_matches('/').to_string())
                    }
                    _ => return Err(refuse()),
                },
                "ENV" if argument.contains('=') => file.env.push(argument.to_string()),
                "USER" => file.user = Some(argument.to_string()),
                "ENTRYPOINT" => {
                    file.entrypoint = serde_json::from_str(argument)
                        .map_err(|error| format!("line {}: ENTRYPOINT in exec form: {error}", number + 1))?
                }
                _ => return Err(refuse()),
            }
        }
        if !from_scratch {
            return Err("only `FROM scratch` images are built here".into());
        }
        Ok(file)
    }
}

/// Writes the image `containerfile` describes, from the build context `context`, as the OCI
/// archive `archive` named `reference`. Its layer is the same bytes for the same files (sorted,
/// owned by root, times zeroed), so an unchanged image is recognised by its digest.
pub fn write_archive(containerfile: &Path, context: &Path, reference: &str, archive: &Path) -> Result<()> {
    let text = std::fs::read_to_string(containerfile).map_err(LocalEnvError::io("read", containerfile))?;
    let instructions = Containerfile::parse(&text)
        .map_err(|reason| LocalEnvError::Image(format!("{}: {reason}", containerfile.display())))?;
    let mut layer = tar::Builder::new(Vec::new());
    layer.mode(tar::HeaderMode::Deterministic);
    layer.follow_symlinks(false);
    // containerd refuses GNU sparse entries (type S), which the builder writes for holes.
    layer.sparse(false);
    for source in &instructions.copies {
        let dir = context.join(source);
        layer
            .append_dir_all(".", &dir)
            .map_err(LocalEnvError::io("pack", &dir))?;
    }
    let layer = layer.into_inner().map_err(LocalEnvError::io("pack", context))?;
    let layer_digest = digest(&layer);
    let mut config = json!({"Env": instructions.env, "Entrypoint": instructions.entrypoint});
    if let Some(user) = &instructions.user {
        config["User"] = json!(user);
    }
    let config = to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }));
    let manifest = to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
    }));
    let tag = reference.rsplit_once(':').map_or("latest", |(_, tag)| tag);
    let index = to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest),
            "size": manifest.len(),
            // containerd names the image after the first; the OCI layout's own is the tag.
            "annotations": {"io.containerd.image.name": reference, "org.opencontainers.image.ref.name": tag},
        }],
    }));
    let file = std::fs::File::create(archive).map_err(LocalEnvError::io("create", archive))?;
    let mut out = tar::Builder::new(file);
    let mut add = |name: &str, data: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        out.append_data(&mut header, name, data)
    };
    let blob = |data: &[u8]| format!("blobs/sha256/{}", &digest(data)["sha256:".len()..]);
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
        .and_then(|()| add("index.json", &index))
        .and_then(|()| add(&blob(&layer), &layer))
        .and_then(|()| add(&blob(&config), &config))
        .and_then(|()| add(&blob(&manifest), &manifest))
        .and_then(|()| out.finish())
        .map_err(LocalEnvError::io("write", archive))
}

/// The images the sandbox nodes run, as archives in `dir`: the pause image, the operator's and
/// the handler's, built from the workspace's Containerfiles with the binaries of `bin_dir`
/// (debug or release) laid out by `config/images/rootfs.sh`. Returns the archives.
pub fn build_all(workspace: &Path, bin_dir: &Path, kube_bin_dir: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(LocalEnvError::io("create", dir))?;
    let rootfs = workspace.join("config/images/rootfs.sh");
    let images: [(&str, &str, Vec<PathBuf>); 3] = [
        (
            "pause",
            "config/images/pause.Containerfile",
            vec![kube_bin_dir.join("pause")],
        ),
        (
            "operator",
            "operator/Containerfile",
            vec![bin_dir.join("nmstate-operator")],
        ),
        (
            "handler",
            "handler/Containerfile",
            ["nmstate-handler", "nmstate-cluster", "nmstate-webhook"]
                .map(|name| bin_dir.join(name))
                .into(),
        ),
    ];
    let mut archives = Vec::new();
    for (name, containerfile, binaries) in images {
        let context = dir.join(name);
        let mut layout = std::process::Command::new(&rootfs);
        layout.arg(&context).args(&binaries);
        crate::daemon::run(&mut layout)?;
        let archive = dir.join(format!("{name}.oci.tar"));
        write_archive(
            &workspace.join(containerfile),
            &context,
            &reference(name),
            &archive,
        )?;
        archives.push(archive);
    }
    Ok(archives)
}

/// The sandbox's reference of image `name` (pause, operator, handler).
pub fn reference(name: &str) -> String {
    format!("{REPOSITORY}/{name}:{TAG}")
}

fn digest(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    format!(
        "sha256:{}",
        hash.iter().map(|byte| format!("{byte:02x}")).collect::<String>()
    )
}

fn to_vec(value: &serde_json::Value) -> Vec<u8> {
    // A Value always serialises.
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_projects_containerfiles_parse_and_others_are_refused() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        for (path, user, entrypoint) in [
            (
                "operator/Containerfile",
                Some("65532:65532"),
                "/usr/bin/nmstate-operator",
            ),
            ("handler/Containerfile", None, "/usr/bin/nmstate-handler"),
            ("config/images/pause.Containerfile", None, "/usr/bin/pause"),
        ] {
            let text = std::fs::read_to_string(workspace.join(path)).unwrap();
            let file = Containerfile::parse(&text).unwrap_or_else(|error| panic!("{path}: {error}"));
            assert_eq!(file.copies, ["rootfs"], "{path}");
            assert_eq!(file.user.as_deref(), user, "{path}");
            assert_eq!(file.entrypoint, [entrypoint], "{path}");
        }
        for text in [
            "FROM debian:12\nCOPY rootfs/ /\n",
            "FROM scratch\nRUN true\n",
            "FROM scratch\nCOPY rootfs/ /usr\n",
            "COPY rootfs/ /\n",
            "FROM scratch\nENTRYPOINT /usr/bin/x\n",
        ] {
            assert!(Containerfile::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn an_archive_is_the_same_bytes_for_the_same_files() {
        let dir = std::env::temp_dir().join(format!("localenv-image-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("rootfs/usr/bin")).unwrap();
        std::fs::write(dir.join("rootfs/usr/bin/x"), "#!/bin/true\n").unwrap();
        std::fs::write(
            dir.join("Containerfile"),
            "FROM scratch\nCOPY rootfs/ /\nENTRYPOINT [\"/usr/bin/x\"]\n",
        )
        .unwrap();
        let write = |name: &str| {
            let archive = dir.join(name);
            write_archive(&dir.join("Containerfile"), &dir, "localhost/x:1", &archive).unwrap();
            std::fs::read(archive).unwrap()
        };
        let first = write("a.tar");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        std::fs::write(dir.join("rootfs/usr/bin/x"), "#!/bin/true\n").unwrap(); // a new mtime
        assert!(first == write("b.tar"), "a rebuilt image changed");
        let mut entries = tar::Archive::new(first.as_slice());
        let names: Vec<String> = entries
            .entries()
            .unwrap()
            .map(|entry| entry.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names[..2], ["oci-layout", "index.json"]);
        assert_eq!(names.len(), 5);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
