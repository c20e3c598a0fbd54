//! `corral lease …` and `corral thaw NAME`: operator commands for
//! short-lived credential leases (control socket), and offline verification
//! of lease tokens.

use std::{
    io::Read as _,
    path::PathBuf,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, anyhow};
use clap::Subcommand;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

mod history;

use crate::cli::client::{self, Client, UsageError, print_json};
use crate::daemon::lease::token::PublicKey;

#[derive(Subcommand, Debug)]
pub enum LeaseCmd {
    /// Issue a lease for an identity (printed: the token; --json: everything).
    Issue(IssueArgs),
    /// Extend an active lease (never past issue + max_ttl).
    Renew {
        id: String,
        /// Extension from now (default: the lease's ttl).
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke one lease, or every lease of an identity (--identity).
    Revoke(RevokeArgs),
    /// Leases in force (and pending); --all adds ended ones.
    List {
        #[arg(long)]
        identity: Option<String>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// One lease, with the denials that happened under it and its history
    /// from the audit log (also once the daemon no longer holds it; reading
    /// the log needs root).
    Show {
        id: String,
        #[arg(long)]
        json: bool,
        /// The audit directory (default: the running daemon's, else
        /// /var/lib/corral/audit); with it, works without a daemon.
        #[arg(long)]
        audit_dir: Option<PathBuf>,
    },
    /// Check a token offline: signature, algorithm, validity period.
    Verify(VerifyArgs),
    /// Approve a pending request.
    Approve { id: String },
    /// Deny a pending request.
    Deny { id: String },
    /// Wait for a pending request to be decided.
    Wait {
        id: String,
        #[arg(long, default_value = "5m")]
        timeout: String,
    },
    /// The public key tokens are signed with (PEM; --jwk for a JWK set).
    Pubkey {
        #[arg(long)]
        jwk: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct IssueArgs {
    #[arg(long)]
    pub identity: String,
    /// A scope from the identity's `[leases] scopes` (repeatable).
    #[arg(long = "scope", required = true)]
    pub scopes: Vec<String>,
    /// Lifetime (capped by the policy's max_ttl; default: max_ttl).
    #[arg(long)]
    pub ttl: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["id", "identity"])))]
pub struct RevokeArgs {
    pub id: Option<String>,
    /// Revoke every lease of this identity and suspend its own requests
    /// and token rotation until `corral thaw`.
    #[arg(long)]
    pub identity: Option<String>,
    #[arg(long)]
    pub reason: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The token; `-` reads it from stdin, `@FILE` from a file.
    pub token: String,
    /// The public key (SPKI PEM or JWK/JWKS); without it, it is fetched from
    /// the daemon (`GET /v1/leases/pubkey`).
    #[arg(long)]
    pub pubkey: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct ThawArgs {
    /// The identity whose cgroups to thaw (and whose leases to resume).
    pub name: String,
}

fn call(
    client: &Client,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(StatusCode, Value)> {
    let (status, v) = client::block_on(client.call(method, path, body))?;
    Ok((status, client::checked(status, v)?))
}

fn warnings(v: &Value) {
    for w in v["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", w.as_str().unwrap_or(""));
    }
}

fn summary(v: &Value) -> String {
    let scopes: Vec<&str> = v["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut s = format!(
        "lease {} {} for {} [{}]",
        v["id"].as_str().unwrap_or("?"),
        v["state"].as_str().unwrap_or("?"),
        v["identity"].as_str().unwrap_or("?"),
        scopes.join(", ")
    );
    if let Some(e) = v["expires"].as_str() {
        s.push_str(&format!(", expires {e}"));
    }
    if v["ttl_capped"] == true {
        s.push_str(&format!(" (ttl capped to {}s by max_ttl)", v["ttl_s"]));
    }
    if v["state"] == "pending" {
        s.push_str(&format!(
            "; needs approval for [{}] (`corral lease approve {}`), until {}",
            v["approval_scopes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "),
            v["id"].as_str().unwrap_or("?"),
            v["approval_deadline"].as_str().unwrap_or("?")
        ));
    }
    if let Some(r) = v["end_reason"].as_str() {
        s.push_str(&format!(" ({r})"));
    }
    s
}

pub fn run(client: &Client, cmd: LeaseCmd) -> anyhow::Result<u8> {
    match cmd {
        LeaseCmd::Issue(a) => {
            let mut body = json!({ "identity": a.identity, "scopes": a.scopes });
            if let Some(t) = &a.ttl {
                body["ttl"] = json!(t);
            }
            let (_, v) = call(client, Method::POST, "/v1/leases", Some(&body))?;
            show_issued(&v, a.json)
        }
        LeaseCmd::Renew { id, ttl, json } => {
            let body = json!({ "ttl": ttl });
            let (_, v) = call(
                client,
                Method::POST,
                &format!("/v1/leases/{id}/renew"),
                Some(&body),
            )?;
            if v["renew_capped"] == true {
                eprintln!(
                    "note: capped at issue + max_ttl ({})",
                    v["max_expires"].as_str().unwrap_or("?")
                );
            }
            show_issued(&v, json)
        }
        LeaseCmd::Revoke(a) => revoke(client, &a),
        LeaseCmd::List {
            identity,
            all,
            json,
        } => list(client, identity.as_deref(), all, json),
        LeaseCmd::Show {
            id,
            json,
            audit_dir,
        } => history::show(client, &id, json, audit_dir),
        LeaseCmd::Verify(a) => verify(client, &a),
        LeaseCmd::Approve { id } => decide(client, &id, "approve"),
        LeaseCmd::Deny { id } => decide(client, &id, "deny"),
        LeaseCmd::Wait { id, timeout } => {
            let t = humantime::parse_duration(&timeout)
                .map_err(|e| UsageError(format!("bad --timeout: {e}")))?;
            let v = wait(client, &id, t)?;
            show_issued(&v, true)
        }
        LeaseCmd::Pubkey { jwk } => {
            let (_, v) = call(client, Method::GET, "/v1/leases/pubkey", None)?;
            if jwk {
                print_json(&json!({ "keys": [v["jwk"]] }));
            } else {
                print!("{}", v["pem"].as_str().unwrap_or(""));
            }
            Ok(0)
        }
    }
}

fn revoke(client: &Client, a: &RevokeArgs) -> anyhow::Result<u8> {
    let (path, body) = match (&a.id, &a.identity) {
        (Some(id), _) => (
            format!("/v1/leases/{id}/revoke"),
            json!({ "reason": a.reason }),
        ),
        (None, Some(i)) => (
            "/v1/leases/revoke".to_string(),
            json!({ "identity": i, "reason": a.reason }),
        ),
        _ => unreachable!("clap requires one"),
    };
    let started = Instant::now();
    let (_, v) = call(client, Method::POST, &path, Some(&body))?;
    if a.json {
        print_json(&v);
    } else if a.id.is_some() {
        eprintln!(
            "{} (grants out of the kernel in {} µs; {:.1} ms round trip)",
            summary(&v),
            v["kernel_applied_us"],
            started.elapsed().as_secs_f64() * 1e3
        );
    } else {
        eprintln!(
            "revoked {} lease(s) of {}; its own requests and rotation are suspended until `corral thaw {}`",
            v["revoked"].as_array().map_or(0, Vec::len),
            v["identity"].as_str().unwrap_or("?"),
            v["identity"].as_str().unwrap_or("?"),
        );
    }
    Ok(0)
}

fn list(client: &Client, identity: Option<&str>, all: bool, json: bool) -> anyhow::Result<u8> {
    let mut q = Vec::new();
    if let Some(i) = identity {
        q.push(format!("identity={i}"));
    }
    if all {
        q.push("all=1".into());
    }
    let (_, v) = call(
        client,
        Method::GET,
        &format!("/v1/leases?{}", q.join("&")),
        None,
    )?;
    if json {
        print_json(&v);
        return Ok(0);
    }
    println!(
        "{:<13} {:<20} {:<8} {:<25} {:>7}  SCOPES",
        "LEASE", "IDENTITY", "STATE", "EXPIRES", "DENIALS"
    );
    for l in v.as_array().into_iter().flatten() {
        println!(
            "{:<13} {:<20} {:<8} {:<25} {:>7}  {}",
            l["id"].as_str().unwrap_or("?"),
            l["identity"].as_str().unwrap_or("?"),
            l["state"].as_str().unwrap_or("?"),
            l["expires"].as_str().unwrap_or("-"),
            l["denials"],
            l["scopes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    Ok(0)
}

/// The daemon's view of a lease it holds, for `lease show`.
pub(super) fn print_live(v: &Value) {
    println!("{}", summary(v));
    println!(
        "requested {} by {}",
        v["requested"].as_str().unwrap_or("?"),
        history::caller(&v["requested_by"])
    );
    for g in v["grants"].as_array().into_iter().flatten() {
        println!(
            "grant {}: network {} files {} (files not enforced)",
            g["scope"], g["network"], g["files"]
        );
    }
    println!("denials under this lease: {}", v["denials"]);
    for e in v["recent_denials"].as_array().into_iter().flatten() {
        match serde_json::from_value::<crate::event::Event>(e.clone()) {
            Ok(ev) => println!("  {ev}"),
            Err(_) => println!("  {e}"),
        }
    }
    warnings(v);
}

fn show_issued(v: &Value, json: bool) -> anyhow::Result<u8> {
    warnings(v);
    if json {
        print_json(v);
    } else {
        eprintln!("{}", summary(v));
        match v["token"].as_str() {
            Some(t) => println!("{t}"),
            None => println!("{}", v["id"].as_str().unwrap_or("")),
        }
    }
    Ok(match v["state"].as_str() {
        Some("active" | "pending") => 0,
        _ => 1,
    })
}

fn decide(client: &Client, id: &str, what: &str) -> anyhow::Result<u8> {
    let (_, v) = call(
        client,
        Method::POST,
        &format!("/v1/leases/{id}/{what}"),
        None,
    )?;
    eprintln!("{}", summary(&v));
    Ok(0)
}

/// Long-polls in slices the client's own timeout allows.
fn wait(client: &Client, id: &str, total: Duration) -> anyhow::Result<Value> {
    let deadline = Instant::now() + total;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let slice = left.min(Duration::from_secs(45)).as_secs().max(1);
        let (_, v) = call(
            client,
            Method::GET,
            &format!("/v1/leases/{id}/wait?timeout={slice}s"),
            None,
        )?;
        if v["state"] != "pending" || Instant::now() >= deadline {
            return Ok(v);
        }
    }
}

fn verify(client: &Client, a: &VerifyArgs) -> anyhow::Result<u8> {
    let token = match a.token.as_str() {
        "-" => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s
        }
        t if t.starts_with('@') => {
            std::fs::read_to_string(&t[1..]).with_context(|| format!("reading {}", &t[1..]))?
        }
        t => t.to_string(),
    };
    let key = match &a.pubkey {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            PublicKey::parse(&text, None)
                .map_err(|e| UsageError(format!("{}: {e}", p.display())))?
        }
        None => {
            let (_, v) = call(client, Method::GET, "/v1/leases/pubkey", None)?;
            PublicKey::parse(v["pem"].as_str().unwrap_or(""), None)
                .map_err(|e| anyhow!("daemon key: {e}"))?
        }
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    match key.verify(&token, now) {
        Ok(c) => {
            if a.json {
                print_json(&json!({ "valid": true, "kid": key.kid, "claims": c }));
            } else {
                println!(
                    "valid: lease {} of {} on {} (cgroup {}), scopes [{}], expires in {}s",
                    c.jti,
                    c.identity,
                    c.host,
                    c.cgroup_id,
                    c.scopes.join(", "),
                    c.exp.saturating_sub(now)
                );
            }
            Ok(0)
        }
        Err(e) => {
            if a.json {
                print_json(&json!({ "valid": false, "error": e.to_string() }));
            } else {
                eprintln!("invalid: {e}");
            }
            Ok(1)
        }
    }
}

pub fn thaw(client: &Client, a: &ThawArgs) -> anyhow::Result<u8> {
    let (_, v) = call(client, Method::POST, &format!("/v1/thaw/{}", a.name), None)?;
    eprintln!(
        "{} thawed ({}); lease requests and rotation resumed",
        a.name,
        if v["was_frozen"] == true {
            "it was frozen"
        } else {
            "it was not frozen"
        }
    );
    for f in v["failed"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", f.as_str().unwrap_or(""));
    }
    Ok(0)
}
