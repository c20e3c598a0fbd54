//! Workloads for `cargo xtask bench` (timed here, compared there).
//!
//! corral-bench tcp PORT ITERS   — connect+close to 127.0.0.1:PORT (it listens itself)
//! corral-bench udp PORT ITERS   — connect() of a UDP socket (no handshake: the
//!                                 hook's cost dominates)
//! corral-bench flood PORT COUNT — COUNT denied UDP connects, as fast as possible
//! corral-bench flood-paced PORT COUNT RATE — the same, RATE per second
//!                                 (paced per millisecond: a sustained load)
//! corral-bench getppid 0 ITERS | stat 0 ITERS | open-read 0 ITERS | tcp-loop PORT ITERS
//!                               — host-cost workloads (see `host_workload`): ns per
//!                                 op over the whole loop, no per-call clock
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
        Some("flood-paced") => {
            let (port, count, rate) = (
                a[1].parse().expect("port"),
                a[2].parse().expect("count"),
                a[3].parse().expect("rate"),
            );
            println!("{}", flood_paced(port, count, rate));
            return;
        }
        _ => {}
    }
    let (op, port, iters): (&str, u16, usize) = (
        &a[0],
        a[1].parse().expect("port"),
        a[2].parse().expect("iters"),
    );
    if let Some(line) = host_workload(op, port, iters) {
        println!("{line}");
        return;
    }
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

/// The host-cost workloads (`cargo xtask bench`, host table): tight loops
/// timed as a whole (a clock read per call would be most of a getppid),
/// reported as ns per operation. `None` for other ops.
fn host_workload(op: &str, port: u16, iters: usize) -> Option<String> {
    let dir = std::env::temp_dir().join(format!("corral-bench-files-{}", std::process::id()));
    let files: Vec<std::path::PathBuf> = if op == "open-read" || op == "stat" {
        std::fs::create_dir_all(&dir).expect("dir");
        (0..256)
            .map(|i| {
                let f = dir.join(format!("f{i}"));
                std::fs::write(&f, b"corral bench file").expect("write");
                f
            })
            .collect()
    } else {
        Vec::new()
    };
    let listener = (op == "tcp-loop").then(|| {
        let l = TcpListener::bind(("127.0.0.1", port)).expect("listen");
        // A backlog that holds the whole loop: when the accepting thread
        // is not scheduled in time, a full queue drops SYNs, and their
        // one-second retransmits would be most of what is measured.
        // SAFETY: listen(2) again on our own socket only resizes its queue.
        unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), 8192) };
        let l2 = l.try_clone().expect("clone");
        std::thread::spawn(move || {
            for c in l2.incoming() {
                drop(c)
            }
        });
        l
    });
    let mut errors = 0usize;
    let mut buf = [0u8; 64];
    let start = Instant::now();
    for i in 0..iters {
        let ok = match op {
            // SAFETY: no arguments.
            "getppid" => (unsafe { libc::getppid() }) > 0,
            "stat" => std::fs::metadata(&files[i % files.len()]).is_ok(),
            "open-read" => std::fs::File::open(&files[i % files.len()])
                .and_then(|mut f| std::io::Read::read(&mut f, &mut buf))
                .is_ok(),
            // Closed with a reset (linger 0): thousands of connects per
            // run would otherwise fill the port range with TIME-WAIT
            // sockets and slow later runs' connects, whichever arm.
            "tcp-loop" => TcpStream::connect(("127.0.0.1", port)).is_ok_and(|c| {
                let l = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: a valid linger struct on a live socket.
                unsafe {
                    libc::setsockopt(
                        std::os::fd::AsRawFd::as_raw_fd(&c),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&l as *const libc::linger).cast(),
                        size_of::<libc::linger>() as u32,
                    )
                };
                true
            }),
            _ => return None,
        };
        errors += usize::from(!ok);
    }
    let elapsed = start.elapsed().as_nanos() as u64;
    drop(listener);
    let _ = std::fs::remove_dir_all(&dir);
    let per = elapsed as f64 / iters.max(1) as f64;
    Some(format!(
        r#"{{"op":"{op}","iters":{iters},"ns_per_op":{per:.1},"elapsed_ns":{elapsed},"errors":{errors}}}"#
    ))
}

/// `count` denied UDP connects at `rate` per second: each millisecond's
/// share, then a sleep until the next millisecond (a burst would measure
/// the queue, not the sustained rate).
fn flood_paced(port: u16, count: u64, rate: u64) -> String {
    let target: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < count {
        let due = (start.elapsed().as_nanos() as u64 * rate / 1_000_000_000).min(count);
        while sent < due {
            let _ = udp.connect(target);
            sent += 1;
        }
        std::thread::sleep(std::time::Duration::from_micros(500));
    }
    let elapsed = start.elapsed().as_nanos() as u64;
    format!(r#"{{"op":"flood-paced","iters":{count},"rate":{rate},"elapsed_ns":{elapsed}}}"#)
}
