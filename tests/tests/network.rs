//! Network allowlists enforced in the kernel: every denial test shows the
//! errno inside the identity, success outside it, and the event.

use corral_tests::*;

fn policy(name: &str, mode: &str, body: &str) -> String {
    format!("[identity]\nname = \"{name}\"\nmode = \"{mode}\"\n[network]\n{body}\n")
}

#[test]
fn tcp_connect_allowed_denied_and_untouched_outside() {
    if !is_root() {
        return;
    }
    let ok_port = tcp_listener("127.0.0.1:0");
    let no_port = tcp_listener("127.0.0.1:0");
    let p = policy(
        "web",
        "enforce",
        &format!("allow = [\"tcp://127.0.0.1:{ok_port}\"]"),
    );
    let d = Daemon::start(&[("web", &p)]);
    let tail = d.tail(Some("web"));

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
    assert_eq!(r.step("connect", 0)["ok"], true, "{r:#?}");
    assert_eq!(r.step("connect", 1)["errno"], EPERM, "{r:#?}");

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
    let p = policy(
        "svc",
        "enforce",
        "allow = [\"tcp://127.0.0.0/8:*\"]\ndeny = [\"tcp://127.0.0.1/32:*\"]",
    );
    let d = Daemon::start(&[("svc", &p)]);
    let tail = d.tail(Some("svc"));
    let port_s = port.to_string();
    let r = d.probe_as("svc", &["pid", "connect", "127.0.0.1", &port_s]);
    assert_eq!(r.step("connect", 0)["errno"], EPERM, "{r:#?}");
    let ev = tail.expect(|e| e["kind"] == "net");
    assert_net_event(&ev, "svc", r.pid(), "connect", "127.0.0.1", port);
    assert_eq!(ev["reason"], "deny-rule");
    assert!(
        ev["rule"]
            .as_str()
            .unwrap_or("")
            .contains("deny tcp://127.0.0.1/32:*"),
        "{ev:#}"
    );
    assert!(probe_outside(&["connect", "127.0.0.1", &port_s]).step("connect", 0)["ok"] == true);
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
    let p = policy(
        "six",
        "enforce",
        &format!("allow = [\"tcp://[::1]:{v6_ok}\", \"tcp://127.0.0.1:{mapped_port}\"]"),
    );
    let d = Daemon::start(&[("six", &p)]);
    let tail = d.tail(Some("six"));
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
    assert_eq!(r.step("connect", 0)["ok"], true, "{r:#?}");
    assert_eq!(r.step("connect", 1)["errno"], EPERM, "{r:#?}");
    assert_eq!(
        r.step("connect", 2)["ok"],
        true,
        "v4-mapped must be judged by IPv4 rules: {r:#?}"
    );
    assert_eq!(r.step("connect", 3)["errno"], EPERM, "{r:#?}");
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
    assert_eq!(out.step("connect", 0)["ok"], true);
    assert_eq!(out.step("connect", 1)["ok"], true);
}

#[test]
fn udp_sendto_allowed_and_denied() {
    if !is_root() {
        return;
    }
    let ok = udp_sink("127.0.0.1:0");
    let no = udp_sink("127.0.0.1:0");
    let p = policy(
        "dns",
        "enforce",
        &format!("allow = [\"udp://127.0.0.1:{ok}\"]"),
    );
    let d = Daemon::start(&[("dns", &p)]);
    let tail = d.tail(Some("dns"));
    let (a, b) = (ok.to_string(), no.to_string());
    let r = d.probe_as(
        "dns",
        &["pid", "sendto", "127.0.0.1", &a, "sendto", "127.0.0.1", &b],
    );
    assert_eq!(r.step("sendto", 0)["ok"], true, "{r:#?}");
    assert_eq!(r.step("sendto", 1)["errno"], EPERM, "{r:#?}");
    let ev = tail.expect(|e| e["kind"] == "net");
    assert_net_event(&ev, "dns", r.pid(), "sendmsg", "127.0.0.1", no);
    assert_eq!(ev["net"]["protocol"], "udp");
    assert_eq!(
        probe_outside(&["sendto", "127.0.0.1", &b]).step("sendto", 0)["ok"],
        true
    );
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
    let p = policy(
        "srv",
        "enforce",
        &format!("bind = [\"tcp://127.0.0.1:{ok}\"]"),
    );
    let d = Daemon::start(&[("srv", &p)]);
    let tail = d.tail(Some("srv"));
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
    assert_eq!(r.step("bind", 0)["ok"], true, "{r:#?}");
    assert_eq!(r.step("bind", 1)["errno"], EPERM, "{r:#?}");
    let ev = tail.expect(|e| e["kind"] == "net");
    assert_net_event(&ev, "srv", r.pid(), "bind", "127.0.0.1", no);
    assert_eq!(
        probe_outside(&["bind-tcp", "127.0.0.1", &b]).step("bind", 0)["ok"],
        true
    );
}

#[test]
fn sub_cgroup_is_still_the_agent() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let p = policy("nest", "enforce", "allow = []");
    let d = Daemon::start(&[("nest", &p)]);
    let tail = d.tail(Some("nest"));
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
    assert_eq!(r.step("subcgroup", 0)["ok"], true, "{r:#?}");
    assert_eq!(r.step("connect", 0)["errno"], EPERM, "{r:#?}");
    let ev = tail.expect(|e| e["kind"] == "net");
    assert_net_event(&ev, "nest", r.pid(), "connect", "127.0.0.1", port);
    assert!(
        ev["cgroup"].as_str().unwrap_or("").ends_with("/nest/child"),
        "{ev:#}"
    );
    assert_eq!(
        probe_outside(&["connect", "127.0.0.1", &s]).step("connect", 0)["ok"],
        true
    );
}

#[test]
fn two_identities_with_different_rules() {
    if !is_root() {
        return;
    }
    let pa = tcp_listener("127.0.0.1:0");
    let pb = tcp_listener("127.0.0.1:0");
    let a = policy(
        "alpha",
        "enforce",
        &format!("allow = [\"tcp://127.0.0.1:{pa}\"]"),
    );
    let b = policy(
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
    assert_eq!(ra.step("connect", 0)["ok"], true);
    assert_eq!(ra.step("connect", 1)["errno"], EPERM);
    assert_eq!(rb.step("connect", 0)["errno"], EPERM);
    assert_eq!(rb.step("connect", 1)["ok"], true);
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
    let p = policy("watch", "audit", "allow = []");
    let d = Daemon::start(&[("watch", &p)]);
    let tail = d.tail(Some("watch"));
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
