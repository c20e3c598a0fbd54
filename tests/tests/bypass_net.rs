//! Adversarial review of the network rules: ways a process inside an
//! enforce-mode identity might reach a destination its policy denies, or
//! leave its identity. Each test proves today's behaviour on this kernel:
//!
//! - closed: EPERM inside, success outside, and the event;
//! - open: the documented behaviour (README.md, "What is and is not
//!   enforced"), asserted as it is, with a comment saying why it is open.
//!
//! Targets are loopback addresses, or addresses inside a network namespace
//! the probe makes for itself (`bp-netns`: it dies with the probe).

use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::{IpAddr, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use corral_tests::*;
use serde_json::Value;

const EACCES: i64 = 13;
const ENETUNREACH: i64 = 101;

fn policy(name: &str, body: &str) -> String {
    format!("[identity]\nname = \"{name}\"\nmode = \"enforce\"\n[network]\n{body}\n")
}

/// A UDP socket on loopback that counts the datagrams it receives; gives
/// its port and the counter.
fn counting_sink(addr: &str) -> (u16, Arc<AtomicU64>) {
    let s = UdpSocket::bind(addr).expect("udp bind");
    let port = s.local_addr().expect("addr").port();
    let n = Arc::new(AtomicU64::new(0));
    let c = n.clone();
    std::thread::spawn(move || {
        let mut b = [0u8; 2048];
        while s.recv(&mut b).is_ok() {
            c.fetch_add(1, Ordering::Relaxed);
        }
    });
    (port, n)
}

/// Waits until `n` reaches `want` (at most 2 s); gives the count.
fn count_reaches(n: &AtomicU64, want: u64) -> u64 {
    let end = Instant::now() + Duration::from_secs(2);
    while n.load(Ordering::Relaxed) < want && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    n.load(Ordering::Relaxed)
}

fn eperm(r: &ProbeRun, op: &str, n: usize) {
    assert_eq!(r.step(op, n)["errno"], EPERM, "{op}#{n}: {r:#?}");
}

fn ok(r: &ProbeRun, op: &str, n: usize) {
    assert_eq!(r.step(op, n)["ok"], true, "{op}#{n}: {r:#?}");
}

/// The next `net` event for this address (compared as an address, not as
/// text) and port.
fn net_event(tail: &Tail, addr: &str, port: u16) -> Value {
    let want: IpAddr = addr.parse().expect("ip literal");
    tail.expect(move |e| {
        e["kind"] == "net"
            && e["net"]["port"] == port
            && e["net"]["addr"]
                .as_str()
                .and_then(|a| a.parse::<IpAddr>().ok())
                == Some(want)
    })
}

/// `assert_net_event`, comparing the address as an address.
fn assert_net(ev: &Value, identity: &str, pid: u64, op: &str, addr: &str, port: u16) {
    let shown: IpAddr = ev["net"]["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address: {ev:#}"));
    assert_eq!(shown, addr.parse::<IpAddr>().expect("ip"), "{ev:#}");
    let mut same = ev.clone();
    same["net"]["addr"] = Value::from(addr);
    assert_net_event(&same, identity, pid, op, addr, port);
}

/// `corral run --user USER` with the probe.
fn probe_as_user(d: &Daemon, identity: &str, user: &str, steps: &[&str]) -> ProbeRun {
    let probe = probe_bin();
    let mut args = vec!["run", "--identity", identity, "--user", user, "--"];
    args.push(probe.to_str().expect("utf-8"));
    args.extend_from_slice(steps);
    ProbeRun::from(d.cli(&args))
}

// --- closed: other ways to connect and send --------------------------------------

