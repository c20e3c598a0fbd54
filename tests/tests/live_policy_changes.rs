//! Live policy (issue 5), what a change does to agents: mode switches
//! reach a running agent, a removed policy file does not open its running
//! processes, and host-name rules follow their address until it stops
//! resolving. Every denial shows EPERM inside, success outside and the
//! event.

use std::time::{Duration, Instant};

use corral_tests::*;
use serde_json::Value;

#[test]
fn mode_switches_apply_to_a_running_agent() {
    if !is_root() {
        return;
    }
    let ok = tcp_listener("127.0.0.1:0");
    let no = tcp_listener("127.0.0.1:0");
    let body = format!("allow = [\"tcp://127.0.0.1:{ok}\"]");
    let (d, tail) = Daemon::start_tailed("agent", &net_policy("agent", "enforce", &body));
    let flags = tempfile::tempdir().unwrap();
    let (f1, f2) = (flags.path().join("1"), flags.path().join("2"));
    let n = no.to_string();
    let mut p = d.spawn_probe_as(
        "agent",
        &[
            "pid",
            "connect",
            "127.0.0.1",
            &n,
            "wait-file",
            f1.to_str().unwrap(),
            "connect",
            "127.0.0.1",
            &n,
            "wait-file",
            f2.to_str().unwrap(),
            "connect",
            "127.0.0.1",
            &n,
        ],
    );
    let pid = p.next_step("pid")["pid"].as_u64().unwrap();
    let ev_of = |verdict: &str| {
        tail.expect(|e| e["kind"] == "net" && e["verdict"] == verdict && e["tgid"] == pid)
    };

    assert_eq!(p.next_step("connect")["errno"], EPERM);
    let ev = ev_of("deny");
    assert_net_event(&ev, "agent", pid, "connect", "127.0.0.1", no);
    assert_eq!(ev["mode"], "enforce");

    let g = d.generation();
    d.write_policy("agent", &net_policy("agent", "audit", &body));
    let g = d.wait_generation_past(g, Duration::from_secs(5));
    std::fs::write(&f1, "").unwrap();
    assert_eq!(
        p.next_step("connect")["ok"],
        true,
        "audit mode lets it through"
    );
    let ev = ev_of("audit");
    assert_net_event(&ev, "agent", pid, "connect", "127.0.0.1", no);
    assert_eq!(ev["mode"], "audit");

    d.write_policy("agent", &net_policy("agent", "enforce", &body));
    d.wait_generation_past(g, Duration::from_secs(5));
    std::fs::write(&f2, "").unwrap();
    assert_eq!(p.next_step("connect")["errno"], EPERM, "enforcing again");
    assert_net_event(&ev_of("deny"), "agent", pid, "connect", "127.0.0.1", no);

    // One process all along: the switch needed no restart.
    let r = p.finish();
    assert_eq!(r.code, Some(0), "{r:#?}");
    assert_eq!(r.steps.iter().filter(|s| s["op"] == "pid").count(), 1);
    probe_outside(&["connect", "127.0.0.1", &n]).assert_ok("connect", 0);
}

