//! `cargo xtask bench`, files part: what the `[files]` fallback costs an
//! open()+close() (Landlock in the process, the denial observer on every
//! syscall), each scenario beside a no-Corral baseline from the same run.
//!
//! Four daemons run one after the other: without the observer
//! (`CORRAL_NO_FILE_OBSERVER=1`), so Landlock's own cost and the observer's
//! separate cleanly; with Landlock's audit records (the default where the
//! kernel has them: nothing host-wide, the agent keeps an audit context);
//! with per-syscall tracepoints (`CORRAL_FILE_OBSERVER=tracepoints`, the
//! form where it has not); and with their tp_btf fallback forced
//! (`CORRAL_FILE_OBSERVER_BTF=1`), which every syscall pays.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    bench_env::{self, Env, RUNS, median},
    util,
};

const OPENS: &str = "200000";
const SYSCALLS: &str = "2000000";
const DENIED: &str = "100000";

struct Bench<'a> {
    env: &'a Env,
    probe: PathBuf,
    data: PathBuf,
}

/// Runs the files benchmark; returns its report. The caller has built the
/// release binaries (`corral`, `corral-probe`).
pub fn run(ws: &Path) -> Result<String> {
    bench_env::with_env(ws, "corral-bench-files", |env| {
        let tmp = &env.tmp;
        fs::create_dir_all(tmp.join("data"))?;
        fs::write(tmp.join("data/file"), "x")?;
        fs::write(tmp.join("secret"), "x")?;
        Bench {
            env,
            probe: fs::canonicalize(ws.join("target/release/corral-probe"))?,
            data: tmp.join("data"),
        }
        .all()
    })
}

