//! Short-lived credential leases: attested issue on the agent socket, token
//! verification, kernel-enforced grants that expire on their own, revoke,
//! approval, correlation of denials, the anomaly response, restarts.
//!
//! Every denial shown here is EPERM inside the identity, a success outside
//! it, and an event.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use corral_tests::*;
use serde_json::{Value, json};

/// A daemon whose policy may name its own lease socket (which sits beside
/// the control socket), so agents may connect to it under unix rules.
/// A policy file: its name and its text, given the lease socket's path.
type PolicyText<'a> = (&'a str, &'a dyn Fn(&Path) -> String);

struct Lab {
    d: Option<Daemon>,
    dirs: Dirs,
    _base: tempfile::TempDir,
}

impl Lab {
    fn start(policies: &[PolicyText<'_>]) -> Lab {
        let base = tempfile::tempdir().expect("tempdir");
        let dirs = Dirs::new(base.path());
        let sock = lease_sock(&dirs);
        for (name, text) in policies {
            std::fs::write(dirs.policy_dir.join(format!("{name}.toml")), text(&sock))
                .expect("policy");
        }
        let d = Daemon::start_with(dirs.clone()).expect("daemon did not start");
        Lab {
            d: Some(d),
            dirs,
            _base: base,
        }
    }

    fn d(&self) -> &Daemon {
        self.d.as_ref().expect("daemon running")
    }

    fn sock(&self) -> String {
        lease_sock(&self.dirs).display().to_string()
    }

    /// Stops the daemon, keeping pins (enforcement goes on).
    fn stop(&mut self) {
        let d = self.d.take().expect("running");
        d.stop_keep_pins();
    }

    fn restart(&mut self) {
        assert!(self.d.is_none());
        self.d = Some(Daemon::start_with(self.dirs.clone()).expect("restart"));
    }

    /// `corral …` with the given args; JSON stdout.
    fn json(&self, args: &[&str]) -> Value {
        self.d().cli_json(args)
    }

    fn issue(&self, identity: &str, scopes: &[&str], ttl: &str) -> Value {
        let mut args = vec![
            "lease",
            "issue",
            "--identity",
            identity,
            "--ttl",
            ttl,
            "--json",
        ];
        for s in scopes {
            args.extend(["--scope", s]);
        }
        self.json(&args)
    }

    /// The probe, in the background, as `identity`.
    fn spawn_probe(&self, identity: &str, steps: &[&str]) -> Child {
        Command::new(corral_bin())
            .arg("--socket")
            .arg(&self.dirs.socket)
            .args(["run", "--identity", identity, "--"])
            .arg(probe_bin())
            .args(steps)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("probe")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.d.is_none() {
            cleanup(&self.dirs);
        }
    }
}

/// Waits (at most 30 s) for a background probe; a hung one fails the test
/// instead of hanging it.
fn finish(mut child: Child) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("probe");
            panic!("probe did not finish: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("probe")
}

fn lease_sock(dirs: &Dirs) -> PathBuf {
    dirs.socket.with_file_name("lease.sock")
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A policy with leases; `grants` are `[[leases.grant]]` bodies.
fn policy(name: &str, sock: &Path, extra_allow: &str, leases: &str) -> String {
    format!(
        "[identity]\nname = \"{name}\"\n[network]\nallow = [{extra_allow}]\nunix = [\"{}\"]\n{leases}\n",
        sock.display()
    )
}

fn leases_section(port: u16, approval_port: u16) -> String {
    format!(
        "[leases]\nmax_ttl = \"1m\"\nscopes = [\"tickets:read\", \"db:write\", \"refunds:issue\"]\n\
         approval = [\"refunds:issue\"]\napproval_timeout = \"2s\"\n\
         [[leases.grant]]\nscope = \"db:write\"\nnetwork = [\"tcp://127.0.0.1:{port}\"]\n\
         [[leases.grant]]\nscope = \"refunds:issue\"\nnetwork = [\"tcp://127.0.0.1:{approval_port}\"]\n\
         files = {{ write = [\"/srv/refunds/\"] }}\n"
    )
}

fn call_body(scopes: &[&str], ttl: &str, extra: Value) -> String {
    let mut b = json!({ "scopes": scopes, "ttl": ttl });
    if let (Some(o), Some(e)) = (b.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    b.to_string()
}

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
    let out = Command::new(corral_bin())
        .args([
            "--socket",
            "/nonexistent/corral.sock",
            "lease",
            "verify",
            "--json",
            "--pubkey",
        ])
        .arg(&pubkey)
        .arg(&token)
        .output()
        .expect("verify");
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
    let leases = leases_section(p, p);
    let lab = Lab::start(&[("agent", &|s: &Path| policy("agent", s, "", &leases))]);
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
    let leases = leases_section(p, p);
    let lab = Lab::start(&[("agent", &|s: &Path| policy("agent", s, "", &leases))]);
    let v = lab.issue("agent", &["tickets:read"], "1h");
    assert_eq!(v["ttl_capped"], true, "{v:#}");
    assert_eq!(v["ttl_s"], 60);
    let pubkey = lab.json(&["lease", "pubkey", "--jwk"]);
    let key = lab.dirs.state_dir.join("jwks.json");
    std::fs::write(&key, pubkey.to_string()).expect("key");
    let claims = |token: &str| {
        let out = Command::new(corral_bin())
            .args([
                "--socket",
                "/nonexistent",
                "lease",
                "verify",
                "--json",
                "--pubkey",
            ])
            .arg(&key)
            .arg(token)
            .output()
            .expect("verify");
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
    let leases = leases_section(p, p);
    let lab = Lab::start(&[("agent", &|s: &Path| policy("agent", s, "", &leases))]);
    let v = lab.issue("agent", &["tickets:read"], "2s");
    let token = v["token"].as_str().expect("token").to_string();
    let pem = lab.dirs.state_dir.join("key.pem");
    let out = lab.d().cli(&["lease", "pubkey"]);
    std::fs::write(&pem, &out.stdout).expect("pem");
    let verify = |t: &str| {
        Command::new(corral_bin())
            .args(["--socket", "/nonexistent", "lease", "verify", "--pubkey"])
            .arg(&pem)
            .arg(t)
            .output()
            .expect("verify")
    };
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
fn grant_opens_a_connect_and_expires_in_the_kernel_with_the_daemon_stopped() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let ps = port.to_string();
    let leases = leases_section(port, port);
    let mut lab = Lab::start(&[("agent", &|s: &Path| policy("agent", s, "", &leases))]);
    let tail = lab.d().tail(Some("agent"));
    // No lease: denied, with the event; fine outside.
    let r = lab
        .d()
        .probe_as("agent", &["pid", "connect", "127.0.0.1", &ps]);
    assert_eq!(r.step("connect", 0)["errno"], EPERM, "{r:#?}");
    let ev = tail.expect(|e| e["kind"] == "net");
    assert_net_event(&ev, "agent", r.pid(), "connect", "127.0.0.1", port);
    assert_eq!(ev["leases"], json!([]));
    assert_eq!(
        probe_outside(&["connect", "127.0.0.1", &ps]).step("connect", 0)["ok"],
        true
    );

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
    let out = finish(child);
    let r = ProbeRun::from(out);
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
    assert_eq!(
        probe_outside(&["connect", "127.0.0.1", &ps]).step("connect", 0)["ok"],
        true
    );
    // Back up: the lease is recorded as expired, and the event of a new
    // denial lists no lease.
    lab.restart();
    let l = lab.json(&["lease", "show", v["id"].as_str().unwrap(), "--json"]);
    assert_eq!(l["state"], "expired", "{l:#}");
    let tail = lab.d().tail(Some("agent"));
    let r = lab
        .d()
        .probe_as("agent", &["pid", "connect", "127.0.0.1", &ps]);
    assert_eq!(r.step("connect", 0)["errno"], EPERM);
    let ev = tail.expect(|e| e["kind"] == "net");
    assert_net_event(&ev, "agent", r.pid(), "connect", "127.0.0.1", port);
    assert_eq!(ev["leases"], json!([]));
}

#[test]
fn revoke_closes_the_grant_and_is_measured() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let ps = port.to_string();
    let leases = leases_section(port, port);
    let lab = Lab::start(&[("agent", &|s: &Path| policy("agent", s, "", &leases))]);
    let v = lab.issue("agent", &["db:write"], "30s");
    let id = v["id"].as_str().unwrap().to_string();
    let tail = lab.d().tail(Some("agent"));
    let child = lab.spawn_probe(
        "agent",
        &[
            "pid",
            "connect",
            "127.0.0.1",
            &ps,
            "watch-deny",
            "127.0.0.1",
            &ps,
            "10",
        ],
    );
    std::thread::sleep(Duration::from_millis(800));
    let t0 = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let rv = lab.json(&["lease", "revoke", &id, "--json"]);
    let r = ProbeRun::from(finish(child));
    assert_eq!(r.step("connect", 0)["ok"], true, "{r:#?}");
    let w = r.step("watch-deny", 0);
    assert_eq!(w["ok"], true, "revoke must close the grant: {r:#?}");
    let flip = w["flip_ns"].as_u64().expect("flip") as u128;
    let latency_us = flip.saturating_sub(t0) / 1000;
    let last_ok = w["last_ok_ns"].as_u64().unwrap_or(0) as u128;
    eprintln!(
        "MEASURE revoke -> kernel deny: first EPERM {latency_us} us after `corral lease revoke` \
         started (CLI process included; last allowed connect {} us after it); daemon: store fsync \
         and ruleset flip done {} us after receiving the request",
        last_ok.saturating_sub(t0) as i128 / 1000,
        rv["kernel_applied_us"]
    );
    assert!(latency_us < 2_000_000, "{latency_us}");
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
    assert_eq!(
        probe_outside(&["connect", "127.0.0.1", &ps]).step("connect", 0)["ok"],
        true
    );
}

#[test]
fn approval_approve_deny_and_timeout() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let leases = leases_section(port, port);
    let lab = Lab::start(&[("agent", &|s: &Path| policy("agent", s, "", &leases))]);
    let sock = lab.sock();
    let body = call_body(&["refunds:issue"], "20s", json!({ "wait": "8s" }));
    let pending_id = |lab: &Lab| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let l = lab.json(&["lease", "list", "--json"]);
            if let Some(p) = l
                .as_array()
                .and_then(|a| a.iter().find(|x| x["state"] == "pending"))
            {
                return p["id"].as_str().unwrap().to_string();
            }
            assert!(Instant::now() < deadline, "no pending request");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Approved while the requester waits: it gets the token.
    let child = lab.spawn_probe("agent", &["lease-call", &sock, "POST", "/v1/leases", &body]);
    let id = pending_id(&lab);
    let out = lab.d().cli(&["lease", "approve", &id]);
    assert!(out.status.success(), "{out:?}");
    let r = ProbeRun::from(finish(child));
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
    let r = ProbeRun::from(finish(child));
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
fn denial_events_carry_the_live_leases() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let no = tcp_listener("127.0.0.1:0");
    let ns = no.to_string();
    let leases = leases_section(port, port);
    let lab = Lab::start(&[("agent", &|s: &Path| policy("agent", s, "", &leases))]);
    let a = lab.issue("agent", &["tickets:read"], "30s");
    let b = lab.issue("agent", &["db:write", "tickets:read"], "30s");
    let tail = lab.d().tail(Some("agent"));
    let r = lab
        .d()
        .probe_as("agent", &["pid", "connect", "127.0.0.1", &ns]);
    assert_eq!(r.step("connect", 0)["errno"], EPERM);
    let ev = tail.expect(|e| e["kind"] == "net");
    assert_net_event(&ev, "agent", r.pid(), "connect", "127.0.0.1", no);
    assert_eq!(
        ev["leases"],
        json!([
            { "id": a["id"], "scopes": ["tickets:read"] },
            { "id": b["id"], "scopes": ["db:write", "tickets:read"] },
        ]),
        "{ev:#}"
    );
    assert_eq!(
        probe_outside(&["connect", "127.0.0.1", &ns]).step("connect", 0)["ok"],
        true
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

fn frozen(cg: &Path) -> bool {
    std::fs::read_to_string(cg.join("cgroup.events"))
        .map(|s| s.lines().any(|l| l == "frozen 1"))
        .unwrap_or(false)
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
    assert_eq!(
        probe_outside(&["connect", "127.0.0.1", &ns]).step("connect", 0)["ok"],
        true
    );
    let out = lab.d().cli(&["thaw", "agent"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!frozen(&cg));
    let r = ProbeRun::from(finish(child));
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
fn suspended_identity_cannot_self_issue_until_thaw() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let leases = leases_section(port, port);
    let lab = Lab::start(&[("agent", &|s: &Path| policy("agent", s, "", &leases))]);
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
fn restart_keeps_leases_and_their_grants_without_a_gap() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let leases = leases_section(port, port);
    let mut lab = Lab::start(&[("agent", &|s: &Path| policy("agent", s, "", &leases))]);
    let v = lab.issue("agent", &["db:write"], "40s");
    let target = format!("127.0.0.1:{port}=allow");
    let child = lab.spawn_probe("agent", &["loop", &target, "4"]);
    std::thread::sleep(Duration::from_millis(800));
    lab.stop();
    std::thread::sleep(Duration::from_millis(500));
    lab.restart();
    let r = ProbeRun::from(finish(child));
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

#[test]
fn measure_lease_issue_rate() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let leases = leases_section(port, port).replace("max_ttl = \"1m\"", "max_ttl = \"10m\"");
    let lab = Lab::start(&[("agent", &|s: &Path| policy("agent", s, "", &leases))]);
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
    let _ = now_s();
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
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(t) = std::fs::read_to_string(&file) {
                return t.trim().to_string();
            }
            assert!(Instant::now() < deadline, "no token file");
            std::thread::sleep(Duration::from_millis(50));
        }
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