/// io_uring operations bypass seccomp, but not cgroup sock_addr programs:
/// the connect or send runs in the submitting task, an io-wq worker or the
/// SQPOLL thread, all threads of the agent's process in its cgroup.
#[test]
fn io_uring_connect_and_sendmsg_are_judged() {
    if !is_root() {
        return;
    }
    let ok_port = tcp_listener("127.0.0.1:0");
    let no_port = tcp_listener("127.0.0.1:0");
    let (uok, uok_n) = counting_sink("127.0.0.1:0");
    let (uno, uno_n) = counting_sink("127.0.0.1:0");
    let p = policy(
        "ring",
        &format!("allow = [\"tcp://127.0.0.1:{ok_port}\", \"udp://127.0.0.1:{uok}\"]"),
    );
    let d = Daemon::start(&[("ring", &p)]);
    let tail = d.tail(Some("ring"));
    let (o, n, uo, un) = (
        ok_port.to_string(),
        no_port.to_string(),
        uok.to_string(),
        uno.to_string(),
    );
    let denied: Vec<&str> = vec![
        "bp-uring-connect",
        "inline",
        "127.0.0.1",
        &n,
        "bp-uring-connect",
        "async",
        "127.0.0.1",
        &n,
        "bp-uring-connect",
        "sqpoll",
        "127.0.0.1",
        &n,
        "bp-uring-socket-connect",
        "127.0.0.1",
        &n,
        "bp-uring-sendmsg",
        "inline",
        "127.0.0.1",
        &un,
        "bp-uring-sendmsg",
        "async",
        "127.0.0.1",
        &un,
        "bp-uring-sendmsg",
        "sqpoll",
        "127.0.0.1",
        &un,
    ];
    let mut steps = vec!["pid"];
    steps.extend_from_slice(&denied);
    steps.extend_from_slice(&[
        "bp-uring-connect",
        "sqpoll",
        "127.0.0.1",
        &o,
        "bp-uring-sendmsg",
        "async",
        "127.0.0.1",
        &uo,
    ]);
    let r = d.probe_as("ring", &steps);
    for i in 0..3 {
        eperm(&r, "bp-uring-connect", i);
        eperm(&r, "bp-uring-sendmsg", i);
    }
    eperm(&r, "bp-uring-socket-connect", 0);
    ok(&r, "bp-uring-connect", 3);
    ok(&r, "bp-uring-sendmsg", 3);
    assert_eq!(count_reaches(&uok_n, 1), 1);
    assert_eq!(
        uno_n.load(Ordering::Relaxed),
        0,
        "no denied datagram arrives"
    );

    // Every denial is the agent's, whichever thread of it made the call
    // (the submitter, an iou-wrk worker or the iou-sqp poller).
    let pid = r.pid();
    let mut comms = Vec::new();
    for _ in 0..4 {
        let ev = net_event(&tail, "127.0.0.1", no_port);
        assert_eq!(ev["identity"], "ring", "{ev:#}");
        assert_eq!(ev["tgid"].as_u64(), Some(pid), "{ev:#}");
        assert_eq!(ev["net"]["op"], "connect", "{ev:#}");
        assert_eq!(ev["verdict"], "deny", "{ev:#}");
        comms.push(ev["comm"].as_str().unwrap_or("").to_string());
    }
    for _ in 0..3 {
        let ev = net_event(&tail, "127.0.0.1", uno);
        assert_eq!(ev["net"]["op"], "sendmsg", "{ev:#}");
        assert_eq!(ev["tgid"].as_u64(), Some(pid), "{ev:#}");
    }
    eprintln!("io_uring denials came from threads {comms:?}");

    let out = probe_outside(&denied);
    for i in 0..3 {
        ok(&out, "bp-uring-connect", i);
        ok(&out, "bp-uring-sendmsg", i);
    }
    ok(&out, "bp-uring-socket-connect", 0);
    assert_eq!(count_reaches(&uno_n, 3), 3, "outside, the sends arrive");
}

/// TCP Fast Open (sendto with MSG_FASTOPEN) connects through the same
/// pre-connect hook as connect().
#[test]
fn tcp_fast_open_is_judged() {
    if !is_root() {
        return;
    }
    let ok_port = tcp_listener("127.0.0.1:0");
    let no_port = tcp_listener("127.0.0.1:0");
    let d = Daemon::start(&[(
        "tfo",
        &policy("tfo", &format!("allow = [\"tcp://127.0.0.1:{ok_port}\"]")),
    )]);
    let tail = d.tail(Some("tfo"));
    let (o, n) = (ok_port.to_string(), no_port.to_string());
    let r = d.probe_as(
        "tfo",
        &["pid", "bp-tfo", "127.0.0.1", &o, "bp-tfo", "127.0.0.1", &n],
    );
    ok(&r, "bp-tfo", 0);
    eperm(&r, "bp-tfo", 1);
    let ev = net_event(&tail, "127.0.0.1", no_port);
    assert_net_event(&ev, "tfo", r.pid(), "connect", "127.0.0.1", no_port);
    ok(&probe_outside(&["bp-tfo", "127.0.0.1", &n]), "bp-tfo", 0);
}

/// sendmmsg() judges each datagram: the allowed one goes, the denied one
/// does not (the call reports how many went; EPERM when the first is
/// refused).
#[test]
fn sendmmsg_judges_each_datagram() {
    if !is_root() {
        return;
    }
    let (a, a_n) = counting_sink("127.0.0.1:0");
    let (b, b_n) = counting_sink("127.0.0.1:0");
    let d = Daemon::start(&[(
        "mm",
        &policy("mm", &format!("allow = [\"udp://127.0.0.1:{a}\"]")),
    )]);
    let tail = d.tail(Some("mm"));
    let (sa, sb) = (a.to_string(), b.to_string());
    let r = d.probe_as(
        "mm",
        &[
            "pid",
            "bp-sendmmsg",
            "127.0.0.1",
            &sa,
            "127.0.0.1",
            &sb,
            "bp-sendmmsg",
            "127.0.0.1",
            &sb,
            "127.0.0.1",
            &sa,
        ],
    );
    ok(&r, "bp-sendmmsg", 0);
    assert_eq!(r.step("bp-sendmmsg", 0)["sent"], 1, "{r:#?}");
    eperm(&r, "bp-sendmmsg", 1);
    assert_eq!(count_reaches(&a_n, 1), 1);
    assert_eq!(b_n.load(Ordering::Relaxed), 0);
    let ev = net_event(&tail, "127.0.0.1", b);
    assert_net_event(&ev, "mm", r.pid(), "sendmsg", "127.0.0.1", b);
    let out = probe_outside(&["bp-sendmmsg", "127.0.0.1", &sa, "127.0.0.1", &sb]);
    assert_eq!(out.step("bp-sendmmsg", 0)["sent"], 2, "{out:#?}");
    assert_eq!(count_reaches(&b_n, 1), 1);
}

