//! A small program the tests run inside (and outside) agent identities.
//! Each step prints one JSON line: {"op":..,"ok":bool,"errno":N}.
//!
//! probe connect ADDR PORT | sendto ADDR PORT | bind-tcp ADDR PORT |
//!       subcgroup NAME (then the remaining steps run in that child cgroup) |
//!       pid | exit CODE | kill SIG | sleep SECS | wait-file PATH |
//!       loop ADDR:PORT=allow|deny ... SECS   (tight connect loop; counts wrong answers) |
//!       unix-connect PATH | unix-sendto PATH   (AF_UNIX stream connect / datagram send;
//!       `@name` is an abstract address) |
//!       unix-dgram-connect PATH |
//!       unix-connect-padded PATH   (addrlen = sizeof(sockaddr_un), garbage after the NUL) |
//!       unix-loop PATH=allow|deny ... SECS   (like loop, for unix connects; ns per connect)
//!       file steps: see `probe_steps/files.rs` (open, exec, link, rename, ...)
//!       BPF-LSM steps: see `probe_steps/lsm.rs` (openat2, uring-open, bpf-map, signal, ...)
//!       escape steps: see `probe_steps/escape.rs` (setown, userns, chroot, open-tree-read, ...)
//!       lease steps: see `probe_steps/lease.rs` (lease-call, lease-exit-race, watch-deny, burst, ...)
//!       hostile-client steps: see `probe_steps/flood.rs` (hold-conns, body-flood, lease-storm)
//!       syscall steps: see `probe_steps/syscalls.rs` (sys, sys-thread, sys-exec, socket, ...)
//!       network bypass steps: see `probe_steps/bypass/` (bp-uring-connect, bp-lsrr, ...)
//! Steps chain: `probe pid connect 127.0.0.1 80 exit 3`.

#[path = "probe_steps/bypass/mod.rs"]
mod bypass_steps;
#[path = "probe_steps/escape.rs"]
mod escape_steps;
#[path = "probe_steps/files.rs"]
mod file_steps;
#[path = "probe_steps/flood.rs"]
mod flood_steps;
#[path = "probe_steps/lease.rs"]
mod lease_steps;
#[path = "probe_steps/lsm.rs"]
mod lsm_steps;
#[path = "probe_steps/syscalls.rs"]
mod syscall_steps;
#[path = "probe_steps/uring.rs"]
mod uring;

