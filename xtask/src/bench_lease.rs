//! `cargo xtask bench lease`: what a lease costs to reach the kernel, and
//! how many lease operations agents get through, with a `corral` binary to
//! compare against (`--lease-baseline BIN`, e.g. a build of the previous
//! commit) measured in the same run, side by side with ratios.
//!
//! Per binary, one daemon of its own:
//! - latency, idle: one agent issues, renews and revokes a lease whose
//!   grant opens `udp://127.0.0.1:PORT`; the time until its connect()
//!   flips (issue, revoke) or the answer (renew, whose kernel change shows
//!   no decision until the old end), median of `ROUNDS`;
//! - throughput: N agents, each in an identity of its own, run issue +
//!   renew + revoke cycles for `LOAD_SECS`; operations per second in all;
//! - latency under load: the idle measurement again while `LOADERS` other
//!   identities' agents run cycles (one identity's traffic must not slow
//!   another's).

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Child, Stdio},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{
    bench_env::{self, Env},
    util,
};

const ROUNDS: &str = "40";
const LOAD_SECS: f64 = 4.0;
const AGENTS: [usize; 3] = [1, 4, 8];
const LOADERS: usize = 8;

#[derive(Default, Debug)]
struct Numbers {
    idle: Value,
    loaded: Value,
    /// (agents, ops/s in all, errors)
    throughput: Vec<(usize, f64, u64)>,
}

struct Bench<'a> {
    env: &'a Env,
    bench: PathBuf,
    port: u16,
    sock: PathBuf,
}

/// Runs the lease scenarios with this tree's `corral` and, when given,
/// the baseline binary; returns the report.
pub fn run(ws: &Path, baseline: Option<&Path>) -> Result<String> {
    let bench = fs::canonicalize(ws.join("target/release/corral-bench"))?;
    let mut cols: Vec<(String, Numbers)> = Vec::new();
    let mut bins: Vec<(String, PathBuf)> = Vec::new();
    if let Some(b) = baseline {
        let b = fs::canonicalize(b).with_context(|| format!("baseline {}", b.display()))?;
        bins.push((format!("baseline {}", b.display()), b));
    }
    bins.push(("this tree".into(), util::corral_bin(ws)));
    for (i, (label, bin)) in bins.into_iter().enumerate() {
        util::header(&format!("lease bench: {label}"));
        let n = bench_env::with_env(ws, &format!("corral-bench-lease{i}"), |env| {
            let env = Env {
                corral: bin.clone(),
                socket: env.socket.clone(),
                pin_dir: env.pin_dir.clone(),
                parent: env.parent.clone(),
                policy_dir: env.policy_dir.clone(),
                tmp: env.tmp.clone(),
            };
            let port = crate::util::free_port();
            let r = Bench {
                sock: env.socket.with_file_name("lease.sock"),
                env: &env,
                bench: bench.clone(),
                port,
            }
            .all();
            env.unload();
            r
        })?;
        cols.push((label, n));
    }
    Ok(report(&cols))
}

