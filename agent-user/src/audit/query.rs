//! `corral audit query`: the log's event records, filtered, oldest first.
//! Reads the files directly, so it works with the daemon down and across
//! restarts.

use std::{path::Path, time::SystemTime};

use serde_json::Value;

use super::{Record, segments};

#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub identity: Option<String>,
    pub kind: Option<String>,
    pub lease: Option<String>,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
}

impl Filter {
    pub fn matches(&self, rec: &Record) -> bool {
        let b = &rec.body;
        if let Ok(t) = humantime::parse_rfc3339_weak(&rec.time)
            && (self.since.is_some_and(|s| t < s) || self.until.is_some_and(|u| t > u))
        {
            return false;
        }
        if let Some(i) = &self.identity
            && b["identity"].as_str() != Some(i)
        {
            return false;
        }
        if let Some(k) = &self.kind {
            let kind = if rec.kind == "event" {
                b["kind"].as_str().unwrap_or("")
            } else {
                rec.kind.as_str()
            };
            if kind != k {
                return false;
            }
        }
        if let Some(l) = &self.lease {
            let under = b["leases"]
                .as_array()
                .is_some_and(|ls| ls.iter().any(|x| x["id"].as_str() == Some(l)));
            let about =
                b["lease"]["lease"].as_str() == Some(l) || b["lease"]["id"].as_str() == Some(l);
            if !under && !about {
                return false;
            }
        }
        true
    }
}

/// Every record of the log (event bodies and the log's own records) that
/// `f` matches.
pub fn query(dir: &Path, f: &Filter) -> std::io::Result<Vec<Record>> {
    let mut out = Vec::new();
    for (_, path) in segments(dir)? {
        let text = std::fs::read_to_string(&path)?;
        for line in text.lines() {
            if let Ok(rec) = serde_json::from_str::<Record>(line)
                && f.matches(&rec)
            {
                out.push(rec);
            }
        }
    }
    Ok(out)
}

/// The event bodies only, for `corral tail --since` style consumers.
pub fn events(dir: &Path, f: &Filter) -> std::io::Result<Vec<Value>> {
    Ok(query(dir, f)?
        .into_iter()
        .filter(|r| r.kind == "event")
        .map(|r| r.body)
        .collect())
}

/// The lifecycle records (`lease` events: request, issue, approve, deny,
/// renew, rotate, revoke, expire) of lease `id`, oldest first. Reads
/// segments newest first and stops at the one holding the lease's
/// `issue`/`request`: a lease lives minutes, the log may hold gigabytes.
pub fn lease_history(dir: &Path, id: &str) -> std::io::Result<Vec<Record>> {
    let mut found: Vec<Vec<Record>> = Vec::new();
    // Cheap before parsing: the id appears verbatim in every record about it.
    let needle = serde_json::to_string(id).map_err(std::io::Error::other)?;
    for (_, path) in segments(dir)?.iter().rev() {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            // Pruned by the writer while we looked.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut here = Vec::new();
        let mut began = false;
        for line in text.lines().filter(|l| l.contains(&needle)) {
            let Ok(rec) = serde_json::from_str::<Record>(line) else {
                continue;
            };
            let l = &rec.body["lease"];
            if rec.kind != "event" || rec.body["kind"] != "lease" || l["lease"] != id {
                continue;
            }
            began |= matches!(l["action"].as_str(), Some("issue" | "request"));
            here.push(rec);
        }
        found.push(here);
        if began {
            break;
        }
    }
    Ok(found.into_iter().rev().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, kind: &str, body: Value) -> String {
        serde_json::to_string(&Record {
            seq,
            time: format!("2025-01-01T00:00:{seq:02}Z"),
            kind: kind.into(),
            prev: String::new(),
            body,
        })
        .unwrap()
    }

    fn lease(seq: u64, action: &str, id: &str) -> String {
        rec(
            seq,
            "event",
            serde_json::json!({ "kind": "lease", "lease": { "action": action, "lease": id, "by": "operator" } }),
        )
    }

    #[test]
    fn lease_history_spans_segments_oldest_first_and_stops_at_the_issue() {
        let d = tempfile::tempdir().unwrap();
        let w = |n: u64, lines: &[String]| {
            std::fs::write(
                d.path().join(super::super::segment_name(n)),
                lines.join("\n") + "\n",
            )
            .unwrap()
        };
        // An older lease with the same id prefix, before the issue: not read.
        w(0, &[lease(0, "revoke", "l-1")]);
        w(1, &[lease(1, "issue", "l-1"), lease(2, "issue", "l-10")]);
        let denial = rec(
            3,
            "event",
            serde_json::json!({ "kind": "net", "leases": [{ "id": "l-1", "scopes": [] }] }),
        );
        w(
            2,
            &[
                denial,
                lease(4, "renew", "l-1"),
                rec(5, "checkpoint", Value::Null),
            ],
        );
        w(3, &[lease(6, "revoke", "l-1")]);
        let h = lease_history(d.path(), "l-1").unwrap();
        let seqs: Vec<u64> = h.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [1, 4, 6]);
        assert!(lease_history(d.path(), "l-9").unwrap().is_empty());
    }
}