/// A UDP socket connected to an allowed address may send() there, but a
/// sendto() naming another address is judged again.
#[test]
fn connected_udp_socket_cannot_send_elsewhere() {
    if !is_root() {
        return;
    }
    let (a, _) = counting_sink("127.0.0.1:0");
    let (b, b_n) = counting_sink("127.0.0.1:0");
    let d = Daemon::start(&[(
        "cu",
        &policy("cu", &format!("allow = [\"udp://127.0.0.1:{a}\"]")),
    )]);
    let tail = d.tail(Some("cu"));
    let (sa, sb) = (a.to_string(), b.to_string());
    let steps = ["bp-udp-connect-sendto", "127.0.0.1", &sa, "127.0.0.1", &sb];
    let mut with_pid = vec!["pid"];
    with_pid.extend_from_slice(&steps);
    let r = d.probe_as("cu", &with_pid);
    ok(&r, "bp-udp-connect", 0);
    ok(&r, "bp-udp-send", 0);
    eperm(&r, "bp-udp-sendto-other", 0);
    assert_eq!(b_n.load(Ordering::Relaxed), 0);
    let ev = net_event(&tail, "127.0.0.1", b);
    assert_net_event(&ev, "cu", r.pid(), "sendmsg", "127.0.0.1", b);
    let out = probe_outside(&steps);
    ok(&out, "bp-udp-sendto-other", 0);
    assert_eq!(count_reaches(&b_n, 1), 1);
}

/// IPv6 spellings of IPv4 addresses. Only IPv4-mapped (::ffff:a.b.c.d)
/// reaches an IPv4 peer in this kernel, and it is judged by the IPv4 rules
/// (also in `network.rs`). IPv4-compatible (::a.b.c.d), IPv4-translated
/// (::ffff:0:a.b.c.d) and NAT64 (64:ff9b::a.b.c.d) addresses are IPv6
/// destinations, judged by IPv6 rules; without a tunnel or translator they
/// reach nothing (outside: ENETUNREACH in a fresh netns). An IPv6 UDP
/// socket given an AF_INET address is judged by the IPv4 rules. A scope id
/// is not part of a rule: fe80::1%lo is judged as fe80::1.
#[test]
fn ipv6_spellings_and_scope_ids() {
    if !is_root() {
        return;
    }
    let p = policy(
        "six",
        "allow = [\"tcp://127.0.0.1:7000\", \"tcp://[fe80::]/10:7002\"]\n\
         bind = [\"tcp://127.0.0.1:7000\", \"tcp://[::]:7001-7002\"]",
    );
    let d = Daemon::start(&[("six", &p)]);
    let tail = d.tail(Some("six"));
    let steps = [
        "bp-netns",
        "bp-ip",
        "addr",
        "add",
        "fe80::1/64",
        "dev",
        "lo",
        "nodad",
        "--",
        // The prefix route of a new address comes a moment later.
        "sleep",
        "0.5",
        "bp-listen",
        "127.0.0.1",
        "7000",
        "bp-listen",
        "::",
        "7001",
        "bp-listen",
        "::",
        "7002",
        "connect",
        "::ffff:127.0.0.1",
        "7000",
        "connect",
        "::127.0.0.1",
        "7000",
        "connect",
        "::ffff:0:127.0.0.1",
        "7000",
        "connect",
        "64:ff9b::127.0.0.1",
        "7000",
        "bp-v6sock-v4addr",
        "127.0.0.2",
        "7000",
        "bp-connect6",
        "fe80::1",
        "lo",
        "7001",
        "bp-connect6",
        "fe80::1",
        "lo",
        "7002",
    ];
    let mut with_pid = vec!["pid"];
    with_pid.extend_from_slice(&steps);
    let r = d.probe_as("six", &with_pid);
    ok(&r, "bp-netns", 0);
    ok(&r, "bp-ip", 0);
    for i in 0..3 {
        ok(&r, "bp-listen", i);
    }
    ok(&r, "connect", 0);
    for i in 1..4 {
        eperm(&r, "connect", i);
    }
    eperm(&r, "bp-v6sock-v4addr", 0);
    eperm(&r, "bp-connect6", 0);
    ok(&r, "bp-connect6", 1);
    let pid = r.pid();
    for a in ["::127.0.0.1", "::ffff:0:127.0.0.1", "64:ff9b::7f00:1"] {
        let ev = net_event(&tail, a, 7000);
        assert_net(&ev, "six", pid, "connect", a, 7000);
        assert_eq!(ev["net"]["family"], "inet6", "{ev:#}");
        assert_eq!(ev["reason"], "no-rule", "{ev:#}");
    }
    let ev = net_event(&tail, "127.0.0.2", 7000);
    assert_net_event(&ev, "six", pid, "sendmsg", "127.0.0.2", 7000);
    assert_eq!(ev["net"]["family"], "inet", "{ev:#}");
    let ev = net_event(&tail, "fe80::1", 7001);
    assert_net_event(&ev, "six", pid, "connect", "fe80::1", 7001);

    let out = probe_outside(&steps);
    ok(&out, "connect", 0);
    for i in 1..4 {
        assert_eq!(
            out.step("connect", i)["errno"],
            ENETUNREACH,
            "not an alias of 127.0.0.1: {out:#?}"
        );
    }
    ok(&out, "bp-v6sock-v4addr", 0);
    ok(&out, "bp-connect6", 0);
}

