//! `cargo xtask bench`: connect() cost and event throughput, every scenario
//! side by side with a no-Corral baseline measured in the same run, reported
//! as ratios (never asserted: timing belongs here, not in tests).

use std::{
    fmt::Write as _,
    fs,
    net::{TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::util;

const TCP_ITERS: &str = "20000";
const UDP_ITERS: &str = "200000";
const FLOOD: u64 = 1_000_000;

struct Bench {
    corral: PathBuf,
    bench: PathBuf,
    socket: PathBuf,
    pin_dir: PathBuf,
    parent: String,
    policy_dir: PathBuf,
    tcp_port: u16,
    udp_port: u16,
}

pub fn run(ws: &Path) -> Result<()> {
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
    let tmp = std::env::temp_dir().join(format!("corral-bench-{}", std::process::id()));
    fs::create_dir_all(tmp.join("policies"))?;
    let tag = format!("corral-bench-{}", std::process::id());
    let b = Bench {
        corral: util::corral_bin(ws),
        bench: ws.join("target/release/corral-bench"),
        socket: tmp.join("corral.sock"),
        pin_dir: PathBuf::from("/sys/fs/bpf").join(&tag),
        parent: tag,
        policy_dir: tmp.join("policies"),
        tcp_port: free_port(),
        udp_port: free_port(),
    };
    let result = b.all(&tmp);
    b.cleanup();
    let _ = fs::remove_dir_all(&tmp);
    let report = result?;
    println!("\n{report}\n\n{}", crate::bench_files::run(ws)?);
    println!("\n{}", crate::bench_syscall::run(ws)?);
    Ok(())
}

fn free_port() -> u16 {
    let t = TcpListener::bind("127.0.0.1:0").expect("port");
    let p = t.local_addr().expect("addr").port();
    // Keep UDP free on the same number too.
    let _ = UdpSocket::bind(("127.0.0.1", p));
    p
}

fn parse(out: &str) -> Result<Value> {
    let line = out.lines().last().context("no output")?;
    serde_json::from_str(line).with_context(|| format!("bad bench output `{line}`"))
}

impl Bench {
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
        parse(&out)
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

    fn corral(&self) -> Command {
        let mut c = Command::new(&self.corral);
        c.arg("--socket").arg(&self.socket);
        c
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
        fs::write(self.policy_dir.join(format!("{name}.toml")), text)?;
        Ok(())
    }

    fn apply(&self) -> Result<Duration> {
        let t = Instant::now();
        util::output(self.corral().args(["policy", "apply"]))?;
        Ok(t.elapsed())
    }

    fn status(&self) -> Result<Value> {
        Ok(serde_json::from_str(&util::output(
            self.corral().args(["status", "--json"]),
        )?)?)
    }

    fn start_daemon(&self, log: &Path) -> Result<Child> {
        let child = Command::new(&self.corral)
            .arg("--socket")
            .arg(&self.socket)
            .args(["daemon", "--policy-dir"])
            .arg(&self.policy_dir)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .args(["--cgroup-parent", &self.parent, "--ringbuf-size", "64M"])
            .arg("--state-dir")
            .arg(log.parent().expect("dir"))
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

    fn all(&self, tmp: &Path) -> Result<String> {
        let mut rows: Vec<(String, f64, f64)> = Vec::new();
        util::header("baseline: no corral loaded");
        let (bt, bu) = self.pair(&[])?;
        rows.push(("no corral loaded".into(), bt, bu));

        self.write_policy("bench", 10)?;
        let mut daemon = self.start_daemon(&tmp.join("daemon.log"))?;
        let r = (|| -> Result<String> {
            util::header("corral loaded, untagged process outside its cgroups");
            let (t, u) = self.pair(&[])?;
            rows.push(("untagged, outside corral cgroups".into(), t, u));

            util::header("untagged process inside the corral parent (programs run, no tag)");
            let root = cgroup_root()?;
            let untagged = root.join(&self.parent).join("bench-untagged");
            fs::create_dir_all(&untagged)?;
            let procs = untagged.join("cgroup.procs");
            let script = format!("echo $$ > {} && exec \"$0\" \"$@\"", procs.display());
            let (t, u) = self.pair(&["sh", "-c", &script])?;
            rows.push(("untagged, inside corral parent".into(), t, u));

            let mut reloads = Vec::new();
            for n in [10usize, 1_000, 100_000] {
                util::header(&format!("tagged identity with {n} rules"));
                self.write_policy("bench", n)?;
                reloads.push((n, self.apply()?));
                let (t, u) = self.pair(&[
                    self.corral.to_str().expect("utf-8"),
                    "--socket",
                    self.socket.to_str().expect("utf-8"),
                    "run",
                    "--identity",
                    "bench",
                    "--",
                ])?;
                rows.push((format!("tagged, {n} rules"), t, u));
            }

            util::header("event throughput: denied connects flood the ring buffer");
            let flood_policy = "[identity]\nname = \"flood\"\n[network]\nallow = []\n";
            fs::write(self.policy_dir.join("flood.toml"), flood_policy)?;
            self.apply()?;
            let before = self.status()?;
            let out = util::output(
                self.corral()
                    .args(["run", "--identity", "flood", "--"])
                    .arg(&self.bench)
                    .args(["flood", &self.udp_port.to_string(), &FLOOD.to_string()]),
            )?;
            let flood = parse(&out)?;
            sleep(Duration::from_secs(2));
            let after = self.status()?;
            let recv = after["events"]["received"].as_u64().unwrap_or(0)
                - before["events"]["received"].as_u64().unwrap_or(0);
            let lost = after["events"]["kernel_lost"].as_u64().unwrap_or(0)
                - before["events"]["kernel_lost"].as_u64().unwrap_or(0);
            let secs = flood["elapsed_ns"].as_f64().unwrap_or(1.0) / 1e9;

            let mut s =
                String::from("connect() latency, median ns (ratio to no-corral baseline)\n");
            let _ = writeln!(
                s,
                "{:<36} {:>16} {:>16}",
                "scenario", "tcp connect", "udp connect"
            );
            for (name, t, u) in &rows {
                let _ = writeln!(
                    s,
                    "{:<36} {:>8.0} ({:.2}x) {:>8.0} ({:.2}x)",
                    name,
                    t,
                    t / bt,
                    u,
                    u / bu
                );
            }
            let _ = writeln!(s, "\npolicy apply (API call, compile + write maps + flip):");
            for (n, d) in reloads {
                let _ = writeln!(s, "  {n:>7} rules: {:>8.1} ms", d.as_secs_f64() * 1e3);
            }
            let _ = writeln!(
                s,
                "\nevents: {FLOOD} denials in {secs:.2} s ({:.0}/s generated); daemon received {recv}, kernel lost {lost} ({:.3}% loss)",
                FLOOD as f64 / secs,
                lost as f64 * 100.0 / FLOOD as f64
            );
            Ok(s)
        })();
        // SAFETY: plain syscall on our own child.
        unsafe { libc_kill(daemon.id() as i32) };
        let _ = daemon.wait();
        r
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

unsafe fn libc_kill(pid: i32) {
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    // SIGTERM: the daemon shuts down cleanly.
    unsafe { kill(pid, 15) };
}
