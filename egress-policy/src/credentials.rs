//! `credentialName` and Gateway API `certificateRefs`: Kubernetes Secrets, read as
//! Kubernetes mounts them. A Secret named `NAME` is the directory `DIR/NAME` (DIR from
//! `--credentials`), its keys files: `tls.crt` (or `cert`), `tls.key` (or `key`), `ca.crt`
//! (or `cacert`); as in Istio, the CA may also be a Secret of its own, `NAME-cacert`. The
//! files are checked where the name is written, so a missing Secret is an error with file,
//! line and field, never a listener or dial that fails later.

use std::path::Path;

use crate::reader::Reader;
use crate::yaml::Node;

/// The files of one Secret: a certificate chain, its key, and CA certificates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Credential {
    pub(crate) cert: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) ca: Option<String>,
}

/// The first of `names` present in `dir`.
fn file_in(dir: &Path, names: &[&str]) -> Option<String> {
    names
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

/// The Secret `name`, as the field at `path` (`node`) names it; an error when there is no
/// credentials directory or no such Secret in it.
pub(crate) fn credential(
    r: &mut Reader<'_>,
    node: &Node,
    path: &str,
    name: &str,
) -> Option<Credential> {
    let Some(dir) = r.credentials.clone() else {
        r.error(
            node,
            path,
            format!("{name:?} names a Kubernetes Secret: give --credentials DIR, where DIR/{name}/ holds its files (tls.crt, tls.key, ca.crt) as Kubernetes mounts a Secret"),
        );
        return None;
    };
    let secret = dir.join(name);
    let ca_secret = dir.join(format!("{name}-cacert"));
    if name.contains('/') || name.starts_with('.') || !(secret.is_dir() || ca_secret.is_dir()) {
        r.error(
            node,
            path,
            format!(
                "no Secret {name:?}: {} is not a directory of its files",
                secret.display()
            ),
        );
        return None;
    }
    Some(Credential {
        cert: file_in(&secret, &["tls.crt", "cert"]),
        key: file_in(&secret, &["tls.key", "key"]),
        ca: file_in(&secret, &["ca.crt", "cacert"])
            .or_else(|| file_in(&ca_secret, &["ca.crt", "cacert"])),
    })
}
