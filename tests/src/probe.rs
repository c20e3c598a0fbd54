//! The probe (`corral-probe`) seen from the tests: a finished run and its
//! step lines, runs outside any identity or as another user, and probes
//! running in the background.

use std::{
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{Daemon, corral_bin, json_lines, path_str, probe_bin, touch, wait_for};

/// Result of one probe run: its exit status and JSON step lines.
#[derive(Debug)]
pub struct ProbeRun {
    pub code: Option<i32>,
    pub steps: Vec<Value>,
    pub stderr: String,
}

impl From<Output> for ProbeRun {
    fn from(o: Output) -> ProbeRun {
        let steps = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        ProbeRun {
            code: o.status.code(),
            steps,
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl ProbeRun {
    pub fn step(&self, op: &str, n: usize) -> &Value {
        self.steps
            .iter()
            .filter(|s| s["op"] == op)
            .nth(n)
            .unwrap_or_else(|| panic!("no step {op}#{n} in {self:#?}"))
    }

    pub fn pid(&self) -> u64 {
        self.step("pid", 0)["pid"].as_u64().expect("pid")
    }
}

/// Runs the probe directly, outside any identity.
pub fn probe_outside(steps: &[&str]) -> ProbeRun {
    ProbeRun::from(
        Command::new(probe_bin())
            .args(steps)
            .output()
            .expect("probe"),
    )
}

/// `steps` behind a `pid` step, so the run names its process.
pub fn with_pid<'a>(steps: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["pid"];
    v.extend_from_slice(steps);
    v
}

impl Daemon {
    /// The test's own probe, running `before`, then assigned to `identity`
    /// with `corral assign --pid`, then running `steps`; returns it and its
    /// exit status.
    pub fn assigned_probe(
        &self,
        identity: &str,
        before: &[&str],
        steps: &[&str],
    ) -> (Child, std::process::ExitStatus) {
        let tmp = tempfile::tempdir().expect("tmp");
        let go = tmp.path().join("go");
        let mut args = before.to_vec();
        args.extend(["wait-file", path_str(&go)]);
        args.extend_from_slice(steps);
        let mut child = Command::new(probe_bin())
            .args(&args)
            .stdout(Stdio::null())
            .spawn()
            .expect("probe");
        let pid = child.id().to_string();
        let out = self.cli(&["assign", "--identity", identity, "--pid", &pid]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        touch(&go);
        let status = wait_for(Duration::from_secs(20), "the probe to finish", || {
            child.try_wait().expect("wait")
        });
        (child, status)
    }

    /// `corral run --user USER` with the probe.
    pub fn probe_as_user(&self, identity: &str, user: &str, steps: &[&str]) -> ProbeRun {
        let probe = probe_bin();
        let mut args = vec!["run", "--identity", identity, "--user", user, "--"];
        args.push(probe.to_str().expect("utf-8"));
        args.extend_from_slice(steps);
        ProbeRun::from(self.cli(&args))
    }

    /// Starts the probe as `identity` in the background; its step lines can
    /// be waited for one by one while it runs.
    pub fn spawn_probe_as(&self, identity: &str, steps: &[&str]) -> BgProbe {
        let mut child = Command::new(corral_bin())
            .arg("--socket")
            .arg(&self.dirs.socket)
            .args(["run", "--identity", identity, "--"])
            .arg(probe_bin())
            .args(steps)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("corral run probe");
        let rx = json_lines(child.stdout.take().expect("stdout"));
        BgProbe {
            child,
            rx,
            steps: Vec::new(),
        }
    }
}

/// A probe running in the background (see `Daemon::spawn_probe_as`).
pub struct BgProbe {
    child: Child,
    rx: mpsc::Receiver<Value>,
    steps: Vec<Value>,
}

impl BgProbe {
    /// The `corral run` launcher's pid (the probe's parent and, for
    /// `[syscalls]`, its seccomp supervisor).
    pub fn launcher_pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (up to 30 s) for the probe's next step line with this op.
    pub fn next_step(&mut self, op: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(v) => {
                    self.steps.push(v.clone());
                    if v["op"] == op {
                        return v;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("probe step {op} did not come; got {:#?}", self.steps);
    }

    /// Waits for the probe to exit; every step it printed.
    pub fn finish(mut self) -> ProbeRun {
        let status = self.child.wait().expect("probe wait");
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read as _;
            let _ = e.read_to_string(&mut stderr);
        }
        let mut steps = std::mem::take(&mut self.steps);
        while let Ok(v) = self.rx.recv_timeout(Duration::from_secs(5)) {
            steps.push(v);
        }
        ProbeRun {
            code: status.code(),
            steps,
            stderr,
        }
    }

    /// `finish`, but a probe still running after `within` is killed and
    /// fails the test instead of hanging it.
    pub fn finish_within(mut self, within: Duration) -> ProbeRun {
        let deadline = Instant::now() + within;
        while self.child.try_wait().expect("probe wait").is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let run = self.finish();
                panic!("probe did not finish within {within:?}: {run:#?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.finish()
    }
}

impl Drop for BgProbe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