#[test]
fn removing_a_policy_file_does_not_open_its_running_processes() {
    if !is_root() {
        return;
    }
    let ok = tcp_listener("127.0.0.1:0");
    let no = tcp_listener("127.0.0.1:0");
    let (d, tail) = Daemon::start_tailed(
        "gone",
        &net_policy(
            "gone",
            "enforce",
            &format!("allow = [\"tcp://127.0.0.1:{ok}\"]"),
        ),
    );
    let flags = tempfile::tempdir().unwrap();
    let f = flags.path().join("go");
    let (o, n) = (ok.to_string(), no.to_string());
    let mut p = d.spawn_probe_as(
        "gone",
        &[
            "pid",
            "connect",
            "127.0.0.1",
            &o,
            "wait-file",
            f.to_str().unwrap(),
            "connect",
            "127.0.0.1",
            &o,
            "connect",
            "127.0.0.1",
            &n,
        ],
    );
    let pid = p.next_step("pid")["pid"].as_u64().unwrap();
    assert_eq!(p.next_step("connect")["ok"], true);

    let g = d.generation();
    std::fs::remove_file(d.dirs.policy_dir.join("gone.toml")).unwrap();
    d.wait_generation_past(g, Duration::from_secs(5));
    let r = &d.status()["reload"]["last_report"];
    assert_eq!(r["orphaned"][0], "gone", "{r:#}");
    let ids = d.cli_json(&["identities", "--json"]);
    assert_eq!(ids[0]["name"], "gone", "{ids:#}");
    assert_eq!(ids[0]["orphaned"], true, "{ids:#}");
    assert!(ids[0]["processes"].as_u64().unwrap_or(0) >= 1, "{ids:#}");
    assert!(
        d.log_text().contains("still has processes"),
        "{}",
        d.log_text()
    );

    std::fs::write(&f, "").unwrap();
    assert_eq!(
        p.next_step("connect")["errno"],
        EPERM,
        "what was allowed is denied now"
    );
    assert_eq!(p.next_step("connect")["errno"], EPERM);
    let ev = tail.expect(|e| e["kind"] == "net" && e["net"]["port"] == ok);
    assert_net_event(&ev, "gone", pid, "connect", "127.0.0.1", ok);
    let ev = tail.expect(|e| e["kind"] == "net" && e["net"]["port"] == no);
    assert_net_event(&ev, "gone", pid, "connect", "127.0.0.1", no);
    probe_outside(&["connect", "127.0.0.1", &o]).assert_ok("connect", 0);
    let show = d.cli_json(&["policy", "show", "gone", "--json"]);
    assert_eq!(show["orphaned"], true, "{show:#}");
    drop(p);
}

/// Adds names to /etc/hosts and puts the file back as it was when dropped,
/// also when the test panics.
struct HostsGuard {
    original: String,
}

const HOSTS: &str = "/etc/hosts";

impl HostsGuard {
    fn new() -> HostsGuard {
        HostsGuard {
            original: std::fs::read_to_string(HOSTS).expect("read /etc/hosts"),
        }
    }

    /// /etc/hosts as it was, plus `extra` lines. Written in place: the file
    /// may be a bind mount that cannot be renamed over.
    fn set(&self, extra: &[(&str, &str)]) {
        let mut text = self.original.clone();
        if !text.ends_with('\n') && !text.is_empty() {
            text.push('\n');
        }
        for (addr, name) in extra {
            text.push_str(&format!("{addr} {name} # corral live_policy test\n"));
        }
        std::fs::write(HOSTS, text).expect("write /etc/hosts");
    }
}

impl Drop for HostsGuard {
    fn drop(&mut self) {
        let _ = std::fs::write(HOSTS, &self.original);
    }
}

fn hosts_of(d: &Daemon, identity: &str) -> Value {
    d.api("GET", &format!("/v1/policy/{identity}"), None).1["hosts"][0].clone()
}

/// explain answers with the rule and the address `name` resolves to now
/// (127.0.0.3), refuses the old one, and says opens are not confined.
fn explain_follows(d: &Daemon, name: &str, port: u16) {
    let e = d.cli_json(&[
        "policy",
        "explain",
        "--identity",
        "dns",
        "--connect",
        &format!("{name}:{port}"),
        "--json",
    ]);
    assert_eq!(e["answers"][0]["decision"], "allow", "{e:#}");
    assert!(
        e["answers"][0]["rule"]["describe"]
            .as_str()
            .unwrap_or("")
            .contains("[127.0.0.3]"),
        "{e:#}"
    );
    let e = d.cli_json(&[
        "policy",
        "explain",
        "--identity",
        "dns",
        "--connect",
        &format!("127.0.0.2:{port}"),
        "--json",
    ]);
    assert_eq!(
        e["answers"][0]["reason"], "no rule matched: default deny",
        "{e:#}"
    );
    let out = d.cli(&[
        "policy",
        "explain",
        "--identity",
        "dns",
        "--open",
        "/etc/passwd",
    ]);
    // `dns` has no `[files]` section: opens are not confined, and explain
    // says so rather than inventing a rule.
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("open /etc/passwd for read: ALLOW -> allowed")
            && text.contains("no [files] section"),
        "{out:?}"
    );
}

