//! `corral lease show ID`: the daemon's view of the lease (while its store
//! still holds it) and its history from the audit log, which outlives
//! both the lease and the daemon that issued it.

use std::path::{Path, PathBuf};

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use crate::audit::query::lease_history;
use crate::cli::client::{self, Client, Unreachable};

/// `by` as the log has it: a string (`operator`, `agent NAME`, `corral`)
/// or the requester of an issue (`{"kind": "agent", "pid": …}`).
pub fn caller(by: &Value) -> String {
    match by {
        Value::String(s) => s.clone(),
        Value::Object(o) => {
            let mut s = o
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string();
            for k in ["pid", "uid", "exe"] {
                if let Some(v) = o.get(k).filter(|v| !v.is_null()) {
                    let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                    s.push_str(&format!(" {k}={v}"));
                }
            }
            s
        }
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

/// The lease's state after its last lifecycle record.
fn state_after(history: &[Value]) -> &'static str {
    let mut state = "unknown";
    for h in history {
        state = match h["action"].as_str() {
            Some("issue" | "approve" | "renew") => "active",
            Some("request") => "pending",
            Some("deny") => "denied",
            Some("revoke") => "revoked",
            Some("expire") => "expired",
            _ => state,
        };
    }
    state
}

/// History entries: when, what, who, and the record's whole lease body.
fn history(dir: &Path, id: &str) -> std::io::Result<Vec<Value>> {
    Ok(lease_history(dir, id)?
        .into_iter()
        .map(|r| {
            let l = &r.body["lease"];
            json!({
                "seq": r.seq,
                "time": r.body["time"].as_str().unwrap_or(&r.time),
                "action": l["action"],
                "by": caller(&l["by"]),
                "identity": r.body["identity"],
                "event": l,
            })
        })
        .collect())
}

/// The audit directory: as given, else the running daemon's, else the
/// default.
fn audit_dir(client: &Client, given: Option<PathBuf>) -> PathBuf {
    given
        .or_else(|| {
            let (_, v) = client::block_on(client.call(Method::GET, "/v1/status", None)).ok()?;
            v["audit"]["dir"].as_str().map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(crate::cli::audit::DEFAULT_DIR))
}

fn detail(e: &Value) -> String {
    let mut s = String::new();
    for k in ["scopes", "expires", "reason", "capped_by", "path"] {
        if !e[k].is_null() {
            s.push_str(&format!(" {k}={}", e[k]));
        }
    }
    s
}

pub fn show(client: &Client, id: &str, json: bool, dir: Option<PathBuf>) -> anyhow::Result<u8> {
    let live = match client::block_on(client.call(Method::GET, &format!("/v1/leases/{id}"), None)) {
        Ok((s, v)) if s.is_success() => Some(v),
        // Forgotten by the store, or no daemon: the log may still know it.
        Ok((StatusCode::NOT_FOUND, _)) => None,
        Ok((s, v)) => return Err(client::api_error(s, &v)),
        // No daemon: the log alone answers, where there is one to read.
        Err(e)
            if e.downcast_ref::<Unreachable>().is_some()
                && (dir.is_some() || Path::new(crate::cli::audit::DEFAULT_DIR).is_dir()) =>
        {
            None
        }
        Err(e) => return Err(e),
    };
    let dir = audit_dir(client, dir);
    let hist = history(&dir, id);
    let (mut v, hist) = match (live, hist) {
        (Some(v), Ok(h)) => (v, h),
        (Some(v), Err(e)) => {
            eprintln!(
                "(no history: cannot read the audit log {}: {e})",
                dir.display()
            );
            (v, Vec::new())
        }
        (None, Ok(h)) if !h.is_empty() => {
            let first = &h[0];
            let v = json!({ "id": id, "state": state_after(&h), "source": "audit-log",
                "scopes": first["event"]["scopes"], "identity": first["identity"] });
            (v, h)
        }
        (None, Ok(_)) => {
            return Err(crate::cli::cmds::UsageError(format!(
                "unknown lease {id}: no running daemon holds it and the audit log {} has no \
                 record of it",
                dir.display()
            ))
            .into());
        }
        (None, Err(e)) => anyhow::bail!(
            "the daemon does not hold lease {id}, and the audit log {} cannot be read: {e}",
            dir.display()
        ),
    };
    v["history"] = Value::Array(hist);
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    if v["source"] == "audit-log" {
        println!(
            "lease {id} {} for {} (no longer held by the daemon; from the audit log {})",
            v["state"].as_str().unwrap_or("?"),
            v["identity"].as_str().unwrap_or("?"),
            dir.display()
        );
    } else {
        super::print_live(&v);
    }
    print_history(&v["history"]);
    Ok(0)
}

fn print_history(h: &Value) {
    let h = h.as_array().map(Vec::as_slice).unwrap_or_default();
    if h.is_empty() {
        println!("history: nothing in the audit log");
        return;
    }
    println!("history (audit log):");
    for e in h {
        println!(
            "  {}  {:<8} by {}{}",
            e["time"].as_str().unwrap_or("?"),
            e["action"].as_str().unwrap_or("?"),
            e["by"].as_str().unwrap_or("-"),
            detail(&e["event"])
        );
    }
}