/// The unspecified address as a destination means this host: connect() or
/// sendto() to 0.0.0.0 or :: reaches loopback (or the socket's bound
/// address). This was OPEN: judged as written, `allow tcp://*:P` let
/// 0.0.0.0:P reach a loopback service that `deny tcp://127.0.0.0/8:*` was
/// meant to protect. FIXED in agent-ebpf/src/net.rs: the programs judge
/// the unspecified address as loopback and rewrite the destination to it,
/// so the bound-address variant is judged (and reached) as loopback too.
#[test]
fn unspecified_destination_is_judged_as_loopback() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let (u, u_n) = counting_sink("127.0.0.1:0");
    let p = policy(
        "unspec",
        &format!(
            "allow = [\"tcp://*:{port}\", \"udp://*:{u}\"]\n\
             deny = [\"tcp://127.0.0.0/8:*\", \"udp://127.0.0.0/8:*\", \"tcp://[::1]:*\", \"udp://[::1]:*\"]"
        ),
    );
    let lo = policy(
        "lo-ok",
        &format!("allow = [\"tcp://127.0.0.1:{port}\", \"udp://127.0.0.1:{u}\"]"),
    );
    let d = Daemon::start(&[("unspec", &p), ("lo-ok", &lo)]);
    let tail = d.tail(Some("unspec"));
    let (s, su) = (port.to_string(), u.to_string());
    let steps = [
        "connect",
        "0.0.0.0",
        &s,
        "connect",
        "::",
        &s,
        "connect",
        "::ffff:0.0.0.0",
        &s,
        "sendto",
        "0.0.0.0",
        &su,
        "sendto",
        "::",
        &su,
        "bp-bound-connect",
        "127.0.0.5",
        "0.0.0.0",
        &s,
    ];
    let mut with_pid = vec!["pid"];
    with_pid.extend_from_slice(&steps);
    let r = d.probe_as("unspec", &with_pid);
    for i in 0..3 {
        eperm(&r, "connect", i);
    }
    eperm(&r, "sendto", 0);
    eperm(&r, "sendto", 1);
    eperm(&r, "bp-bound-connect", 0);
    let pid = r.pid();
    let ev = net_event(&tail, "127.0.0.1", port);
    assert_net_event(&ev, "unspec", pid, "connect", "127.0.0.1", port);
    assert_eq!(ev["reason"], "deny-rule", "{ev:#}");
    assert!(
        ev["rule"].as_str().unwrap_or("").contains("127.0.0.0/8"),
        "{ev:#}"
    );
    let ev = net_event(&tail, "::1", port);
    assert_net_event(&ev, "unspec", pid, "connect", "::1", port);
    let ev = net_event(&tail, "::ffff:127.0.0.1", port);
    assert_net_event(&ev, "unspec", pid, "connect", "::ffff:127.0.0.1", port);
    let ev = net_event(&tail, "127.0.0.1", u);
    assert_net_event(&ev, "unspec", pid, "sendmsg", "127.0.0.1", u);
    assert_eq!(u_n.load(Ordering::Relaxed), 0);

    // Outside, 0.0.0.0 reaches the loopback listener: the destination is
    // real, not an error.
    let out = probe_outside(&["connect", "0.0.0.0", &s, "sendto", "0.0.0.0", &su]);
    ok(&out, "connect", 0);
    ok(&out, "sendto", 0);
    assert_eq!(count_reaches(&u_n, 1), 1);

    // Where loopback is allowed, 0.0.0.0 works; a socket bound to
    // 127.0.0.5 reaches the listener on 127.0.0.1 (the rewrite), where the
    // kernel alone would have gone to 127.0.0.5 (refused: nothing listens).
    let r = d.probe_as(
        "lo-ok",
        &[
            "connect",
            "0.0.0.0",
            &s,
            "sendto",
            "0.0.0.0",
            &su,
            "bp-bound-connect",
            "127.0.0.5",
            "0.0.0.0",
            &s,
        ],
    );
    ok(&r, "connect", 0);
    ok(&r, "sendto", 0);
    ok(&r, "bp-bound-connect", 0);
    let out = probe_outside(&["bp-bound-connect", "127.0.0.5", "0.0.0.0", &s]);
    assert_eq!(
        out.step("bp-bound-connect", 0)["errno"],
        111,
        "untagged: the kernel's own meaning (bound address) {out:#?}"
    );
}

/// A new network namespace (and cgroup namespace) changes nothing: cgroup
/// programs follow the cgroup, not the namespace.
#[test]
fn new_network_and_cgroup_namespaces_are_still_judged() {
    if !is_root() {
        return;
    }
    let d = Daemon::start(&[(
        "ns",
        &policy("ns", "allow = []\nbind = [\"tcp://127.0.0.1:7000\"]"),
    )]);
    let tail = d.tail(Some("ns"));
    let steps = [
        "bp-netns",
        "bp-cgroupns",
        "bp-listen",
        "127.0.0.1",
        "7000",
        "connect",
        "127.0.0.1",
        "7000",
        "bp-cgroup",
    ];
    let mut with_pid = vec!["pid"];
    with_pid.extend_from_slice(&steps);
    let r = d.probe_as("ns", &with_pid);
    ok(&r, "bp-netns", 0);
    ok(&r, "bp-cgroupns", 0);
    ok(&r, "bp-listen", 0);
    eperm(&r, "connect", 0);
    // The cgroup namespace hides the path from the process, not from the
    // kernel.
    assert_eq!(r.step("bp-cgroup", 0)["cgroup"], "/", "{r:#?}");
    let ev = net_event(&tail, "127.0.0.1", 7000);
    assert_net_event(&ev, "ns", r.pid(), "connect", "127.0.0.1", 7000);
    assert!(
        ev["cgroup"].as_str().unwrap_or("").ends_with("/ns"),
        "{ev:#}"
    );
    ok(&probe_outside(&steps), "connect", 0);
}

