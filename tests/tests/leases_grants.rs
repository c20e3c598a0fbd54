//! Short-lived credential leases in the kernel: grants that open a
//! connect and expire on their own (also with no daemon), revoke, denials
//! that carry the live leases, the anomaly response (freeze, revoke, thaw)
//! and restarts (issuing and tokens: `leases.rs`).
//!
//! Every denial shown here is EPERM inside the identity, a success outside
//! it, and an event.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use corral_tests::{lease::*, *};
use serde_json::json;

#[test]
fn grant_opens_a_connect_and_expires_in_the_kernel_with_the_daemon_stopped() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let ps = port.to_string();
    let mut lab = Lab::agent(port);
    let tail = lab.d().tail(Some("agent"));
    // No lease: denied, with the event; fine outside.
    let ev = lab
        .d()
        .assert_connect_denied(&tail, "agent", "127.0.0.1", port);
    assert_eq!(ev["leases"], json!([]));

    let v = lab.issue("agent", &["db:write"], "3s");
    let issued = Instant::now();
    // The agent connects now, then again after the lease's end.
    let child = lab.spawn_probe(
        "agent",
        &[
            "pid",
            "connect",
            "127.0.0.1",
            &ps,
            "sleep",
            "4.5",
            "connect",
            "127.0.0.1",
            &ps,
        ],
    );
    std::thread::sleep(Duration::from_millis(700));
    lab.stop();
    let r = child.finish_within(PROBE_WAIT);
    assert_eq!(
        r.step("connect", 0)["ok"],
        true,
        "granted while the lease lives: {r:#?}"
    );
    assert_eq!(
        r.step("connect", 1)["errno"],
        EPERM,
        "expired grant must stop working with no daemon: {r:#?}"
    );
    assert!(issued.elapsed() > Duration::from_secs(3));
    probe_outside(&["connect", "127.0.0.1", &ps]).assert_ok("connect", 0);
    // Back up: the lease is recorded as expired, and the event of a new
    // denial lists no lease.
    lab.restart();
    let l = lab.json(&["lease", "show", v["id"].as_str().unwrap(), "--json"]);
    assert_eq!(l["state"], "expired", "{l:#}");
    let tail = lab.d().tail(Some("agent"));
    let ev = lab
        .d()
        .assert_connect_denied(&tail, "agent", "127.0.0.1", port);
    assert_eq!(ev["leases"], json!([]));
}
#[test]
fn revoke_closes_the_grant_and_is_measured() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let ps = port.to_string();
    let lab = Lab::agent(port);
    let v = lab.issue("agent", &["db:write"], "30s");
    let id = v["id"].as_str().unwrap().to_string();
    let tail = lab.d().tail(Some("agent"));
    let (r, latency_us, rv) = lab.revoke_and_watch(&id, port);
    let w = r.step("watch-deny", 0);
    let last_ok = w["last_ok_ns"].as_u64().unwrap_or(0) as u128;
    let t0 = w["flip_ns"].as_u64().unwrap_or(0) as u128 - latency_us * 1000;
    eprintln!(
        "MEASURE revoke -> kernel deny: first EPERM {latency_us} us after `corral lease revoke` \
         started (CLI process included; last allowed connect {} us after it); daemon: store fsync \
         and ruleset flip done {} us after receiving the request",
        last_ok.saturating_sub(t0) as i128 / 1000,
        rv["kernel_applied_us"]
    );
    let seen = tail.drain_for(Duration::from_millis(1500));
    let ev = seen
        .iter()
        .find(|e| e["kind"] == "net")
        .expect("denial event");
    assert_net_event(ev, "agent", r.pid(), "connect", "127.0.0.1", port);
    assert_eq!(
        ev["leases"],
        json!([]),
        "the revoked lease is no longer live: {ev:#}"
    );
    let lev = seen
        .iter()
        .find(|e| e["kind"] == "lease" && e["lease"]["action"] == "revoke")
        .expect("lease event");
    assert_eq!(lev["lease"]["lease"], id);
    probe_outside(&["connect", "127.0.0.1", &ps]).assert_ok("connect", 0);
}
#[test]
fn denial_events_carry_the_live_leases() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let no = tcp_listener("127.0.0.1:0");
    let lab = Lab::agent(port);
    let a = lab.issue("agent", &["tickets:read"], "30s");
    let b = lab.issue("agent", &["db:write", "tickets:read"], "30s");
    let tail = lab.d().tail(Some("agent"));
    let ev = lab
        .d()
        .assert_connect_denied(&tail, "agent", "127.0.0.1", no);
    assert_eq!(
        ev["leases"],
        json!([
            { "id": a["id"], "scopes": ["tickets:read"] },
            { "id": b["id"], "scopes": ["db:write", "tickets:read"] },
        ]),
        "{ev:#}"
    );
    let show = lab.json(&["lease", "show", a["id"].as_str().unwrap(), "--json"]);
    assert_eq!(show["denials"], 1, "{show:#}");
    assert_eq!(show["recent_denials"][0]["net"]["port"], no);
    // `corral tail` (human form) shows them too.
    let out = lab.d().cli(&["lease", "show", a["id"].as_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!(
            "leases={}(tickets:read)",
            a["id"].as_str().unwrap()
        )),
        "{out:?}"
    );
}
#[test]
fn anomaly_freezes_the_agent_and_thaw_releases_it() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let ok = tcp_listener("127.0.0.1:0");
    let no = tcp_listener("127.0.0.1:0");
    let leases = format!(
        "{}[anomaly]\nmax_denials = 10\nwindow = \"30s\"\nactions = [\"alert\", \"revoke-leases\", \"freeze\"]\n",
        leases_section(port, port)
    );
    let allow = format!("\"tcp://127.0.0.1:{ok}\"");
    let lab = Lab::start(&[("agent", &|s: &Path| policy("agent", s, &allow, &leases))]);
    let v = lab.issue("agent", &["db:write"], "50s");
    let tail = lab.d().tail(Some("agent"));
    let (ns, oks) = (no.to_string(), ok.to_string());
    let child = lab.spawn_probe(
        "agent",
        &[
            "pid",
            "burst",
            "127.0.0.1",
            &ns,
            // Just over the threshold: what is left of the burst after a
            // thaw must not trip it again.
            "12",
            "sleep",
            "1",
            "connect",
            "127.0.0.1",
            &oks,
        ],
    );
    let net = tail.expect(|e| e["kind"] == "net");
    assert_eq!(net["net"]["port"], no);
    assert_eq!(
        net["leases"][0]["id"], v["id"],
        "denials before the trip carry the lease"
    );
    let alert = tail.expect(|e| e["kind"] == "anomaly" && e["anomaly"]["action"] == "alert");
    assert_eq!(alert["anomaly"]["denials"], 11, "{alert:#}");
    let fr = tail.expect(|e| e["kind"] == "anomaly" && e["anomaly"]["action"] == "freeze");
    assert_eq!(fr["anomaly"]["frozen"], true, "{fr:#}");
    eprintln!(
        "MEASURE threshold -> freeze: cgroup.freeze written {} us, cgroup frozen {} us after the \
         crossing denial's kernel timestamp",
        fr["anomaly"]["threshold_to_freeze_written_us"], fr["anomaly"]["threshold_to_frozen_us"]
    );
    let rv = tail.expect(|e| e["kind"] == "anomaly" && e["anomaly"]["action"] == "revoke-leases");
    assert_eq!(rv["anomaly"]["leases"], json!([v["id"]]));
    // One response per window: denials in flight when it froze do not trip again.
    let again = tail.drain_for(Duration::from_millis(500));
    assert!(!again.iter().any(|e| e["kind"] == "anomaly"), "{again:#?}");
    let cg = lab.dirs.parent_cgroup().join("agent");
    assert_eq!(
        std::fs::read_to_string(cg.join("cgroup.freeze"))
            .unwrap()
            .trim(),
        "1"
    );
    assert!(frozen(&cg));
    assert_eq!(
        lab.json(&["lease", "show", v["id"].as_str().unwrap(), "--json"])["state"],
        "revoked"
    );
    // Still frozen a while later: the probe cannot finish.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(frozen(&cg));
    probe_outside(&["connect", "127.0.0.1", &ns]).assert_ok("connect", 0);
    let out = lab.d().cli(&["thaw", "agent"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!frozen(&cg));
    let r = child.finish_within(PROBE_WAIT);
    assert!(
        r.step("burst", 0)["eperm"].as_u64().unwrap() >= 11,
        "{r:#?}"
    );
    assert_eq!(
        r.step("connect", 0)["ok"],
        true,
        "thawed agent runs again: {r:#?}"
    );
    tail.expect(|e| e["kind"] == "anomaly" && e["anomaly"]["action"] == "thaw");
}
#[test]
fn restart_keeps_leases_and_their_grants_without_a_gap() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let mut lab = Lab::agent(port);
    let v = lab.issue("agent", &["db:write"], "40s");
    let target = format!("127.0.0.1:{port}=allow");
    let child = lab.spawn_probe("agent", &["loop", &target, "4"]);
    std::thread::sleep(Duration::from_millis(800));
    lab.stop();
    std::thread::sleep(Duration::from_millis(500));
    lab.restart();
    let r = child.finish_within(PROBE_WAIT);
    let lp = r.step("loop", 0);
    assert!(lp["attempts"].as_u64().unwrap_or(0) > 100, "{r:#?}");
    assert_eq!(
        lp["wrong"], 0,
        "the grant must hold across the restart: {r:#?}"
    );
    let l = lab.json(&["lease", "list", "--json"]);
    assert_eq!(l[0]["id"], v["id"], "{l:#}");
    assert_eq!(l[0]["state"], "active");
    // The same key: the old token still verifies through the daemon.
    let out = lab
        .d()
        .cli(&["lease", "verify", v["token"].as_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");

    // A corrupt store is refused, never silently emptied.
    lab.stop();
    let store = lab.dirs.state_dir.join("leases.json");
    let good = std::fs::read(&store).expect("store");
    std::fs::write(&store, b"{\"version\":1,\"leases\":[").expect("corrupt");
    let err = Daemon::start_with(lab.dirs.clone())
        .err()
        .expect("must refuse");
    assert!(
        err.contains("refusing to start") && err.contains("--reset-leases"),
        "{err}"
    );
    std::fs::write(&store, good).expect("restore");
    lab.restart();
    assert_eq!(lab.json(&["lease", "list", "--json"])[0]["id"], v["id"]);
}
