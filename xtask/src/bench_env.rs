//! What the benchmarks share: a daemon of their own (socket, pin dir,
//! cgroup parent and policy dir, under a scratch directory), the probe run
//! as an identity or untagged, and the table of ratios to the no-Corral
//! baseline.

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

/// Runs per scenario; the median is reported.
pub const RUNS: usize = 5;

pub struct Env {
    pub corral: PathBuf,
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    pub parent: String,
    pub policy_dir: PathBuf,
    /// The scratch directory, canonical: Landlock rules name real paths.
    pub tmp: PathBuf,
}

/// Runs `f` in an `Env` named `<tag>-<pid>`, then unloads what its daemons
/// left and removes the scratch directory, whatever `f` returned.
pub fn with_env<T>(ws: &Path, tag: &str, f: impl FnOnce(&Env) -> Result<T>) -> Result<T> {
    let name = format!("{tag}-{}", std::process::id());
    let tmp = std::env::temp_dir().join(&name);
    fs::create_dir_all(tmp.join("policies"))?;
    let tmp = fs::canonicalize(&tmp)?;
    let e = Env {
        corral: util::corral_bin(ws),
        socket: tmp.join("corral.sock"),
        pin_dir: PathBuf::from("/sys/fs/bpf").join(&name),
        parent: name,
        policy_dir: tmp.join("policies"),
        tmp,
    };
    let r = f(&e);
    e.unload();
    let _ = fs::remove_dir_all(&e.tmp);
    r
}

impl Env {
    /// The `corral` client of this env's daemon.
    pub fn corral(&self) -> Command {
        let mut c = Command::new(&self.corral);
        c.arg("--socket").arg(&self.socket);
        c
    }

    /// `program` run as `identity` (through `corral run`), or untagged.
    pub fn as_identity(&self, identity: Option<&str>, program: &Path) -> Command {
        match identity {
            Some(id) => {
                let mut c = self.corral();
                c.args(["run", "--identity", id, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    pub fn status(&self) -> Result<Value> {
        Ok(serde_json::from_str(&util::output(
            self.corral().args(["status", "--json"]),
        )?)?)
    }

    /// The `files` line of `corral status`: which layer enforces `[files]`
    /// and how their denials are observed.
    pub fn files_detail(&self) -> String {
        self.status()
            .ok()
            .and_then(|st| {
                st["daemon"]["mechanisms"].as_array().and_then(|m| {
                    m.iter()
                        .find(|m| m["name"] == "files")
                        .and_then(|m| m["detail"].as_str().map(str::to_string))
                })
            })
            .unwrap_or_default()
    }

    /// `corral policy apply`, and how long it took.
    pub fn apply(&self) -> Result<Duration> {
        let t = Instant::now();
        util::output(self.corral().args(["policy", "apply"]))?;
        Ok(t.elapsed())
    }

    /// Starts a daemon on the policy dir with `args` and `envs` added, its
    /// stderr in `log` and its state beside it; returns once it answers.
    pub fn start_daemon(&self, log: &Path, args: &[&str], envs: &[(&str, &str)]) -> Result<Child> {
        let child = self
            .corral()
            .args(["daemon", "--policy-dir"])
            .arg(&self.policy_dir)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .args(["--cgroup-parent", &self.parent])
            .args(args)
            .envs(envs.iter().copied())
            .arg("--state-dir")
            .arg(log.parent().context("dir")?)
            .stderr(fs::File::create(log)?)
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.status().is_err() {
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

    /// Unloads the programs and pins this env's (stopped) daemons left.
    pub fn unload(&self) {
        let _ = Command::new(&self.corral)
            .args(["unload", "--pin-dir"])
            .arg(&self.pin_dir)
            .args(["--cgroup-parent", &self.parent])
            .stdout(Stdio::null())
            .status();
    }
}

/// Paired rounds per table: `CORRAL_BENCH_ROUNDS`, default 7.
pub fn rounds() -> usize {
    std::env::var("CORRAL_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7)
        .max(1)
}

/// Runs `f` while `daemon` is up, then stops it whatever `f` returned.
pub fn while_running<T>(mut daemon: Child, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let r = f();
    // SIGTERM: the daemon shuts down cleanly.
    // SAFETY: plain syscall on our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    r
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The JSON line a benchmark program ends its output with.
pub fn last_json(out: &str) -> Result<Value> {
    let line = out.lines().last().context("no output")?;
    serde_json::from_str(line).with_context(|| format!("bad bench output `{line}`"))
}

/// Scenario rows of two medians (ns), each with its ratio to the baseline
/// `base`; `widths` are the scenario column's and each value column's.
pub fn ratio_table(
    widths: (usize, usize),
    columns: [&str; 2],
    base: (f64, f64),
    rows: &[(String, f64, f64)],
) -> String {
    let (w, c) = widths;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<w$} {:>c$} {:>c$}",
        "scenario", columns[0], columns[1]
    );
    for (name, a, b) in rows {
        let _ = writeln!(
            s,
            "{:<w$} {:>8.0} ({:.2}x) {:>8.0} ({:.2}x)",
            name,
            a,
            a / base.0,
            b,
            b / base.1
        );
    }
    s
}
