//! Builds the eBPF object with aya-build and embeds it (see `ebpf_object()`).
//!
//! Without bpf-linker (e.g. `cargo check`/clippy on a machine where
//! `cargo xtask setup` has not run) it writes an empty stub object instead, so
//! metadata builds work; the binary then refuses to load with a clear error.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};

const OBJECT: &str = "corral-ebpf";

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest
        .parent()
        .ok_or_else(|| anyhow!("no workspace root"))?;
    let local_linker = root.join(".tools/bpf-linker/bin/bpf-linker");
    println!("cargo:rerun-if-changed={}", local_linker.display());
    println!("cargo:rerun-if-env-changed=CORRAL_EBPF_STUB");
    let out = PathBuf::from(env::var("OUT_DIR")?);

    let have_linker = local_linker.exists() || on_path("bpf-linker");
    let forced_stub = env::var_os("CORRAL_EBPF_STUB").is_some_and(|v| v == "1");
    if forced_stub || !have_linker {
        let why = if forced_stub {
            "CORRAL_EBPF_STUB=1"
        } else {
            "bpf-linker not found"
        };
        println!(
            "cargo:warning={why}: embedding a STUB eBPF object; \
             run `cargo xtask setup` for a working corral"
        );
        fs::write(out.join(OBJECT), b"").context("writing stub object")?;
        return Ok(());
    }
    let ebpf_dir = root.join("agent-ebpf");
    let pkg = aya_build::Package {
        name: "agent-ebpf",
        root_dir: ebpf_dir.to_str().context("utf-8 path")?,
        ..Default::default()
    };
    aya_build::build_ebpf([pkg], aya_build::Toolchain::default())
}

fn on_path(bin: &str) -> bool {
    env::var_os("PATH")
        .map(|p| env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}