use std::{
    io::Write as _,
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

fn emit(op: &str, r: std::io::Result<()>) {
    let line = match r {
        Ok(()) => format!(r#"{{"op":"{op}","ok":true,"errno":0}}"#),
        Err(e) => format!(
            r#"{{"op":"{op}","ok":false,"errno":{},"error":"{}"}}"#,
            e.raw_os_error().unwrap_or(-1),
            e.to_string().replace('"', "'")
        ),
    };
    println!("{line}");
    let _ = std::io::stdout().flush();
}

fn addr(a: &str, p: &str) -> SocketAddr {
    let ip: std::net::IpAddr = a.parse().expect("ip");
    SocketAddr::new(ip, p.parse().expect("port"))
}

fn connect(sa: SocketAddr) -> std::io::Result<()> {
    TcpStream::connect_timeout(&sa, Duration::from_secs(3)).map(drop)
}

/// `unix-loop PATH=allow|deny ... SECS`: connects until SECS pass,
/// counting answers that are not the expected ones.
fn unix_loop(args: &[String], i: usize) -> usize {
    // unix-loop PATH=allow|deny ... SECS
    let mut targets = Vec::new();
    let mut j = i + 1;
    while let Some((t, want)) = args.get(j).and_then(|a| a.rsplit_once('=')) {
        targets.push((t.to_string(), want == "allow"));
        j += 1;
    }
    let secs: f64 = args[j].parse().expect("secs");
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let (mut n, mut wrong) = (0u64, 0u64);
    while Instant::now() < end {
        for (t, allow) in &targets {
            if unix_connect(t).is_ok() != *allow {
                wrong += 1;
            }
            n += 1;
        }
    }
    let ns = start.elapsed().as_nanos() as u64 / n.max(1);
    println!(r#"{{"op":"unix-loop","attempts":{n},"wrong":{wrong},"ns_per_op":{ns}}}"#);
    j + 1
}

/// `loop ADDR:PORT=allow|deny ... SECS`: connects until SECS pass,
/// counting answers that are not the expected ones.
fn connect_loop(args: &[String], i: usize) -> usize {
    // loop 127.0.0.1:80=allow 127.0.0.1:81=deny ... SECS
    let mut targets = Vec::new();
    let mut j = i + 1;
    while let Some((t, want)) = args.get(j).and_then(|a| a.split_once('=')) {
        targets.push((t.parse::<SocketAddr>().expect("addr"), want == "allow"));
        j += 1;
    }
    let secs: f64 = args[j].parse().expect("secs");
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let (mut n, mut wrong) = (0u64, 0u64);
    while Instant::now() < end {
        for (t, allow) in &targets {
            let ok = connect(*t).is_ok();
            n += 1;
            if ok != *allow {
                wrong += 1;
            }
        }
    }
    println!(r#"{{"op":"loop","attempts":{n},"wrong":{wrong}}}"#);
    j + 1
}

/// The AF_UNIX steps (`unix-*`); gives the index of the next step.
fn unix_step(args: &[String], i: usize) -> usize {
    match args[i].as_str() {
        "unix-connect" => {
            emit("unix-connect", unix_connect(&args[i + 1]));
            i + 2
        }
        "unix-dgram-connect" => {
            let r = std::os::unix::net::UnixDatagram::unbound()
                .and_then(|s| s.connect_addr(&unix_addr(&args[i + 1])?));
            emit("unix-dgram-connect", r);
            i + 2
        }
        "unix-connect-padded" => {
            emit("unix-connect-padded", unix_connect_padded(&args[i + 1]));
            i + 2
        }
        "unix-sendto" => {
            let r = std::os::unix::net::UnixDatagram::unbound()
                .and_then(|s| s.send_to_addr(b"corral", &unix_addr(&args[i + 1])?))
                .map(drop);
            emit("unix-sendto", r);
            i + 2
        }
        "unix-loop" => unix_loop(args, i),
        other => panic!("unknown probe step {other}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "pid" => {
                println!(r#"{{"op":"pid","pid":{}}}"#, std::process::id());
                i += 1;
            }
            "connect" => {
                emit("connect", connect(addr(&args[i + 1], &args[i + 2])));
                i += 3;
            }
            "sendto" => {
                let sa = addr(&args[i + 1], &args[i + 2]);
                let bind: SocketAddr = if sa.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
                    .parse()
                    .expect("addr");
                let r = UdpSocket::bind(bind).and_then(|s| s.send_to(b"corral", sa).map(drop));
                emit("sendto", r);
                i += 3;
            }
            "bind-tcp" => {
                emit(
                    "bind",
                    TcpListener::bind(addr(&args[i + 1], &args[i + 2])).map(drop),
                );
                i += 3;
            }
            op if op.starts_with("unix-") => i = unix_step(&args, i),
            "subcgroup" => {
                let own = std::fs::read_to_string("/proc/self/cgroup").expect("cgroup");
                let rel = own.lines().find_map(|l| l.strip_prefix("0::")).expect("v2");
                let root = cgroup2_root();
                let dir = format!("{root}{rel}/{}", args[i + 1]);
                let r = std::fs::create_dir_all(&dir)
                    .and_then(|_| std::fs::write(format!("{dir}/cgroup.procs"), "0"));
                emit("subcgroup", r);
                i += 2;
            }
            "exit" => std::process::exit(args[i + 1].parse().expect("code")),
            "kill" => {
                let sig: i32 = args[i + 1].parse().expect("signal");
                // SAFETY: plain syscall.
                unsafe { libc::kill(std::process::id() as i32, sig) };
                std::thread::sleep(Duration::from_secs(5));
                i += 2;
            }
            "wait-file" => {
                // Blocks until PATH exists (at most 60 s): lets a test act
                // between two steps of a running probe.
                let end = Instant::now() + Duration::from_secs(60);
                while !std::path::Path::new(&args[i + 1]).exists() && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(10));
                }
                i += 2;
            }
            "sleep" => {
                std::thread::sleep(Duration::from_secs_f64(args[i + 1].parse().expect("secs")));
                i += 2;
            }
            "loop" => i = connect_loop(&args, i),
            op if bypass_steps::is_step(op) => i = bypass_steps::step(&args, i),
            op if escape_steps::is_step(op) => i = escape_steps::step(&args, i),
            op if file_steps::is_step(op) => i = file_steps::step(&args, i),
            op if lease_steps::is_step(op) => i = lease_steps::step(&args, i),
            op if flood_steps::is_step(op) => i = flood_steps::step(&args, i),
            op if lsm_steps::is_step(op) => i = lsm_steps::step(&args, i),
            op if syscall_steps::is_step(op) => i = syscall_steps::step(&args, i),
            other => panic!("unknown probe step {other}"),
        }
    }
}

fn unix_addr(path: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt as _;
    match path.strip_prefix('@') {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name),
        None => std::os::unix::net::SocketAddr::from_pathname(path),
    }
}

fn unix_connect(path: &str) -> std::io::Result<()> {
    std::os::unix::net::UnixStream::connect_addr(&unix_addr(path)?).map(drop)
}

/// connect() the way some C programs do: the whole `sockaddr_un` as the
/// length, bytes after the path's NUL not zeroed.
fn unix_connect_padded(path: &str) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // SAFETY: plain syscall; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain data; all zeroes is valid.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
    sa.sun_path.fill(b'X' as libc::c_char);
    let b = path.as_bytes();
    assert!(b.len() < sa.sun_path.len(), "path too long");
    for (d, s) in sa.sun_path.iter_mut().zip(b) {
        *d = *s as libc::c_char;
    }
    sa.sun_path[b.len()] = 0;
    // SAFETY: sa is a valid sockaddr_un for the length given.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_un).cast(),
            size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn cgroup2_root() -> String {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mi.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(str::to_string))?
        })
        .expect("cgroup2 mount")
}