impl Bench<'_> {
    fn policy(&self, name: &str) -> Result<()> {
        let text = format!(
            "[identity]\nname = \"{name}\"\n[network]\nallow = []\nunix = [\"{}\"]\n\
             [leases]\nmax_ttl = \"10m\"\nscopes = [\"net\"]\n\
             [[leases.grant]]\nscope = \"net\"\nnetwork = [\"udp://127.0.0.1:{}\"]\n",
            self.sock.display(),
            self.port
        );
        fs::write(self.env.policy_dir.join(format!("{name}.toml")), text)?;
        Ok(())
    }

    fn agent(&self, identity: &str, args: &[&str]) -> Result<Child> {
        let mut c = self.env.as_identity(Some(identity), &self.bench);
        Ok(c.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?)
    }

    fn finish(c: Child) -> Result<Value> {
        let out = c.wait_with_output()?;
        if !out.status.success() {
            bail!("bench agent failed: {out:?}");
        }
        bench_env::last_json(&String::from_utf8_lossy(&out.stdout))
    }

    fn latency(&self) -> Result<Value> {
        let port = self.port.to_string();
        let sock = self.sock.to_str().context("utf-8")?;
        Self::finish(self.agent("lat", &["lease-latency", sock, &port, ROUNDS])?)
    }

    fn loaders(&self, n: usize, secs: f64) -> Result<Vec<Child>> {
        let sock = self.sock.to_str().context("utf-8")?;
        (0..n)
            .map(|i| {
                self.agent(
                    &format!("load{i}"),
                    &["lease-load", sock, &secs.to_string()],
                )
            })
            .collect()
    }

    fn all(&self) -> Result<Numbers> {
        self.policy("lat")?;
        for i in 0..LOADERS.max(AGENTS[AGENTS.len() - 1]) {
            self.policy(&format!("load{i}"))?;
        }
        let log = self.env.tmp.join("daemon.log");
        // The bench measures the lease service, not the per-identity rate
        // limit; a baseline binary older than the limit has no flag.
        let has_rate = self
            .env
            .corral()
            .args(["daemon", "--help"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--lease-rate"));
        let args: &[&str] = if has_rate {
            &["--lease-rate", "1000000"]
        } else {
            &[]
        };
        let daemon = self.env.start_daemon(&log, args, &[])?;
        bench_env::while_running(daemon, || {
            let mut n = Numbers {
                idle: self.latency()?,
                ..Default::default()
            };
            for agents in AGENTS {
                let mut ops = 0.0;
                let mut errors = 0;
                for c in self.loaders(agents, LOAD_SECS)? {
                    let v = Self::finish(c)?;
                    ops +=
                        v["ops"].as_f64().unwrap_or(0.0) / v["elapsed_s"].as_f64().unwrap_or(1.0);
                    errors += v["errors"].as_u64().unwrap_or(0);
                }
                n.throughput.push((agents, ops, errors));
            }
            // Long enough to outlast the latency rounds.
            let load = self.loaders(LOADERS, 3.0 * LOAD_SECS)?;
            n.loaded = self.latency()?;
            for c in load {
                Self::finish(c)?;
            }
            Ok(n)
        })
    }
}

fn report(cols: &[(String, Numbers)]) -> String {
    let mut s = String::from("lease operations -> kernel (median µs; ratio to the first column)\n");
    for (i, (label, _)) in cols.iter().enumerate() {
        let _ = writeln!(s, "  [{i}] {label}");
    }
    let row = |s: &mut String, name: &str, get: &dyn Fn(&Numbers) -> f64| {
        let _ = write!(s, "{name:<44}");
        let base = get(&cols[0].1);
        for (_, n) in cols {
            let v = get(n);
            let _ = write!(s, " {v:>10.0} ({:>5.2}x)", v / base.max(1e-9));
        }
        s.push('\n');
    };
    let _ = write!(s, "{:<44}", "scenario");
    for i in 0..cols.len() {
        let _ = write!(s, " {:>19}", format!("[{i}]"));
    }
    s.push('\n');
    for (when, key) in [
        ("idle", "idle"),
        (&*format!("{LOADERS} other identities busy"), "loaded"),
    ] {
        for (what, field) in [
            ("issue -> connect allowed", "issue_kernel_us"),
            ("issue -> answer", "issue_answer_us"),
            ("renew -> answer (kernel applied)", "renew_answer_us"),
            ("revoke -> connect EPERM", "revoke_kernel_us"),
            ("revoke -> answer", "revoke_answer_us"),
        ] {
            row(&mut s, &format!("{what}, {when}"), &|n: &Numbers| {
                let v = if key == "idle" { &n.idle } else { &n.loaded };
                v[field].as_f64().unwrap_or(0.0)
            });
        }
    }
    s.push_str(
        "\nthroughput: issue+renew+revoke operations per second, N agents in N identities\n",
    );
    for (i, agents) in AGENTS.iter().enumerate() {
        row(
            &mut s,
            &format!("{agents} agents (ops/s)"),
            &|n: &Numbers| n.throughput.get(i).map_or(0.0, |t| t.1),
        );
    }
    for (label, n) in cols {
        let errors: u64 = n.throughput.iter().map(|t| t.2).sum::<u64>()
            + n.idle["errors"].as_u64().unwrap_or(0)
            + n.loaded["errors"].as_u64().unwrap_or(0);
        if errors > 0 {
            let _ = writeln!(s, "  ({label}: {errors} failed operations)");
        }
    }
    s
}
