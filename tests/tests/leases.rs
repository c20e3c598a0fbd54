//! Short-lived credential leases, issuing them: attested issue on the
//! agent socket, token verification, TTL caps, approval, suspension and
//! rotated token files (grants in the kernel, denials, the anomaly response
//! and restarts: `leases_grants.rs`).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use corral_tests::{lease::*, *};
use serde_json::{Value, json};

#[test]
fn attested_issue_own_identity_only_and_token_verifies() {
    if !is_root() {
        return;
    }
    let p = tcp_listener("127.0.0.1:0");
    let leases = leases_section(p, p);
    let lab = Lab::start(&[
        ("agent", &|s: &Path| policy("agent", s, "", &leases)),
        ("other", &|s: &Path| {
            policy("other", s, "", "[leases]\nscopes = [\"misc\"]\n")
        }),
    ]);
    let sock = lab.sock();
    let body = call_body(&["tickets:read"], "30s", json!({}));
    let r = lab.d().probe_as(
        "agent",
        &["pid", "lease-call", &sock, "POST", "/v1/leases", &body],
    );
    let ans = &r.step("lease-call", 0);
    assert_eq!(ans["status"], 200, "{r:#?}");
    let v = &ans["body"];
    assert_eq!(v["identity"], "agent");
    assert_eq!(v["state"], "active");
    assert_eq!(v["requested_by"]["kind"], "agent");
    assert_eq!(v["requested_by"]["pid"].as_u64(), Some(r.pid()), "{v:#}");
    let token = v["token"].as_str().expect("token").to_string();

    // Offline verification with only the public key (no daemon involved).
    let pubkey = lab.dirs.state_dir.join("lease-signing-key.pub.pem");
    let out = verify_offline(&pubkey, &token, true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vv: Value = serde_json::from_slice(&out.stdout).expect("json");
    let cg_id = std::fs::metadata(lab.dirs.parent_cgroup().join("agent"))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .expect("cgroup");
    assert_eq!(vv["claims"]["identity"], "agent");
    assert_eq!(vv["claims"]["cgroup_id"].as_u64(), Some(cg_id));
    assert_eq!(vv["claims"]["scopes"], json!(["tickets:read"]));
    assert_eq!(vv["claims"]["jti"], v["id"]);

    // Another identity's process asking for `agent`: refused.
    let steal = call_body(&["tickets:read"], "30s", json!({ "identity": "agent" }));
    let r = lab.d().probe_as(
        "other",
        &["lease-call", &sock, "POST", "/v1/leases", &steal],
    );
    assert_eq!(r.step("lease-call", 0)["status"], 403, "{r:#?}");
    // ... or for a scope its own policy does not list.
    let r = lab
        .d()
        .probe_as("other", &["lease-call", &sock, "POST", "/v1/leases", &body]);
    assert_eq!(r.step("lease-call", 0)["status"], 403, "{r:#?}");
    assert!(
        r.step("lease-call", 0)["body"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("not in the [leases] scopes")
    );
    // An untagged process: not an agent at all.
    let r = probe_outside(&["lease-call", &sock, "POST", "/v1/leases", &body]);
    assert_eq!(r.step("lease-call", 0)["status"], 403, "{r:#?}");
    // The agent socket never approves or issues for others.
    let r = lab.d().probe_as(
        "agent",
        &[
            "lease-call",
            &sock,
            "POST",
            &format!("/v1/leases/{}/approve", v["id"].as_str().unwrap()),
            "",
        ],
    );
    assert_eq!(r.step("lease-call", 0)["status"], 403, "{r:#?}");
}
#[test]
fn caller_that_exits_before_attestation_is_refused() {
    if !is_root() {
        return;
    }
    let p = tcp_listener("127.0.0.1:0");
    let lab = Lab::agent(p);
    let body = call_body(&["tickets:read"], "30s", json!({}));
    let r = lab
        .d()
        .probe_as("agent", &["lease-exit-race", &lab.sock(), &body]);
    let ans = r.step("lease-exit-race", 0);
    assert_eq!(ans["status"], 403, "{r:#?}");
    assert!(
        ans["body"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("has exited"),
        "{ans:#}"
    );
    let list = lab.json(&["lease", "list", "--json", "--all"]);
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list:#}");
}
#[test]
fn ttl_and_renew_are_capped_by_max_ttl() {
    if !is_root() {
        return;
    }
    let p = tcp_listener("127.0.0.1:0");
    let lab = Lab::agent(p);
    let v = lab.issue("agent", &["tickets:read"], "1h");
    assert_eq!(v["ttl_capped"], true, "{v:#}");
    assert_eq!(v["ttl_s"], 60);
    let pubkey = lab.json(&["lease", "pubkey", "--jwk"]);
    let key = lab.dirs.state_dir.join("jwks.json");
    std::fs::write(&key, pubkey.to_string()).expect("key");
    let claims = |token: &str| {
        let out = verify_offline(&key, token, true);
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        v["claims"].clone()
    };
    let c = claims(v["token"].as_str().expect("token"));
    assert_eq!(
        c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
        60,
        "{c:#}"
    );
    std::thread::sleep(Duration::from_millis(1100));
    let id = v["id"].as_str().unwrap();
    let r = lab.json(&["lease", "renew", id, "--ttl", "10m", "--json"]);
    assert_eq!(r["renew_capped"], true, "{r:#}");
    let c2 = claims(r["token"].as_str().expect("token"));
    assert_eq!(c2["iat"], c["iat"], "renewal keeps the issue time");
    assert_eq!(
        c2["exp"].as_u64().unwrap() - c2["iat"].as_u64().unwrap(),
        60,
        "{c2:#}"
    );
    // A shorter renewal than what is left never shortens the lease.
    let r = lab.json(&["lease", "renew", id, "--ttl", "5s", "--json"]);
    assert_eq!(r["expires"], v["expires"]);
}
#[test]
fn token_fails_after_tampering_and_after_expiry() {
    if !is_root() {
        return;
    }
    let p = tcp_listener("127.0.0.1:0");
    let lab = Lab::agent(p);
    let v = lab.issue("agent", &["tickets:read"], "2s");
    let token = v["token"].as_str().expect("token").to_string();
    let pem = lab.dirs.state_dir.join("key.pem");
    let out = lab.d().cli(&["lease", "pubkey"]);
    std::fs::write(&pem, &out.stdout).expect("pem");
    let verify = |t: &str| verify_offline(&pem, t, false);
    assert!(verify(&token).status.success());
    // Change one character of the claims: scopes would read differently.
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let mut claims: Vec<u8> = parts[1].bytes().collect();
    claims[10] = if claims[10] == b'A' { b'B' } else { b'A' };
    parts[1] = String::from_utf8(claims).unwrap();
    let tampered = parts.join(".");
    let out = verify(&tampered);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid"),
        "{out:?}"
    );
    std::thread::sleep(Duration::from_millis(2500));
    let out = verify(&token);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expired"),
        "{out:?}"
    );
}
#[test]
fn approval_approve_deny_and_timeout() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let lab = Lab::agent(port);
    let sock = lab.sock();
    let body = call_body(&["refunds:issue"], "20s", json!({ "wait": "8s" }));
    let pending_id = |lab: &Lab| {
        wait_for(Duration::from_secs(5), "a pending request", || {
            let l = lab.json(&["lease", "list", "--json"]);
            let p = l.as_array()?.iter().find(|x| x["state"] == "pending")?;
            Some(p["id"].as_str().unwrap().to_string())
        })
    };
    // Approved while the requester waits: it gets the token.
    let child = lab.spawn_probe("agent", &["lease-call", &sock, "POST", "/v1/leases", &body]);
    let id = pending_id(&lab);
    let out = lab.d().cli(&["lease", "approve", &id]);
    assert!(out.status.success(), "{out:?}");
    let r = child.finish_within(PROBE_WAIT);
    let a = r.step("lease-call", 0);
    assert_eq!(a["status"], 200, "{r:#?}");
    assert_eq!(a["body"]["state"], "active");
    assert!(a["body"]["token"].as_str().is_some());
    assert_eq!(a["body"]["decided_by"], "operator");
    assert!(
        a["body"]["warnings"][0]
            .as_str()
            .unwrap_or("")
            .contains("NOT ENFORCED"),
        "file grants are reported as not enforced: {a:#}"
    );
    // Denied.
    let child = lab.spawn_probe("agent", &["lease-call", &sock, "POST", "/v1/leases", &body]);
    let id = pending_id(&lab);
    assert!(lab.d().cli(&["lease", "deny", &id]).status.success());
    let r = child.finish_within(PROBE_WAIT);
    assert_eq!(r.step("lease-call", 0)["status"], 403, "{r:#?}");
    assert_eq!(r.step("lease-call", 0)["body"]["state"], "denied");
    // Nobody decides: denied at approval_timeout (2s).
    let r = lab
        .d()
        .probe_as("agent", &["lease-call", &sock, "POST", "/v1/leases", &body]);
    let a = r.step("lease-call", 0);
    assert_eq!(a["body"]["state"], "denied", "{r:#?}");
    assert_eq!(a["body"]["end_reason"], "approval timed out");
    // The operator's own issue needs no approval.
    let v = lab.issue("agent", &["refunds:issue"], "5s");
    assert_eq!(v["state"], "active");
}
#[test]
fn suspended_identity_cannot_self_issue_until_thaw() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let lab = Lab::agent(port);
    lab.issue("agent", &["tickets:read"], "30s");
    let out = lab.d().cli(&["lease", "revoke", "--identity", "agent"]);
    assert!(out.status.success(), "{out:?}");
    let body = call_body(&["tickets:read"], "30s", json!({}));
    let r = lab.d().probe_as(
        "agent",
        &["lease-call", &lab.sock(), "POST", "/v1/leases", &body],
    );
    assert_eq!(r.step("lease-call", 0)["status"], 403, "{r:#?}");
    assert!(lab.d().cli(&["thaw", "agent"]).status.success());
    let r = lab.d().probe_as(
        "agent",
        &["lease-call", &lab.sock(), "POST", "/v1/leases", &body],
    );
    assert_eq!(r.step("lease-call", 0)["status"], 200, "{r:#?}");
}
#[test]
fn measure_lease_issue_rate() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let leases = leases_section(port, port).replace("max_ttl = \"1m\"", "max_ttl = \"10m\"");
    // Measures the service, not the per-identity rate limit.
    let lab = Lab::start_opts(
        &[("agent", &|s: &Path| policy("agent", s, "", &leases))],
        &["--lease-rate", "1000000"],
    );
    let plain = call_body(&["tickets:read"], "5m", json!({}));
    let granted = call_body(&["db:write"], "5m", json!({}));
    let r = lab.d().probe_as(
        "agent",
        &[
            "lease-bench",
            &lab.sock(),
            &plain,
            "200",
            "lease-bench",
            &lab.sock(),
            &granted,
            "200",
        ],
    );
    let a = r.step("lease-bench", 0);
    let b = r.step("lease-bench", 1);
    assert_eq!(a["ok"], true, "{r:#?}");
    assert_eq!(b["ok"], true, "{r:#?}");
    eprintln!(
        "MEASURE attested lease issue over the agent socket: {} /s without grants, {} /s with a \
         kernel grant each (store fsync + ruleset flip per lease)",
        a["per_sec"], b["per_sec"]
    );
    let l = lab.json(&["lease", "list", "--json"]);
    assert_eq!(l.as_array().map(Vec::len), Some(400));
    let start = Instant::now();
    let n = 50;
    for x in l.as_array().unwrap().iter().take(n) {
        let out = lab.d().cli(&["lease", "revoke", x["id"].as_str().unwrap()]);
        assert!(out.status.success());
    }
    eprintln!(
        "MEASURE revoke via CLI: {:.1} ms each",
        start.elapsed().as_secs_f64() * 1e3 / n as f64
    );
}
#[test]
fn rotated_token_file_is_reissued_at_half_life() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let leases = leases_section(port, port).replacen(
        "[[leases.grant]]",
        "[leases.rotate]\nscopes = [\"tickets:read\"]\nttl = \"4s\"\n[[leases.grant]]",
        1,
    );
    let lab = Lab::start(&[("agent", &|s: &Path| policy("agent", s, "", &leases))]);
    let file = lab.dirs.state_dir.join("tokens/agent.jwt");
    let read = || {
        wait_for(Duration::from_secs(5), "the token file", || {
            let t = std::fs::read_to_string(&file).ok()?;
            Some(t.trim().to_string())
        })
    };
    let first = read();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let out = lab.d().cli(&["lease", "verify", "--json", &first]);
    assert!(out.status.success(), "{out:?}");
    let c1: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c1["claims"]["scopes"], json!(["tickets:read"]));
    // Half of 4s later a new lease (and token) replaces it in the file.
    std::thread::sleep(Duration::from_millis(2600));
    let second = read();
    assert_ne!(first, second);
    let out = lab.d().cli(&["lease", "verify", "--json", &second]);
    let c2: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(c1["claims"]["jti"], c2["claims"]["jti"]);
    assert!(c2["claims"]["exp"].as_u64() > c1["claims"]["exp"].as_u64());
}
