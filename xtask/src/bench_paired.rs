//! What the host and agent tables share: the workloads (`corral-bench`
//! ops), a server port, and paired interleaved rounds (A B, then B A, so
//! drift on a shared machine lands in both arms) reported as each arm's
//! median and the median, min and max of the per-round ratios b/a.

use std::{fmt::Write as _, net::TcpListener, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{
    bench_env::{self, median},
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

/// ns per operation of each workload, the benchmark binary run by `cmd`
/// (directly, or through `corral run`).
pub fn workloads(bench: &Path, port: u16, cmd: impl Fn(&Path) -> Command) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for (op, n, _) in WORKLOADS {
        let port = if op == "tcp-loop" { port } else { 0 };
        let v = bench_env::last_json(&util::output(cmd(bench).args([op, &port.to_string(), n]))?)?;
        if v["errors"].as_u64() != Some(0) {
            bail!("{op} failed in the benchmark: {v}");
        }
        out.push(v["ns_per_op"].as_f64().context("ns_per_op")?);
    }
    Ok(out)
}

/// Per workload: (a) samples, (b) samples, per-round ratios b/a.
#[derive(Default)]
pub struct Paired {
    a: Vec<Vec<f64>>,
    b: Vec<Vec<f64>>,
    ratios: Vec<Vec<f64>>,
}

impl Paired {
    /// `rounds` rounds of both arms, alternating which goes first.
    pub fn run(
        title: &str,
        rounds: usize,
        mut arm_a: impl FnMut() -> Result<Vec<f64>>,
        mut arm_b: impl FnMut() -> Result<Vec<f64>>,
    ) -> Result<Paired> {
        let n = WORKLOADS.len();
        let mut p = Paired {
            a: vec![vec![]; n],
            b: vec![vec![]; n],
            ratios: vec![vec![]; n],
        };
        for round in 0..rounds {
            util::header(&format!("{title}: round {}/{rounds}", round + 1));
            let (ra, rb) = if round % 2 == 0 {
                let ra = arm_a()?;
                (ra, arm_b()?)
            } else {
                let rb = arm_b()?;
                (arm_a()?, rb)
            };
            for i in 0..n {
                p.a[i].push(ra[i]);
                p.b[i].push(rb[i]);
                p.ratios[i].push(rb[i] / ra[i]);
            }
        }
        Ok(p)
    }

    /// The table rows, under a header line.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<30} {:>10} {:>10} {:>10} {:>9} {:>16}",
            "workload", "(a) ns", "(b) ns", "b-a ns", "b/a med", "b/a min..max"
        );
        for (i, (_, _, label)) in WORKLOADS.iter().enumerate() {
            let lo = self.ratios[i].iter().copied().fold(f64::INFINITY, f64::min);
            let hi = self.ratios[i].iter().copied().fold(0.0, f64::max);
            let (ma, mb) = (median(self.a[i].clone()), median(self.b[i].clone()));
            let _ = writeln!(
                s,
                "{label:<30} {ma:>10.1} {mb:>10.1} {:>10.1} {:>8.3}x {lo:>7.3}..{hi:<7.3}",
                mb - ma,
                median(self.ratios[i].clone()),
            );
        }
        s
    }
}
