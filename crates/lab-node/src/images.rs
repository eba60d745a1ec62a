//! Images map to local commands: the lab has no registry and no root filesystems, so each image
//! name the lab knows stands for a program on this machine. The table (also in the crate docs):
//!
//! | image (any tag or digest, any registry prefix) | entrypoint | default args |
//! |---|---|---|
//! | `ghostwire`, `*/ghostwire` (e.g. `ghcr.io/ghostwire/ghostwire:dev`) | this build's `ghostwire` binary | none |
//! | `ghostwire/echo`, `lab/echo`, `*/ghostwire-echo` | `ghostwire lab echo` (HTTP/TCP/UDP echo of pod name and `VERSION`) | none (TCP and UDP 8080) |
//! | `ghostwire/app-a` | `ghostwire lab app-a` (the mesh seed's client: calls `TARGET_URL` every second) | none |
//! | `ghostwire/app-b` | `ghostwire lab app-b` (the mesh seed's server: hostname + `VERSION`, `FAIL_RATE` % 500s) | none (HTTP on 8080) |
//! | `busybox`, `alpine`, `debian`, `ubuntu` (+ `docker.io/library/…`) | none: the host's tools (`sh`, `sleep`, …) | `sh` |
//! | `python` (+ `docker.io/library/…`, any tag: `python:3.12-slim`) | none: the host's tools, with the host's `python3` also as `python` | `python3` |
//! | `lab/openvpn`, `*/openvpn` (e.g. `kylemanna/openvpn`) | the host's `openvpn` (Debian's), host tools beside it | `--config /etc/openvpn/openvpn.conf` |
//! | `lab/fake-llm`, `ghostwire/fake-llm`, `*/fake-llm` | `ghostwire lab fake-llm` (OpenAI and Ollama APIs answering with what they were asked) | none (HTTP on 8080 and 11434) |
//! | anything else | — | `ErrImagePull` / `ImagePullBackOff`, as a kubelet reports a missing image |
//!
//! As in Kubernetes, `command` replaces the entrypoint and `args` the default args. In the
//! ghostwire, echo, app-a, app-b and fake-llm images, whose real images hold nothing but the binary, a
//! `command` must name `ghostwire` (any path); anything else fails to start like an exec of a
//! missing file. The Python and openvpn images hold a whole system (the host's).

use std::path::Path;

/// What an image name stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Image {
    Ghostwire,
    Echo,
    /// The mesh's example client (`mesh_apps::AppA`).
    AppA,
    /// The mesh's example server (`mesh_apps::AppB`).
    AppB,
    /// `ghostwire lab fake-llm`.
    FakeLlm,
    /// A general-purpose base image: the host's tools.
    Host,
    /// The host's tools, `python3` the default command and `python` an alias of it.
    Python,
    /// The host's tools, `openvpn` the entrypoint.
    Openvpn,
}

impl Image {
    /// Images whose real counterparts hold only the ghostwire binary.
    fn binary_only(self) -> bool {
        matches!(
            self,
            Image::Ghostwire | Image::Echo | Image::AppA | Image::AppB | Image::FakeLlm
        )
    }
}

/// Why a container cannot start from its image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// The lab knows no such image (`ErrImagePull`).
    #[error(
        "rpc error: code = NotFound desc = failed to pull and unpack image \"{0}\": failed to resolve reference \"{0}\": {0}: not found"
    )]
    NotFound(String),
    /// The command does not exist in the image (`StartError`).
    #[error(
        "failed to create containerd task: exec: \"{0}\": stat {0}: no such file or directory: unknown"
    )]
    NoSuchCommand(String),
}

/// `docker.io/library/busybox:1.36` → `docker.io/library/busybox:1.36` with `latest` added when
/// untagged, as a kubelet reports image names.
pub fn full_name(image: &str) -> String {
    let (path, _) = split_ref(image);
    let first = path.split('/').next().unwrap_or_default();
    let has_registry = path.contains('/') && (first.contains('.') || first.contains(':'));
    let mut out = if has_registry {
        image.to_string()
    } else if path.contains('/') {
        format!("docker.io/{image}")
    } else {
        format!("docker.io/library/{image}")
    };
    if !image.contains('@') && !tail_has_tag(image) {
        out.push_str(":latest");
    }
    out
}