/// Names are resolved by the agent and judged by address: a name is no way
/// around an address rule.
#[test]
fn host_names_are_judged_by_address() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let d = Daemon::start(&[("dns", &policy("dns", "allow = []"))]);
    let tail = d.tail(Some("dns"));
    let s = port.to_string();
    let r = d.probe_as("dns", &["pid", "bp-connect-host", "localhost", &s]);
    let res = r.step("bp-connect-host", 0)["results"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!res.is_empty(), "{r:#?}");
    for x in &res {
        assert_eq!(x["errno"], EPERM, "{r:#?}");
    }
    net_event(&tail, "127.0.0.1", port);
    let out = probe_outside(&["bp-connect-host", "localhost", &s]);
    let res = out.step("bp-connect-host", 0)["results"].clone();
    assert!(
        res.as_array()
            .into_iter()
            .flatten()
            .any(|x| x["addr"] == "127.0.0.1" && x["errno"] == 0),
        "{out:#?}"
    );
}

/// Other IP protocols on stream and datagram sockets: MPTCP is judged as
/// TCP; UDP-Lite is no `udp` rule's class and is refused (`unsupported`)
/// even where a `udp` rule would allow the address and port.
#[test]
fn mptcp_and_udplite_are_judged() {
    if !is_root() {
        return;
    }
    let ok_port = tcp_listener("127.0.0.1:0");
    let no_port = tcp_listener("127.0.0.1:0");
    let (u, u_n) = counting_sink("127.0.0.1:0");
    let d = Daemon::start(&[(
        "proto",
        &policy(
            "proto",
            &format!("allow = [\"tcp://127.0.0.1:{ok_port}\", \"udp://127.0.0.1:{u}\"]"),
        ),
    )]);
    let tail = d.tail(Some("proto"));
    let (o, n, su) = (ok_port.to_string(), no_port.to_string(), u.to_string());
    let r = d.probe_as(
        "proto",
        &[
            "pid",
            "bp-connect-proto",
            "262",
            "127.0.0.1",
            &o,
            "bp-connect-proto",
            "262",
            "127.0.0.1",
            &n,
            "bp-sendto-proto",
            "136",
            "127.0.0.1",
            &su,
        ],
    );
    ok(&r, "bp-connect-proto", 0);
    eperm(&r, "bp-connect-proto", 1);
    eperm(&r, "bp-sendto-proto", 0);
    let ev = net_event(&tail, "127.0.0.1", no_port);
    assert_net_event(&ev, "proto", r.pid(), "connect", "127.0.0.1", no_port);
    let ev = net_event(&tail, "127.0.0.1", u);
    assert_eq!(ev["reason"], "unsupported", "{ev:#}");
    let out = probe_outside(&[
        "bp-connect-proto",
        "262",
        "127.0.0.1",
        &n,
        "bp-sendto-proto",
        "136",
        "127.0.0.1",
        &su,
    ]);
    ok(&out, "bp-connect-proto", 0);
    // (A UDP socket does not receive UDP-Lite: the send is the proof.)
    ok(&out, "bp-sendto-proto", 0);
    assert_eq!(u_n.load(Ordering::Relaxed), 0);
}

/// Sub-cgroups deeper than the 32-level walk: the walk goes down from the
/// root, so the identity's cgroup (near the top) is always found.
#[test]
fn deep_sub_cgroups_are_still_the_agent() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let d = Daemon::start(&[("deep", &policy("deep", "allow = []"))]);
    let tail = d.tail(Some("deep"));
    let nested = (0..40)
        .map(|i| format!("d{i}"))
        .collect::<Vec<_>>()
        .join("/");
    let s = port.to_string();
    let r = d.probe_as(
        "deep",
        &["pid", "subcgroup", &nested, "connect", "127.0.0.1", &s],
    );
    ok(&r, "subcgroup", 0);
    eperm(&r, "connect", 0);
    let ev = net_event(&tail, "127.0.0.1", port);
    assert!(
        ev["cgroup"].as_str().unwrap_or("").ends_with("/d39"),
        "{ev:#}"
    );
}

// --- open: documented gaps ---------------------------------------------------------

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
    let d = Daemon::start(&[(
        "fd",
        &policy("fd", &format!("allow = []\nunix = [\"{path_s}\"]")),
    )]);
    let tail = d.tail(Some("fd"));

    // The test process (outside every corral cgroup) makes the sockets and
    // hands one out per connection.
    let l = std::os::unix::net::UnixListener::bind(&path).expect("unix listen");
    let kinds = [libc::SOCK_STREAM, libc::SOCK_DGRAM];
    let server = std::thread::spawn(move || {
        for kind in kinds {
            let (c, _) = l.accept().expect("accept");
            // SAFETY: plain syscall; owned right away.
            let fd = unsafe { libc::socket(libc::AF_INET, kind | libc::SOCK_CLOEXEC, 0) };
            assert!(fd >= 0);
            // SAFETY: a fresh fd.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            send_fd(c.as_raw_fd(), fd.as_raw_fd());
        }
    });
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
    ok(&r, "bp-recvfd", 0);
    ok(&r, "bp-recvfd", 1);
    // OPEN: the passed sockets reach denied destinations, unreported.
    ok(&r, "bp-fd-connect", 0);
    ok(&r, "bp-fd-sendto", 0);
    // OPEN for root: pidfd_getfd takes a socket from an outside process.
    ok(&r, "bp-getfd", 0);
    ok(&r, "bp-fd-sendto", 1);
    assert_eq!(count_reaches(&u_n, 2), 2, "both datagrams arrived");
    // The agent's own sockets are judged as always.
    eperm(&r, "connect", 0);
    eperm(&r, "sendto", 0);
    let ev = net_event(&tail, "127.0.0.1", port);
    assert_net_event(&ev, "fd", r.pid(), "connect", "127.0.0.1", port);
    let denials: Vec<Value> = tail
        .drain_for(Duration::from_millis(500))
        .into_iter()
        .filter(|e| e["kind"] == "net")
        .collect();
    assert_eq!(denials.len(), 1, "only the own sendto: {denials:#?}");

    // With --user the agent cannot take another user's sockets.
    let r = probe_as_user(
        &d,
        "fd",
        "nobody",
        &["bp-getfd", &me, &held_fd, "g", "sendto", "127.0.0.1", &su],
    );
    eperm(&r, "bp-getfd", 0);
    eperm(&r, "sendto", 0);
    drop(held);
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
    let d = Daemon::start(&[("late", &policy("late", "allow = []"))]);
    let tail = d.tail(Some("late"));
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
    ok(&r, "bp-fd-connect", 0);
    ok(&r, "bp-fd-sendto", 0);
    assert_eq!(count_reaches(&u_n, 1), 1);
    // Closed: a socket made after the move is judged.
    eperm(&r, "connect", 0);
    let ev = net_event(&tail, "127.0.0.1", port);
    assert_net_event(&ev, "late", pid, "connect", "127.0.0.1", port);
}

