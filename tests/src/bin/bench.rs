//! Workloads for `cargo xtask bench` (timed here, compared there).
//!
//! corral-bench tcp PORT ITERS   — connect+close to 127.0.0.1:PORT (it listens itself)
//! corral-bench udp PORT ITERS   — connect() of a UDP socket (no handshake: the
//!                                 hook's cost dominates)
//! corral-bench flood PORT COUNT — COUNT denied UDP connects, as fast as possible
//! Prints one JSON line: {"op":..,"iters":N,"median_ns":..,"mean_ns":..,"elapsed_ns":..,"errors":N}
//!
//! corral-bench lease-latency SOCK PORT ROUNDS, lease-load SOCK SECS: see
//! `bench_steps/lease.rs`.

use std::{
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Instant,
};

#[path = "bench_steps/lease.rs"]
mod lease;

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    match a.first().map(String::as_str) {
        Some("lease-latency") => {
            let (port, rounds) = (a[2].parse().expect("port"), a[3].parse().expect("rounds"));
            println!("{}", lease::lease_latency(&a[1], port, rounds));
            return;
        }
        Some("lease-load") => {
            println!("{}", lease::lease_load(&a[1], a[2].parse().expect("secs")));
            return;
        }
        _ => {}
    }
    let (op, port, iters): (&str, u16, usize) = (
        &a[0],
        a[1].parse().expect("port"),
        a[2].parse().expect("iters"),
    );
    let target: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    if op == "tcp" {
        let l = TcpListener::bind(target).expect("listen");
        std::thread::spawn(move || {
            for c in l.incoming() {
                drop(c)
            }
        });
    }
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let mut samples = Vec::with_capacity(iters);
    let mut errors = 0usize;
    let start = Instant::now();
    for _ in 0..iters {
        let t = Instant::now();
        let ok = match op {
            "tcp" => TcpStream::connect(target).is_ok(),
            "udp" | "flood" => udp.connect(target).is_ok(),
            other => panic!("unknown op {other}"),
        };
        if op != "flood" {
            samples.push(t.elapsed().as_nanos() as u64);
        }
        errors += usize::from(!ok);
    }
    let elapsed = start.elapsed().as_nanos() as u64;
    samples.sort_unstable();
    let median = samples.get(samples.len() / 2).copied().unwrap_or(0);
    let mean = if samples.is_empty() {
        0
    } else {
        samples.iter().sum::<u64>() / samples.len() as u64
    };
    println!(
        r#"{{"op":"{op}","iters":{iters},"median_ns":{median},"mean_ns":{mean},"elapsed_ns":{elapsed},"errors":{errors}}}"#
    );
}
