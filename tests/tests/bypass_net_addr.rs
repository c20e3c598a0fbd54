//! Network bypass review, addresses: IPv6 spellings of IPv4 addresses and
//! scope ids, the unspecified address as a destination (was open, fixed),
//! and host names.
//!
//! Each test proves today's behaviour on this kernel. Closed: EPERM
//! inside, success outside, and the event. Open: the documented behaviour
//! (README.md, "What is and is not enforced"), asserted as it is, with a
//! comment saying why it is open. Targets are loopback addresses, or
//! addresses in a network namespace the probe makes for itself
//! (`bp-netns`: it dies with the probe).

use std::sync::atomic::Ordering;

use corral_tests::*;

const ENETUNREACH: i64 = 101;

/// In a fresh netns with fe80::1 on lo: listeners, then every IPv6
/// spelling of a v4 destination, an IPv6 socket given an AF_INET address,
/// and link-local connects with a scope id.
const SIX_STEPS: [&str; 43] = [
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
    let p = enforce_policy(
        "six",
        "allow = [\"tcp://127.0.0.1:7000\", \"tcp://[fe80::]/10:7002\"]\n\
         bind = [\"tcp://127.0.0.1:7000\", \"tcp://[::]:7001-7002\"]",
    );
    let (d, tail) = Daemon::start_tailed("six", &p);
    let steps = SIX_STEPS;
    let r = d.probe_as("six", &with_pid(&steps));
    r.assert_ok("bp-netns", 0);
    r.assert_ok("bp-ip", 0);
    for i in 0..3 {
        r.assert_ok("bp-listen", i);
    }
    r.assert_ok("connect", 0);
    for i in 1..4 {
        r.assert_eperm("connect", i);
    }
    r.assert_eperm("bp-v6sock-v4addr", 0);
    r.assert_eperm("bp-connect6", 0);
    r.assert_ok("bp-connect6", 1);
    let pid = r.pid();
    for a in ["::127.0.0.1", "::ffff:0:127.0.0.1", "64:ff9b::7f00:1"] {
        let ev = net_event(&tail, a, 7000);
        assert_net_event_ip(&ev, "six", pid, "connect", a, 7000);
        assert_eq!(ev["net"]["family"], "inet6", "{ev:#}");
        assert_eq!(ev["reason"], "no-rule", "{ev:#}");
    }
    let ev = net_event(&tail, "127.0.0.2", 7000);
    assert_net_event(&ev, "six", pid, "sendmsg", "127.0.0.2", 7000);
    assert_eq!(ev["net"]["family"], "inet", "{ev:#}");
    let ev = net_event(&tail, "fe80::1", 7001);
    assert_net_event(&ev, "six", pid, "connect", "fe80::1", 7001);

    let out = probe_outside(&steps);
    out.assert_ok("connect", 0);
    for i in 1..4 {
        assert_eq!(
            out.step("connect", i)["errno"],
            ENETUNREACH,
            "not an alias of 127.0.0.1: {out:#?}"
        );
    }
    out.assert_ok("bp-v6sock-v4addr", 0);
    out.assert_ok("bp-connect6", 0);
}

/// Where loopback is allowed, 0.0.0.0 works; a socket bound to 127.0.0.5
/// reaches the listener on 127.0.0.1 (the rewrite), where the kernel alone
/// would have gone to 127.0.0.5 (refused: nothing listens).
fn loopback_allowed_reaches_it(d: &Daemon, s: &str, su: &str) {
    let r = d.probe_as(
        "lo-ok",
        &[
            "connect",
            "0.0.0.0",
            s,
            "sendto",
            "0.0.0.0",
            su,
            "bp-bound-connect",
            "127.0.0.5",
            "0.0.0.0",
            s,
        ],
    );
    r.assert_ok("connect", 0);
    r.assert_ok("sendto", 0);
    r.assert_ok("bp-bound-connect", 0);
    let out = probe_outside(&["bp-bound-connect", "127.0.0.5", "0.0.0.0", s]);
    assert_eq!(
        out.step("bp-bound-connect", 0)["errno"],
        111,
        "untagged: the kernel's own meaning (bound address) {out:#?}"
    );
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
    let p = enforce_policy(
        "unspec",
        &format!(
            "allow = [\"tcp://*:{port}\", \"udp://*:{u}\"]\n\
             deny = [\"tcp://127.0.0.0/8:*\", \"udp://127.0.0.0/8:*\", \"tcp://[::1]:*\", \"udp://[::1]:*\"]"
        ),
    );
    let lo = enforce_policy(
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
    let r = d.probe_as("unspec", &with_pid(&steps));
    for i in 0..3 {
        r.assert_eperm("connect", i);
    }
    r.assert_eperm("sendto", 0);
    r.assert_eperm("sendto", 1);
    r.assert_eperm("bp-bound-connect", 0);
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
    out.assert_ok("connect", 0);
    out.assert_ok("sendto", 0);
    assert_eq!(count_reaches(&u_n, 1), 1);

    loopback_allowed_reaches_it(&d, &s, &su);
}

/// Names are resolved by the agent and judged by address: a name is no way
/// around an address rule.
#[test]
fn host_names_are_judged_by_address() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let (d, tail) = Daemon::start_tailed("dns", &enforce_policy("dns", "allow = []"));
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