/// OPEN for root (documented; `corral run` warns): a root agent moves
/// itself out of its identity by writing its pid into another cgroup's
/// cgroup.procs, or starts a child elsewhere with clone3(CLONE_INTO_CGROUP),
/// and is then untagged: nothing is judged. Landlock `[files]` rules stop
/// the cgroup.procs write but not clone3 (it needs only an O_PATH fd of the
/// target directory, and Landlock does not mediate the attach). CLOSED with
/// `--user`: both need write access to the target cgroup.procs (EACCES).
#[test]
fn root_agents_can_leave_their_identity() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let probe = std::fs::canonicalize(probe_bin()).expect("probe");
    let files = format!(
        "[identity]\nname = \"boxed\"\n[network]\nallow = []\n[files]\n\
         read = [\"/usr/\", \"/etc/ld.so.cache\", \"{}\", \"/proc/\"]\nwrite = [\"/dev/null\"]\n",
        probe.display()
    );
    let d = Daemon::start(&[("rooty", &policy("rooty", "allow = []")), ("boxed", &files)]);
    let tail = d.tail(None);
    let s = port.to_string();
    let steps = [
        "pid",
        "connect",
        "127.0.0.1",
        &s,
        "bp-clone-into-parent",
        "127.0.0.1",
        &s,
        "bp-escape",
        "bp-cgroup",
        "connect",
        "127.0.0.1",
        &s,
    ];

    // Root, no file confinement: both ways out work.
    let r = d.probe_as("rooty", &steps);
    assert!(
        r.stderr.contains("WARNING") && r.stderr.contains("runs as ROOT"),
        "corral run must warn: {}",
        r.stderr
    );
    assert!(r.stderr.contains("no file confinement"), "{}", r.stderr);
    eperm(&r, "connect", 0);
    let clone = r.step("bp-clone-into-parent", 0);
    assert_eq!(clone["ok"], true, "{r:#?}");
    assert_eq!(clone["child_errno"], 0, "the child connected: {r:#?}");
    ok(&r, "bp-escape", 0);
    assert!(
        !r.step("bp-cgroup", 0)["cgroup"]
            .as_str()
            .unwrap_or("")
            .contains(&d.dirs.cgroup_parent),
        "{r:#?}"
    );
    ok(&r, "connect", 1);
    let ev = net_event(&tail, "127.0.0.1", port);
    assert_net_event(&ev, "rooty", r.pid(), "connect", "127.0.0.1", port);

    // Root under Landlock: the write is refused, clone3 still leaves.
    match d.status()["daemon"]["mechanisms"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == "files")
        .and_then(|m| m["state"].as_str().map(str::to_string))
    {
        Some(state) if state == "fallback" => {
            let r = d.probe_as("boxed", &steps);
            assert!(r.stderr.contains("Landlock"), "{}", r.stderr);
            eperm(&r, "connect", 0);
            assert_eq!(r.step("bp-escape", 0)["errno"], EACCES, "{r:#?}");
            assert_eq!(
                r.step("bp-clone-into-parent", 0)["child_errno"],
                0,
                "OPEN: clone3(CLONE_INTO_CGROUP) passes Landlock: {r:#?}"
            );
            eperm(&r, "connect", 1);
        }
        other => eprintln!("skipping the Landlock part: files mechanism is {other:?}"),
    }

    // --user: no warning, no way out.
    let r = probe_as_user(&d, "rooty", "nobody", &steps);
    assert!(!r.stderr.contains("WARNING"), "{}", r.stderr);
    eperm(&r, "connect", 0);
    assert_eq!(r.step("bp-clone-into-parent", 0)["errno"], EACCES, "{r:#?}");
    assert_eq!(r.step("bp-escape", 0)["errno"], EACCES, "{r:#?}");
    assert!(
        r.step("bp-cgroup", 0)["cgroup"]
            .as_str()
            .unwrap_or("")
            .ends_with("/rooty"),
        "{r:#?}"
    );
    eperm(&r, "connect", 1);
}