fn tail_has_tag(image: &str) -> bool {
    image.rsplit('/').next().is_some_and(|t| t.contains(':'))
}

/// The repository path without tag or digest, and without a `docker.io/library/` prefix.
fn split_ref(image: &str) -> (String, ()) {
    let no_digest = image.split('@').next().unwrap_or_default();
    let path = match no_digest.rsplit_once('/') {
        Some((head, tail)) => format!("{head}/{}", tail.split(':').next().unwrap_or_default()),
        None => no_digest.split(':').next().unwrap_or_default().to_string(),
    };
    (path, ())
}

/// Looks an image up in the table.
pub fn lookup(image: &str) -> Result<Image, ImageError> {
    let (path, _) = split_ref(image);
    let short = path
        .strip_prefix("docker.io/")
        .unwrap_or(&path)
        .strip_prefix("library/")
        .unwrap_or(path.strip_prefix("docker.io/").unwrap_or(&path));
    let last = short.rsplit('/').next().unwrap_or_default();
    match short {
        "ghostwire/echo" | "lab/echo" => return Ok(Image::Echo),
        "ghostwire/app-a" => return Ok(Image::AppA),
        "ghostwire/app-b" => return Ok(Image::AppB),
        "busybox" | "alpine" | "debian" | "ubuntu" => return Ok(Image::Host),
        "python" => return Ok(Image::Python),
        _ => {}
    }
    match last {
        "ghostwire" => Ok(Image::Ghostwire),
        "ghostwire-echo" => Ok(Image::Echo),
        "fake-llm" => Ok(Image::FakeLlm),
        "openvpn" if short.contains('/') => Ok(Image::Openvpn),
        _ => Err(ImageError::NotFound(full_name(image))),
    }
}

