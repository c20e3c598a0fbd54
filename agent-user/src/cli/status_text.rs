//! `corral status` as text: the daemon's status JSON rendered for a
//! person, what is not in force first and loudly.

use serde_json::Value;

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// One line per API socket: load against its limits, and what was refused
/// (a hostile or runaway local client shows here first).
fn render_sockets(s: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for name in ["control", "agent"] {
        let g = &s[name];
        if g.is_null() {
            continue;
        }
        let l = &g["limits"];
        let _ = writeln!(
            out,
            "{:<12} {} open (max {}, {} per uid), {} refused over the total, {} over per-uid, {} accept errors",
            format!("{name} api"),
            g["open"],
            l["max_conns"],
            l["per_uid"],
            g["refused_over_total"],
            g["refused_over_per_uid"],
            g["accept_errors"]
        );
    }
    let rl = &s["agent_rate_limit"];
    if let Some(m) = rl["refused"].as_object().filter(|m| !m.is_empty()) {
        let list: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            out,
            "rate-limited {} (limit {}/s per identity)",
            list.join(", "),
            rl["per_identity_per_sec"]
        );
    }
    out
}

pub fn render_status(v: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let d = &v["daemon"];
    let r = &v["reload"];
    let _ = writeln!(
        out,
        "corral {} (pid {}), up since {}",
        d["version"].as_str().unwrap_or("?"),
        d["pid"],
        d["started"].as_str().unwrap_or("?")
    );
    // Before everything else: a broken file means what is enforced is not
    // what the directory says, and a later successful host name refresh
    // does not make that any less true.
    let dir_errors = strs(&r["policy_dir_errors"]);
    out += &render_dir_errors(&dir_errors);
    out += &render_audit(&v["audit"]);
    out += &render_where(v);
    out += &render_events(v);
    let _ = writeln!(
        out,
        "last reload  generation {} at {} ({}): {}",
        r["generation"],
        r["last_time"].as_str().unwrap_or("-"),
        r["last_trigger"].as_str().unwrap_or("-"),
        if r["last_ok"] == true {
            "ok"
        } else {
            "FAILED, previous policy still in force"
        }
    );
    let last_errors = strs(&r["last_errors"]);
    if last_errors != dir_errors {
        for err in last_errors {
            let _ = writeln!(out, "             {err}");
        }
    }
    out += &render_leases(&v["leases"]);
    out += &render_sockets(&v["sockets"]);
    out += &render_mechanisms(v);
    out
}

fn render_dir_errors(dir_errors: &[&str]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if !dir_errors.is_empty() {
        let _ = writeln!(
            out,
            "!! POLICY DIR ERRORS ({}): the policy files as they are now are NOT in force; the \
             previous policy still is. Fix and save, or `corral policy apply`:",
            dir_errors.len()
        );
        for e in dir_errors {
            let _ = writeln!(out, "!!   {e}");
        }
    }
    out
}

