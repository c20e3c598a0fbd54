//! `cargo xtask bench`, files part: what the `[files]` fallback costs an
//! open()+close() (Landlock in the process, the denial observer on every
//! syscall), each scenario beside a no-Corral baseline from the same run.
//!
//! Three daemons run one after the other: without the observer
//! (`CORRAL_NO_FILE_OBSERVER=1`), so Landlock's own cost and the observer's
//! separate cleanly; with it (per-syscall tracepoints); and with its tp_btf
//! fallback forced (`CORRAL_FILE_OBSERVER_BTF=1`), which every syscall pays.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::util;

const OPENS: &str = "200000";
const SYSCALLS: &str = "2000000";
const DENIED: &str = "100000";
/// Runs per scenario; the median is reported.
const RUNS: usize = 5;

struct Env {
    corral: PathBuf,
    probe: PathBuf,
    socket: PathBuf,
    pin_dir: PathBuf,
    parent: String,
    policy_dir: PathBuf,
    data: PathBuf,
}

/// Runs the files benchmark; returns its report. The caller has built the
/// release binaries (`corral`, `corral-probe`).
pub fn run(ws: &Path) -> Result<String> {
    let tmp = std::env::temp_dir().join(format!("corral-bench-files-{}", std::process::id()));
    fs::create_dir_all(tmp.join("policies"))?;
    fs::create_dir_all(tmp.join("data"))?;
    let tmp = fs::canonicalize(&tmp)?;
    fs::write(tmp.join("data/file"), "x")?;
    fs::write(tmp.join("secret"), "x")?;
    let tag = format!("corral-bench-files-{}", std::process::id());
    let e = Env {
        corral: util::corral_bin(ws),
        probe: fs::canonicalize(ws.join("target/release/corral-probe"))?,
        socket: tmp.join("corral.sock"),
        pin_dir: PathBuf::from("/sys/fs/bpf").join(&tag),
        parent: tag,
        policy_dir: tmp.join("policies"),
        data: tmp.join("data"),
    };
    let r = e.all(&tmp);
    e.cleanup();
    let _ = fs::remove_dir_all(&tmp);
    r
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

impl Env {
    fn corral(&self) -> Command {
        let mut c = Command::new(&self.corral);
        c.arg("--socket").arg(&self.socket);
        c
    }

    /// Median ns per operation of the probe step `op ARG N`, run as
    /// `identity` (or untagged); `want_errors` says whether the opens are
    /// meant to fail.
    fn measure(&self, identity: Option<&str>, step: &[&str], want_errors: bool) -> Result<f64> {
        let mut runs = Vec::new();
        for _ in 0..RUNS {
            let mut c = match identity {
                Some(id) => {
                    let mut c = self.corral();
                    c.args(["run", "--identity", id, "--"]).arg(&self.probe);
                    c
                }
                None => Command::new(&self.probe),
            };
            let out = util::output(c.args(step))?;
            let v: Value = serde_json::from_str(out.lines().last().context("no output")?)?;
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
        fs::write(self.policy_dir.join("bench-files.toml"), files)?;
        // Tagged, without [files]: neither Landlock nor the observer applies.
        fs::write(
            self.policy_dir.join("bench-nofiles.toml"),
            "[identity]\nname = \"bench-nofiles\"\n",
        )?;
        Ok(())
    }

    /// `observer`: "none", "tracepoints" (the default form) or "btf" (the
    /// tp_btf fallback, forced).
    fn start_daemon(&self, log: &Path, observer: &str) -> Result<Child> {
        let mut c = Command::new(&self.corral);
        c.arg("--socket")
            .arg(&self.socket)
            .args(["daemon", "--policy-dir"])
            .arg(&self.policy_dir)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .args(["--cgroup-parent", &self.parent, "--ringbuf-size", "64M"])
            .arg("--state-dir")
            .arg(log.parent().expect("dir"))
            .stderr(fs::File::create(log)?);
        match observer {
            "none" => {
                c.env("CORRAL_NO_FILE_OBSERVER", "1");
            }
            "btf" => {
                c.env("CORRAL_FILE_OBSERVER_BTF", "1");
            }
            _ => {}
        }
        let child = c.spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while util::output(self.corral().args(["status", "--json"])).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "daemon not ready: {}",
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
            sleep(Duration::from_millis(100));
        }
        Ok(child)
    }

    fn stop(&self, mut d: Child) {
        // SIGTERM: a clean shutdown; pins are removed by cleanup().
        let _ = Command::new("kill").arg(d.id().to_string()).status();
        let _ = d.wait();
        self.cleanup();
    }

    fn all(&self, tmp: &Path) -> Result<String> {
        let mut rows: Vec<(String, f64, f64)> = Vec::new();
        util::header("files: baseline, no corral loaded");
        let (bo, bs) = (self.opens(None)?, self.syscalls(None)?);
        rows.push(("no corral loaded".into(), bo, bs));
        self.write_policies()?;

        util::header("files: daemon without the denial observer");
        let d = self.start_daemon(&tmp.join("daemon-a.log"), "none")?;
        let r = (|| -> Result<()> {
            rows.push(("untagged".into(), self.opens(None)?, self.syscalls(None)?));
            rows.push((
                "tagged, no [files]".into(),
                self.opens(Some("bench-nofiles"))?,
                self.syscalls(Some("bench-nofiles"))?,
            ));
            rows.push((
                "Landlock ([files], 3 rules)".into(),
                self.opens(Some("bench-files"))?,
                self.syscalls(Some("bench-files"))?,
            ));
            Ok(())
        })();
        self.stop(d);
        r?;

        util::header("files: daemon with the denial observer (per-syscall tracepoints)");
        let d = self.start_daemon(&tmp.join("daemon-b.log"), "tracepoints")?;
        let mut denied_ns = 0.0;
        let r = (|| -> Result<()> {
            let st: Value =
                serde_json::from_str(&util::output(self.corral().args(["status", "--json"]))?)?;
            let files = st["daemon"]["mechanisms"]
                .as_array()
                .and_then(|m| m.iter().find(|m| m["name"] == "files").cloned())
                .unwrap_or(Value::Null);
            if !files["detail"]
                .as_str()
                .unwrap_or("")
                .contains("through the syscall observer")
            {
                bail!("the observer did not attach: {files}");
            }
            rows.push((
                "observer, untagged".into(),
                self.opens(None)?,
                self.syscalls(None)?,
            ));
            rows.push((
                "observer, tagged, no [files]".into(),
                self.opens(Some("bench-nofiles"))?,
                self.syscalls(Some("bench-nofiles"))?,
            ));
            rows.push((
                "observer + Landlock ([files])".into(),
                self.opens(Some("bench-files"))?,
                self.syscalls(Some("bench-files"))?,
            ));
            let secret = tmp.join("secret");
            denied_ns = self.measure(
                Some("bench-files"),
                &["open-loop", secret.to_str().expect("utf-8"), DENIED],
                true,
            )?;
            Ok(())
        })();
        self.stop(d);
        r?;

        util::header("files: the observer's tp_btf fallback (runs on every syscall)");
        let d = self.start_daemon(&tmp.join("daemon-c.log"), "btf")?;
        let r = (|| -> Result<()> {
            rows.push((
                "observer (tp_btf fallback), untagged".into(),
                self.opens(None)?,
                self.syscalls(None)?,
            ));
            Ok(())
        })();
        self.stop(d);
        r?;

        let mut s = String::from(
            "open()+close() and a plain syscall (getppid), median ns (ratio to no-corral baseline)\n",
        );
        let _ = writeln!(
            s,
            "{:<36} {:>18} {:>18}",
            "scenario", "open+close", "getppid"
        );
        for (name, o, y) in &rows {
            let _ = writeln!(
                s,
                "{:<36} {:>8.0} ({:.2}x) {:>8.0} ({:.2}x)",
                name,
                o,
                o / bo,
                y,
                y / bs
            );
        }
        let _ = writeln!(
            s,
            "refused open (Landlock EACCES + observer event): {denied_ns:.0} ns ({:.2}x an allowed open)",
            denied_ns / bo
        );
        Ok(s)
    }

    fn cleanup(&self) {
        let _ = Command::new(&self.corral)
            .args(["unload", "--pin-dir"])
            .arg(&self.pin_dir)
            .args(["--cgroup-parent", &self.parent])
            .stdout(Stdio::null())
            .status();
    }
}
