//! Network bypass review, other ways to connect and send (all closed):
//! io_uring, TCP Fast Open, sendmmsg, connected UDP sockets, MPTCP and
//! UDP-Lite.
//!
//! Each test proves today's behaviour on this kernel. Closed: EPERM
//! inside, success outside, and the event. Open: the documented behaviour
//! (README.md, "What is and is not enforced"), asserted as it is, with a
//! comment saying why it is open. Targets are loopback addresses, or
//! addresses in a network namespace the probe makes for itself
//! (`bp-netns`: it dies with the probe).

use std::sync::atomic::Ordering;

use corral_tests::*;

/// The io_uring operations the agent is refused: connects (inline, async,
/// SQPOLL, and with the socket made by io_uring too) and sends.
fn uring_denied(n: &str, un: &str) -> Vec<String> {
    vec![
        "bp-uring-connect".to_string(),
        "inline".to_string(),
        "127.0.0.1".to_string(),
        n.to_string(),
        "bp-uring-connect".to_string(),
        "async".to_string(),
        "127.0.0.1".to_string(),
        n.to_string(),
        "bp-uring-connect".to_string(),
        "sqpoll".to_string(),
        "127.0.0.1".to_string(),
        n.to_string(),
        "bp-uring-socket-connect".to_string(),
        "127.0.0.1".to_string(),
        n.to_string(),
        "bp-uring-sendmsg".to_string(),
        "inline".to_string(),
        "127.0.0.1".to_string(),
        un.to_string(),
        "bp-uring-sendmsg".to_string(),
        "async".to_string(),
        "127.0.0.1".to_string(),
        un.to_string(),
        "bp-uring-sendmsg".to_string(),
        "sqpoll".to_string(),
        "127.0.0.1".to_string(),
        un.to_string(),
    ]
}

