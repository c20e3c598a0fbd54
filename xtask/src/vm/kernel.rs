//! The guest kernel: the newest Debian cloud kernel apt offers, downloaded
//! and unpacked once into `.cache/vm/` (reused offline).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context as _, Result, bail};

use crate::util;

pub(super) struct Kernel {
    pub(super) vmlinuz: PathBuf,
    /// `lib/modules/<version>` of the unpacked package.
    pub(super) modules: Option<PathBuf>,
    /// The `lsm=` boot list: the kernel's default with `bpf` added.
    pub(super) lsm: String,
}

/// Numeric-aware ordering key: `6.12.117+deb12` > `6.1.0-48`.
fn version_key(s: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut num = String::new();
    let mut text = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !text.is_empty() {
                out.push((0, std::mem::take(&mut text)));
            }
            num.push(c);
        } else {
            if !num.is_empty() {
                out.push((num.parse().unwrap_or(0), String::new()));
                num.clear();
            }
            text.push(c);
        }
    }
    if !num.is_empty() {
        out.push((num.parse().unwrap_or(0), String::new()));
    }
    if !text.is_empty() {
        out.push((0, text));
    }
    out
}

fn newest(names: impl IntoIterator<Item = String>) -> Option<String> {
    names.into_iter().max_by_key(|n| version_key(n))
}

fn apt_kernel_packages() -> Result<Vec<String>> {
    let out = util::output(util::cmd("apt-cache").args([
        "search",
        "--names-only",
        "^linux-image-[0-9].*-cloud-amd64-unsigned$",
    ]))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// `pkg` unpacked under `cache` (downloaded and unpacked once).
fn unpacked(cache: &Path, pkg: &str) -> Result<PathBuf> {
    let dir = cache.join(pkg);
    if !dir.join("boot").is_dir() {
        println!("vm: downloading {pkg}");
        let _ = fs::remove_dir_all(&dir);
        util::run(
            util::cmd("apt-get")
                .args(["download", pkg])
                .current_dir(cache)
                .stdin(Stdio::null()),
        )?;
        let deb = fs::read_dir(cache)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.extension().is_some_and(|x| x == "deb")
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{pkg}_")))
            })
            .with_context(|| {
                format!(
                    "apt-get download left no {pkg}_*.deb in {}",
                    cache.display()
                )
            })?;
        let tmp = cache.join(format!(".{pkg}.partial"));
        let _ = fs::remove_dir_all(&tmp);
        util::run(util::cmd("dpkg").arg("-x").arg(&deb).arg(&tmp))?;
        fs::rename(&tmp, &dir)?;
        let _ = fs::remove_file(&deb);
    } else {
        println!("vm: using cached {pkg}");
    }
    Ok(dir)
}

pub(super) fn kernel(ws: &Path) -> Result<Kernel> {
    let cache = ws.join(".cache/vm");
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let mut offered = apt_kernel_packages().unwrap_or_default();
    if offered.is_empty() {
        println!("vm: apt offers no cloud kernel yet; running apt-get update");
        let _ = util::run(
            util::as_root("apt-get", &[("DEBIAN_FRONTEND", "noninteractive".as_ref())])?
                .arg("update")
                .stdin(Stdio::null()),
        );
        offered = apt_kernel_packages().unwrap_or_default();
    }
    let cached = || -> Vec<String> {
        fs::read_dir(&cache)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().join("boot").is_dir())
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let pkg = match newest(offered) {
        Some(p) => p,
        None => newest(cached()).context(
            "apt offers no linux-image-*-cloud-amd64-unsigned package and none is cached in .cache/vm",
        )?,
    };
    let dir = unpacked(&cache, &pkg)?;
    let boot = dir.join("boot");
    let find = |prefix: &str| -> Result<PathBuf> {
        fs::read_dir(&boot)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .with_context(|| format!("no {prefix}* in {}", boot.display()))
    };
    let vmlinuz = find("vmlinuz-")?;
    let config = fs::read_to_string(find("config-")?)?;
    let opt = |key: &str| {
        config
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(|v| v.trim_matches('"').to_owned())
    };
    if opt("CONFIG_BPF_LSM").as_deref() != Some("y") {
        bail!("{pkg} is built without CONFIG_BPF_LSM");
    }
    let mut lsm: Vec<String> = opt("CONFIG_LSM")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if !lsm.iter().any(|l| l == "bpf") {
        lsm.push("bpf".into());
    }
    let modules = fs::read_dir(dir.join("lib/modules"))
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.path());
    Ok(Kernel {
        vmlinuz,
        modules,
        lsm: lsm.join(","),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_kernel_by_version() {
        let names = [
            "linux-image-6.1.0-48-cloud-amd64-unsigned",
            "linux-image-6.12.117+deb12-cloud-amd64-unsigned",
            "linux-image-6.12.9+deb12-cloud-amd64-unsigned",
            "linux-image-6.1.0-9-cloud-amd64-unsigned",
        ];
        assert_eq!(
            newest(names.iter().map(|s| s.to_string())).as_deref(),
            Some("linux-image-6.12.117+deb12-cloud-amd64-unsigned")
        );
    }
}
