//! Network bypass review, sockets no program judges (open, documented):
//! sockets made outside the identity or before `corral assign`, and raw,
//! packet, ping and vsock sockets.
//!
//! Each test proves today's behaviour on this kernel. Closed: EPERM
//! inside, success outside, and the event. Open: the documented behaviour
//! (README.md, "What is and is not enforced"), asserted as it is, with a
//! comment saying why it is open. Targets are loopback addresses, or
//! addresses in a network namespace the probe makes for itself
//! (`bp-netns`: it dies with the probe).

use std::{
    io::{BufRead as _, BufReader},
    net::UdpSocket,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::{Command, Stdio},
    time::Duration,
};

use corral_tests::*;
use serde_json::Value;

/// OPEN (documented): cgroup sock_addr programs run for the cgroup the
/// *socket* was created in. A socket made outside the corral cgroups and
/// handed to the agent (SCM_RIGHTS over an allowed unix socket, an
/// inherited descriptor) is never judged: the agent connects and sends
/// anywhere with it. The same for a socket taken from another process with
/// pidfd_getfd(), which needs ptrace rights over it: root has them, an
/// agent started with --user has not (EPERM from the kernel).
#[test]
fn sockets_from_outside_the_identity_are_not_judged() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fds.sock");
    let path_s = path.to_str().expect("utf-8").to_string();
    let port = tcp_listener("127.0.0.1:0");
    let (u, u_n) = counting_sink("127.0.0.1:0");
    let (d, tail) = Daemon::start_tailed(
        "fd",
        &enforce_policy("fd", &format!("allow = []\nunix = [\"{path_s}\"]")),
    );

    let server = hand_out_sockets(&path);
    // A socket the agent can take with pidfd_getfd.
    let held = UdpSocket::bind("127.0.0.1:0").expect("held socket");
    let held_fd = held.as_raw_fd().to_string();
    let me = std::process::id().to_string();

    let (s, su) = (port.to_string(), u.to_string());
    let r = d.probe_as(
        "fd",
        &[
            "pid",
            "bp-recvfd",
            &path_s,
            "t",
            "bp-recvfd",
            &path_s,
            "u",
            "bp-fd-connect",
            "t",
            "127.0.0.1",
            &s,
            "bp-fd-sendto",
            "u",
            "127.0.0.1",
            &su,
            "bp-getfd",
            &me,
            &held_fd,
            "g",
            "bp-fd-sendto",
            "g",
            "127.0.0.1",
            &su,
            "connect",
            "127.0.0.1",
            &s,
            "sendto",
            "127.0.0.1",
            &su,
        ],
    );
    server.join().expect("fd server");
    r.assert_ok("bp-recvfd", 0);
    r.assert_ok("bp-recvfd", 1);
    // OPEN: the passed sockets reach denied destinations, unreported.
    r.assert_ok("bp-fd-connect", 0);
    r.assert_ok("bp-fd-sendto", 0);
    // OPEN for root: pidfd_getfd takes a socket from an outside process.
    r.assert_ok("bp-getfd", 0);
    r.assert_ok("bp-fd-sendto", 1);
    assert_eq!(count_reaches(&u_n, 2), 2, "both datagrams arrived");
    // The agent's own sockets are judged as always.
    r.assert_eperm("connect", 0);
    r.assert_eperm("sendto", 0);
    let ev = net_event(&tail, "127.0.0.1", port);
    assert_net_event(&ev, "fd", r.pid(), "connect", "127.0.0.1", port);
    let denials = tail.drain_kind("net", Duration::from_millis(500));
    assert_eq!(denials.len(), 1, "only the own sendto: {denials:#?}");

    // With --user the agent cannot take another user's sockets.
    let r = d.probe_as_user(
        "fd",
        "nobody",
        &["bp-getfd", &me, &held_fd, "g", "sendto", "127.0.0.1", &su],
    );
    r.assert_eperm("bp-getfd", 0);
    r.assert_eperm("sendto", 0);
    drop(held);
}

/// The test process (outside every corral cgroup) makes the sockets and
/// hands one out per connection on `path`: a stream, then a datagram one.
fn hand_out_sockets(path: &std::path::Path) -> std::thread::JoinHandle<()> {
    let l = std::os::unix::net::UnixListener::bind(path).expect("unix listen");
    let kinds = [libc::SOCK_STREAM, libc::SOCK_DGRAM];
    std::thread::spawn(move || {
        for kind in kinds {
            let (c, _) = l.accept().expect("accept");
            // SAFETY: plain syscall; owned right away.
            let fd = unsafe { libc::socket(libc::AF_INET, kind | libc::SOCK_CLOEXEC, 0) };
            assert!(fd >= 0);
            // SAFETY: a fresh fd.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            send_fd(c.as_raw_fd(), fd.as_raw_fd());
        }
    })
}

fn send_fd(sock: i32, fd: i32) {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = [0u64; 4];
    // SAFETY: all zeroes is a valid msghdr; the control buffer holds one
    // SCM_RIGHTS header with one fd.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut i32, fd);
        assert!(libc::sendmsg(sock, &msg, 0) == 1, "sendmsg SCM_RIGHTS");
    }
}

