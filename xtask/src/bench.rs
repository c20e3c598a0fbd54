//! `cargo xtask bench`: connect() cost and event throughput, every scenario
//! side by side with a no-Corral baseline measured in the same run, reported
//! as ratios (never asserted: timing belongs here, not in tests).

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread::sleep,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{
    bench_env::{self, Env},
    util,
};

const TCP_ITERS: &str = "20000";
const UDP_ITERS: &str = "200000";
const FLOOD: u64 = 1_000_000;

struct Bench<'a> {
    env: &'a Env,
    bench: PathBuf,
    tcp_port: u16,
    udp_port: u16,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Only this part: `connect`, `files`, `syscall`, `lease`, `host` or
    /// `agent`.
    only: Option<String>,
    /// A `corral` binary (e.g. built from an earlier commit) whose lease
    /// numbers are measured beside this tree's.
    #[arg(long)]
    lease_baseline: Option<PathBuf>,
}

pub fn run(ws: &Path, args: &BenchArgs) -> Result<()> {
    if !util::is_root() {
        bail!("benchmarks load eBPF programs: run as root");
    }
    crate::setup::run(ws)?;
    util::header("build");
    util::run(util::cargo().current_dir(ws).args([
        "build",
        "--release",
        "-p",
        "agent-user",
        "-p",
        "corral-tests",
        "--bins",
    ]))?;
    let part = |p: &str| args.only.as_deref().is_none_or(|o| o == p);
    if let Some(o) = args
        .only
        .as_deref()
        .filter(|o| !["connect", "files", "syscall", "lease", "host", "agent"].contains(o))
    {
        bail!("unknown bench part `{o}`: connect, files, syscall, lease, host or agent");
    }
    if part("lease") {
        let r = crate::bench_lease::run(ws, args.lease_baseline.as_deref())?;
        println!("\n{r}");
    }
    if part("connect") {
        let report = bench_env::with_env(ws, "corral-bench", |env| {
            Bench {
                env,
                bench: ws.join("target/release/corral-bench"),
                tcp_port: crate::util::free_port(),
                udp_port: crate::util::free_port(),
            }
            .all()
        })?;
        println!("\n{report}");
    }
    type Table = fn(&Path) -> Result<String>;
    let tables: [(&str, Table); 4] = [
        ("files", crate::bench_files::run),
        ("syscall", crate::bench_syscall::run),
        ("host", crate::bench_host::run),
        ("agent", crate::bench_agent::run),
    ];
    for (name, run) in tables {
        if part(name) {
            println!("\n{}", run(ws)?);
        }
    }
    Ok(())
}

