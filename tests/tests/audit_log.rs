//! The audit log: written with no subscriber, across restarts, verified
//! offline, every kind of tampering detected and located, and read back as
//! a lease's history. (A full disk and a crash: `audit_log_faults.rs`.)

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use corral_tests::{audit::*, lease::*, *};
use serde_json::Value;

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("audit dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    v.sort();
    v
}

/// A copy of the audit dir to damage.
fn copy(dir: &Path) -> tempfile::TempDir {
    let t = tempfile::tempdir().expect("tempdir");
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
        std::fs::copy(e.path(), t.path().join(e.file_name())).expect("copy");
    }
    t
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .expect("segment")
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(p: &Path, l: &[String]) {
    std::fs::write(p, l.join("\n") + "\n").expect("write");
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// The denial, with identity, pid, comm and target, after two restarts;
/// the reloads, the operator's action with its caller, and both starts.
fn logged(dir: &Path, r: &ProbeRun, port: u16) {
    let net = query(dir, &["--identity", "agent", "--kind", "net"]);
    let ev = net
        .iter()
        .map(|r| &r["body"])
        .find(|b| b["tgid"] == r.pid())
        .unwrap_or_else(|| panic!("denial of pid {} not logged: {net:#?}", r.pid()));
    assert_net_event(ev, "agent", r.pid(), "connect", "127.0.0.1", port);
    assert!(net.len() >= 21, "every denial is logged: {}", net.len());
    // Reloads, the operator's action with its caller, and both starts.
    let pol = query(dir, &["--kind", "policy"]);
    assert!(pol.len() >= 3, "two starts and one apply: {pol:#?}");
    assert!(pol.iter().any(|p| p["body"]["policy"]["trigger"] == "api"));
    let op = query(dir, &["--kind", "operator"]);
    let apply = op
        .iter()
        .find(|o| o["body"]["operator"]["route"] == "/v1/policy/apply")
        .expect("operator action logged");
    assert_eq!(apply["body"]["operator"]["uid"], 0);
    assert_eq!(apply["body"]["operator"]["status"], 200);
    let starts = query(dir, &["--kind", "start"]);
    assert_eq!(starts.len(), 2, "{starts:#?}");
    assert_eq!(starts[1]["body"]["previous_run"], "clean");
    assert!(starts[1]["body"]["previous_checkpoint"]["seq"].is_u64());
}

/// Each way of changing the log is found in a copy of it: an edited,
/// deleted or reordered record, a removed segment, a forged signature.
fn tampering_is_found(dir: &Path) {
    // An edited record: the next link breaks, and both are named.
    let t = copy(dir);
    let s1 = segments(t.path())[1].clone();
    let mut l = lines(&s1);
    l[1] = l[1].replacen("\"time\":\"2", "\"time\":\"1", 1);
    write_lines(&s1, &l);
    let (ok, text) = verify(t.path(), &[]);
    assert!(!ok && text.contains("TAMPERED"), "{text}");
    assert!(
        text.contains(&format!("{}:2", name(&s1))),
        "names the edited record: {text}"
    );

    // A deleted record.
    let t = copy(dir);
    let s1 = segments(t.path())[1].clone();
    let mut l = lines(&s1);
    l.remove(1);
    write_lines(&s1, &l);
    let (ok, text) = verify(t.path(), &[]);
    assert!(!ok && text.contains(&format!("{}:2", name(&s1))), "{text}");

    // Reordered records.
    let t = copy(dir);
    let s1 = segments(t.path())[1].clone();
    let mut l = lines(&s1);
    l.swap(1, 2);
    write_lines(&s1, &l);
    let (ok, text) = verify(t.path(), &[]);
    assert!(!ok && text.contains("TAMPERED"), "{text}");

    // A removed segment, in the middle and the oldest.
    let t = copy(dir);
    let s = segments(t.path());
    std::fs::remove_file(&s[1]).unwrap();
    let (ok, text) = verify(t.path(), &[]);
    assert!(!ok && text.contains(&name(&s[2])), "{text}");
    let t = copy(dir);
    std::fs::remove_file(&segments(t.path())[0]).unwrap();
    let (ok, text) = verify(t.path(), &[]);
    assert!(!ok && text.contains("a segment was removed"), "{text}");

    // A forged checkpoint signature.
    let t = copy(dir);
    let last = segments(t.path()).last().unwrap().clone();
    let mut l = lines(&last);
    let n = l.len() - 1;
    let mut rec: Value = serde_json::from_str(&l[n]).unwrap();
    assert_eq!(rec["type"], "checkpoint");
    rec["body"]["sig"] = Value::String("00".repeat(64));
    l[n] = rec.to_string();
    write_lines(&last, &l);
    let (ok, text) = verify(t.path(), &[]);
    assert!(!ok && text.contains("signature"), "{text}");
}

#[test]
fn denials_reloads_and_operator_actions_are_logged_verified_and_tamper_evident() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let ps = port.to_string();
    let mut lab = Lab::start_opts(
        &[("agent", &|s: &Path| policy("agent", s, "", ""))],
        &["--audit-segment-bytes", "4096"],
    );
    // No subscriber: the log records regardless.
    let r = connect_burst(lab.d(), "agent", &ps, 20);
    r.assert_eperm("connect", 0);
    probe_outside(&["connect", "127.0.0.1", &ps]).assert_ok("connect", 0);
    let out = lab.d().cli(&["policy", "apply"]);
    assert!(out.status.success(), "{out:?}");
    lab.stop();
    lab.restart();
    lab.stop();
    let dir = lab.dirs.state_dir.join("audit");

    let (ok, text) = verify(&dir, &["--sealed"]);
    assert!(ok && text.contains("intact"), "{text}");
    let segs = segments(&dir);
    assert!(segs.len() >= 3, "small segments rotate: {segs:?}");

    logged(&dir, &r, port);
    tampering_is_found(&dir);

    // Verified with a key kept elsewhere: another key fails it.
    let other = tempfile::tempdir().unwrap();
    let pk = other.path().join("k.pub.pem");
    std::fs::write(
        &pk,
        std::fs::read(dir.join("checkpoint-key.pub.pem")).unwrap(),
    )
    .unwrap();
    assert!(verify(&dir, &["--pubkey", path_str(&pk)]).0);

    // Truncated at the end: the final checkpoint is gone (not sealed), and
    // the next daemon's start names a checkpoint the log no longer has.
    // Only the final checkpoint: with small segments it may be alone in
    // the last one (cutting two lines of one line cut nothing).
    let last = segments(&dir).last().unwrap().clone();
    let mut l = lines(&last);
    assert!(
        l.last().is_some_and(|r| r.contains("\"checkpoint\"")),
        "{l:?}"
    );
    l.truncate(l.len() - 1);
    write_lines(&last, &l);
    let (ok, text) = verify(&dir, &["--sealed"]);
    assert!(!ok && text.contains("NOT SEALED"), "{text}");
    lab.restart();
    lab.stop();
    let (ok, text) = verify(&dir, &[]);
    assert!(
        !ok && text.contains("records were removed from its end"),
        "{text}"
    );
    lab.restart();
}