/// Where the daemon keeps its policies, cgroups and pins.
fn render_where(v: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let d = &v["daemon"];
    let _ = writeln!(
        out,
        "policy dir   {}",
        d["policy_dir"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        out,
        "cgroup       {}",
        d["cgroup_parent"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        out,
        "pins         {}{}",
        d["pin_dir"].as_str().unwrap_or("?"),
        if d["adopted_pins"] == true {
            " (adopted from a previous daemon)"
        } else {
            ""
        }
    );
    let _ = writeln!(out, "identities   {}", v["identities"]);
    out
}

/// The event pipeline and the OTLP export.
fn render_events(v: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let e = &v["events"];
    let _ = writeln!(
        out,
        "events       {} received, {} lost in the kernel, {} undecodable, {} subscribers",
        e["received"], e["kernel_lost"], e["decode_errors"], e["subscribers"]
    );
    let x = &v["otlp"];
    if !x.is_null() {
        let _ = writeln!(
            out,
            "otlp export  {}: {} sent, {} lost, {} queued (max {}){}",
            x["endpoint"].as_str().unwrap_or("?"),
            x["sent"],
            x["lost"],
            x["queued"],
            x["queue_capacity"],
            x["last_error"]
                .as_str()
                .map_or(String::new(), |e| format!(", last error: {e}"))
        );
    }
    out
}

/// Host-wide costs first, then each mechanism, loudly when not enforcing.
fn render_mechanisms(v: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let d = &v["daemon"];
    for h in v["host_cost"]["host_wide_hooks"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let _ = writeln!(
            out,
            "!! {}: {}",
            h["hook"].as_str().unwrap_or("?"),
            h["note"].as_str().unwrap_or("")
        );
    }
    let _ = writeln!(out, "mechanisms:");
    for m in d["mechanisms"].as_array().into_iter().flatten() {
        let state = m["state"].as_str().unwrap_or("?");
        let flag = if state == "enforcing" { "  " } else { "!!" };
        let _ = writeln!(
            out,
            "  {flag} {:<16} {} — {}",
            state,
            m["name"].as_str().unwrap_or("?"),
            m["detail"].as_str().unwrap_or("")
        );
    }
    out
}

/// The audit log; loudly, near the top, when it cannot be written.
pub(crate) fn render_audit(a: &Value) -> String {
    if a.is_null() {
        return String::new();
    }
    let f = &a["failing"];
    if !f.is_null() {
        return format!(
            "!! audit: FAILING ({}), {} records not written since {}; enforcement and the event \
             stream go on, a loss record declares the gap once writing works again ({})\n",
            f["error"].as_str().unwrap_or("?"),
            f["not_written"],
            f["since"].as_str().unwrap_or("?"),
            a["dir"].as_str().unwrap_or("?")
        );
    }
    let mut out = format!(
        "audit        {} records, {} segments, last checkpoint seq {} ({})\n",
        a["records"],
        a["segments"],
        a["last_checkpoint_seq"],
        a["dir"].as_str().unwrap_or("?")
    );
    if a["lost"].as_u64().unwrap_or(0) > 0 {
        out += &format!(
            "             {} records lost ({} not written: {})\n",
            a["lost"],
            a["not_written"],
            a["last_error"].as_str().unwrap_or("-")
        );
    }
    out
}

/// Lease counts in force and waiting for approval, per identity, with the
/// anomaly responses that hold an identity until `corral thaw`.
fn render_leases(l: &Value) -> String {
    use std::fmt::Write as _;
    if l.is_null() {
        return "leases       (lease service not running)\n".into();
    }
    let n = |x: &Value| x.as_u64().unwrap_or(0);
    let mut out = format!(
        "leases       {} active, {} pending approval{}\n",
        n(&l["active"]),
        n(&l["pending"]),
        if n(&l["pending"]) > 0 {
            " (`corral lease list`)"
        } else {
            ""
        }
    );
    for (name, i) in l["identities"].as_object().into_iter().flatten() {
        let held: Vec<&str> = [("frozen", "FROZEN"), ("suspended", "SUSPENDED")]
            .into_iter()
            .filter(|(k, _)| i[*k] == true)
            .map(|(_, label)| label)
            .collect();
        let _ = write!(
            out,
            "  {name:<20} {} active, {} pending",
            n(&i["active"]),
            n(&i["pending"])
        );
        if !held.is_empty() {
            let _ = write!(out, "  !! {} (`corral thaw {name}`)", held.join(", "));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn status_with(reload: Value, leases: Value) -> Value {
        json!({
            "daemon": { "version": "0.1.0", "pid": 1, "started": "t0", "policy_dir": "/p",
                "cgroup_parent": "/sys/fs/cgroup/corral", "pin_dir": "/sys/fs/bpf/corral",
                "mechanisms": [] },
            "identities": 2,
            "events": { "received": 0, "kernel_lost": 0, "decode_errors": 0, "subscribers": 0 },
            "reload": reload,
            "leases": leases,
        })
    }

    #[test]
    fn policy_dir_errors_are_shown_first_and_loudly() {
        let err = "/p/a.toml:3:9: unknown field `alow`";
        // A later host name refresh succeeded: the broken file still counts.
        let v = status_with(
            json!({ "generation": 4, "last_ok": true, "last_trigger": "dns",
                "last_errors": [], "policy_dir_errors": [err] }),
            json!({ "active": 0, "pending": 0, "identities": {} }),
        );
        let out = render_status(&v);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[1].starts_with("!! POLICY DIR ERRORS (1): "), "{out}");
        assert_eq!(lines[2], format!("!!   {err}"));
        // The failed reload itself lists the same errors only once.
        let v = status_with(
            json!({ "generation": 4, "last_ok": false, "last_trigger": "watch",
                "last_errors": [err], "policy_dir_errors": [err] }),
            Value::Null,
        );
        let out = render_status(&v);
        assert_eq!(out.matches(err).count(), 1, "{out}");
        assert!(out.contains("FAILED, previous policy still in force"));
        assert!(out.contains("leases       (lease service not running)"));

        let clean = status_with(
            json!({ "generation": 1, "last_ok": true, "last_errors": [], "policy_dir_errors": [] }),
            Value::Null,
        );
        assert!(!render_status(&clean).contains("!!"));
    }

    #[test]
    fn a_failing_audit_log_is_shown_first_and_loudly() {
        let mut v = status_with(
            json!({ "generation": 1, "last_ok": true, "last_errors": [], "policy_dir_errors": [] }),
            Value::Null,
        );
        v["audit"] = json!({ "dir": "/s/audit", "records": 10, "segments": 1,
            "last_checkpoint_seq": 3, "lost": 0, "not_written": 0 });
        let out = render_status(&v);
        assert!(out.contains("audit        10 records, 1 segments"), "{out}");
        assert!(!out.contains("!!"), "{out}");
        v["audit"]["failing"] = json!({ "since": "t1", "error": "No space left on device",
            "not_written": 42 });
        let out = render_status(&v);
        let line = out.lines().nth(1).unwrap_or("");
        assert!(
            line.starts_with(
                "!! audit: FAILING (No space left on device), 42 records not written since t1"
            ),
            "{out}"
        );
    }

    #[test]
    fn the_otlp_line_shows_only_when_exporting() {
        let reload =
            json!({ "generation": 1, "last_ok": true, "last_errors": [], "policy_dir_errors": [] });
        let mut v = status_with(reload, Value::Null);
        v["otlp"] = Value::Null;
        assert!(!render_status(&v).contains("otlp"));
        v["otlp"] = json!({ "endpoint": "http://c:4318/v1/logs", "sent": 10, "lost": 2,
            "queued": 1, "queue_capacity": 50, "last_error": "collector answered 503" });
        assert!(
            render_status(&v).contains(
                "otlp export  http://c:4318/v1/logs: 10 sent, 2 lost, 1 queued (max 50), \
                 last error: collector answered 503\n"
            ),
            "{}",
            render_status(&v)
        );
    }

    #[test]
    fn leases_are_counted_per_identity() {
        let v = status_with(
            json!({ "generation": 1, "last_ok": true, "last_errors": [], "policy_dir_errors": [] }),
            json!({ "active": 3, "pending": 1, "identities": {
                "billing-agent": { "active": 2, "pending": 1 },
                "ops-agent": { "active": 1, "pending": 0, "frozen": true, "suspended": true },
            } }),
        );
        let out = render_status(&v);
        assert!(
            out.contains("leases       3 active, 1 pending approval (`corral lease list`)\n"),
            "{out}"
        );
        assert!(
            out.contains("  billing-agent        2 active, 1 pending\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "  ops-agent            1 active, 0 pending  !! FROZEN, SUSPENDED (`corral thaw ops-agent`)\n"
            ),
            "{out}"
        );
    }
}
