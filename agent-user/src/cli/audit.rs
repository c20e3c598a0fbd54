//! `corral audit verify|query|pubkey`: read the audit log offline (no
//! daemon needed; root, as the log is 0700 in the state dir).

use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};
use clap::Subcommand;

use crate::audit::{self, key, query::Filter};

pub(crate) const DEFAULT_DIR: &str = "/var/lib/corral/audit";

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Check the hash chain and checkpoint signatures; names the first bad
    /// record. Exit 0: intact; 1: tampered or unreadable.
    Verify(VerifyArgs),
    /// Print recorded events, oldest first.
    Query(QueryArgs),
    /// Print the checkpoint public key (PEM), to keep off this host.
    Pubkey(DirArg),
}

#[derive(clap::Args, Debug)]
pub struct DirArg {
    /// The audit directory (`<state-dir>/audit`).
    #[arg(default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    #[arg(default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
    /// The public key to verify checkpoints with (default: the one in DIR,
    /// which proves less: whoever can rewrite the log can replace it).
    #[arg(long)]
    pub pubkey: Option<PathBuf>,
    /// Also fail when records follow the last checkpoint (for a log whose
    /// daemon has stopped: a clean stop ends with a checkpoint).
    #[arg(long)]
    pub sealed: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct QueryArgs {
    #[arg(long, default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
    #[arg(long)]
    pub identity: Option<String>,
    /// An event kind (`net`, `file`, `lease`, `policy`, `operator`, ...) or
    /// a record type (`start`, `checkpoint`, `pruned`, `loss`).
    #[arg(long)]
    pub kind: Option<String>,
    /// Events under, or about, this lease.
    #[arg(long)]
    pub lease: Option<String>,
    /// RFC 3339 time, or a duration ago (`10m`).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<SystemTime>,
    #[arg(long, value_parser = parse_time)]
    pub until: Option<SystemTime>,
    /// Whole records as JSON lines.
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn parse_time(s: &str) -> Result<SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    let d: Duration = humantime::parse_duration(s)
        .map_err(|_| format!("`{s}` is neither an RFC 3339 time nor a duration like 10m"))?;
    Ok(SystemTime::now() - d)
}

pub fn run(cmd: AuditCmd) -> anyhow::Result<u8> {
    match cmd {
        AuditCmd::Verify(a) => verify(&a),
        AuditCmd::Query(a) => query(&a),
        AuditCmd::Pubkey(a) => {
            let k = key::load_public(&key::default_public(&a.dir))?;
            print!("{}", key::public_pem(&k)?);
            Ok(0)
        }
    }
}

fn verify(a: &VerifyArgs) -> anyhow::Result<u8> {
    if !a.dir.is_dir() {
        bail!("{} is not an audit directory", a.dir.display());
    }
    let pk_path = a
        .pubkey
        .clone()
        .unwrap_or_else(|| key::default_public(&a.dir));
    let pk = key::load_public(&pk_path)?;
    let r = audit::verify::verify(&a.dir, &pk)
        .with_context(|| format!("reading {}", a.dir.display()))?;
    let sealed_fail = a.sealed && r.error.is_none() && r.unsigned_tail > 0;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{} segments, {} records (seq {}..{}), {} checkpoints verified with {}",
            r.segments,
            r.records,
            r.first_seq.map_or("-".into(), |s| s.to_string()),
            r.last_seq.map_or("-".into(), |s| s.to_string()),
            r.checkpoints,
            pk_path.display()
        );
        println!(
            "{} daemon starts ({} after a run that ended without a checkpoint), {} segments pruned by retention",
            r.starts, r.unclean_starts, r.pruned_segments
        );
        if r.lost_records > 0 {
            println!(
                "{} records were not written, declared by {} loss records (the chain is intact; \
                 the history has these gaps):",
                r.lost_records,
                r.losses.len()
            );
            for l in &r.losses {
                println!("  {l}");
            }
        }
        if r.unsigned_tail > 0 {
            println!(
                "{} records after the last checkpoint (a running daemon's tail, or a crash)",
                r.unsigned_tail
            );
        }
        match &r.error {
            Some(e) => println!("TAMPERED: {e}"),
            None if sealed_fail => {
                println!(
                    "NOT SEALED: the log does not end with a checkpoint (truncated, or the daemon is running or crashed)"
                )
            }
            None => println!("intact"),
        }
    }
    Ok(if r.ok() && !sealed_fail { 0 } else { 1 })
}

fn query(a: &QueryArgs) -> anyhow::Result<u8> {
    let f = Filter {
        identity: a.identity.clone(),
        kind: a.kind.clone(),
        lease: a.lease.clone(),
        since: a.since,
        until: a.until,
    };
    let recs =
        audit::query::query(&a.dir, &f).with_context(|| format!("reading {}", a.dir.display()))?;
    for r in recs {
        if a.json {
            println!("{}", serde_json::to_string(&r)?);
        } else if r.kind == "event" {
            match serde_json::from_value::<crate::event::Event>(r.body.clone()) {
                Ok(ev) => println!("#{} {ev}", r.seq),
                Err(_) => println!("#{} {} event {}", r.seq, r.time, r.body),
            }
        } else {
            println!("#{} {} {} {}", r.seq, r.time, r.kind.to_uppercase(), r.body);
        }
    }
    Ok(0)
}
