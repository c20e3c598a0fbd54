//! `cargo xtask fuzz`: the libFuzzer targets of `fuzz/` (cargo-fuzz, nightly,
//! AddressSanitizer), each for a bounded time; `smoke` is the short run
//! `cargo xtask test` does.
//!
//! Seeds are `fuzz/corpus/<target>/` (checked in, read only); what a run
//! finds goes to `.cache/fuzz/<target>/` (kept between runs); a crash is
//! written to `fuzz/artifacts/<target>/` and fails the command with the
//! reproducer's path. The agent-user build script embeds a stub eBPF object
//! here (`CORRAL_EBPF_STUB=1`): the targets load no kernel programs, and the
//! eBPF build must not see the sanitizer flags.

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::util;

pub const TARGETS: [&str; 6] = [
    "policy",
    "event_decode",
    "api",
    "lease_token",
    "btf",
    "audit_record",
];
/// Seconds per target in `cargo xtask test`.
const SMOKE_SECS: u64 = 8;

#[derive(clap::Args, Debug)]
pub struct FuzzArgs {
    /// Only this target (policy, event_decode, api, lease_token, btf,
    /// audit_record).
    #[arg(long, value_name = "NAME")]
    pub target: Option<String>,
    /// Seconds per target.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub time: u64,
}

pub fn run(ws: &Path, args: &FuzzArgs) -> Result<()> {
    crate::setup::ensure(ws)?;
    let targets: Vec<&str> = match &args.target {
        Some(t) if TARGETS.contains(&t.as_str()) => vec![t.as_str()],
        Some(t) => bail!("no fuzz target `{t}`; targets: {}", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    let report = campaign(ws, &targets, args.time)?;
    util::header("fuzz summary");
    println!("{report}");
    Ok(())
}

/// A few seconds per target; the summary line for `cargo xtask test`.
pub fn smoke(ws: &Path) -> Result<String> {
    campaign(ws, &TARGETS, SMOKE_SECS)
}

fn campaign(ws: &Path, targets: &[&str], secs: u64) -> Result<String> {
    build(ws)?;
    let mut lines = Vec::new();
    for t in targets {
        let (execs, took) = run_target(ws, t, secs)?;
        lines.push(format!("{t}: {execs} executions in {took:.0?}, no crash"));
    }
    Ok(lines.join("; "))
}

fn cargo_fuzz_bin(ws: &Path) -> PathBuf {
    util::tools_dir(ws).join("cargo-fuzz/bin")
}

fn path_with_cargo_fuzz(ws: &Path) -> Result<OsString> {
    let mut dirs = vec![cargo_fuzz_bin(ws)];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).context("PATH")
}

fn build(ws: &Path) -> Result<()> {
    util::header("fuzz: building the targets (nightly, AddressSanitizer)");
    util::run(
        util::cmd("cargo")
            .args(["+nightly", "fuzz", "build", "-O"])
            .env("PATH", path_with_cargo_fuzz(ws)?)
            .env("CORRAL_EBPF_STUB", "1")
            .current_dir(ws),
    )
}

/// Runs one target's binary for `secs`; (executions, wall time).
fn run_target(ws: &Path, target: &str, secs: u64) -> Result<(u64, std::time::Duration)> {
    let bin = ws
        .join("fuzz/target/x86_64-unknown-linux-gnu/release")
        .join(target);
    let work = ws.join(".cache/fuzz").join(target);
    let seeds = ws.join("fuzz/corpus").join(target);
    let artifacts = ws.join("fuzz/artifacts").join(target);
    for d in [&work, &artifacts] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    util::header(&format!("fuzz: {target} for {secs} s"));
    let start = Instant::now();
    let out = util::cmd(&bin)
        .arg(&work)
        .arg(&seeds)
        .arg(format!("-max_total_time={secs}"))
        .arg("-print_final_stats=1")
        .arg("-timeout=20")
        .arg("-rss_limit_mb=4096")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .current_dir(ws)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let took = start.elapsed();
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
        bail!(
            "fuzz target {target} failed ({}); the reproducer is in {} \
             (replay: {} <file>)",
            out.status,
            artifacts.display(),
            bin.display()
        );
    }
    let execs = executions(&log)
        .with_context(|| format!("{target}: no execution count in libFuzzer's output"))?;
    println!("{target}: {execs} executions in {took:.1?}");
    Ok((execs, took))
}

/// `stat::number_of_executed_units: N` from `-print_final_stats=1`.
fn executions(log: &str) -> Option<u64> {
    log.lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_execution_count() {
        let log = "#1024 pulse\nDone 5000 runs in 8 second(s)\n\
                   stat::number_of_executed_units: 5000\nstat::average_exec_per_sec:     625\n";
        assert_eq!(executions(log), Some(5000));
        assert_eq!(executions("crash"), None);
    }
}
