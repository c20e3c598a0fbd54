//! `cargo xtask bench`, host part: what Corral costs processes that are NOT
//! agents (untagged, outside every identity), with every policy section in
//! use. Paired and interleaved: each round measures (a) no Corral loaded
//! and (b) a daemon with identities using `[network]`, `[files]`,
//! `[syscalls]` and `[leases]` (plus a running `corral run` agent), in
//! alternating order (A B, then B A), so drift on a shared machine lands in
//! both arms. Reported: each arm's median, and the median, min and max of
//! the per-round ratios b/a. Nothing is asserted: the target (≤ 1.01x) is
//! read off the table.
//!
//! `cargo xtask bench host` runs this table alone;
//! `CORRAL_BENCH_ROUNDS=N` changes the number of rounds (default 7).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::Result;

use crate::{
    bench_env::{self, Env},
    bench_paired::{self, Paired},
};

struct Bench<'a> {
    env: &'a Env,
    bench: PathBuf,
    port: u16,
}

/// Runs the host-cost table; returns its report. The caller has built the
/// release binaries (`corral`, `corral-bench`).
pub fn run(ws: &Path) -> Result<String> {
    let rounds = bench_env::rounds();
    bench_env::with_env(ws, "corral-bench-host", |env| {
        let port = bench_paired::low_port()?;
        Bench {
            env,
            bench: fs::canonicalize(ws.join("target/release/corral-bench"))?,
            port,
        }
        .all(rounds)
    })
}

impl Bench<'_> {
    /// ns per operation of each workload, untagged (this process's own
    /// cgroup, outside every identity).
    fn workloads(&self) -> Result<Vec<f64>> {
        bench_paired::workloads(&self.bench, self.port, |b| Command::new(b))
    }

    fn write_policies(&self) -> Result<()> {
        let dir = &self.env.policy_dir;
        fs::write(
            dir.join("hc-net.toml"),
            "[identity]\nname = \"hc-net\"\n[network]\nallow = [\"tcp://127.0.0.1:8443\"]\n",
        )?;
        fs::write(
            dir.join("hc-files.toml"),
            "[identity]\nname = \"hc-files\"\n[files]\nread = [\"/usr/\", \"/etc/\"]\n",
        )?;
        fs::write(
            dir.join("hc-sys.toml"),
            "[identity]\nname = \"hc-sys\"\n[syscalls]\nallow = [\"@default\"]\ndeny = [\"kcmp\"]\n",
        )?;
        fs::write(
            dir.join("hc-lease.toml"),
            "[identity]\nname = \"hc-lease\"\n[network]\nallow = []\n[leases]\n\
             max_ttl = \"15m\"\nscopes = [\"db:read\"]\n\n[[leases.grant]]\n\
             scope = \"db:read\"\nnetwork = [\"tcp://10.30.0.5:5432\"]\n",
        )?;
        Ok(())
    }

    /// Arm (b): a daemon with every section, and one confined agent
    /// running (`corral run` of `sleep`, with its launcher).
    /// Also returns how the `[files]` denials were observed.
    fn with_corral<T>(&self, round: usize, f: impl FnOnce() -> Result<T>) -> Result<(T, String)> {
        let log = self.env.tmp.join(format!("daemon-{round}.log"));
        let d = self
            .env
            .start_daemon(&log, &["--no-watch", "--ringbuf-size", "16M"], &[])?;
        let r = bench_env::while_running(d, || {
            let sys = self.agent("hc-sys")?;
            let files = self.agent("hc-files")?;
            let observer = self.env.files_detail();
            let r = f();
            stop(sys);
            stop(files);
            Ok((r?, observer))
        });
        self.env.unload();
        r
    }

    fn agent(&self, identity: &str) -> Result<Child> {
        Ok(self
            .env
            .corral()
            .args(["run", "--identity", identity, "--", "sleep", "600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?)
    }

    fn all(&self, rounds: usize) -> Result<String> {
        self.write_policies()?;
        let mut observer = String::new();
        let mut round = 0;
        let p = Paired::run(
            "host cost",
            rounds,
            || self.workloads(),
            || {
                round += 1;
                let (r, obs) = self.with_corral(round, || self.workloads())?;
                observer = obs;
                Ok(r)
            },
        )?;
        Ok(format!(
            "host cost: UNTAGGED processes, {rounds} paired rounds (A B / B A), ns per op\n\
             (a) no Corral; (b) Corral with [network], [files], [syscalls], [leases] identities \
             and running `corral run` agents ([syscalls], [files])\n[files] here: {observer}\n{}",
            p.table()
        ))
    }
}

fn stop(mut c: Child) {
    // SAFETY: plain syscall on our own child (the launcher, which takes its
    // agent down with it).
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let _ = c.wait();
}
