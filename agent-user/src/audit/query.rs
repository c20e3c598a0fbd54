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
