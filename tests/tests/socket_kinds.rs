//! Inet sockets of a kind no address rule judges are refused at `socket()`
//! (cgroup `sock_create`), for root too: raw IP, ICMP echo ("ping"),
//! UDP-Lite, SCTP, L2TP/IP, ... Their connect/sendmsg never reach the
//! sock_addr programs, so without this they would send anywhere, unjudged.
//! `[network] sockets = ["ping", "raw"]` lets an identity have those two.
//!
//! Each kind is tried inside the identity (EPERM and a `create` event with
//! reason `unsupported`) and outside it (created). SCTP needs a kernel
//! module this machine does not have; the QEMU guest tries it where
//! Debian's kernel ships it (`sctp_is_refused_where_the_kernel_has_it`).

use corral_tests::*;
use serde_json::Value;

/// Kinds every identity may create: the ones address rules judge.
const JUDGED: [&str; 5] = ["inet", "tcp6", "udp", "udp6", "mptcp"];

/// (probe kind, family, type, protocol as events spell them).
const UNJUDGED: [(&str, &str, &str, &str); 7] = [
    ("udplite", "inet", "dgram", "udplite"),
    ("udplite6", "inet6", "dgram", "udplite"),
    ("raw", "inet", "raw", "icmp"),
    ("raw6", "inet6", "raw", "icmpv6"),
    ("raw-tcp", "inet", "raw", "tcp"),
    ("ping", "inet", "dgram", "icmp"),
    ("ping6", "inet6", "dgram", "icmpv6"),
];

/// Probe steps: a fresh netns where root's group may open ping sockets,
/// then one `socket` step per kind (judged kinds first).
fn steps<'a>(kinds: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut v = vec![
        "pid",
        "bp-netns",
        "write-file",
        "/proc/sys/net/ipv4/ping_group_range",
        "0 0",
    ];
    for k in kinds {
        v.extend(["socket", k]);
    }
    v
}

fn all_kinds() -> impl Iterator<Item = &'static str> {
    JUDGED.into_iter().chain(UNJUDGED.iter().map(|k| k.0))
}

fn expect_create_event(
    tail: &Tail,
    identity: &str,
    pid: u64,
    kind: (&str, &str, &str, &str),
) -> Value {
    let (_, family, ty, protocol) = kind;
    let ev = tail.expect(|e| {
        e["kind"] == "net"
            && e["net"]["op"] == "create"
            && e["net"]["family"] == family
            && e["net"]["type"] == ty
            && e["net"]["protocol"] == protocol
    });
    assert_event_source(&ev, "net", identity, pid);
    assert_eq!(ev["reason"], "unsupported", "{ev:#}");
    ev
}

#[test]
fn socket_kinds_no_rule_judges_are_refused_at_creation() {
    if !is_root() {
        skip("needs root");
        return;
    }
    let (d, tail) = Daemon::start_tailed("kinds", &enforce_policy("kinds", "allow = []"));
    let r = d.probe_as("kinds", &steps(all_kinds()));
    r.assert_ok("bp-netns", 0);
    for n in 0..JUDGED.len() {
        r.assert_ok("socket", n);
    }
    for (i, kind) in UNJUDGED.iter().enumerate() {
        r.assert_eperm("socket", JUDGED.len() + i);
        let ev = expect_create_event(&tail, "kinds", r.pid(), *kind);
        assert_eq!(ev["verdict"], "deny", "{ev:#}");
    }

    // Outside the identity every kind is created.
    let out = probe_outside(&steps(all_kinds()));
    for n in 0..JUDGED.len() + UNJUDGED.len() {
        out.assert_ok("socket", n);
    }

    // Without root: UDP-Lite needs no privilege and is refused all the same.
    let r = d.probe_as_user("kinds", "nobody", &["pid", "socket", "udplite"]);
    r.assert_eperm("socket", 0);
    expect_create_event(&tail, "kinds", r.pid(), UNJUDGED[0]);
}

#[test]
fn named_socket_kinds_are_allowed_and_audit_mode_reports() {
    if !is_root() {
        skip("needs root");
        return;
    }
    let d = Daemon::start(&[
        (
            "named",
            &enforce_policy("named", "allow = []\nsockets = [\"ping\", \"raw\"]"),
        ),
        ("watch", &net_policy("watch", "audit", "allow = []")),
    ]);
    let tail = d.tail(None);
    let r = d.probe_as("named", &steps(all_kinds()));
    for (n, kind) in all_kinds().enumerate() {
        if kind.starts_with("udplite") {
            r.assert_eperm("socket", n);
        } else {
            r.assert_ok("socket", n);
        }
    }
    expect_create_event(&tail, "named", r.pid(), UNJUDGED[0]);

    // Audit mode: created, and reported as what enforce mode would refuse.
    let r = d.probe_as("watch", &steps(["udplite", "raw"]));
    r.assert_ok("socket", 0);
    r.assert_ok("socket", 1);
    let ev = expect_create_event(&tail, "watch", r.pid(), UNJUDGED[0]);
    assert_eq!(ev["verdict"], "audit", "{ev:#}");
    expect_create_event(&tail, "watch", r.pid(), UNJUDGED[2]);
}