/// Every denial is the agent's, whichever thread of it made the call
/// (the submitter, an iou-wrk worker or the iou-sqp poller).
fn every_denial_is_the_agents(tail: &Tail, pid: u64, no_port: u16, uno: u16) {
    let mut comms = Vec::new();
    for _ in 0..4 {
        let ev = net_event(tail, "127.0.0.1", no_port);
        assert_eq!(ev["identity"], "ring", "{ev:#}");
        assert_eq!(ev["tgid"].as_u64(), Some(pid), "{ev:#}");
        assert_eq!(ev["net"]["op"], "connect", "{ev:#}");
        assert_eq!(ev["verdict"], "deny", "{ev:#}");
        comms.push(ev["comm"].as_str().unwrap_or("").to_string());
    }
    for _ in 0..3 {
        let ev = net_event(tail, "127.0.0.1", uno);
        assert_eq!(ev["net"]["op"], "sendmsg", "{ev:#}");
        assert_eq!(ev["tgid"].as_u64(), Some(pid), "{ev:#}");
    }
    eprintln!("io_uring denials came from threads {comms:?}");
}

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
    let p = enforce_policy(
        "ring",
        &format!("allow = [\"tcp://127.0.0.1:{ok_port}\", \"udp://127.0.0.1:{uok}\"]"),
    );
    let (d, tail) = Daemon::start_tailed("ring", &p);
    let (o, n, uo, un) = (
        ok_port.to_string(),
        no_port.to_string(),
        uok.to_string(),
        uno.to_string(),
    );
    let denied = uring_denied(&n, &un);
    let denied: Vec<&str> = denied.iter().map(String::as_str).collect();
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
        r.assert_eperm("bp-uring-connect", i);
        r.assert_eperm("bp-uring-sendmsg", i);
    }
    r.assert_eperm("bp-uring-socket-connect", 0);
    r.assert_ok("bp-uring-connect", 3);
    r.assert_ok("bp-uring-sendmsg", 3);
    assert_eq!(count_reaches(&uok_n, 1), 1);
    assert_eq!(
        uno_n.load(Ordering::Relaxed),
        0,
        "no denied datagram arrives"
    );

    every_denial_is_the_agents(&tail, r.pid(), no_port, uno);

    let out = probe_outside(&denied);
    for i in 0..3 {
        out.assert_ok("bp-uring-connect", i);
        out.assert_ok("bp-uring-sendmsg", i);
    }
    out.assert_ok("bp-uring-socket-connect", 0);
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
    let (d, tail) = Daemon::start_tailed(
        "tfo",
        &enforce_policy("tfo", &format!("allow = [\"tcp://127.0.0.1:{ok_port}\"]")),
    );
    let (o, n) = (ok_port.to_string(), no_port.to_string());
    let r = d.probe_as(
        "tfo",
        &["pid", "bp-tfo", "127.0.0.1", &o, "bp-tfo", "127.0.0.1", &n],
    );
    r.assert_ok("bp-tfo", 0);
    r.assert_eperm("bp-tfo", 1);
    let ev = net_event(&tail, "127.0.0.1", no_port);
    assert_net_event(&ev, "tfo", r.pid(), "connect", "127.0.0.1", no_port);
    probe_outside(&["bp-tfo", "127.0.0.1", &n]).assert_ok("bp-tfo", 0);
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
    let (d, tail) = Daemon::start_tailed(
        "mm",
        &enforce_policy("mm", &format!("allow = [\"udp://127.0.0.1:{a}\"]")),
    );
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
    r.assert_ok("bp-sendmmsg", 0);
    assert_eq!(r.step("bp-sendmmsg", 0)["sent"], 1, "{r:#?}");
    r.assert_eperm("bp-sendmmsg", 1);
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
    let (d, tail) = Daemon::start_tailed(
        "cu",
        &enforce_policy("cu", &format!("allow = [\"udp://127.0.0.1:{a}\"]")),
    );
    let (sa, sb) = (a.to_string(), b.to_string());
    let steps = ["bp-udp-connect-sendto", "127.0.0.1", &sa, "127.0.0.1", &sb];
    let r = d.probe_as("cu", &with_pid(&steps));
    r.assert_ok("bp-udp-connect", 0);
    r.assert_ok("bp-udp-send", 0);
    r.assert_eperm("bp-udp-sendto-other", 0);
    assert_eq!(b_n.load(Ordering::Relaxed), 0);
    let ev = net_event(&tail, "127.0.0.1", b);
    assert_net_event(&ev, "cu", r.pid(), "sendmsg", "127.0.0.1", b);
    let out = probe_outside(&steps);
    out.assert_ok("bp-udp-sendto-other", 0);
    assert_eq!(count_reaches(&b_n, 1), 1);
}

/// Other IP protocols on stream and datagram sockets: MPTCP is judged as
/// TCP; UDP-Lite is no `udp` rule's class and its socket is refused at
/// creation (`unsupported`) even where a `udp` rule would allow the address
/// and port (every such kind: `socket_kinds.rs`).
#[test]
fn mptcp_and_udplite_are_judged() {
    if !is_root() {
        return;
    }
    let ok_port = tcp_listener("127.0.0.1:0");
    let no_port = tcp_listener("127.0.0.1:0");
    let (u, u_n) = counting_sink("127.0.0.1:0");
    let (d, tail) = Daemon::start_tailed(
        "proto",
        &enforce_policy(
            "proto",
            &format!("allow = [\"tcp://127.0.0.1:{ok_port}\", \"udp://127.0.0.1:{u}\"]"),
        ),
    );
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
    r.assert_ok("bp-connect-proto", 0);
    r.assert_eperm("bp-connect-proto", 1);
    r.assert_eperm("bp-sendto-proto", 0);
    let ev = net_event(&tail, "127.0.0.1", no_port);
    assert_net_event(&ev, "proto", r.pid(), "connect", "127.0.0.1", no_port);
    let ev = tail.expect(|e| e["net"]["op"] == "create" && e["net"]["protocol"] == "udplite");
    assert_event_source(&ev, "net", "proto", r.pid());
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
    out.assert_ok("bp-connect-proto", 0);
    // (A UDP socket does not receive UDP-Lite: the send is the proof.)
    out.assert_ok("bp-sendto-proto", 0);
    assert_eq!(u_n.load(Ordering::Relaxed), 0);
}
