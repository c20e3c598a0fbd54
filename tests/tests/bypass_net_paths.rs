//! Network bypass review, packets whose real peer no program sees (open,
//! documented): source-routed first hops, inbound connections to
//! ephemeral listeners, and MPTCP subflows the kernel opens.
//!
//! Each test proves today's behaviour on this kernel. Closed: EPERM
//! inside, success outside, and the event. Open: the documented behaviour
//! (README.md, "What is and is not enforced"), asserted as it is, with a
//! comment saying why it is open. Targets are loopback addresses, or
//! addresses in a network namespace the probe makes for itself
//! (`bp-netns`: it dies with the probe).

use std::{
    io::Read as _,
    net::TcpStream,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use corral_tests::*;

/// Root, in a fresh netns with fd42::1 and fd42::2 on lo: the probe
/// captures its own packets, sends to denied hops directly, then through
/// each kind of source route.
const ROUTE_STEPS: [&str; 38] = [
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
];

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
    let (d, tail) = Daemon::start_tailed(
        "route",
        &enforce_policy(
            "route",
            "allow = [\"udp://127.0.0.1:7000\", \"udp://[fd42::1]:7000\", \"udp://[::1]:7000\"]",
        ),
    );
    let r = d.probe_as("route", &ROUTE_STEPS);
    r.assert_eperm("sendto", 0);
    r.assert_eperm("sendto", 1);
    r.assert_ok("bp-lsrr", 0);
    r.assert_ok("bp-retopts", 0);
    r.assert_ok("bp-srh", 0);
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
    let r = d.probe_as_user(
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
    r.assert_ok("bp-srh", 0);
    r.assert_eperm("bp-lsrr", 0);
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
    let (d, tail) = Daemon::start_tailed("srv", &enforce_policy("srv", "allow = []\nbind = []"));
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
    r.assert_ok("bind", 0);
    r.assert_ok("bp-listen-auto", 0);
    r.assert_ok("bp-listen-accept", 0);
    // Its own connect to the same address is refused, as always.
    r.assert_eperm("connect", 0);
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
    let (d, tail) = Daemon::start_tailed(
        "mp",
        &enforce_policy(
            "mp",
            "allow = [\"tcp://10.55.0.1:7000-7001\"]\nbind = [\"tcp://0.0.0.0:7000-7001\"]",
        ),
    );
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
        r.assert_ok("bp-ip", i);
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
    r.assert_eperm("connect", 0);
    let ev = net_event(&tail, "10.55.0.2", 7001);
    assert_net_event(&ev, "mp", r.pid(), "connect", "10.55.0.2", 7001);
}
