//! Kernel modules the guest loads before the tests: protocols that Debian
//! builds as modules and that the tests must see refused (SCTP, L2TP/IP:
//! inet sockets no Corral rule class judges; AF_RDS over TCP: a family whose
//! IP traffic a kernel worker sends). The initramfs has no
//! `modules.dep` (depmod never ran), so dependencies are read from each
//! module's own `.modinfo` (`depends=`), decompressed with `xz`.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use crate::util;

/// Modules the guest loads, by path under `kernel/`.
pub(super) const WANTED: &[&str] = &[
    "net/sctp/sctp",
    "net/l2tp/l2tp_ip",
    // Not rds_tcp: it opens a kernel listener in every new network
    // namespace, from the creating task, whose bind the identity's rules
    // then judge (fail closed: a tagged process could not unshare a netns).
    "net/rds/rds",
];

/// One module: its name and its decompressed bytes.
pub(super) struct Module {
    pub(super) name: String,
    pub(super) bytes: Vec<u8>,
}

/// The wanted modules and everything they depend on, dependencies first.
/// `modules_dir` is `lib/modules/<version>` of the unpacked kernel package.
pub(super) fn resolve(modules_dir: &Path) -> Result<Vec<Module>> {
    let mut out: Vec<Module> = Vec::new();
    for w in WANTED {
        let path = modules_dir.join("kernel").join(format!("{w}.ko.xz"));
        add(modules_dir, &path, &mut out, 0)?;
    }
    Ok(out)
}

fn add(modules_dir: &Path, path: &Path, out: &mut Vec<Module>, depth: u32) -> Result<()> {
    anyhow::ensure!(
        depth < 16,
        "module dependencies too deep at {}",
        path.display()
    );
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".ko.xz"))
        .with_context(|| format!("not a .ko.xz module: {}", path.display()))?
        .replace('-', "_");
    if out.iter().any(|m| m.name == name) {
        return Ok(());
    }
    let bytes = util::output_bytes(util::cmd("xz").arg("-dc").arg(path))
        .with_context(|| format!("decompressing {}", path.display()))?;
    for dep in depends(&bytes) {
        let dep_path = find(&modules_dir.join("kernel"), &dep)?.with_context(|| {
            format!(
                "{name} depends on {dep}, not found under {}",
                modules_dir.display()
            )
        })?;
        add(modules_dir, &dep_path, out, depth + 1)?;
    }
    out.push(Module { name, bytes });
    Ok(())
}

/// The `depends=a,b` entry of a module's `.modinfo` strings.
fn depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = ko.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &ko[at + KEY.len()..];
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('-', "_"))
        .collect()
}

/// `<name>.ko.xz` anywhere under `dir` (module names treat `-` and `_`
/// alike).
fn find(dir: &Path, name: &str) -> Result<Option<PathBuf>> {
    for e in fs::read_dir(dir)?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(found) = find(&p, name)? {
                return Ok(Some(found));
            }
        } else if p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ko.xz"))
            .is_some_and(|n| n.replace('-', "_") == name)
        {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_depends_from_modinfo() {
        let ko = b"junk\0license=GPL\0depends=libcrc32c,udp_tunnel,ip6-udp-tunnel\0name=sctp\0";
        assert_eq!(depends(ko), ["libcrc32c", "udp_tunnel", "ip6_udp_tunnel"]);
        assert!(depends(b"\0depends=\0").is_empty());
        assert!(depends(b"nothing").is_empty());
    }
}