/// The argv a container runs: image entrypoint and args overridden by `command` and `args`.
pub fn argv(
    image: &str,
    command: &[String],
    args: &[String],
    ghostwire: &Path,
) -> Result<Vec<String>, ImageError> {
    let kind = lookup(image)?;
    let gw = ghostwire.display().to_string();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let (entry, default_args): (Vec<String>, Vec<String>) = match kind {
        Image::Ghostwire => (vec![gw.clone()], vec![]),
        Image::Echo => (vec![gw.clone(), "lab".into(), "echo".into()], vec![]),
        Image::AppA => (vec![gw.clone(), "lab".into(), "app-a".into()], vec![]),
        Image::AppB => (vec![gw.clone(), "lab".into(), "app-b".into()], vec![]),
        Image::FakeLlm => (vec![gw.clone(), "lab".into(), "fake-llm".into()], vec![]),
        Image::Host => (vec![], s(&["sh"])),
        Image::Python => (vec![], s(&["python3"])),
        Image::Openvpn => (
            s(&["openvpn"]),
            s(&["--config", "/etc/openvpn/openvpn.conf"]),
        ),
    };
    let mut out = if command.is_empty() {
        let mut v = entry;
        v.extend(if args.is_empty() {
            default_args
        } else {
            args.to_vec()
        });
        v
    } else {
        let mut v = command.to_vec();
        v.extend(args.iter().cloned());
        v
    };
    if kind.binary_only() && !command.is_empty() {
        let first = &out[0];
        if Path::new(first).file_name().and_then(|n| n.to_str()) != Some("ghostwire") {
            return Err(ImageError::NoSuchCommand(first.clone()));
        }
        out[0] = gw;
    }
    // The python image has `python` (and /usr/local/bin/python3); the host has python3.
    if kind == Image::Python
        && let Some(first) = out.first_mut()
        && matches!(
            Path::new(first.as_str())
                .file_name()
                .and_then(|n| n.to_str()),
            Some("python" | "python3")
        )
    {
        *first = "python3".into();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn table() {
        for (image, want) in [
            ("ghostwire", Some(Image::Ghostwire)),
            ("ghostwire:dev", Some(Image::Ghostwire)),
            ("ghcr.io/ghostwire/ghostwire:0.1", Some(Image::Ghostwire)),
            ("ghostwire/echo:1", Some(Image::Echo)),
            ("lab/echo", Some(Image::Echo)),
            ("ghostwire/app-a:dev", Some(Image::AppA)),
            ("docker.io/ghostwire/app-b", Some(Image::AppB)),
            ("busybox:1.36", Some(Image::Host)),
            ("docker.io/library/alpine", Some(Image::Host)),
            ("alpine@sha256:abcd", Some(Image::Host)),
            ("nginx", None),
            ("example.com/team/busybox", None),
            ("python:3.12-slim", Some(Image::Python)),
            ("docker.io/library/python", Some(Image::Python)),
            ("kylemanna/openvpn", Some(Image::Openvpn)),
            ("lab/openvpn:2.6", Some(Image::Openvpn)),
            ("openvpn", None),
            ("lab/fake-llm", Some(Image::FakeLlm)),
            ("ghcr.io/ghostwire/fake-llm:dev", Some(Image::FakeLlm)),
        ] {
            assert_eq!(lookup(image).ok(), want, "{image}");
        }
    }

    #[test]
    fn names_are_reported_in_full() {
        assert_eq!(full_name("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(full_name("team/app:1"), "docker.io/team/app:1");
        assert_eq!(full_name("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(
            lookup("nosuch").unwrap_err().to_string(),
            "rpc error: code = NotFound desc = failed to pull and unpack image \"docker.io/library/nosuch:latest\": failed to resolve reference \"docker.io/library/nosuch:latest\": docker.io/library/nosuch:latest: not found"
        );
    }

    #[test]
    fn command_and_args_override_entrypoint_and_default_args() {
        let gw = Path::new("/bin/gw");
        assert_eq!(
            argv("ghostwire", &[], &s(&["init"]), gw).unwrap(),
            s(&["/bin/gw", "init"])
        );
        assert_eq!(
            argv(
                "ghostwire",
                &s(&["/usr/local/bin/ghostwire", "watcher"]),
                &[],
                gw
            )
            .unwrap(),
            s(&["/bin/gw", "watcher"])
        );
        assert_eq!(
            argv("ghostwire", &s(&["sh"]), &[], gw).unwrap_err(),
            ImageError::NoSuchCommand("sh".into())
        );
        assert_eq!(
            argv("lab/echo", &[], &s(&["--tcp", "80"]), gw).unwrap(),
            s(&["/bin/gw", "lab", "echo", "--tcp", "80"])
        );
        assert_eq!(argv("busybox", &[], &[], gw).unwrap(), s(&["sh"]));
        assert_eq!(
            argv("busybox", &s(&["sleep"]), &s(&["5"]), gw).unwrap(),
            s(&["sleep", "5"])
        );
        assert_eq!(
            argv("busybox", &[], &s(&["-c", "true"]), gw).unwrap(),
            s(&["-c", "true"])
        );
        assert_eq!(argv("python:3.12", &[], &[], gw).unwrap(), s(&["python3"]));
        assert_eq!(
            argv(
                "python",
                &s(&["/usr/local/bin/python", "-m", "http.server"]),
                &[],
                gw
            )
            .unwrap(),
            s(&["python3", "-m", "http.server"])
        );
        assert_eq!(
            argv("python", &s(&["sh", "-c", "pip list"]), &[], gw).unwrap(),
            s(&["sh", "-c", "pip list"])
        );
        assert_eq!(
            argv("lab/openvpn", &[], &[], gw).unwrap(),
            s(&["openvpn", "--config", "/etc/openvpn/openvpn.conf"])
        );
        assert_eq!(
            argv("lab/openvpn", &[], &s(&["--dev", "tun0"]), gw).unwrap(),
            s(&["openvpn", "--dev", "tun0"])
        );
        assert_eq!(
            argv("lab/fake-llm", &[], &s(&["--port", "8000"]), gw).unwrap(),
            s(&["/bin/gw", "lab", "fake-llm", "--port", "8000"])
        );
        assert_eq!(
            argv("lab/fake-llm", &s(&["python3"]), &[], gw).unwrap_err(),
            ImageError::NoSuchCommand("python3".into())
        );
    }
}
