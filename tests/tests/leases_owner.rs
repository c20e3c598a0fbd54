//! Who may renew a lease and who sees its token: agents renew only leases
//! agents requested, an approval-scoped lease only up to its approved end,
//! and a token goes only to the caller holding the request's secret.
//! Every refusal leaves the lease and the kernel as they were: the grant
//! still ends on time (EPERM inside the identity, with the event; a
//! success outside it).

use std::time::{Duration, Instant};

use corral_tests::{lease::*, *};
use serde_json::{Value, json};

/// One call on the agent socket as a process of `agent`; (status, body).
fn call(lab: &Lab, method: &str, path: &str, body: &str, secret: Option<&str>) -> (u64, Value) {
    let sock = lab.sock();
    let r = match secret {
        Some(s) => lab.d().probe_as(
            "agent",
            &["lease-call-secret", &sock, method, path, body, s],
        ),
        None => lab
            .d()
            .probe_as("agent", &["lease-call", &sock, method, path, body]),
    };
    let op = if secret.is_some() {
        "lease-call-secret"
    } else {
        "lease-call"
    };
    let a = r.step(op, 0);
    (a["status"].as_u64().unwrap_or(0), a["body"].clone())
}

fn error_of(v: &Value) -> &str {
    v["error"].as_str().unwrap_or("")
}

/// The grant on `port` is gone once `at` has passed: EPERM inside with
/// the denial event, success outside.
fn assert_grant_ended(lab: &Lab, port: u16, at: Instant) {
    if let Some(left) = at.checked_duration_since(Instant::now()) {
        std::thread::sleep(left + Duration::from_millis(700));
    }
    let tail = lab.d().tail(Some("agent"));
    let ev = lab
        .d()
        .assert_connect_denied(&tail, "agent", "127.0.0.1", port);
    assert_eq!(ev["leases"], json!([]), "{ev:#}");
    probe_outside(&["connect", "127.0.0.1", &port.to_string()]).assert_ok("connect", 0);
}

#[test]
fn agent_sees_only_its_own_requests_token() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let lab = Lab::agent(port);
    // A request that waits for approval: answered with its secret.
    let (st, req) = call(
        &lab,
        "POST",
        "/v1/leases",
        &call_body(&["refunds:issue"], "20s", json!({})),
        None,
    );
    assert_eq!(st, 202, "{req:#}");
    let id = req["id"].as_str().expect("id").to_string();
    let secret = req["request_secret"].as_str().expect("secret").to_string();
    assert_eq!(secret.len(), 64);
    assert!(lab.d().cli(&["lease", "approve", &id]).status.success());
    let wait = format!("/v1/leases/{id}/wait?timeout=1s");

    // Another process of the same identity, without the secret or with a
    // wrong one: refused, no token.
    for bad in [None, Some("00".repeat(32))] {
        let (st, v) = call(&lab, "GET", &wait, "", bad.as_deref());
        assert_eq!(st, 403, "{v:#}");
        assert!(error_of(&v).contains("not this caller's request"), "{v:#}");
        assert!(v.get("token").is_none(), "{v:#}");
    }
    // The secret is what makes it one's own (any process that holds it).
    let (st, v) = call(&lab, "GET", &wait, "", Some(&secret));
    assert_eq!(st, 200, "{v:#}");
    assert_eq!(v["state"], "active");
    assert!(v["token"].as_str().is_some(), "{v:#}");
    // The operator sees it too; lists and shows carry no token.
    let op = lab.json(&["lease", "show", &id, "--json"]);
    assert!(op.get("token").is_none());
    let (st, list) = call(&lab, "GET", "/v1/leases", "", None);
    assert_eq!(st, 200);
    assert!(list[0].get("token").is_none(), "{list:#}");
    assert!(list[0].get("request_secret").is_none(), "{list:#}");
    // The store keeps only a hash of the secret.
    let store = std::fs::read_to_string(lab.dirs.state_dir.join("leases.json")).unwrap();
    assert!(!store.contains(&secret));
}

#[test]
fn agent_cannot_renew_an_operator_lease_and_its_grant_ends_on_time() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let lab = Lab::agent(port);
    let v = lab.issue("agent", &["db:write"], "3s");
    let ends = Instant::now() + Duration::from_secs(3);
    let id = v["id"].as_str().unwrap();
    let (st, r) = call(
        &lab,
        "POST",
        &format!("/v1/leases/{id}/renew"),
        r#"{"ttl":"1m"}"#,
        None,
    );
    assert_eq!(st, 403, "{r:#}");
    assert!(
        error_of(&r).contains("issued by the operator: only the operator renews it"),
        "{r:#}"
    );
    let after = lab.json(&["lease", "show", id, "--json"]);
    assert_eq!(after["expires"], v["expires"]);
    assert_eq!(after["renewals"], 0);
    // Nothing reached the kernel: the grant still ends at the issued end.
    assert_grant_ended(&lab, port, ends);
}

#[test]
fn agent_renews_agent_leases_with_the_token_for_the_owner_only() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let ps = port.to_string();
    let lab = Lab::agent(port);
    let (st, v) = call(
        &lab,
        "POST",
        "/v1/leases",
        &call_body(&["db:write"], "2s", json!({})),
        None,
    );
    assert_eq!(st, 200, "{v:#}");
    let id = v["id"].as_str().unwrap().to_string();
    let secret = v["request_secret"].as_str().unwrap().to_string();
    let renew = format!("/v1/leases/{id}/renew");
    // Another process of the identity may renew (an agent's lease), but
    // the answer carries no token.
    let (st, r) = call(&lab, "POST", &renew, r#"{"ttl":"10s"}"#, None);
    assert_eq!(st, 200, "{r:#}");
    assert!(r.get("token").is_none(), "{r:#}");
    // The owner gets the token, and the kernel the new end.
    let (st, r) = call(&lab, "POST", &renew, r#"{"ttl":"20s"}"#, Some(&secret));
    assert_eq!(st, 200, "{r:#}");
    assert!(r["token"].as_str().is_some(), "{r:#}");
    assert_eq!(r["renew_capped"], false);
    std::thread::sleep(Duration::from_millis(2600));
    lab.d()
        .probe_as("agent", &["connect", "127.0.0.1", &ps])
        .assert_ok("connect", 0);
}

#[test]
fn approval_scoped_renewal_stops_at_the_approved_end() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let lab = Lab::agent(port);
    let (st, req) = call(
        &lab,
        "POST",
        "/v1/leases",
        &call_body(&["refunds:issue"], "3s", json!({})),
        None,
    );
    assert_eq!(st, 202, "{req:#}");
    let id = req["id"].as_str().unwrap().to_string();
    let secret = req["request_secret"].as_str().unwrap().to_string();
    assert!(lab.d().cli(&["lease", "approve", &id]).status.success());
    let ends = Instant::now() + Duration::from_secs(3);
    let approved = lab.json(&["lease", "show", &id, "--json"]);
    let (st, r) = call(
        &lab,
        "POST",
        &format!("/v1/leases/{id}/renew"),
        r#"{"ttl":"1m"}"#,
        Some(&secret),
    );
    assert_eq!(st, 200, "{r:#}");
    assert_eq!(r["renew_capped"], true, "{r:#}");
    assert_eq!(r["capped_by"], "approval", "{r:#}");
    assert!(
        r["note"].as_str().unwrap_or("").contains("new approval"),
        "{r:#}"
    );
    assert_eq!(r["expires"], approved["expires"], "{r:#}");
    assert_grant_ended(&lab, port, ends);
}
