//! Network allowlists enforced in the kernel: every denial test shows the
//! errno inside the identity, success outside it, and the event.

use corral_tests::*;

#[test]
fn tcp_connect_allowed_denied_and_untouched_outside() {
    if !is_root() {
        return;
    }
    let ok_port = tcp_listener("127.0.0.1:0");
    let no_port = tcp_listener("127.0.0.1:0");
    let p = net_policy(
        "web",
        "enforce",
        &format!("allow = [\"tcp://127.0.0.1:{ok_port}\"]"),
    );
    let (d, tail) = Daemon::start_tailed("web", &p);

    let (ok, no) = (ok_port.to_string(), no_port.to_string());
    // exe and ppid are read from /proc while the process lives: the probe
    // stays a moment so that a loaded daemon still finds it.
    let r = d.probe_as(
        "web",
        &[
            "pid",
            "connect",
            "127.0.0.1",
            &ok,
            "connect",
            "127.0.0.1",
            &no,
            "sleep",
            "1",
        ],
    );
    r.assert_ok("connect", 0);
    r.assert_eperm("connect", 1);

    let ev = tail.expect(|e| e["kind"] == "net");
    assert_net_event(&ev, "web", r.pid(), "connect", "127.0.0.1", no_port);
    assert_eq!(ev["verdict"], "deny");
    assert_eq!(ev["reason"], "no-rule");
    assert_eq!(ev["net"]["protocol"], "tcp");
    assert!(
        ev["exe"].as_str().unwrap_or("").ends_with("corral-probe"),
        "{ev:#}"
    );
    assert!(ev["ppid"].as_u64().is_some(), "{ev:#}");

    let outside = probe_outside(&["connect", "127.0.0.1", &no]);
    assert_eq!(
        outside.step("connect", 0)["ok"],
        true,
        "untagged process must not be judged"
    );
}

#[test]
fn deny_rule_beats_shorter_allow_and_is_named() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let p = net_policy(
        "svc",
        "enforce",
        "allow = [\"tcp://127.0.0.0/8:*\"]\ndeny = [\"tcp://127.0.0.1/32:*\"]",
    );
    let (d, tail) = Daemon::start_tailed("svc", &p);
    let ev = d.assert_connect_denied(&tail, "svc", "127.0.0.1", port);
    assert_eq!(ev["reason"], "deny-rule");
    assert!(
        ev["rule"]
            .as_str()
            .unwrap_or("")
            .contains("deny tcp://127.0.0.1/32:*"),
        "{ev:#}"
    );
}

#[test]
fn ipv6_and_v4_mapped() {
    if !is_root() {
        return;
    }
    let v6_ok = tcp_listener("[::1]:0");
    let v6_no = tcp_listener("[::1]:0");
    // A dual-stack listener on :: accepts v4-mapped connections.
    let any = std::net::TcpListener::bind("[::]:0").expect("dual-stack");
    let mapped_port = any.local_addr().expect("addr").port();
    std::thread::spawn(move || for _ in any.incoming() {});
    let p = net_policy(
        "six",
        "enforce",
        &format!("allow = [\"tcp://[::1]:{v6_ok}\", \"tcp://127.0.0.1:{mapped_port}\"]"),
    );
    let (d, tail) = Daemon::start_tailed("six", &p);
    let (a, b, m) = (
        v6_ok.to_string(),
        v6_no.to_string(),
        mapped_port.to_string(),
    );
    let r = d.probe_as(
        "six",
        &[
            "pid",
            "connect",
            "::1",
            &a,
            "connect",
            "::1",
            &b,
            "connect",
            "::ffff:127.0.0.1",
            &m,
            "connect",
            "::ffff:127.0.0.2",
            &m,
        ],
    );
    r.assert_ok("connect", 0);
    r.assert_eperm("connect", 1);
    assert_eq!(
        r.step("connect", 2)["ok"],
        true,
        "v4-mapped must be judged by IPv4 rules: {r:#?}"
    );
    r.assert_eperm("connect", 3);
    let ev = tail.expect(|e| e["kind"] == "net" && e["net"]["port"] == v6_no);
    assert_net_event(&ev, "six", r.pid(), "connect", "::1", v6_no);
    assert_eq!(ev["net"]["family"], "inet6");
    let ev = tail.expect(|e| e["kind"] == "net" && e["net"]["addr"] == "::ffff:127.0.0.2");
    assert_net_event(
        &ev,
        "six",
        r.pid(),
        "connect",
        "::ffff:127.0.0.2",
        mapped_port,
    );
    let out = probe_outside(&["connect", "::1", &b, "connect", "::ffff:127.0.0.2", &m]);
    out.assert_ok("connect", 0);
    out.assert_ok("connect", 1);
}