impl Bench<'_> {
    fn bench_cmd(&self, prefix: &[&str], op: &str, port: u16, iters: &str) -> Result<Value> {
        let mut c = if prefix.is_empty() {
            Command::new(&self.bench)
        } else {
            let mut c = Command::new(prefix[0]);
            c.args(&prefix[1..]).arg(&self.bench);
            c
        };
        c.args([op, &port.to_string(), iters]);
        let out = util::output(&mut c)?;
        bench_env::last_json(&out)
    }

    fn pair(&self, prefix: &[&str]) -> Result<(f64, f64)> {
        let t = self.bench_cmd(prefix, "tcp", self.tcp_port, TCP_ITERS)?;
        let u = self.bench_cmd(prefix, "udp", self.udp_port, UDP_ITERS)?;
        for v in [&t, &u] {
            if v["errors"].as_u64() != Some(0) {
                bail!("benchmark connects failed: {v}");
            }
        }
        Ok((
            t["median_ns"].as_f64().unwrap_or(0.0),
            u["median_ns"].as_f64().unwrap_or(0.0),
        ))
    }

    fn write_policy(&self, name: &str, rules: usize) -> Result<()> {
        let mut allow = format!(
            "\"tcp://127.0.0.1:{}\", \"udp://127.0.0.1:{}\"",
            self.tcp_port, self.udp_port
        );
        for i in 0..rules.saturating_sub(2) {
            let _ = write!(
                allow,
                ", \"tcp://10.{}.{}.{}:443\"",
                (i >> 16) & 255,
                (i >> 8) & 255,
                i & 255
            );
        }
        // The workload listens on the TCP port itself.
        let text = format!(
            "[identity]\nname = \"{name}\"\n[network]\nallow = [{allow}]\nbind = [\"tcp://127.0.0.1:{}\"]\n",
            self.tcp_port
        );
        fs::write(self.env.policy_dir.join(format!("{name}.toml")), text)?;
        Ok(())
    }

    fn all(&self) -> Result<String> {
        let env = self.env;
        let mut rows: Vec<(String, f64, f64)> = Vec::new();
        util::header("baseline: no corral loaded");
        let (bt, bu) = self.pair(&[])?;
        rows.push(("no corral loaded".into(), bt, bu));

        self.write_policy("bench", 10)?;
        let daemon =
            env.start_daemon(&env.tmp.join("daemon.log"), &["--ringbuf-size", "64M"], &[])?;
        bench_env::while_running(daemon, || -> Result<String> {
            util::header("corral loaded, untagged process outside its cgroups");
            let (t, u) = self.pair(&[])?;
            rows.push(("untagged, outside corral cgroups".into(), t, u));

            util::header("untagged process inside the corral parent (programs run, no tag)");
            let root = cgroup_root()?;
            let untagged = root.join(&env.parent).join("bench-untagged");
            fs::create_dir_all(&untagged)?;
            let procs = untagged.join("cgroup.procs");
            let script = format!("echo $$ > {} && exec \"$0\" \"$@\"", procs.display());
            let (t, u) = self.pair(&["sh", "-c", &script])?;
            rows.push(("untagged, inside corral parent".into(), t, u));

            let mut reloads = Vec::new();
            for n in [10usize, 1_000, 100_000] {
                util::header(&format!("tagged identity with {n} rules"));
                self.write_policy("bench", n)?;
                reloads.push((n, env.apply()?));
                let (t, u) = self.pair(&[
                    env.corral.to_str().expect("utf-8"),
                    "--socket",
                    env.socket.to_str().expect("utf-8"),
                    "run",
                    "--identity",
                    "bench",
                    "--",
                ])?;
                rows.push((format!("tagged, {n} rules"), t, u));
            }

            let events = self.flood()?;
            let mut s =
                String::from("connect() latency, median ns (ratio to no-corral baseline)\n");
            s.push_str(&bench_env::ratio_table(
                (36, 16),
                ["tcp connect", "udp connect"],
                (bt, bu),
                &rows,
            ));
            let _ = writeln!(s, "\npolicy apply (API call, compile + write maps + flip):");
            for (n, d) in reloads {
                let _ = writeln!(s, "  {n:>7} rules: {:>8.1} ms", d.as_secs_f64() * 1e3);
            }
            s.push_str(&events);
            s.push_str(&crate::bench_audit::sustained(
                env,
                &self.bench,
                self.udp_port,
            )?);
            Ok(s)
        })
    }
    /// Event throughput: a flood of denied connects through the ring
    /// buffer, and how fast the audit log has them on disk.
    fn flood(&self) -> Result<String> {
        let env = self.env;
        util::header("event throughput: denied connects flood the ring buffer");
        let flood_policy = "[identity]\nname = \"flood\"\n[network]\nallow = []\n";
        fs::write(env.policy_dir.join("flood.toml"), flood_policy)?;
        env.apply()?;
        let before = env.status()?;
        let flood_start = std::time::Instant::now();
        let out = util::output(env.as_identity(Some("flood"), &self.bench).args([
            "flood",
            &self.udp_port.to_string(),
            &FLOOD.to_string(),
        ]))?;
        let flood = bench_env::last_json(&out)?;
        sleep(Duration::from_secs(2));
        let after = env.status()?;
        let recv = after["events"]["received"].as_u64().unwrap_or(0)
            - before["events"]["received"].as_u64().unwrap_or(0);
        let lost = after["events"]["kernel_lost"].as_u64().unwrap_or(0)
            - before["events"]["kernel_lost"].as_u64().unwrap_or(0);
        let secs = flood["elapsed_ns"].as_f64().unwrap_or(1.0) / 1e9;
        // The audit log gets every received event: how fast it is on
        // disk, and whether it kept up.
        let audit = |v: &serde_json::Value, k: &str| v["audit"][k].as_u64().unwrap_or(0);
        let mut audited = 0;
        let mut audit_done = flood_start.elapsed();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let mut audit_lost = 0;
        while std::time::Instant::now() < deadline {
            let now = env.status()?;
            let written = audit(&now, "records") - audit(&before, "records");
            audit_lost = audit(&now, "lost") - audit(&before, "lost");
            if written > audited {
                audited = written;
                audit_done = flood_start.elapsed();
            }
            // Every received event is either on disk or counted lost
            // (loss records themselves are records too, hence >=).
            if audited + audit_lost >= recv {
                break;
            }
            sleep(Duration::from_millis(20));
        }

        let mut s = String::new();
        let _ = writeln!(
            s,
            "\nevents: {FLOOD} denials in {secs:.2} s ({:.0}/s generated); daemon received {recv}, kernel lost {lost} ({:.3}% loss)",
            FLOOD as f64 / secs,
            lost as f64 * 100.0 / FLOOD as f64
        );
        let _ = writeln!(
            s,
            "audit log, this burst: {audited} records on disk ({:.0}/s from the flood's start until the last was written), {audit_lost} lost (beyond what the event queue holds)",
            audited as f64 / audit_done.as_secs_f64()
        );
        Ok(s)
    }
}

fn cgroup_root() -> Result<PathBuf> {
    let mi = fs::read_to_string("/proc/self/mountinfo")?;
    mi.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .context("no cgroup2 mount")
}