#[test]
fn tail_since_replays_history_across_a_restart_then_goes_live() {
    if !is_root() {
        return;
    }
    use std::io::BufRead as _;
    let port = tcp_listener("127.0.0.1:0");
    let ps = port.to_string();
    let mut lab = Lab::start(&[("agent", &|s: &Path| policy("agent", s, "", ""))]);
    let r = lab
        .d()
        .probe_as("agent", &["pid", "connect", "127.0.0.1", &ps]);
    r.assert_eperm("connect", 0);
    lab.stop();
    lab.restart();
    let mut child = Command::new(corral_bin())
        .arg("--socket")
        .arg(&lab.dirs.socket)
        .args(["tail", "--json", "--identity", "agent", "--since", "1h"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("tail");
    let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let mut next = |what: &str, pred: &dyn Fn(&Value) -> bool| -> Value {
        loop {
            let l = rx
                .recv_timeout(std::time::Duration::from_secs(15))
                .unwrap_or_else(|_| panic!("no {what} from tail --since: {seen:#?}"));
            let v: Value = serde_json::from_str(&l).expect("json line");
            seen.push(v.clone());
            if pred(&v) {
                return v;
            }
        }
    };
    // The denial from before the restart, from the audit log...
    let old = next("old denial", &|v| {
        v["kind"] == "net" && v["tgid"] == r.pid()
    });
    assert_net_event(&old, "agent", r.pid(), "connect", "127.0.0.1", port);
    // ...then live ones.
    let r2 = lab
        .d()
        .probe_as("agent", &["pid", "connect", "127.0.0.1", &ps]);
    r2.assert_eperm("connect", 0);
    let new = next("live denial", &|v| {
        v["kind"] == "net" && v["tgid"] == r2.pid()
    });
    assert_net_event(&new, "agent", r2.pid(), "connect", "127.0.0.1", port);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn lease_show_prints_the_lease_history_from_the_audit_log_after_a_restart() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let mut lab = Lab::agent(port);
    let issued = lab.issue("agent", &["db:write"], "30s");
    let id = issued["id"].as_str().expect("lease id").to_string();
    lab.json(&["lease", "renew", &id, "--ttl", "40s", "--json"]);
    lab.json(&["lease", "revoke", &id, "--reason", "done", "--json"]);
    lab.stop();
    lab.restart();

    // After the restart, from the log: in order, with times and callers.
    let v = lab.json(&["lease", "show", &id, "--json"]);
    let h = v["history"].as_array().expect("history");
    let actions: Vec<&str> = h.iter().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(actions, ["issue", "renew", "revoke"], "{v:#}");
    // RFC 3339 with nanoseconds, fixed width: in order as text is in time.
    let times: Vec<&str> = h.iter().filter_map(|e| e["time"].as_str()).collect();
    assert!(
        times.len() == 3 && times.iter().all(|t| t.len() == 30 && t.ends_with('Z')),
        "{h:#?}"
    );
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{h:#?}");
    assert!(h.iter().all(|e| e["by"] == "operator"), "{h:#?}");
    assert_eq!(h[2]["event"]["reason"], "done");
    let out = lab.d().cli(&["lease", "show", &id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("history (audit log):"),
        "{out:?}"
    );
    let at = |a: &str| text.find(&format!("  {a} ")).unwrap_or(usize::MAX);
    assert!(at("issue") < at("renew") && at("renew") < at("revoke") && at("revoke") < text.len());

    // Once no daemon holds it (here: none runs at all), the log still tells.
    let dir = lab.dirs.state_dir.join("audit");
    let out = Command::new(corral_bin())
        .args(["--socket", "/nonexistent/corral.sock", "lease", "show", &id])
        .args(["--json", "--audit-dir", path_str(&dir)])
        .output()
        .expect("lease show");
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["source"], "audit-log", "{v:#}");
    assert_eq!(v["state"], "revoked", "{v:#}");
    assert_eq!(v["identity"], "agent", "{v:#}");
    assert_eq!(v["history"].as_array().map(Vec::len), Some(3), "{v:#}");
    let out = Command::new(corral_bin())
        .args([
            "--socket",
            "/nonexistent/corral.sock",
            "lease",
            "show",
            "l-nosuch",
        ])
        .args(["--audit-dir", path_str(&dir)])
        .output()
        .expect("lease show");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
