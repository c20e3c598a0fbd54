//! Lease steps of the probe: calls to the daemon's agent socket (as a
//! process of the identity, attested by the kernel), and timing loops.
//!
//! lease-call SOCK METHOD PATH BODY   one HTTP request; prints status and JSON body
//! lease-call-secret SOCK METHOD PATH BODY SECRET
//!                                    the same with a `corral-request-secret` header
//! lease-exit-race SOCK BODY          connect, fork; the connector exits, the child
//!                                    sends the request on the inherited socket
//! lease-bench SOCK BODY N            N lease requests; prints requests per second
//! watch-deny ADDR PORT SECS          connects until the first EPERM; prints its
//!                                    wall-clock time (ns)
//! burst ADDR PORT N                  N connects as fast as possible; counts EPERM

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

pub fn is_step(op: &str) -> bool {
    matches!(
        op,
        "lease-call"
            | "lease-call-secret"
            | "lease-exit-race"
            | "lease-bench"
            | "watch-deny"
            | "burst"
    )
}

fn request(method: &str, path: &str, body: &str, secret: Option<&str>) -> String {
    let extra = secret.map_or(String::new(), |s| format!("corral-request-secret: {s}\r\n"));
    format!(
        "{method} {path} HTTP/1.1\r\nhost: corral\r\ncontent-type: application/json\r\n\
         {extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Sends one request on `s` and reads the whole answer (the server closes).
fn exchange(s: UnixStream, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    exchange_secret(s, method, path, body, None)
}

fn exchange_secret(
    mut s: UnixStream,
    method: &str,
    path: &str,
    body: &str,
    secret: Option<&str>,
) -> std::io::Result<(u16, String)> {
    s.write_all(request(method, path, body, secret).as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn print_answer(op: &str, r: std::io::Result<(u16, String)>) {
    let line = match r {
        Ok((status, body)) => {
            let body = if body.trim().is_empty() {
                "null".to_string()
            } else {
                body
            };
            format!(
                r#"{{"op":"{op}","ok":true,"status":{status},"body":{}}}"#,
                body.trim()
            )
        }
        Err(e) => format!(
            r#"{{"op":"{op}","ok":false,"errno":{},"error":"{}"}}"#,
            e.raw_os_error().unwrap_or(-1),
            e.to_string().replace('"', "'")
        ),
    };
    // One line per step, whatever the body's layout.
    let line: String = line.chars().filter(|&c| c != '\n').collect();
    println!("{line}");
    let _ = std::io::stdout().flush();
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn addr(a: &str, p: &str) -> SocketAddr {
    SocketAddr::new(a.parse().expect("ip"), p.parse().expect("port"))
}

fn connect(sa: SocketAddr) -> std::io::Result<()> {
    TcpStream::connect_timeout(&sa, Duration::from_secs(3)).map(drop)
}

fn step_lease_exit_race(args: &[String], i: usize) -> usize {
    let s = match UnixStream::connect(&args[i + 1]) {
        Ok(s) => s,
        Err(e) => {
            print_answer("lease-exit-race", Err(e));
            return i + 3;
        }
    };
    let connector = std::process::id() as i32;
    // SAFETY: the probe is single-threaded; the child only uses the
    // inherited socket and plain syscalls.
    match unsafe { libc::fork() } {
        0 => {
            // Wait until the connector is gone (reaped by its parent),
            // then ask with the socket it left behind.
            // SAFETY: plain syscall.
            while unsafe { libc::kill(connector, 0) } == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(50));
            print_answer(
                "lease-exit-race",
                exchange(s, "POST", "/v1/leases", &args[i + 2]),
            );
            std::process::exit(0);
        }
        -1 => panic!("fork failed"),
        _ => std::process::exit(0),
    }
}

fn step_lease_bench(args: &[String], i: usize) -> usize {
    let n: u32 = args[i + 3].parse().expect("count");
    let start = Instant::now();
    let mut ok = 0u32;
    for _ in 0..n {
        let r = UnixStream::connect(&args[i + 1])
            .and_then(|s| exchange(s, "POST", "/v1/leases", &args[i + 2]));
        if matches!(r, Ok((200, _))) {
            ok += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        r#"{{"op":"lease-bench","ok":{},"issued":{ok},"per_sec":{:.1}}}"#,
        ok == n,
        f64::from(ok) / secs
    );
    i + 4
}

fn step_watch_deny(args: &[String], i: usize) -> usize {
    let sa = addr(&args[i + 1], &args[i + 2]);
    let secs: f64 = args[i + 3].parse().expect("secs");
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut attempts = 0u64;
    let mut flip = None;
    let mut last_ok = 0;
    while Instant::now() < end {
        attempts += 1;
        match connect(sa) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                flip = Some(now_ns());
                break;
            }
            Ok(()) => last_ok = now_ns(),
            Err(_) => {}
        }
        // Paced, so the loop does not run the host out of ports.
        std::thread::sleep(Duration::from_micros(100));
    }
    match flip {
        Some(t) => println!(
            r#"{{"op":"watch-deny","ok":true,"attempts":{attempts},"flip_ns":{t},"last_ok_ns":{last_ok}}}"#
        ),
        None => println!(r#"{{"op":"watch-deny","ok":false,"attempts":{attempts}}}"#),
    }
    i + 4
}

/// Runs the step at `args[i]`; returns the index of the next step.
pub fn step(args: &[String], i: usize) -> usize {
    match args[i].as_str() {
        "lease-call" => {
            let r = UnixStream::connect(&args[i + 1])
                .and_then(|s| exchange(s, &args[i + 2], &args[i + 3], &args[i + 4]));
            print_answer("lease-call", r);
            i + 5
        }
        "lease-call-secret" => {
            let r = UnixStream::connect(&args[i + 1]).and_then(|s| {
                exchange_secret(
                    s,
                    &args[i + 2],
                    &args[i + 3],
                    &args[i + 4],
                    Some(&args[i + 5]),
                )
            });
            print_answer("lease-call-secret", r);
            i + 6
        }
        "lease-exit-race" => step_lease_exit_race(args, i),
        "lease-bench" => step_lease_bench(args, i),
        "watch-deny" => step_watch_deny(args, i),
        "burst" => {
            let sa = addr(&args[i + 1], &args[i + 2]);
            let n: u32 = args[i + 3].parse().expect("count");
            let mut eperm = 0;
            for _ in 0..n {
                if connect(sa).err().and_then(|e| e.raw_os_error()) == Some(libc::EPERM) {
                    eperm += 1;
                }
            }
            println!(r#"{{"op":"burst","ok":true,"attempts":{n},"eperm":{eperm}}}"#);
            i + 4
        }
        other => unreachable!("not a lease step: {other}"),
    }
}
