//! `cargo xtask setup`: idempotent; a no-op (well under a second) when done.
//!
//! 1. nightly with rust-src (aya-build runs `cargo +nightly build -Z
//!    build-std=core` for the eBPF crate);
//! 2. bpf-linker 0.13.0 in `<ws>/.tools/bpf-linker`, built against the
//!    nightly's own libLLVM (see /work/shared/KERNEL-NOTES.md) and rebuilt when
//!    the nightly changes;
//! 3. cargo-fuzz in `<ws>/.tools/cargo-fuzz` (`cargo xtask fuzz`);
//! 4. the Debian packages the tests use.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Stdio,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::util::{self, header};

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the test suite needs: `systemd` for `systemd-analyze
/// verify`, `iproute2` for `ip`, `prometheus` (server and `promtool`) for
/// the metrics test.
const APT_PACKAGES: &[&str] = &["systemd", "iproute2", "prometheus", "python3-yaml"];

pub fn run(ws: &Path) -> Result<()> {
    header("setup");
    ensure(ws)
}

/// The work of `run`, without the section header.
pub fn ensure(ws: &Path) -> Result<()> {
    let start = Instant::now();
    nightly_rust_src().context("setting up the nightly toolchain")?;
    bpf_linker(&util::tools_dir(ws)).context("setting up bpf-linker")?;
    ensure_cargo_fuzz(ws).context("installing cargo-fuzz")?;
    apt_packages(APT_PACKAGES).context("installing test packages")?;
    println!("setup: done in {:.2?}", start.elapsed());
    Ok(())
}