#[test]
fn an_unknown_socket_kind_is_an_error_with_its_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("p.toml");
    std::fs::write(
        &f,
        "[identity]\nname = \"p\"\n[network]\nsockets = [\"ping\", \"sctp\"]\n",
    )
    .expect("write");
    let out = std::process::Command::new(corral_bin())
        .args(["policy", "check", path_str(dir.path())])
        .output()
        .expect("corral policy check");
    let err =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("p.toml:4:21"), "{err}");
    assert!(err.contains("unknown socket kind `sctp`"), "{err}");
}

#[test]
fn sctp_and_l2tp_are_refused_where_the_kernel_has_them() {
    if !is_root() {
        skip("needs root");
        return;
    }
    let kinds = [
        ("sctp", "inet", "stream", "sctp"),
        ("sctp-seq6", "inet6", "seqpacket", "sctp"),
        ("l2tp", "inet", "dgram", "l2tp"),
    ];
    // Outside first: which of them this kernel has at all.
    let out = probe_outside(&steps(kinds.iter().map(|k| k.0)));
    let have: Vec<_> = kinds
        .iter()
        .enumerate()
        .filter(|(n, _)| out.step("socket", *n)["ok"] == true)
        .map(|(_, k)| *k)
        .collect();
    if have.len() < kinds.len() {
        let missing: Vec<&str> = kinds
            .iter()
            .filter(|k| !have.contains(k))
            .map(|k| k.0)
            .collect();
        // The QEMU guest loads these modules: missing there is a failure.
        assert!(
            std::env::var_os("CORRAL_VM").is_none(),
            "the guest kernel lacks {missing:?}: {out:#?}"
        );
        skip(&format!(
            "{missing:?}: not in this kernel (proven in cargo xtask vm-test)"
        ));
    }
    if have.is_empty() {
        return;
    }
    let (d, tail) =
        Daemon::start_tailed("proto", &enforce_policy("proto", "allow = [\"tcp://*:*\"]"));
    let r = d.probe_as("proto", &steps(have.iter().map(|k| k.0)));
    for (n, kind) in have.iter().enumerate() {
        r.assert_eperm("socket", n);
        expect_create_event(&tail, "proto", r.pid(), *kind);
    }
}

/// Where BPF LSM runs, families no cgroup program sees are refused at
/// `socket()` for tagged processes: AF_RDS and AF_RXRPC (IP traffic sent by
/// a kernel thread; refused before the kernel even looks for the module),
/// AF_PACKET and AF_VSOCK unless `[network] sockets` names them.
/// Natively (no BPF LSM) this is open without `[syscalls]` (README).
#[test]
fn other_socket_families_are_refused_where_bpf_lsm_runs() {
    if !is_root() {
        skip("needs root");
        return;
    }
    let d = Daemon::start(&[
        ("fam", &enforce_policy("fam", "allow = []")),
        (
            "pk",
            &enforce_policy("pk", "allow = []\nsockets = [\"packet\"]"),
        ),
    ]);
    if !d.bpf_lsm_or_skip() {
        return;
    }
    let tail = d.tail(None);
    let steps = [
        "pid", "socket", "packet", "socket", "rds", "socket", "rxrpc", "socket", "vsock",
    ];
    let r = d.probe_as("fam", &steps);
    for (n, family) in ["packet", "rds", "rxrpc", "vsock"].iter().enumerate() {
        r.assert_eperm("socket", n);
        let ev = tail.expect(|e| e["net"]["op"] == "create" && e["net"]["family"] == *family);
        assert_event_source(&ev, "net", "fam", r.pid());
        assert_eq!(ev["reason"], "unsupported", "{ev:#}");
    }
    // Named: AF_PACKET is created; AF_RDS still refused.
    let r = d.probe_as("pk", &steps);
    r.assert_ok("socket", 0);
    r.assert_eperm("socket", 1);
    // Outside: the kernel has both (rds is loaded in the guest).
    let out = probe_outside(&steps[1..5]);
    out.assert_ok("socket", 0);
    out.assert_ok("socket", 1);
}
