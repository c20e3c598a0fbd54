//! Lease workloads of `corral-bench`, run as a process of an identity whose
//! `[leases]` scope `net` grants `udp://127.0.0.1:PORT` (a UDP connect()
//! is judged by the same hook as a TCP one, needs no listener, and flips
//! between EPERM and success with the grant).
//!
//! lease-latency SOCK PORT ROUNDS   issue, renew, revoke ROUNDS times; for issue
//!                                  and revoke, the time until the kernel's
//!                                  decision flips (a watcher thread connects
//!                                  in a loop), and each answer's time
//! lease-load SOCK SECS             issue + renew + revoke cycles for SECS;
//!                                  prints the operations done

use std::{
    io::{Read as _, Write as _},
    net::UdpSocket,
    os::unix::net::UnixStream,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

/// One HTTP/1.1 request on a fresh connection; (status, body).
fn call(sock: &str, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = UnixStream::connect(sock)?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: corral\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
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

/// The `"id"` of a lease answer (the first `"id":"…"` in the body).
fn lease_id(body: &str) -> Option<String> {
    let rest = body.split_once("\"id\":")?.1.trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(rest.split_once('"')?.0.to_string())
}

const ISSUE: &str = r#"{"scopes":["net"],"ttl":"5m"}"#;
const RENEW: &str = r#"{"ttl":"5m"}"#;

fn issue(sock: &str) -> Option<String> {
    match call(sock, "POST", "/v1/leases", ISSUE) {
        Ok((200, b)) => lease_id(&b),
        _ => None,
    }
}

fn post_ok(sock: &str, path: &str, body: &str) -> bool {
    matches!(call(sock, "POST", path, body), Ok((200, _)))
}

/// Connects in a loop (20 µs apart) until connect() succeeds (`want_ok`)
/// or fails with EPERM; returns when that happened.
fn watch(
    port: u16,
    want_ok: bool,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Option<Instant>> {
    std::thread::spawn(move || {
        let s = UdpSocket::bind("127.0.0.1:0").expect("udp");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            let ok = s.connect(("127.0.0.1", port)).is_ok();
            if ok == want_ok {
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_micros(20));
        }
        None
    })
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// One kernel flip: starts the watcher, runs `op` (the request), returns
/// (µs to the flip, µs to the answer) and what `op` returned.
fn timed<T>(port: u16, want_ok: bool, op: impl FnOnce() -> T) -> (Option<u64>, u64, T) {
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let w = watch(port, want_ok, stop.clone());
    let r = op();
    let answered = t0.elapsed().as_micros() as u64;
    let flip = w.join().expect("watcher");
    stop.store(true, Ordering::Relaxed);
    (flip.map(|f| (f - t0).as_micros() as u64), answered, r)
}

pub fn lease_latency(sock: &str, port: u16, rounds: usize) -> String {
    let (mut issue_k, mut issue_a, mut renew_a, mut revoke_k, mut revoke_a) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut errors = 0u64;
    for _ in 0..rounds {
        let (flip, ans, id) = timed(port, true, || issue(sock));
        let (Some(flip), Some(id)) = (flip, id) else {
            errors += 1;
            continue;
        };
        issue_k.push(flip);
        issue_a.push(ans);
        let t = Instant::now();
        if post_ok(sock, &format!("/v1/leases/{id}/renew"), RENEW) {
            renew_a.push(t.elapsed().as_micros() as u64);
        } else {
            errors += 1;
        }
        let (flip, ans, ok) = timed(port, false, || {
            post_ok(sock, &format!("/v1/leases/{id}/revoke"), "")
        });
        match (flip, ok) {
            (Some(f), true) => {
                revoke_k.push(f);
                revoke_a.push(ans);
            }
            _ => errors += 1,
        }
    }
    format!(
        r#"{{"op":"lease-latency","rounds":{rounds},"errors":{errors},"issue_kernel_us":{},"issue_answer_us":{},"renew_answer_us":{},"revoke_kernel_us":{},"revoke_answer_us":{}}}"#,
        median(issue_k),
        median(issue_a),
        median(renew_a),
        median(revoke_k),
        median(revoke_a)
    )
}

pub fn lease_load(sock: &str, secs: f64) -> String {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let (mut ops, mut errors) = (0u64, 0u64);
    while Instant::now() < end {
        let Some(id) = issue(sock) else {
            errors += 1;
            continue;
        };
        ops += 1;
        for (what, body) in [("renew", RENEW), ("revoke", "")] {
            if post_ok(sock, &format!("/v1/leases/{id}/{what}"), body) {
                ops += 1;
            } else {
                errors += 1;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    format!(
        r#"{{"op":"lease-load","ops":{ops},"errors":{errors},"elapsed_s":{elapsed:.3},"per_sec":{:.1}}}"#,
        ops as f64 / elapsed
    )
}