fn nightly_rust_src() -> Result<()> {
    let installed = util::output(util::cmd("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]));
    match installed {
        Ok(list) if list.lines().any(|l| l.trim().starts_with("rust-src")) => {
            println!("setup: nightly toolchain with rust-src: present");
        }
        Ok(_) => {
            println!("setup: adding rust-src to the nightly toolchain");
            util::run(util::cmd("rustup").args([
                "component",
                "add",
                "rust-src",
                "--toolchain",
                "nightly",
            ]))?;
        }
        Err(_) => {
            // `component list` fails when the toolchain is missing; make sure
            // that is the reason before installing one.
            let toolchains = util::output(util::cmd("rustup").args(["toolchain", "list"]))
                .context("is rustup installed? see https://rustup.rs")?;
            if toolchains.lines().any(|l| l.starts_with("nightly-")) {
                bail!("`rustup component list --toolchain nightly --installed` failed");
            }
            println!("setup: installing the nightly toolchain (minimal, with rust-src)");
            util::run(util::cmd("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))?;
        }
    }
    Ok(())
}

/// What bpf-linker must be built against: this nightly's libLLVM.
#[derive(Debug)]
struct NightlyLlvm {
    /// `commit-hash` from `rustc +nightly -vV`.
    commit: String,
    /// `<sysroot>/lib/libLLVM.so.<major>.<minor>-rust-<version>`.
    lib: PathBuf,
    /// The LLVM major version, from the file name.
    major: u32,
}

fn nightly_llvm() -> Result<NightlyLlvm> {
    let vv = util::output(util::cmd("rustc").args(["+nightly", "-vV"]))?;
    let commit = vv
        .lines()
        .find_map(|l| l.strip_prefix("commit-hash:"))
        .map(|h| h.trim().to_owned())
        .context("no commit-hash in `rustc +nightly -vV`")?;
    let sysroot = util::output(util::cmd("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let mut libs: Vec<PathBuf> = fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .collect();
    libs.sort();
    let lib = match libs.as_slice() {
        [one] => one.clone(),
        [] => bail!("no libLLVM.so.* in {}", libdir.display()),
        many => bail!("several libLLVM.so.* in {}: {many:?}", libdir.display()),
    };
    let name = lib.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let major = llvm_major(name).with_context(|| format!("no LLVM major version in {name}"))?;
    Ok(NightlyLlvm { commit, lib, major })
}

/// `libLLVM.so.22.1-rust-1.97.0-nightly` -> 22.
fn llvm_major(file_name: &str) -> Option<u32> {
    let rest = file_name.strip_prefix("libLLVM.so.")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn bpf_linker(tools: &Path) -> Result<()> {
    let llvm = nightly_llvm()?;
    let short = &llvm.commit[..llvm.commit.len().min(9)];
    let libdir = tools.join("rustllvm/lib");
    let root = tools.join("bpf-linker");
    let bin = root.join("bin/bpf-linker");
    let stamp = root.join(".nightly");
    let lib_name = llvm.lib.file_name().context("libLLVM file name")?;
    // The build links `libLLVM.so`; the binary's RUNPATH (this directory)
    // then needs the versioned name at run time.
    let links = [libdir.join("libLLVM.so"), libdir.join(lib_name)];
    let links_ok = links
        .iter()
        .all(|l| fs::read_link(l).is_ok_and(|t| t == llvm.lib));

    let stamped = fs::read_to_string(&stamp).ok().map(|s| s.trim().to_owned());
    let reason = if !bin.exists() {
        "not built yet".to_owned()
    } else if !links_ok {
        format!("libLLVM symlinks in {} are stale", libdir.display())
    } else if stamped.as_deref().is_some_and(|s| s != llvm.commit) {
        format!(
            "nightly changed ({} -> {short})",
            &stamped.unwrap_or_default()
        )
    } else {
        match linker_version(&bin) {
            Ok(v) if v.contains(BPF_LINKER_VERSION) => {
                if stamped.is_none() {
                    // Built by hand (KERNEL-NOTES recipe) against this same
                    // libLLVM: adopt it rather than rebuild.
                    fs::write(&stamp, format!("{}\n", llvm.commit))
                        .with_context(|| format!("writing {}", stamp.display()))?;
                    println!("setup: adopted existing {v} (stamped nightly {short})");
                } else {
                    println!(
                        "setup: {v}: up to date (nightly {short}, LLVM {})",
                        llvm.major
                    );
                }
                return Ok(());
            }
            Ok(v) => format!("found `{v}`, want {BPF_LINKER_VERSION}"),
            Err(e) => format!("existing binary does not run: {e:#}"),
        }
    };

    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {} ({reason}; about a minute)",
        llvm.lib.display()
    );
    relink(&libdir, &links, &llvm.lib)?;
    // An interrupted build must not look up to date.
    let _ = fs::remove_file(&stamp);
    let feature = format!("llvm-{}", llvm.major);
    let mut install = util::cargo();
    install
        .arg("+nightly")
        .args(["install", &format!("bpf-linker@{BPF_LINKER_VERSION}")])
        .args(["--locked", "--force", "--no-default-features"])
        .args(["--features", &feature])
        .arg("--root")
        .arg(&root)
        .env("LLVM_PREFIX", tools.join("rustllvm"))
        // Away from the workspace and its .cargo/config.toml.
        .current_dir(tools)
        .stdin(Stdio::null());
    util::run(&mut install)?;
    let v = linker_version(&bin).context("the freshly built bpf-linker does not run")?;
    fs::write(&stamp, format!("{}\n", llvm.commit))
        .with_context(|| format!("writing {}", stamp.display()))?;
    println!("setup: built {v} at {}", bin.display());
    Ok(())
}

/// `links` in `libdir` pointing at `lib`, and no symlink to an older
/// nightly's libLLVM left beside them.
fn relink(libdir: &Path, links: &[PathBuf], lib: &Path) -> Result<()> {
    fs::create_dir_all(libdir).with_context(|| format!("creating {}", libdir.display()))?;
    for entry in fs::read_dir(libdir)? {
        let path = entry?.path();
        if path.is_symlink() {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    for link in links {
        println!("setup: ln -s {} {}", lib.display(), link.display());
        symlink(lib, link).with_context(|| format!("creating {}", link.display()))?;
    }
    Ok(())
}

fn linker_version(bin: &Path) -> Result<String> {
    Ok(util::output(util::cmd(bin).arg("--version"))?
        .trim()
        .to_owned())
}

fn dpkg_installed(package: &str) -> Result<bool> {
    let out = util::cmd("dpkg")
        .args(["-s", package])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("running dpkg")?;
    Ok(out.status.success()
        && String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == "Status: install ok installed"))
}

/// Installs the Debian packages that are missing (apt-get as root).
pub fn apt_packages(packages: &[&str]) -> Result<()> {
    if util::which("dpkg").is_none() {
        println!(
            "setup: WARNING: not a Debian-like system (no dpkg); make sure these are \
             installed: {}",
            packages.join(" ")
        );
        return Ok(());
    }
    let mut missing = Vec::new();
    for p in packages {
        if !dpkg_installed(p)? {
            missing.push(*p);
        }
    }
    if missing.is_empty() {
        println!("setup: packages present: {}", packages.join(" "));
        return Ok(());
    }
    println!("setup: installing packages: {}", missing.join(" "));
    let noninteractive = [("DEBIAN_FRONTEND", "noninteractive".as_ref())];
    util::run(
        util::as_root("apt-get", &noninteractive)?
            .arg("update")
            .stdin(Stdio::null()),
    )?;
    util::run(
        util::as_root("apt-get", &noninteractive)?
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .stdin(Stdio::null()),
    )?;
    Ok(())
}

/// The cargo-fuzz `cargo xtask fuzz` runs (its targets need nightly).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Installs cargo-fuzz into `.tools/cargo-fuzz` (from `cargo xtask setup`).
pub fn ensure_cargo_fuzz(ws: &Path) -> Result<()> {
    let root = util::tools_dir(ws).join("cargo-fuzz");
    if root.join("bin/cargo-fuzz").is_file() {
        return Ok(());
    }
    println!(
        "setup: installing cargo-fuzz {CARGO_FUZZ_VERSION} into {} (a few minutes)",
        root.display()
    );
    util::run(
        util::cmd("cargo")
            .arg("+nightly")
            .args([
                "install",
                &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
                "--locked",
                "--root",
            ])
            .arg(&root),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_from_file_name() {
        assert_eq!(llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly"), Some(22));
        assert_eq!(llvm_major("libLLVM.so.19-rust-1.84.0-nightly"), Some(19));
        assert_eq!(llvm_major("libLLVM-22-rust-1.97.0-nightly.so"), None);
    }
}
