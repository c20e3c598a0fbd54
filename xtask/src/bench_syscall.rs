//! `cargo xtask bench`, syscalls part: what one syscall costs under each
//! layer of `[syscalls]`, every scenario beside a no-Corral baseline from
//! the same run (ratios; nothing asserted).
//!
//! - `getppid` is hot: allowed by the seccomp filter itself;
//! - `getpgrp` is allowed but not hot: a user notification the launcher
//!   answers from the pinned map ("live-answered");
//! - the observers (`sys_enter`/`sys_exit`) run for every task while some
//!   identity has a `[syscalls]` section: measured for an untagged process,
//!   a tagged one without a filter, and a confined one. The confined probe
//!   then waits while the section is removed (observers detached) and
//!   measures the filter alone: its filter stays, it cannot be removed.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::util;

const HOT: &str = "getppid";
const LIVE: &str = "getpgrp";
const HOT_N: &str = "2000000";
const LIVE_N: &str = "200000";
/// Runs per scenario; the median is reported.
const RUNS: usize = 5;

struct Env {
    corral: PathBuf,
    probe: PathBuf,
    socket: PathBuf,
    pin_dir: PathBuf,
    parent: String,
    policy_dir: PathBuf,
}

/// Runs the syscall benchmark; returns its report. The caller has built the
/// release binaries (`corral`, `corral-probe`).
pub fn run(ws: &Path) -> Result<String> {
    let tmp = std::env::temp_dir().join(format!("corral-bench-sys-{}", std::process::id()));
    fs::create_dir_all(tmp.join("policies"))?;
    let tag = format!("corral-bench-sys-{}", std::process::id());
    let e = Env {
        corral: util::corral_bin(ws),
        probe: fs::canonicalize(ws.join("target/release/corral-probe"))?,
        socket: tmp.join("corral.sock"),
        pin_dir: PathBuf::from("/sys/fs/bpf").join(&tag),
        parent: tag,
        policy_dir: tmp.join("policies"),
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

/// `sys-loop NAME N` repeated `RUNS` times.
fn loops(name: &'static str, n: &'static str) -> Vec<&'static str> {
    (0..RUNS).flat_map(|_| ["sys-loop", name, n]).collect()
}

/// Median ns per call of the next `RUNS` sys-loop lines for `name`.
fn read_loops(out: &mut impl Iterator<Item = Value>, name: &str) -> Result<f64> {
    let mut v = Vec::new();
    while v.len() < RUNS {
        let l = out.next().context("the probe stopped early")?;
        if l["op"] != "sys-loop" || l["name"] != name {
            continue;
        }
        if l["errors"].as_u64() != Some(0) {
            bail!("{name} failed in the benchmark: {l}");
        }
        v.push(l["ns_per_call"].as_f64().unwrap_or(0.0));
    }
    Ok(median(v))
}

fn lines(stdout: ChildStdout) -> impl Iterator<Item = Value> {
    BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
}

impl Env {
    fn corral(&self) -> Command {
        let mut c = Command::new(&self.corral);
        c.arg("--socket").arg(&self.socket);
        c
    }

    fn probe(&self, identity: Option<&str>, steps: &[&str]) -> Result<Child> {
        let mut c = match identity {
            Some(i) => {
                let mut c = self.corral();
                c.args(["run", "--identity", i, "--"]).arg(&self.probe);
                c
            }
            None => Command::new(&self.probe),
        };
        Ok(c.args(steps).stdout(Stdio::piped()).spawn()?)
    }

    /// Median ns per `name` call, in a probe run as `identity` or untagged.
    fn measure(&self, identity: Option<&str>, name: &'static str, n: &'static str) -> Result<f64> {
        let mut child = self.probe(identity, &loops(name, n))?;
        let mut out = lines(child.stdout.take().context("stdout")?);
        let r = read_loops(&mut out, name);
        child.wait()?;
        r
    }

    fn policies(&self, confined: bool) -> Result<()> {
        let conf = if confined {
            "[identity]\nname = \"conf\"\n[syscalls]\nallow = [\"@default\"]\n"
        } else {
            "[identity]\nname = \"conf\"\n"
        };
        fs::write(self.policy_dir.join("conf.toml"), conf)?;
        fs::write(
            self.policy_dir.join("plain.toml"),
            "[identity]\nname = \"plain\"\n",
        )?;
        Ok(())
    }

    fn apply(&self) -> Result<()> {
        util::output(self.corral().args(["policy", "apply"]))?;
        Ok(())
    }

    fn start_daemon(&self, log: &Path) -> Result<Child> {
        let child = Command::new(&self.corral)
            .arg("--socket")
            .arg(&self.socket)
            .args(["daemon", "--no-watch", "--policy-dir"])
            .arg(&self.policy_dir)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .args(["--cgroup-parent", &self.parent])
            // Only this feature's observers: the `[files]` fallback's
            // observer is measured by `bench_files`.
            .env("CORRAL_NO_FILE_OBSERVER", "1")
            .arg("--state-dir")
            .arg(log.parent().context("dir")?)
            .stderr(fs::File::create(log)?)
            .spawn()?;
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

    fn all(&self, tmp: &Path) -> Result<String> {
        util::header("syscalls: baseline, no corral loaded");
        let base_hot = self.measure(None, HOT, HOT_N)?;
        let base_live = self.measure(None, LIVE, LIVE_N)?;

        self.policies(true)?;
        let mut daemon = self.start_daemon(&tmp.join("daemon.log"))?;
        let r = (|| -> Result<Vec<(String, f64, f64)>> {
            let mut rows = Vec::new();
            util::header("syscalls: observers attached, untagged process");
            rows.push((
                "untagged, observers attached".into(),
                self.measure(None, HOT, HOT_N)?,
                self.measure(None, LIVE, LIVE_N)?,
            ));
            util::header("syscalls: tagged, no [syscalls] (no filter), observers attached");
            rows.push((
                "tagged, no filter, observers".into(),
                self.measure(Some("plain"), HOT, HOT_N)?,
                self.measure(Some("plain"), LIVE, LIVE_N)?,
            ));

            util::header("syscalls: confined (filter + live answers), observers on, then off");
            let go = tmp.join("go");
            let mut steps = loops(HOT, HOT_N);
            steps.extend(loops(LIVE, LIVE_N));
            let go_s = go.to_str().context("utf-8")?.to_string();
            steps.extend(["wait-file", go_s.as_str()]);
            steps.extend(loops(HOT, HOT_N));
            steps.extend(loops(LIVE, LIVE_N));
            let mut child = self.probe(Some("conf"), &steps)?;
            let mut out = lines(child.stdout.take().context("stdout")?);
            let with_obs = (read_loops(&mut out, HOT)?, read_loops(&mut out, LIVE)?);
            // No identity has a [syscalls] section any more: the observers
            // detach; the running probe keeps its filter, and its launcher
            // answers from the (now unconfined) value.
            self.policies(false)?;
            self.apply()?;
            fs::write(&go, b"")?;
            let without = (read_loops(&mut out, HOT)?, read_loops(&mut out, LIVE)?);
            child.wait()?;
            rows.push((
                "confined, observers attached".into(),
                with_obs.0,
                with_obs.1,
            ));
            rows.push(("confined, observers detached".into(), without.0, without.1));
            Ok(rows)
        })();
        // SIGTERM (kill(1)'s default): the daemon shuts down cleanly.
        let _ = Command::new("kill").arg(daemon.id().to_string()).status();
        let _ = daemon.wait();
        let rows = r?;

        let mut s = format!(
            "syscall cost, median ns per call of {RUNS} runs (ratio to the no-corral baseline)\n\
             {HOT} is hot (allowed in the filter); {LIVE} is allowed live (notification answered \
             by the launcher) when confined, a plain syscall otherwise\n"
        );
        let _ = writeln!(s, "{:<34} {:>18} {:>18}", "scenario", HOT, LIVE);
        let _ = writeln!(
            s,
            "{:<34} {:>8.0} ({:.2}x) {:>8.0} ({:.2}x)",
            "no corral loaded", base_hot, 1.0, base_live, 1.0
        );
        for (name, h, l) in &rows {
            let _ = writeln!(
                s,
                "{:<34} {:>8.0} ({:.2}x) {:>8.0} ({:.2}x)",
                name,
                h,
                h / base_hot,
                l,
                l / base_live
            );
        }
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