#[test]
fn udp_sendto_allowed_and_denied() {
    if !is_root() {
        return;
    }
    let ok = udp_sink("127.0.0.1:0");
    let no = udp_sink("127.0.0.1:0");
    let p = net_policy(
        "dns",
        "enforce",
        &format!("allow = [\"udp://127.0.0.1:{ok}\"]"),
    );
    let (d, tail) = Daemon::start_tailed("dns", &p);
    let (a, b) = (ok.to_string(), no.to_string());
    let r = d.probe_as(
        "dns",
        &["pid", "sendto", "127.0.0.1", &a, "sendto", "127.0.0.1", &b],
    );
    r.assert_ok("sendto", 0);
    r.assert_eperm("sendto", 1);
    let ev = tail.expect(|e| e["kind"] == "net");
    assert_net_event(&ev, "dns", r.pid(), "sendmsg", "127.0.0.1", no);
    assert_eq!(ev["net"]["protocol"], "udp");
    probe_outside(&["sendto", "127.0.0.1", &b]).assert_ok("sendto", 0);
}

#[test]
fn bind_allowed_and_denied() {
    if !is_root() {
        return;
    }
    let free = |a: &str| {
        std::net::TcpListener::bind(a)
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (ok, no) = (free("127.0.0.1:0"), free("127.0.0.1:0"));
    let p = net_policy(
        "srv",
        "enforce",
        &format!("bind = [\"tcp://127.0.0.1:{ok}\"]"),
    );
    let (d, tail) = Daemon::start_tailed("srv", &p);
    let (a, b) = (ok.to_string(), no.to_string());
    let r = d.probe_as(
        "srv",
        &[
            "pid",
            "bind-tcp",
            "127.0.0.1",
            &a,
            "bind-tcp",
            "127.0.0.1",
            &b,
        ],
    );
    r.assert_ok("bind", 0);
    r.assert_eperm("bind", 1);
    let ev = tail.expect(|e| e["kind"] == "net");
    assert_net_event(&ev, "srv", r.pid(), "bind", "127.0.0.1", no);
    probe_outside(&["bind-tcp", "127.0.0.1", &b]).assert_ok("bind", 0);
}

#[test]
fn sub_cgroup_is_still_the_agent() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let p = net_policy("nest", "enforce", "allow = []");
    let (d, tail) = Daemon::start_tailed("nest", &p);
    let s = port.to_string();
    let r = d.probe_as(
        "nest",
        // Stays a moment: the daemon reads the cgroup path from /proc.
        &[
            "pid",
            "subcgroup",
            "child",
            "connect",
            "127.0.0.1",
            &s,
            "sleep",
            "1",
        ],
    );
    r.assert_ok("subcgroup", 0);
    r.assert_eperm("connect", 0);
    let ev = tail.expect(|e| e["kind"] == "net");
    assert_net_event(&ev, "nest", r.pid(), "connect", "127.0.0.1", port);
    assert!(
        ev["cgroup"].as_str().unwrap_or("").ends_with("/nest/child"),
        "{ev:#}"
    );
    probe_outside(&["connect", "127.0.0.1", &s]).assert_ok("connect", 0);
}

#[test]
fn two_identities_with_different_rules() {
    if !is_root() {
        return;
    }
    let pa = tcp_listener("127.0.0.1:0");
    let pb = tcp_listener("127.0.0.1:0");
    let a = net_policy(
        "alpha",
        "enforce",
        &format!("allow = [\"tcp://127.0.0.1:{pa}\"]"),
    );
    let b = net_policy(
        "beta",
        "enforce",
        &format!("allow = [\"tcp://127.0.0.1:{pb}\"]"),
    );
    let d = Daemon::start(&[("alpha", &a), ("beta", &b)]);
    let tail = d.tail(None);
    let (sa, sb) = (pa.to_string(), pb.to_string());
    let ra = d.probe_as(
        "alpha",
        &[
            "pid",
            "connect",
            "127.0.0.1",
            &sa,
            "connect",
            "127.0.0.1",
            &sb,
        ],
    );
    let rb = d.probe_as(
        "beta",
        &[
            "pid",
            "connect",
            "127.0.0.1",
            &sa,
            "connect",
            "127.0.0.1",
            &sb,
        ],
    );
    ra.assert_ok("connect", 0);
    ra.assert_eperm("connect", 1);
    rb.assert_eperm("connect", 0);
    rb.assert_ok("connect", 1);
    let ev = tail.expect(|e| e["identity"] == "alpha");
    assert_net_event(&ev, "alpha", ra.pid(), "connect", "127.0.0.1", pb);
    let ev = tail.expect(|e| e["identity"] == "beta");
    assert_net_event(&ev, "beta", rb.pid(), "connect", "127.0.0.1", pa);
}

#[test]
fn audit_mode_allows_and_reports() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let p = net_policy("watch", "audit", "allow = []");
    let (d, tail) = Daemon::start_tailed("watch", &p);
    let s = port.to_string();
    let r = d.probe_as("watch", &["pid", "connect", "127.0.0.1", &s]);
    assert_eq!(
        r.step("connect", 0)["ok"],
        true,
        "audit mode must not deny: {r:#?}"
    );
    let ev = tail.expect(|e| e["kind"] == "net");
    assert_net_event(&ev, "watch", r.pid(), "connect", "127.0.0.1", port);
    assert_eq!(ev["verdict"], "audit");
    assert_eq!(ev["mode"], "audit");
    let ids = d.cli_json(&["identities", "--json"]);
    assert!(
        ids[0]["counters"]["audited"].as_u64().unwrap_or(0) >= 1,
        "{ids:#}"
    );
}
