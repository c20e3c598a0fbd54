//! Hostile-client steps of the probe, for the daemon's agent socket.
//!
//! hold-conns SOCK N SECS    keeps up to N connections open for SECS, idle,
//!                           reopening any the daemon closes; prints how many
//!                           it held at most, how many were refused (503) or
//!                           closed by the daemon
//! body-flood SOCK BYTES N   N requests declaring BYTES-byte bodies (sending
//!                           them), plus one chunked; prints the statuses seen
//! lease-storm SOCK N        N lease requests as fast as possible; prints the
//!                           statuses seen

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read as _, Write as _},
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

pub fn is_step(op: &str) -> bool {
    matches!(op, "hold-conns" | "body-flood" | "lease-storm")
}

fn print(op: &str, fields: serde_json::Value) {
    let mut v = fields;
    v["op"] = op.into();
    println!("{v}");
    let _ = std::io::stdout().flush();
}

/// What a held connection says when polled without blocking.
enum Held {
    Open,
    Refused,
    Closed,
}

fn poll(s: &mut UnixStream) -> Held {
    let mut buf = [0u8; 512];
    match s.read(&mut buf) {
        Ok(0) => Held::Closed,
        Ok(n) if buf[..n].starts_with(b"HTTP/1.1 503") => Held::Refused,
        Ok(_) => Held::Closed,
        Err(e) if e.kind() == ErrorKind::WouldBlock => Held::Open,
        Err(_) => Held::Closed,
    }
}

fn hold_conns(sock: &str, n: usize, secs: u64) {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut held: Vec<UnixStream> = Vec::new();
    let (mut max_held, mut refused, mut closed, mut errors) = (0usize, 0u64, 0u64, 0u64);
    while Instant::now() < end {
        while held.len() < n && Instant::now() < end {
            match UnixStream::connect(sock) {
                Ok(s) => {
                    let _ = s.set_nonblocking(true);
                    held.push(s);
                }
                Err(_) => {
                    errors += 1;
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        held.retain_mut(|s| match poll(s) {
            Held::Open => true,
            Held::Refused => {
                refused += 1;
                false
            }
            Held::Closed => {
                closed += 1;
                false
            }
        });
        max_held = max_held.max(held.len());
    }
    print(
        "hold-conns",
        serde_json::json!({ "max_held": max_held, "refused": refused,
            "closed_by_daemon": closed, "connect_errors": errors }),
    );
}

/// Sends `head` and up to `body` bytes, then reads the status line.
fn one(sock: &str, head: &str, body: usize) -> u16 {
    let Ok(mut s) = UnixStream::connect(sock) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(15)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(15)));
    if s.write_all(head.as_bytes()).is_err() {
        return 0;
    }
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    while sent < body {
        let k = chunk.len().min(body - sent);
        // The daemon answers and closes once it has seen enough.
        if s.write_all(&chunk[..k]).is_err() {
            break;
        }
        sent += k;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn body_flood(sock: &str, bytes: usize, n: usize) {
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    for _ in 0..n {
        let head = format!(
            "POST /v1/leases HTTP/1.1\r\nhost: corral\r\ncontent-type: application/json\r\n\
             content-length: {bytes}\r\n\r\n"
        );
        *statuses.entry(one(sock, &head, bytes)).or_default() += 1;
    }
    let chunked = "POST /v1/leases HTTP/1.1\r\nhost: corral\r\ntransfer-encoding: chunked\r\n\r\n";
    let c = one(sock, chunked, 0);
    print(
        "body-flood",
        serde_json::json!({ "statuses": statuses, "chunked": c }),
    );
}

fn lease_storm(sock: &str, n: usize) {
    let body = r#"{"scopes":["tickets:read"],"ttl":"10s"}"#;
    let head = format!(
        "POST /v1/leases HTTP/1.1\r\nhost: corral\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    for _ in 0..n {
        *statuses.entry(one(sock, &head, 0)).or_default() += 1;
    }
    print("lease-storm", serde_json::json!({ "statuses": statuses }));
}

/// Runs the step at `args[i]`; returns the index of the next step.
pub fn step(args: &[String], i: usize) -> usize {
    let n = |k: usize| args[i + k].parse::<usize>().expect("number");
    match args[i].as_str() {
        "hold-conns" => {
            hold_conns(&args[i + 1], n(2), n(3) as u64);
            i + 4
        }
        "body-flood" => {
            body_flood(&args[i + 1], n(2), n(3));
            i + 4
        }
        "lease-storm" => {
            lease_storm(&args[i + 1], n(2));
            i + 3
        }
        _ => unreachable!(),
    }
}