/// The name stops resolving: its last address is kept (and reported) for
/// 10 refresh intervals, then its allow rule is dropped.
fn kept_then_expired(d: &Daemon, tail: &Tail, hosts: &HostsGuard, port: u16) {
    let gone = Instant::now();
    hosts.set(&[]);
    let h = wait_for(Duration::from_secs(5), "the name to fail", || {
        let h = hosts_of(d, "dns");
        (h["state"] == "failing").then_some(h)
    });
    assert_eq!(h["addresses"], serde_json::json!(["127.0.0.3"]), "{h:#}");
    assert!(h["keep_until"].is_string(), "{h:#}");
    d.assert_connect_allowed("dns", "127.0.0.3", port);
    assert!(
        d.log_text().contains("stopped resolving"),
        "{}",
        d.log_text()
    );
    let g = d.generation();
    wait_for(Duration::from_secs(20), "the name to expire", || {
        (hosts_of(d, "dns")["state"] == "expired").then_some(())
    });
    d.wait_generation_past(g, Duration::from_secs(5));
    let kept = gone.elapsed();
    eprintln!("expired after {kept:?}");
    assert!(kept >= Duration::from_secs(9), "kept only {kept:?}");
    d.assert_connect_denied(tail, "dns", "127.0.0.3", port);
    assert!(
        d.log_text().contains("allow rules are dropped"),
        "{}",
        d.log_text()
    );
    let show = String::from_utf8_lossy(&d.cli(&["policy", "show", "dns"]).stdout).into_owned();
    assert!(show.contains("EXPIRED"), "{show}");
}

#[test]
fn host_name_rules_follow_the_address_and_expire_when_it_stops_resolving() {
    if !is_root() {
        return;
    }
    let name = format!("corral-live-{}.test", std::process::id());
    let hosts = HostsGuard::new();
    hosts.set(&[("127.0.0.2", name.as_str())]);
    let port = tcp_listener("0.0.0.0:0");
    let d = Daemon::start_opts(
        &[(
            "dns",
            &net_policy(
                "dns",
                "enforce",
                &format!("allow = [\"tcp://{name}:{port}\"]"),
            ),
        )],
        &["--dns-refresh", "1s"],
        &[("CORRAL_DNS_REFRESH_FLOOR", "1s")],
    );
    let tail = d.tail(Some("dns"));
    d.assert_connect_allowed("dns", "127.0.0.2", port);
    d.assert_connect_denied(&tail, "dns", "127.0.0.3", port);
    let h = hosts_of(&d, "dns");
    assert_eq!(
        (h["name"].as_str(), h["state"].as_str()),
        (Some(name.as_str()), Some("ok")),
        "{h:#}"
    );
    assert_eq!(h["addresses"], serde_json::json!(["127.0.0.2"]), "{h:#}");

    // A broken edit on disk: not in force, and host name refreshes go on
    // re-applying the policy that is (its sources as they were loaded).
    let before = d.status()["reload"]["last_time"].clone();
    d.write_policy("dns", "[identity]\nname = \"dns\"\n[network]\nallow = [\n");
    let broken = d.wait_failed_reload(&before)["reload"]["last_errors"][0].clone();

    // The name moves: within a refresh interval the new address is allowed
    // and the old one denied.
    let g = d.generation();
    let moved = Instant::now();
    hosts.set(&[("127.0.0.3", name.as_str())]);
    wait_for(Duration::from_secs(5), "the new address", || {
        (hosts_of(&d, "dns")["addresses"] == serde_json::json!(["127.0.0.3"])).then_some(())
    });
    d.wait_generation_past(g, Duration::from_secs(5));
    eprintln!("address change applied after {:?}", moved.elapsed());
    let r = &d.status()["reload"];
    assert_eq!(
        (&r["last_trigger"], &r["last_ok"]),
        (&Value::from("dns"), &Value::Bool(true)),
        "{r:#}"
    );
    assert_eq!(
        r["policy_dir_errors"][0], broken,
        "the broken file stays reported: {r:#}"
    );
    d.assert_connect_allowed("dns", "127.0.0.3", port);
    d.assert_connect_denied(&tail, "dns", "127.0.0.2", port);
    let show = String::from_utf8_lossy(&d.cli(&["policy", "show", "dns"]).stdout).into_owned();
    assert!(
        show.contains(&format!("host {name} -> 127.0.0.3 (resolved")),
        "{show}"
    );
    explain_follows(&d, &name, port);

    kept_then_expired(&d, &tail, &hosts, port);
    drop(hosts);
}
