//! The audit log's sustained rate: paced floods of denials at rising
//! rates, each until the log has every event on disk or counted lost. The
//! burst figure (`bench.rs`, 1,000,000 denials as fast as possible) shows
//! what the queue between the event reader and the writer absorbs; this
//! shows the rate the writer keeps up with, the number the issue asks for.

use std::{
    fmt::Write as _,
    path::Path,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::Result;
use serde_json::Value;

use crate::{
    bench_env::{self, Env},
    util,
};

const RATES: [u64; 5] = [25_000, 50_000, 100_000, 200_000, 400_000];
const SECS: u64 = 4;

/// Assumes the `flood` identity (every connect denied) is in force.
pub fn sustained(env: &Env, bench: &Path, port: u16) -> Result<String> {
    let mut s = String::from(
        "\naudit log, sustained (paced denials for 4 s each; on disk and lost until drained):\n",
    );
    let mut best = None;
    for rate in RATES {
        util::header(&format!("audit log at {rate} denials/s"));
        let before = env.status()?;
        let count = rate * SECS;
        let t = Instant::now();
        let out = util::output(env.as_identity(Some("flood"), bench).args([
            "flood-paced",
            &port.to_string(),
            &count.to_string(),
            &rate.to_string(),
        ]))?;
        let run = bench_env::last_json(&out)?;
        let secs = run["elapsed_ns"].as_f64().unwrap_or(1.0) / 1e9;
        let (written, lost, kernel_lost) = drain(env, &before, count)?;
        let _ = writeln!(
            s,
            "  {rate:>7}/s asked, {:>7.0}/s made: {written:>8} on disk, {lost:>7} lost by the log, \
             {kernel_lost} lost in the kernel; all accounted for {:.1} s after the start",
            count as f64 / secs,
            t.elapsed().as_secs_f64(),
        );
        if lost == 0 && kernel_lost == 0 {
            best = Some(rate);
        } else {
            break;
        }
    }
    let _ = writeln!(s, "  {}", writer_cost()?);
    let _ = match best {
        Some(r) => writeln!(
            s,
            "  kept up with {r} denials/s with 0 lost (the highest rate tried that lost none)"
        ),
        None => writeln!(s, "  lost records even at {} denials/s", RATES[0]),
    };
    Ok(s)
}

fn counter(v: &Value, section: &str, k: &str) -> u64 {
    v[section][k].as_u64().unwrap_or(0)
}

/// Waits (≤ 60 s) until the log accounts for every event received since
/// `before`; returns records written, records lost and kernel losses.
fn drain(env: &Env, before: &Value, expected: u64) -> Result<(u64, u64, u64)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = env.status()?;
        let recv = counter(&now, "events", "received") - counter(before, "events", "received");
        let kernel =
            counter(&now, "events", "kernel_lost") - counter(before, "events", "kernel_lost");
        let written = counter(&now, "audit", "records") - counter(before, "audit", "records");
        let lost = counter(&now, "audit", "lost") - counter(before, "audit", "lost");
        let done = recv + kernel >= expected && written + lost >= recv;
        if done || Instant::now() > deadline {
            return Ok((written, lost, kernel));
        }
        sleep(Duration::from_millis(20));
    }
}

/// The writer's own cost per record on a free core (the unit measurement
/// `audit_writer_cost`, which drives the real writer into a temp dir): what
/// the rates above are bounded by besides the CPU the reader and the flood
/// take.
fn writer_cost() -> Result<String> {
    let out = util::output(util::cargo().current_dir(util::workspace_root()).args([
        "test",
        "--release",
        "-p",
        "agent-user",
        "--lib",
        "audit_writer_cost",
        "--",
        "--ignored",
        "--nocapture",
    ]))?;
    Ok(out
        .lines()
        .find(|l| l.starts_with("audit writer:"))
        .map_or_else(
            || "audit writer: cost not measured".into(),
            |l| format!("{l} (one core, nothing else running)"),
        ))
}