/// OPEN (documented): sockets no sock_addr hook sees. Raw IP sockets
/// (neither connect() nor sendto() is judged) and AF_PACKET sockets send
/// whatever packet they build, to any address: both need CAP_NET_RAW, so
/// root only (`--user` agents get EPERM from the kernel). ICMP echo
/// ("ping") sockets: connect() is judged (`unsupported`), sendto() is not;
/// they need the agent's group in net.ipv4.ping_group_range (no one here;
/// everyone on many systemd distributions). AF_VSOCK sockets are not judged
/// either. The seccomp socket-family filter (`[syscalls]`, in progress) is
/// what can refuse these sockets.
#[test]
fn raw_packet_ping_and_vsock_sockets_are_not_judged() {
    if !is_root() {
        return;
    }
    let d = Daemon::start(&[(
        "raw",
        &policy(
            "raw",
            "allow = []\nbind = [\"udp://127.0.0.1:7002\", \"udp://127.0.0.3:7003\"]",
        ),
    )]);
    let tail = d.tail(Some("raw"));
    // In a fresh netns (route_localnet + accept_local on lo, so a packet
    // injected on lo from 127.0.0.1 to 127.0.0.1 is delivered): a sink on
    // the denied 127.0.0.1:7002, then every way to reach it.
    let r = d.probe_as(
        "raw",
        &[
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
        ],
    );
    ok(&r, "bp-udp-sink", 0);
    eperm(&r, "sendto", 0);
    ok(&r, "bp-raw-udp", 0);
    ok(&r, "bp-packet-udp", 0);
    assert_eq!(
        r.step("bp-udp-count", 0)["count"],
        2,
        "OPEN: the raw and the AF_PACKET datagram arrived: {r:#?}"
    );
    ok(&r, "bp-raw-connect", 0);
    ok(&r, "bp-ping", 0);
    eperm(&r, "bp-ping-connect", 0);
    assert!(
        r.step("bp-captured", 0)["dst"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a == "127.0.0.3"),
        "OPEN: the echo request went out: {r:#?}"
    );
    ok(&r, "bp-vsock-socket", 0);
    let ev = net_event(&tail, "127.0.0.1", 7002);
    assert_net_event(&ev, "raw", r.pid(), "sendmsg", "127.0.0.1", 7002);
    let ev = net_event(&tail, "127.0.0.4", 0);
    assert_eq!(ev["reason"], "unsupported", "{ev:#}");
    let others: Vec<Value> = tail
        .drain_for(Duration::from_millis(500))
        .into_iter()
        .filter(|e| e["kind"] == "net")
        .collect();
    assert!(
        others.is_empty(),
        "raw, packet, ping sends unreported: {others:#?}"
    );

    // --user: the kernel refuses raw and packet sockets (no CAP_NET_RAW).
    let r = probe_as_user(
        &d,
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
    eperm(&r, "bp-raw-udp", 0);
    eperm(&r, "bp-packet-udp", 0);
}

/// OPEN (documented): source routing. An IPv6 segment routing header
/// (setsockopt IPV6_RTHDR, type 4), which needs NO privilege, and IPv4 loose
/// source route options (setsockopt IP_OPTIONS, or per message with an
/// IP_RETOPTS control message), which need CAP_NET_RAW on this kernel, make
/// the kernel send the packet to the first hop of the route: an address no
/// program judged. The sendmsg hook sees only the final destination; the
/// options are not in its context.
#[test]
fn source_routes_send_to_unjudged_first_hops() {
    if !is_root() {
        return;
    }
    let d = Daemon::start(&[(
        "route",
        &policy(
            "route",
            "allow = [\"udp://127.0.0.1:7000\", \"udp://[fd42::1]:7000\", \"udp://[::1]:7000\"]",
        ),
    )]);
    let tail = d.tail(Some("route"));
    // Root, in a fresh netns: the probe captures its own packets.
    let r = d.probe_as(
        "route",
        &[
            "pid",
            "bp-netns",
            "bp-ip",
            "addr",
            "add",
            "fd42::1/128",
            "dev",
            "lo",
            "nodad",
            "--",
            "bp-ip",
            "addr",
            "add",
            "fd42::2/128",
            "dev",
            "lo",
            "nodad",
            "--",
            "bp-capture",
            "sendto",
            "127.0.0.2",
            "7000",
            "sendto",
            "fd42::2",
            "7000",
            "bp-lsrr",
            "127.0.0.2",
            "127.0.0.1",
            "7000",
            "bp-retopts",
            "127.0.0.3",
            "127.0.0.1",
            "7000",
            "bp-srh",
            "fd42::2",
            "fd42::1",
            "7000",
            "bp-captured",
        ],
    );
    eperm(&r, "sendto", 0);
    eperm(&r, "sendto", 1);
    ok(&r, "bp-lsrr", 0);
    ok(&r, "bp-retopts", 0);
    ok(&r, "bp-srh", 0);
    let dst: Vec<String> = r.step("bp-captured", 0)["dst"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    for hop in ["127.0.0.2", "127.0.0.3", "fd42::2"] {
        assert!(
            dst.iter().any(|d| d == hop),
            "OPEN: a packet went to the denied first hop {hop}: {dst:?}"
        );
    }
    net_event(&tail, "127.0.0.2", 7000);
    net_event(&tail, "fd42::2", 7000);

    // Unprivileged: the routing header is accepted from nobody (here with
    // a harmless route, ::1 to ::1); IPv4 source routes are refused
    // without CAP_NET_RAW.
    let r = probe_as_user(
        &d,
        "route",
        "nobody",
        &[
            "bp-srh",
            "::1",
            "::1",
            "7000",
            "bp-lsrr",
            "127.0.0.2",
            "127.0.0.1",
            "7000",
        ],
    );
    ok(&r, "bp-srh", 0);
    eperm(&r, "bp-lsrr", 0);
}

/// By design (documented): binding port 0 is always allowed, and so is
/// listen() without bind (the kernel picks the port without a bind call).
/// An agent can therefore serve on an ephemeral port on every address, and
/// nothing judges who connects in: a peer at a denied address that
/// connects to it gets a full-duplex connection, so the agent can send it
/// data without ever calling connect().
#[test]
fn ephemeral_listeners_accept_denied_peers() {
    if !is_root() {
        return;
    }
    let d = Daemon::start(&[("srv", &policy("srv", "allow = []\nbind = []"))]);
    let tail = d.tail(Some("srv"));
    let mut p = d.spawn_probe_as(
        "srv",
        &[
            "bind-tcp",
            "127.0.0.1",
            "0",
            "bp-listen-auto",
            "bp-listen-accept",
            "0.0.0.0",
            "connect",
            "127.0.0.2",
            "9",
        ],
    );
    let port = p.next_step("bp-listening")["port"].as_u64().expect("port") as u16;
    // A peer at 127.0.0.2, which the agent may not connect to.
    let peer = {
        let sin = |ip: [u8; 4], port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(ip),
            },
            sin_zero: [0; 8],
        };
        let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: plain syscall; owned right away.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0);
        // SAFETY: a fresh fd.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let (from, to) = (sin([127, 0, 0, 2], 0), sin([127, 0, 0, 1], port));
        // SAFETY: valid sockaddr_in values of that length.
        unsafe {
            assert_eq!(
                libc::bind(
                    fd.as_raw_fd(),
                    (&from as *const libc::sockaddr_in).cast(),
                    len
                ),
                0
            );
            assert_eq!(
                libc::connect(
                    fd.as_raw_fd(),
                    (&to as *const libc::sockaddr_in).cast(),
                    len
                ),
                0
            );
        }
        let mut s = TcpStream::from(fd);
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got
    };
    assert_eq!(
        peer, b"corral-bp-inbound",
        "the agent sent data to a denied address"
    );
    let accepted = p.next_step("bp-accepted");
    assert!(
        accepted["peer"]
            .as_str()
            .unwrap_or("")
            .starts_with("127.0.0.2:"),
        "{accepted:#}"
    );
    let r = p.finish();
    ok(&r, "bind", 0);
    ok(&r, "bp-listen-auto", 0);
    ok(&r, "bp-listen-accept", 0);
    // Its own connect to the same address is refused, as always.
    eperm(&r, "connect", 0);
    net_event(&tail, "127.0.0.2", 9);
}

