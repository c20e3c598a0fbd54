//! `cargo xtask test`: the whole suite, what CI runs (`.ci/run`).
//!
//! Steps, in order, failing fast: setup; release build; unit tests; a fuzz
//! smoke run (`fuzz.rs`); build the privileged test crate (`tests/`, package
//! `corral-tests`); run it as root, serially, with `CORRAL_BIN` pointing at
//! the release binary; check the systemd unit with `systemd-analyze verify`;
//! (later) the QEMU `vm-test`.

use std::{fs, path::Path, process::Stdio};

use anyhow::{Context as _, Result};

use crate::{build, fuzz, setup, util};

#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// Only run tests whose name contains NAME (unit and privileged tests).
    #[arg(long, value_name = "NAME")]
    pub filter: Option<String>,
    /// Skip the unit tests.
    #[arg(long)]
    pub no_unit: bool,
    /// Skip the fuzz smoke run.
    #[arg(long)]
    pub no_fuzz: bool,
    /// Skip the QEMU step (`cargo xtask vm-test` runs it alone).
    #[arg(long)]
    pub no_vm: bool,
}

const STEPS: usize = 8;

pub fn run(ws: &Path, args: &TestArgs) -> Result<()> {
    let mut steps = Steps::default();
    steps.step("setup", || setup::ensure(ws))?;
    let bin = steps.step("build corral (release)", || build::release(ws))?;

    if args.no_unit {
        steps.skip("unit tests", "--no-unit");
    } else {
        steps.step("unit tests", || {
            let mut c = util::cargo();
            c.args([
                "test",
                "--release",
                "-p",
                "agent-common",
                "-p",
                "agent-user",
                "-p",
                "xtask",
            ]);
            if let Some(f) = &args.filter {
                c.arg("--").arg(f);
            }
            util::run(c.current_dir(ws))
        })?;
    }

    if args.no_fuzz {
        steps.skip("fuzz smoke", "--no-fuzz");
    } else {
        let counts = steps.step("fuzz smoke (a few seconds per target)", || fuzz::smoke(ws))?;
        steps.note(&counts);
    }

    if ws.join("tests/Cargo.toml").is_file() {
        steps.step("build privileged tests", || {
            util::run(
                util::cargo()
                    .args(["test", "--release", "-p", "corral-tests", "--no-run"])
                    .current_dir(ws),
            )
        })?;
        let skips = steps.step("privileged tests (as root, one at a time)", || {
            privileged_tests(ws, &bin, args)
        })?;
        steps.note_skips(skips);
    } else {
        println!("\nskipping privileged tests: tests/ crate missing");
        steps.skip("build privileged tests", "tests/ crate missing");
        steps.skip("privileged tests", "tests/ crate missing");
    }

    steps.step("packaging: unit, drop-in, DaemonSet", || {
        crate::packaging_check::check(ws, &bin)
    })?;
    vm_test(&mut steps, ws, args)?;

    steps.summary();
    Ok(())
}

/// Runs the `corral-tests` binaries as root, serially. Root comes from
/// running as root (CI) or `sudo -E`; no global cargo runner is configured.
/// Returns the skips the tests recorded (libtest reports them as `ok`).
fn privileged_tests(ws: &Path, bin: &Path, args: &TestArgs) -> Result<Vec<String>> {
    let log = ws.join("target").join("privileged-skips.log");
    let _ = fs::remove_file(&log);
    let mut c = util::as_root(
        "cargo",
        &[
            ("CORRAL_BIN", bin.as_os_str()),
            ("CORRAL_SKIP_LOG", log.as_os_str()),
        ],
    )?;
    c.args(["test", "--release", "-p", "corral-tests", "--"])
        .arg("--test-threads=1");
    if let Some(f) = &args.filter {
        c.arg(f);
    }
    util::run(c.current_dir(ws).stdin(Stdio::null()))?;
    Ok(read_skips(&log))
}

/// One `test<TAB>why` line per recorded skip.
fn read_skips(log: &Path) -> Vec<String> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.replacen('\t', ": ", 1))
        .collect()
}

/// The QEMU step: boot Debian's kernel with BPF LSM in a TCG guest and run
/// the tests that need it there (`vm/`; KERNEL-NOTES.md, "Testing the BPF
/// LSM path anyway").
fn vm_test(steps: &mut Steps, ws: &Path, args: &TestArgs) -> Result<()> {
    const TITLE: &str = "vm-test (QEMU guest with BPF LSM)";
    if args.no_vm {
        steps.skip(TITLE, "--no-vm");
        return Ok(());
    }
    steps.step(TITLE, || {
        crate::vm::run_in_suite(ws, args.filter.as_deref())
    })
}

// --- step bookkeeping ----------------------------------------------------------

#[derive(Default)]
struct Steps {
    n: usize,
    done: Vec<(String, String)>,
    skipped_tests: Vec<String>,
}

impl Steps {
    fn step<T>(&mut self, title: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.n += 1;
        util::header(&format!("[{}/{STEPS}] {title}", self.n));
        let value =
            f().with_context(|| format!("test step {}/{STEPS} ({title}) failed", self.n))?;
        self.done.push((title.to_owned(), "ok".to_owned()));
        Ok(value)
    }

    /// Adds what the last step measured to its summary line.
    fn note(&mut self, what: &str) {
        if let Some((_, result)) = self.done.last_mut() {
            *result = format!("ok ({what})");
        }
    }

    fn skip(&mut self, title: &str, why: &str) {
        self.n += 1;
        util::header(&format!("[{}/{STEPS}] {title}: skipped ({why})", self.n));
        self.done
            .push((title.to_owned(), format!("skipped ({why})")));
    }

    /// Tests of the last step that passed without running (all or part).
    fn note_skips(&mut self, skips: Vec<String>) {
        if let Some(last) = self.done.last_mut()
            && !skips.is_empty()
        {
            last.1 = format!("ok, {} skipped (listed below)", skips.len());
        }
        self.skipped_tests.extend(skips);
    }

    fn summary(&self) {
        util::header("test summary");
        for (title, result) in &self.done {
            println!("  {title:<45} {result}");
        }
        if !self.skipped_tests.is_empty() {
            println!(
                "\n  {} privileged tests (or parts) SKIPPED, reported `ok` by libtest:",
                self.skipped_tests.len()
            );
            for s in &self.skipped_tests {
                println!("    - {s}");
            }
        }
        println!("all test steps passed");
    }
}