impl Bench<'_> {
    /// Median ns per operation of the probe step `op ARG N`, run as
    /// `identity` (or untagged); `want_errors` says whether the opens are
    /// meant to fail.
    fn measure(&self, identity: Option<&str>, step: &[&str], want_errors: bool) -> Result<f64> {
        let mut runs = Vec::new();
        for _ in 0..RUNS {
            let mut c = self.env.as_identity(identity, &self.probe);
            let v = bench_env::last_json(&util::output(c.args(step))?)?;
            let errors = v["errors"].as_u64().unwrap_or(0);
            if (errors > 0) != want_errors {
                bail!("{step:?} as {identity:?}: {errors} errors, expected {want_errors}: {v}");
            }
            runs.push(v["ns_per_op"].as_f64().context("ns_per_op")?);
        }
        Ok(median(runs))
    }

    fn opens(&self, identity: Option<&str>) -> Result<f64> {
        let f = self.data.join("file");
        self.measure(
            identity,
            &["open-loop", f.to_str().expect("utf-8"), OPENS],
            false,
        )
    }

    fn syscalls(&self, identity: Option<&str>) -> Result<f64> {
        self.measure(identity, &["syscall-loop", SYSCALLS], false)
    }

    fn write_policies(&self) -> Result<()> {
        let files = format!(
            "[identity]\nname = \"bench-files\"\n[files]\nread = [\"/usr/\", \"{}\", \"{}/\"]\n",
            self.probe.display(),
            self.data.display()
        );
        fs::write(self.env.policy_dir.join("bench-files.toml"), files)?;
        // Tagged, without [files]: neither Landlock nor the observer applies.
        fs::write(
            self.env.policy_dir.join("bench-nofiles.toml"),
            "[identity]\nname = \"bench-nofiles\"\n",
        )?;
        Ok(())
    }

    /// Runs `f` with a daemon up, then stops it and unloads what it left
    /// (whatever `f` returned). `observer`: "none", "audit" (the default
    /// form), "tracepoints" or "btf" (the tp_btf fallback, forced).
    fn with_daemon(&self, log: &str, observer: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
        let env: &[(&str, &str)] = match observer {
            "none" => &[("CORRAL_NO_FILE_OBSERVER", "1")],
            "tracepoints" => &[("CORRAL_FILE_OBSERVER", "tracepoints")],
            "btf" => &[
                ("CORRAL_FILE_OBSERVER", "tracepoints"),
                ("CORRAL_FILE_OBSERVER_BTF", "1"),
            ],
            _ => &[],
        };
        let log = self.env.tmp.join(log);
        let d = self
            .env
            .start_daemon(&log, &["--ringbuf-size", "64M"], env)?;
        let r = bench_env::while_running(d, f);
        // Its clean shutdown keeps the pins; unload removes them.
        self.env.unload();
        r
    }

    /// One table row: open+close and getppid, as `identity` (untagged:
    /// `None`).
    fn row(&self, label: &str, identity: Option<&str>) -> Result<(String, f64, f64)> {
        Ok((
            label.to_string(),
            self.opens(identity)?,
            self.syscalls(identity)?,
        ))
    }

    fn all(&self) -> Result<String> {
        let mut rows: Vec<(String, f64, f64)> = Vec::new();
        util::header("files: baseline, no corral loaded");
        let (bo, bs) = (self.opens(None)?, self.syscalls(None)?);
        rows.push(("no corral loaded".into(), bo, bs));
        self.write_policies()?;

        util::header("files: daemon without the denial observer");
        self.with_daemon("daemon-a.log", "none", || {
            rows.push(self.row("untagged", None)?);
            rows.push(self.row("tagged, no [files]", Some("bench-nofiles"))?);
            rows.push(self.row("Landlock ([files], 3 rules)", Some("bench-files"))?);
            Ok(())
        })?;

        util::header("files: daemon reading Landlock's audit records");
        let mut audit_denied_ns = None;
        let mut audit_note = String::new();
        self.with_daemon("daemon-audit.log", "audit", || {
            let detail = self.env.files_detail();
            if !detail.contains("Landlock audit records") {
                audit_note = format!("audit records not used here: {detail}\n");
                return Ok(());
            }
            rows.push(self.row("audit records, untagged", None)?);
            rows.push(self.row("audit records, tagged, no [files]", Some("bench-nofiles"))?);
            rows.push(self.row("audit records + Landlock ([files])", Some("bench-files"))?);
            audit_denied_ns = Some(self.denied()?);
            Ok(())
        })?;

        util::header("files: daemon with the tracepoint observer (per-syscall tracepoints)");
        let mut denied_ns = 0.0;
        self.with_daemon("daemon-b.log", "tracepoints", || {
            let files = self.env.files_detail();
            if !files.contains("through syscall tracepoints") {
                bail!("the observer did not attach: {files}");
            }
            rows.push(self.row("tracepoints, untagged", None)?);
            rows.push(self.row("tracepoints, tagged, no [files]", Some("bench-nofiles"))?);
            rows.push(self.row("tracepoints + Landlock ([files])", Some("bench-files"))?);
            denied_ns = self.denied()?;
            Ok(())
        })?;

        util::header("files: the observer's tp_btf fallback (runs on every syscall)");
        self.with_daemon("daemon-c.log", "btf", || {
            rows.push(self.row("tracepoints (tp_btf fallback), untagged", None)?);
            Ok(())
        })?;

        let mut s = String::from(
            "open()+close() and a plain syscall (getppid), median ns (ratio to no-corral baseline)\n",
        );
        s.push_str(&bench_env::ratio_table(
            (36, 18),
            ["open+close", "getppid"],
            (bo, bs),
            &rows,
        ));
        s.push_str(&audit_note);
        if let Some(ns) = audit_denied_ns {
            let _ = writeln!(
                s,
                "refused open (Landlock EACCES + audit records): {ns:.0} ns ({:.2}x an allowed open)",
                ns / bo
            );
        }
        let _ = writeln!(
            s,
            "refused open (Landlock EACCES + tracepoint event): {denied_ns:.0} ns ({:.2}x an allowed open)",
            denied_ns / bo
        );
        Ok(s)
    }

    /// ns per refused open of the secret, as the `[files]` identity.
    fn denied(&self) -> Result<f64> {
        let secret = self.env.tmp.join("secret");
        self.measure(
            Some("bench-files"),
            &["open-loop", secret.to_str().expect("utf-8"), DENIED],
            true,
        )
    }
}