/// OPEN where the host allows it (documented): MPTCP joins. An MPTCP
/// connection to an allowed address is judged, but the extra subflows the
/// kernel's path manager opens later are connected by a kernel worker, an
/// untagged task: never judged. With `add_addr_accepted` above 0 (the
/// kernel default is 0; root sets it per network namespace, and some
/// network managers raise it), an allowed MPTCP peer can announce any
/// address and the agent's kernel joins it. Shown in a fresh netns.
#[test]
fn mptcp_subflows_to_announced_addresses_are_not_judged() {
    if !is_root() {
        return;
    }
    let d = Daemon::start(&[(
        "mp",
        &policy(
            "mp",
            "allow = [\"tcp://10.55.0.1:7000-7001\"]\nbind = [\"tcp://0.0.0.0:7000-7001\"]",
        ),
    )]);
    let tail = d.tail(Some("mp"));
    let r = d.probe_as(
        "mp",
        &[
            "pid",
            "bp-netns",
            "bp-ip",
            "addr",
            "add",
            "10.55.0.1/32",
            "dev",
            "lo",
            "--",
            "bp-ip",
            "addr",
            "add",
            "10.55.0.2/32",
            "dev",
            "lo",
            "--",
            // The server side announces its second address.
            "bp-ip",
            "mptcp",
            "endpoint",
            "add",
            "10.55.0.2",
            "signal",
            "--",
            "bp-mptcp-pair",
            "10.55.0.1",
            "7000",
            "bp-ip",
            "mptcp",
            "limits",
            "set",
            "subflows",
            "2",
            "add_addr_accepted",
            "2",
            "--",
            "bp-mptcp-pair",
            "10.55.0.1",
            "7001",
            "connect",
            "10.55.0.2",
            "7001",
        ],
    );
    for i in 0..4 {
        ok(&r, "bp-ip", i);
    }
    let peers = |n: usize| -> Vec<String> {
        let s = r.step("bp-mptcp-pair", n);
        assert_eq!(s["ok"], true, "{r:#?}");
        s["tcp_peers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    // Kernel defaults: announcements are not accepted, no join.
    assert!(!peers(0).iter().any(|p| p == "10.55.0.2:7000"), "{r:#?}");
    // OPEN: accepted, the kernel joins the denied 10.55.0.2.
    assert!(
        peers(1).iter().any(|p| p == "10.55.0.2:7001"),
        "OPEN: a subflow to the denied address: {r:#?}"
    );
    eperm(&r, "connect", 0);
    let ev = net_event(&tail, "10.55.0.2", 7001);
    assert_net_event(&ev, "mp", r.pid(), "connect", "10.55.0.2", 7001);
}
