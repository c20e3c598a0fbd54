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
    fmt::Write as _,
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    bench_env::{self, Env, median},
    util,
};

/// (workload, iterations per measurement, label).
pub const WORKLOADS: [(&str, &str, &str); 4] = [
    ("getppid", "2000000", "getppid loop"),
    ("open-read", "200000", "open+read+close (256 files)"),
    ("stat", "400000", "stat (256 files)"),
    ("tcp-loop", "4000", "loopback TCP connect"),
];

/// A free loopback port below the ephemeral range (a server port inside
/// it can collide with the clients' own TIME-WAIT sockets).
pub fn low_port() -> Result<u16> {
    let start = 20_000 + (std::process::id() % 10_000) as u16;
    (start..32_000)
        .chain(20_000..start)
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .context("no free loopback port below 32000")
}

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
        let port = crate::bench_host::low_port()?;
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
        let mut out = Vec::new();
        for (op, n, _) in WORKLOADS {
            let port = if op == "tcp-loop" { self.port } else { 0 };
            let v = bench_env::last_json(&util::output(Command::new(&self.bench).args([
                op,
                &port.to_string(),
                n,
            ]))?)?;
            if v["errors"].as_u64() != Some(0) {
                bail!("{op} failed in the benchmark: {v}");
            }
            out.push(v["ns_per_op"].as_f64().context("ns_per_op")?);
        }
        Ok(out)
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
        // Per workload: (a) samples, (b) samples, per-round ratios.
        let n = WORKLOADS.len();
        let (mut a, mut b, mut ratios) = (vec![vec![]; n], vec![vec![]; n], vec![vec![]; n]);
        let mut observer = String::new();
        for round in 0..rounds {
            util::header(&format!("host cost: round {}/{rounds}", round + 1));
            let (ra, (rb, obs)) = if round % 2 == 0 {
                let ra = self.workloads()?;
                (ra, self.with_corral(round, || self.workloads())?)
            } else {
                let rb = self.with_corral(round, || self.workloads())?;
                (self.workloads()?, rb)
            };
            observer = obs;
            for i in 0..n {
                a[i].push(ra[i]);
                b[i].push(rb[i]);
                ratios[i].push(rb[i] / ra[i]);
            }
        }
        let mut s = format!(
            "host cost: UNTAGGED processes, {rounds} paired rounds (A B / B A), ns per op\n\
             (a) no Corral; (b) Corral with [network], [files], [syscalls], [leases] identities \
             and running `corral run` agents ([syscalls], [files])\n[files] here: {observer}\n"
        );
        let _ = writeln!(
            s,
            "{:<30} {:>10} {:>10} {:>9} {:>16}",
            "workload", "(a) ns", "(b) ns", "b/a med", "b/a min..max"
        );
        for (i, (_, _, label)) in WORKLOADS.iter().enumerate() {
            let lo = ratios[i].iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ratios[i].iter().copied().fold(0.0, f64::max);
            let _ = writeln!(
                s,
                "{label:<30} {:>10.1} {:>10.1} {:>8.3}x {:>7.3}..{:<7.3}",
                median(a[i].clone()),
                median(b[i].clone()),
                median(ratios[i].clone()),
                lo,
                hi
            );
        }
        Ok(s)
    }
}

fn stop(mut c: Child) {
    // SAFETY: plain syscall on our own child (the launcher, which takes its
    // agent down with it).
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let _ = c.wait();
}
