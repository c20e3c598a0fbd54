//! `corral policy suggest`: the proposal on stdout (a TOML file), what it
//! is based on and what it proves on stderr.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use hyper::Method;
use serde_json::{Value, json};

use super::client::{self, Client, UsageError, print_json};

#[derive(clap::Args, Debug)]
pub struct SuggestArgs {
    #[arg(long)]
    pub identity: String,
    /// Learn from the audit log's events of the last DUR (e.g. `2h`);
    /// default: everything the log holds.
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration, conflicts_with_all = ["from", "record"])]
    pub since: Option<Duration>,
    /// Learn from events at or after TIME (RFC 3339).
    #[arg(long, value_name = "TIME", conflicts_with = "record")]
    pub from: Option<String>,
    /// ... and before TIME (RFC 3339).
    #[arg(long, value_name = "TIME", conflicts_with = "record")]
    pub until: Option<String>,
    /// Record the identity's events live for DUR instead of reading the
    /// audit log.
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub record: Option<Duration>,
    /// Addresses are grouped into an IPv4 prefix no shorter than this.
    #[arg(long, default_value_t = 24)]
    pub max_prefix_v4: u8,
    /// ... and an IPv6 prefix no shorter than this.
    #[arg(long, default_value_t = 64)]
    pub max_prefix_v6: u8,
    /// Distinct addresses (same protocol and port) a prefix needs.
    #[arg(long, default_value_t = 4)]
    pub min_addrs: usize,
    /// Distinct files in one directory (same access) a directory rule
    /// needs.
    #[arg(long, default_value_t = 10)]
    pub dir_files: usize,
    /// Directory rules are never proposed above this depth (`/srv/` is 1).
    #[arg(long, default_value_t = 2)]
    pub min_depth: usize,
    /// Write the proposal to FILE (not into the policy dir unless
    /// --into-policy-dir: that is what --apply is for).
    #[arg(long, value_name = "FILE")]
    pub write: Option<PathBuf>,
    #[arg(long, requires = "write")]
    pub into_policy_dir: bool,
    /// Write the proposal to the identity's policy file and reload it
    /// (validated and atomic, like any reload; needs --yes).
    #[arg(long, conflicts_with = "write")]
    pub apply: bool,
    /// Confirms --apply.
    #[arg(long, requires = "apply")]
    pub yes: bool,
    /// The daemon's whole answer as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(client: &Client, a: &SuggestArgs) -> anyhow::Result<u8> {
    if a.apply && !a.yes {
        return Err(UsageError(
            "--apply changes the policy in force: review the proposal first, then add --yes".into(),
        )
        .into());
    }
    let since = a
        .since
        .map(|d| humantime::format_rfc3339_seconds(SystemTime::now() - d).to_string())
        .or_else(|| a.from.clone());
    if let Some(d) = a.record {
        eprintln!(
            "recording {}'s events for {}...",
            a.identity,
            humantime::format_duration(d)
        );
    }
    let body = json!({
        "identity": a.identity,
        "since": since,
        "until": a.until,
        "record_ms": a.record.map(|d| d.as_millis() as u64),
        "limits": {
            "max_prefix_v4": a.max_prefix_v4,
            "max_prefix_v6": a.max_prefix_v6,
            "min_addrs": a.min_addrs,
            "dir_files": a.dir_files,
            "min_depth": a.min_depth,
        },
        "apply": a.apply,
        "confirm": a.yes,
    });
    let within = a.record.unwrap_or_default() + Duration::from_secs(60);
    let (status, v) = client::block_on(client.call_within(
        Method::POST,
        "/v1/policy/suggest",
        Some(&body),
        within,
    ))?;
    let v = client::checked(status, v)?;
    if let Some(file) = &a.write {
        write_proposal(file, &v, a.into_policy_dir)?;
    }
    if a.json {
        print_json(&v);
    } else {
        eprint!("{}", summary(&v));
        if a.write.is_none() && !a.apply {
            print!("{}", v["proposal"].as_str().unwrap_or_default());
        }
    }
    Ok(0)
}

