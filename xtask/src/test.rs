//! `cargo xtask test`: the whole suite, what CI runs (`.ci/run`).
//!
//! Steps, in order, failing fast: setup; release build; unit tests; a fuzz
//! smoke run (`fuzz.rs`); build the privileged test crate (`tests/`, package
//! `corral-tests`); run it as root, serially, with `CORRAL_BIN` pointing at
//! the release binary; check the systemd unit with `systemd-analyze verify`;
//! (later) the QEMU `vm-test`.

use std::{
    env, fs,
    path::Path,
    process::{self, Stdio},
};

use anyhow::{Context as _, Result, bail};

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

    steps.step("systemd unit: systemd-analyze verify", || {
        check_unit(ws, &bin)
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

// --- systemd unit check --------------------------------------------------------

const UNIT_NAME: &str = "corral.service";

/// `systemd-analyze verify` on a copy of packaging/corral.service whose
/// ExecStart points at the freshly built binary (verify needs it to exist).
/// First proves on a deliberately broken copy that the check can fail.
pub fn check_unit(ws: &Path, bin: &Path) -> Result<()> {
    let src = ws.join("packaging").join(UNIT_NAME);
    let text = fs::read_to_string(&src).with_context(|| format!("reading {}", src.display()))?;
    let unit = rewrite_exec_start(&text, bin)?;
    let dir = env::temp_dir().join(format!("corral-unit-check-{}", process::id()));
    let result = (|| {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        if verify(&dir, &break_unit(&unit)?).is_ok() {
            bail!(
                "systemd-analyze verify accepted a deliberately broken unit: the check is not working"
            );
        }
        println!("(a deliberately broken copy was rejected, as it should be)");
        verify(&dir, &unit).with_context(|| format!("{} has errors", src.display()))
    })();
    let _ = fs::remove_dir_all(&dir);
    result?;
    println!("{}: ok", src.display());
    Ok(())
}

/// Writes `unit` as `<dir>/corral.service` and verifies it.
fn verify(dir: &Path, unit: &str) -> Result<()> {
    let path = dir.join(UNIT_NAME);
    fs::write(&path, unit).with_context(|| format!("writing {}", path.display()))?;
    let mut c = util::cmd("systemd-analyze");
    c.args(["verify", "--man=no"]).arg(&path);
    let line = util::display(&c);
    let out = c.stdin(Stdio::null()).output().with_context(|| {
        format!("cannot run `{line}` (is systemd installed? `cargo xtask setup`)")
    })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let problems = problems(&text);
    if !out.status.success() || !problems.is_empty() {
        let shown = if problems.is_empty() {
            text.trim().to_owned()
        } else {
            problems.join("\n")
        };
        bail!("`{line}` ({}):\n{shown}", out.status);
    }
    Ok(())
}

/// The lines of `systemd-analyze verify` output that are real problems with
/// our unit. Verify reports most mistakes (unknown keys, bad values) as
/// "..., ignoring." warnings with exit status 0, so any line about our unit
/// counts, except complaints about paths under /etc, /var/lib/corral or
/// /run/corral that do not exist yet: `corral install` and systemd create them.
fn problems(output: &str) -> Vec<String> {
    output
        .lines()
        .filter(|l| l.contains(UNIT_NAME))
        .filter(|l| !missing_runtime_path(l))
        .map(str::to_owned)
        .collect()
}

fn missing_runtime_path(line: &str) -> bool {
    let missing = line.contains("No such file or directory") || line.contains("does not exist");
    let ours = ["/etc/", "/var/lib/corral", "/run/corral"]
        .iter()
        .any(|p| line.contains(p));
    missing && ours && !line.contains("is not executable")
}

/// Points `ExecStart=` at `bin`, keeping any `-@:+!` prefixes and the arguments.
fn rewrite_exec_start(unit: &str, bin: &Path) -> Result<String> {
    let bin = bin.to_str().context("binary path is not UTF-8")?;
    let bin = if bin.contains(char::is_whitespace) {
        format!("\"{bin}\"")
    } else {
        bin.to_owned()
    };
    let mut found = false;
    let mut out = String::with_capacity(unit.len() + bin.len());
    for line in unit.lines() {
        if let Some(rest) = line.strip_prefix("ExecStart=") {
            let cmd = rest.trim_start_matches(['-', '@', ':', '+', '!']);
            let prefix = &rest[..rest.len() - cmd.len()];
            let args = cmd.split_once(char::is_whitespace).map(|(_, a)| a);
            out.push_str(&format!("ExecStart={prefix}{bin}"));
            if let Some(a) = args {
                out.push(' ');
                out.push_str(a);
            }
            found = true;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    if !found {
        bail!("no ExecStart= line in the unit");
    }
    Ok(out)
}

/// `unit` with an invalid `Type=` right after `[Service]`.
fn break_unit(unit: &str) -> Result<String> {
    if !unit.lines().any(|l| l.trim() == "[Service]") {
        bail!("no [Service] section in the unit");
    }
    Ok(unit.replacen("[Service]\n", "[Service]\nType=not-a-service-type\n", 1))
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

#[cfg(test)]
mod tests {
    use super::*;

    const UNIT: &str = "[Unit]\nDescription=x\n\n[Service]\nType=notify\n\
                        ExecStart=/usr/local/bin/corral daemon --policy-dir /etc/corral/policies\n";

    #[test]
    fn exec_start_is_rewritten_with_args() {
        let out = rewrite_exec_start(UNIT, Path::new("/ws/target/release/corral")).unwrap();
        assert!(out.contains(
            "\nExecStart=/ws/target/release/corral daemon --policy-dir /etc/corral/policies\n"
        ));
        let prefixed = UNIT.replace("ExecStart=/", "ExecStart=-/");
        let out = rewrite_exec_start(&prefixed, Path::new("/b")).unwrap();
        assert!(out.contains("\nExecStart=-/b daemon"));
        assert!(rewrite_exec_start("[Service]\n", Path::new("/b")).is_err());
    }

    #[test]
    fn warnings_about_our_unit_are_problems() {
        let out = "/tmp/x/corral.service:16: Failed to parse service type, ignoring: notifyy\n\
                   /lib/systemd/system/other.service:3: Unknown key 'X' in section [Unit]\n\
                   corral.service: Command /nonexistent/x is not executable: No such file or directory\n\
                   corral.service: /etc/corral/policies: No such file or directory\n";
        assert_eq!(
            problems(out),
            vec![
                "/tmp/x/corral.service:16: Failed to parse service type, ignoring: notifyy",
                "corral.service: Command /nonexistent/x is not executable: No such file or directory",
            ]
        );
        assert!(problems("").is_empty());
    }

    /// The real thing, where systemd-analyze exists: the broken copy fails,
    /// the packaged unit passes.
    #[test]
    fn packaged_unit_verifies_and_broken_one_does_not() {
        if util::which("systemd-analyze").is_none() {
            eprintln!("systemd-analyze missing; skipped");
            return;
        }
        let ws = util::workspace_root();
        let text = fs::read_to_string(ws.join("packaging").join(UNIT_NAME)).unwrap();
        // Any existing executable will do for ExecStart.
        let unit = rewrite_exec_start(&text, Path::new("/bin/true")).unwrap();
        let dir = env::temp_dir().join(format!("corral-unit-test-{}", process::id()));
        fs::create_dir_all(&dir).unwrap();
        let good = verify(&dir, &unit);
        let bad = verify(&dir, &break_unit(&unit).unwrap());
        let unknown_key = verify(
            &dir,
            &unit.replacen("[Service]\n", "[Service]\nBogus=1\n", 1),
        );
        let _ = fs::remove_dir_all(&dir);
        good.unwrap();
        assert!(bad.is_err());
        assert!(unknown_key.is_err());
    }
}
