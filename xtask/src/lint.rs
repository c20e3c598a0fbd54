//! `cargo xtask lint`: rustfmt, clippy on the host crates, and clippy on the
//! eBPF crate (nightly, bpfel-unknown-none, build-std) separately.

use std::{env, path::Path};

use anyhow::{Context as _, Result};

use crate::{setup, util};

pub fn run(ws: &Path) -> Result<()> {
    setup::run(ws)?;
    // rustup installs these by default, but a `--profile minimal` nightly
    // lacks clippy.
    // The host toolchain: the one `cargo xtask` runs under (rustup sets
    // RUSTUP_TOOLCHAIN for it).
    let host = env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".into());
    ensure_component(&host, "rustfmt")?;
    ensure_component(&host, "clippy")?;
    ensure_component("nightly", "clippy")?;

    util::header("rustfmt");
    util::run(
        util::cargo()
            .args(["fmt", "--all", "--", "--check"])
            .current_dir(ws),
    )?;

    util::header("clippy: host crates");
    util::run(
        util::cargo()
            .args([
                "clippy",
                "--workspace",
                "--exclude",
                "agent-ebpf",
                "--all-targets",
            ])
            .args(["--", "-D", "warnings"])
            .current_dir(ws),
    )?;

    util::header("clippy: eBPF crate (nightly, bpfel-unknown-none)");
    // From the workspace root so .cargo/config.toml's bpf-linker applies;
    // bpf-linker also goes on PATH for anything that looks it up by name.
    let mut path = vec![util::bpf_linker_bin_dir(ws)];
    if let Some(p) = env::var_os("PATH") {
        path.extend(env::split_paths(&p));
    }
    util::run(
        util::cargo()
            .args(["+nightly", "clippy", "-p", "agent-ebpf"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--", "-D", "warnings"])
            .env("PATH", env::join_paths(path).context("PATH")?)
            .current_dir(ws),
    )?;
    println!("\nlint: all clean");
    Ok(())
}

fn ensure_component(toolchain: &str, component: &str) -> Result<()> {
    let installed = util::output(util::cmd("rustup").args([
        "component",
        "list",
        "--toolchain",
        toolchain,
        "--installed",
    ]))?;
    if !installed.lines().any(|l| l.starts_with(component)) {
        util::run(util::cmd("rustup").args([
            "component",
            "add",
            component,
            "--toolchain",
            toolchain,
        ]))?;
    }
    Ok(())
}
