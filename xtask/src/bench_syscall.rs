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
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Stdio},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{
    bench_env::{self, Env, RUNS, median},
    util,
};

const HOT: &str = "getppid";
const LIVE: &str = "getpgrp";
const HOT_N: &str = "2000000";
const LIVE_N: &str = "200000";

struct Bench<'a> {
    env: &'a Env,
    probe: PathBuf,
}

/// Runs the syscall benchmark; returns its report. The caller has built the
/// release binaries (`corral`, `corral-probe`).
pub fn run(ws: &Path) -> Result<String> {
    bench_env::with_env(ws, "corral-bench-sys", |env| {
        let probe = fs::canonicalize(ws.join("target/release/corral-probe"))?;
        Bench { env, probe }.all()
    })
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

impl Bench<'_> {
    fn probe(&self, identity: Option<&str>, steps: &[&str]) -> Result<Child> {
        let mut c = self.env.as_identity(identity, &self.probe);
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
        fs::write(self.env.policy_dir.join("conf.toml"), conf)?;
        fs::write(
            self.env.policy_dir.join("plain.toml"),
            "[identity]\nname = \"plain\"\n",
        )?;
        Ok(())
    }

    fn all(&self) -> Result<String> {
        let tmp = &self.env.tmp;
        util::header("syscalls: baseline, no corral loaded");
        let base_hot = self.measure(None, HOT, HOT_N)?;
        let base_live = self.measure(None, LIVE, LIVE_N)?;
        let mut rows = vec![("no corral loaded".to_string(), base_hot, base_live)];

        self.policies(true)?;
        let daemon = self.env.start_daemon(
            &tmp.join("daemon.log"),
            &["--no-watch"],
            // Only this feature's observers: the `[files]` fallback's
            // observer is measured by `bench_files`.
            &[("CORRAL_NO_FILE_OBSERVER", "1")],
        )?;
        bench_env::while_running(daemon, || -> Result<()> {
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
            self.env.apply()?;
            fs::write(&go, b"")?;
            let without = (read_loops(&mut out, HOT)?, read_loops(&mut out, LIVE)?);
            child.wait()?;
            rows.push((
                "confined, observers attached".into(),
                with_obs.0,
                with_obs.1,
            ));
            rows.push(("confined, observers detached".into(), without.0, without.1));
            Ok(())
        })?;

        let mut s = format!(
            "syscall cost, median ns per call of {RUNS} runs (ratio to the no-corral baseline)\n\
             {HOT} is hot (allowed in the filter); {LIVE} is allowed live (notification answered \
             by the launcher) when confined, a plain syscall otherwise\n"
        );
        s.push_str(&bench_env::ratio_table(
            (34, 18),
            [HOT, LIVE],
            (base_hot, base_live),
            &rows,
        ));
        Ok(s)
    }
}