/// OPEN (documented): `corral assign --pid` moves a running process; the
/// sockets it already had belong to its old cgroup and stay unjudged. New
/// sockets are judged.
#[test]
fn sockets_made_before_assign_are_not_judged() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let (u, u_n) = counting_sink("127.0.0.1:0");
    let (d, tail) = Daemon::start_tailed("late", &enforce_policy("late", "allow = []"));
    let dir = tempfile::tempdir().expect("tempdir");
    let go = dir.path().join("go");
    let (s, su) = (port.to_string(), u.to_string());
    let mut child = Command::new(probe_bin())
        .args([
            "pid",
            "bp-hold",
            "tcp",
            "t",
            "bp-hold",
            "udp",
            "u",
            "wait-file",
            go.to_str().expect("utf-8"),
            "bp-fd-connect",
            "t",
            "127.0.0.1",
            &s,
            "bp-fd-sendto",
            "u",
            "127.0.0.1",
            &su,
            "connect",
            "127.0.0.1",
            &s,
            "bp-cgroup",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("probe");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first: Value =
        serde_json::from_str(&lines.next().expect("pid line").expect("read")).expect("json");
    let pid = first["pid"].as_u64().expect("pid");
    let out = d.cli(&["assign", "--identity", "late", "--pid", &pid.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&go, "").expect("go");
    let steps: Vec<Value> = lines
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect();
    let _ = child.wait();
    let r = ProbeRun {
        code: Some(0),
        steps,
        stderr: String::new(),
    };
    assert!(
        r.step("bp-cgroup", 0)["cgroup"]
            .as_str()
            .unwrap_or("")
            .ends_with("/late"),
        "{r:#?}"
    );
    // OPEN: the held sockets still reach denied destinations.
    r.assert_ok("bp-fd-connect", 0);
    r.assert_ok("bp-fd-sendto", 0);
    assert_eq!(count_reaches(&u_n, 1), 1);
    // Closed: a socket made after the move is judged.
    r.assert_eperm("connect", 0);
    let ev = net_event(&tail, "127.0.0.1", port);
    assert_net_event(&ev, "late", pid, "connect", "127.0.0.1", port);
}

/// In a fresh netns (route_localnet + accept_local on lo, so a packet
/// injected on lo from 127.0.0.1 to 127.0.0.1 is delivered): a sink on the
/// denied 127.0.0.1:7002, then every way to reach it.
const EVERY_WAY_TO_7002: [&str; 34] = [
    "pid",
    "bp-netns",
    "write-file",
    "/proc/sys/net/ipv4/conf/lo/route_localnet",
    "1",
    "write-file",
    "/proc/sys/net/ipv4/conf/lo/accept_local",
    "1",
    "write-file",
    "/proc/sys/net/ipv4/ping_group_range",
    "0 0",
    "bp-udp-sink",
    "127.0.0.1",
    "7002",
    "sendto",
    "127.0.0.1",
    "7002",
    "bp-raw-udp",
    "127.0.0.1",
    "7002",
    "bp-packet-udp",
    "127.0.0.1",
    "7002",
    "bp-udp-count",
    "7002",
    "bp-raw-connect",
    "127.0.0.1",
    "bp-capture",
    "bp-ping",
    "127.0.0.3",
    "bp-ping-connect",
    "127.0.0.4",
    "bp-captured",
    "bp-vsock-socket",
];

/// OPEN (documented) where a policy names them: raw IP sockets (neither
/// connect() nor sendto() is judged) and ICMP echo ("ping") sockets
/// (connect() is judged, `unsupported`; sendto() is not) exist in an
/// identity only with `[network] sockets = ["ping", "raw"]` (without it
/// `socket()` itself is refused: `socket_kinds.rs`). AF_PACKET sockets
/// (CAP_NET_RAW: root only; `--user` agents get EPERM from the kernel) and
/// AF_VSOCK sockets are not inet sockets: no cgroup socket program sees
/// them; `[syscalls]` refuses them (`socket:packet`, `socket:vsock`).
#[test]
fn raw_packet_ping_and_vsock_sockets_are_not_judged() {
    if !is_root() {
        return;
    }
    let (d, tail) = Daemon::start_tailed(
        "raw",
        &enforce_policy(
            "raw",
            "allow = []\nsockets = [\"ping\", \"raw\"]\n\
             bind = [\"udp://127.0.0.1:7002\", \"udp://127.0.0.3:7003\"]",
        ),
    );
    let r = d.probe_as("raw", &EVERY_WAY_TO_7002);
    r.assert_ok("bp-udp-sink", 0);
    r.assert_eperm("sendto", 0);
    r.assert_ok("bp-raw-udp", 0);
    r.assert_ok("bp-packet-udp", 0);
    assert_eq!(
        r.step("bp-udp-count", 0)["count"],
        2,
        "OPEN: the raw and the AF_PACKET datagram arrived: {r:#?}"
    );
    r.assert_ok("bp-raw-connect", 0);
    r.assert_ok("bp-ping", 0);
    r.assert_eperm("bp-ping-connect", 0);
    assert!(
        r.step("bp-captured", 0)["dst"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a == "127.0.0.3"),
        "OPEN: the echo request went out: {r:#?}"
    );
    r.assert_ok("bp-vsock-socket", 0);
    let ev = net_event(&tail, "127.0.0.1", 7002);
    assert_net_event(&ev, "raw", r.pid(), "sendmsg", "127.0.0.1", 7002);
    let ev = net_event(&tail, "127.0.0.4", 0);
    assert_eq!(ev["reason"], "unsupported", "{ev:#}");
    let others = tail.drain_kind("net", Duration::from_millis(500));
    assert!(
        others.is_empty(),
        "raw, packet, ping sends unreported: {others:#?}"
    );

    // --user: the kernel refuses raw and packet sockets (no CAP_NET_RAW).
    let r = d.probe_as_user(
        "raw",
        "nobody",
        &[
            "bp-raw-udp",
            "127.0.0.1",
            "7002",
            "bp-packet-udp",
            "127.0.0.1",
            "7002",
        ],
    );
    r.assert_eperm("bp-raw-udp", 0);
    r.assert_eperm("bp-packet-udp", 0);
}