fn write_proposal(file: &Path, v: &Value, into: bool) -> anyhow::Result<()> {
    let real = |d: &Path| std::fs::canonicalize(d).unwrap_or_else(|_| d.to_path_buf());
    let target_dir = std::path::absolute(file)?.parent().map(real);
    // The daemon's policy dir, and the dir the identity's file was loaded
    // from: a file there applies on the next reload.
    let source_dir = v["source"].as_str().map(Path::new).and_then(Path::parent);
    let policy_dir = v["policy_dir"].as_str().map(Path::new);
    let in_policy_dir = [policy_dir, source_dir]
        .into_iter()
        .flatten()
        .any(|d| target_dir.as_ref().is_some_and(|t| t.starts_with(real(d))));
    if in_policy_dir && !into {
        return Err(UsageError(format!(
            "{} is in the daemon's policy dir, where it would apply on the next reload: use \
             --apply --yes (validated, atomic) or --into-policy-dir",
            file.display()
        ))
        .into());
    }
    std::fs::write(file, v["proposal"].as_str().unwrap_or_default())
        .with_context(|| format!("cannot write {}", file.display()))?;
    eprintln!("wrote {}", file.display());
    Ok(())
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}

fn seen(v: &Value) -> String {
    let list = |k: &str| {
        v[k].as_array()
            .into_iter()
            .flatten()
            // A process names itself: no control characters to the terminal.
            .map(|x| {
                x.as_str()
                    .map_or_else(|| x.to_string(), |t| t.escape_debug().to_string())
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let last = s(&v["last"]);
    let last = match last.split_once('.') {
        Some((t, _)) if last.ends_with('Z') => format!("{t}Z"),
        _ => last.to_string(),
    };
    format!(
        "seen {}×, last {last}, pid {}, {}",
        v["count"],
        list("pids"),
        list("comms")
    )
}

/// What the proposal is based on and what it proves, for the operator.
pub fn summary(v: &Value) -> String {
    let mut out = format!(
        "{}: {} events from {} ({} distinct operations); policy file {}\n",
        s(&v["identity"]),
        v["events"],
        s(&v["events_from"]),
        v["operations"],
        s(&v["source"]),
    );
    if let Some(n) = v["recording_lost"].as_u64().filter(|n| *n > 0) {
        out.push_str(&format!(
            "!! {n} events were lost while recording (the stream fell behind): record again\n"
        ));
    }
    let adds = v["additions"].as_array().cloned().unwrap_or_default();
    if adds.is_empty() {
        out.push_str("no additions: nothing recorded needs a new rule\n");
    }
    for a in &adds {
        let covers = match a["covers"].as_u64() {
            Some(1) => String::new(),
            n => format!("{} operations, ", n.unwrap_or(0)),
        };
        out.push_str(&format!(
            "  + [{}] {} \"{}\"  ({covers}{})\n",
            s(&a["section"]),
            s(&a["key"]),
            s(&a["value"]),
            seen(&a["seen"])
        ));
        if let Some(n) = a["note"].as_str() {
            out.push_str(&format!("      ({n})\n"));
        }
    }
    for x in v["not_proposed"].as_array().into_iter().flatten() {
        let op = s(&x["op"]).escape_debug().to_string();
        out.push_str(&format!("  - {op}: {}\n", s(&x["why"])));
    }
    let already = v["already_allowed"].as_array().map_or(0, Vec::len);
    if already > 0 {
        out.push_str(&format!(
            "  = {already} recorded operation(s) the current policy already allows\n"
        ));
    }
    let r = &v["replay"];
    out.push_str(&format!(
        "proof: the policy dir with this proposal compiles as a reload would; it allows {} of \
         {} recorded operations\n",
        r["allowed"], r["operations"]
    ));
    for x in r["still_refused"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  still refused: {}: {}\n",
            s(&x["op"]),
            s(&x["why"])
        ));
    }
    match &v["applied"] {
        Value::Null => {}
        a if a["generation"].is_null() => {
            out.push_str(&format!("applied: {}\n", s(&a["note"])));
        }
        a => out.push_str(&format!(
            "applied: {} written and reloaded, generation {}\n",
            s(&v["source"]),
            a["generation"]
        )),
    }
    out
}
