//! `cargo xtask bench`, agent part: what an agent pays for its own policy.
//! One daemon; paired and interleaved rounds (A B, then B A) of the host
//! table's workloads, (a) untagged and (b) as an agent started with `corral
//! run` in an identity that uses every section: `[network]` allowing the
//! loopback port, `[files]` (BPF LSM where it runs, else Landlock and its
//! denial observer), `[syscalls]` (the seccomp filter) and `[leases]`.
//! Reported like the host table: medians and the per-round ratios b/a.
//!
//! `cargo xtask bench agent` runs it alone (`CORRAL_BENCH_ROUNDS=N`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Result;

use crate::{
    bench_env::{self, Env},
    bench_paired::{self, Paired},
};

const IDENTITY: &str = "ag-all";

struct Bench<'a> {
    env: &'a Env,
    bench: PathBuf,
    port: u16,
}

pub fn run(ws: &Path) -> Result<String> {
    let rounds = bench_env::rounds();
    bench_env::with_env(ws, "corral-bench-agent", |env| {
        let port = bench_paired::low_port()?;
        let b = Bench {
            env,
            bench: fs::canonicalize(ws.join("target/release/corral-bench"))?,
            port,
        };
        b.write_policy()?;
        let mut out = String::new();
        // Where Landlock's audit records are the file observer, once per
        // `--landlock-pids` mode (the agent's audit context is the
        // difference); elsewhere the one daemon.
        for (mode, args) in [
            ("process", &[][..]),
            ("session", &["--landlock-pids", "session"][..]),
        ] {
            let log = env.tmp.join(format!("daemon-{mode}.log"));
            let mut daemon_args = vec!["--no-watch", "--ringbuf-size", "16M"];
            daemon_args.extend_from_slice(args);
            let d = env.start_daemon(&log, &daemon_args, &[])?;
            let r = bench_env::while_running(d, || b.all(rounds, mode));
            env.unload();
            let (table, audit_records) = r?;
            out.push_str(&table);
            if !audit_records {
                break;
            }
        }
        Ok(out)
    })
}

impl Bench<'_> {
    fn write_policy(&self) -> Result<()> {
        let bin = self.bench.display();
        let body = format!(
            "[identity]\nname = \"{IDENTITY}\"\n[network]\nallow = [\"tcp://127.0.0.1:{port}\"]\nbind = [\"tcp://127.0.0.1:{port}\"]\n\
             [files]\nread = [\"/usr/\", \"/etc/\", \"/proc/\", \"/tmp/\", \
             \"{bin}\"]\nwrite = [\"/tmp/\", \"/dev/null\"]\n[syscalls]\nallow = [\"@default\", \"@network-io\", \"mkdir\", \"rmdir\"]\n\
             [leases]\nmax_ttl = \"15m\"\nscopes = [\"db:read\"]\n\n[[leases.grant]]\n\
             scope = \"db:read\"\nnetwork = [\"tcp://10.30.0.5:5432\"]\n",
            port = self.port
        );
        fs::write(self.env.policy_dir.join(format!("{IDENTITY}.toml")), body)?;
        Ok(())
    }

    /// ns per operation of each workload, as the agent or untagged.
    fn workloads(&self, tagged: bool) -> Result<Vec<f64>> {
        bench_paired::workloads(&self.bench, self.port, |bench| match tagged {
            true => self.env.as_identity(Some(IDENTITY), bench),
            false => Command::new(bench),
        })
    }

    /// The table, and whether the file observer read audit records (then
    /// the other `--landlock-pids` mode is worth a table too).
    fn all(&self, rounds: usize, mode: &str) -> Result<(String, bool)> {
        let p = Paired::run(
            &format!("agent cost ({mode})"),
            rounds,
            || self.workloads(false),
            || self.workloads(true),
        )?;
        let files = self.env.files_detail();
        let audit_records = files.contains("Landlock audit records");
        let s = format!(
            "agent cost{}: {rounds} paired rounds (A B / B A) in one daemon, ns per op\n\
             (a) untagged; (b) `corral run` agent with [network], [files], [syscalls], [leases]\n\
             [files] here: {files}\n{}",
            if audit_records {
                format!(" (--landlock-pids {mode})")
            } else {
                String::new()
            },
            p.table()
        );
        Ok((s, audit_records))
    }
}
