//! `corral policy`: check (offline), apply, diff, show, explain and suggest
//! (`suggest.rs`).

use std::path::PathBuf;

use hyper::Method;
use serde_json::{Value, json};

use super::client::{Client, UsageError, print_json};

#[derive(clap::Subcommand, Debug)]
pub enum PolicyCmd {
    /// Validate a policy directory or file without a daemon.
    Check {
        #[arg(default_value = "/etc/corral/policies")]
        path: PathBuf,
    },
    /// Ask the daemon to reload (its policy dir, or DIR).
    Apply { dir: Option<PathBuf> },
    /// What a reload of DIR (default: the daemon's policy dir) would change,
    /// per identity. Changes nothing.
    Diff {
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// The compiled policy of an identity as the daemon enforces it, with
    /// what each host name in its rules resolves to.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Whether an operation of an identity is allowed, and the rule that
    /// decides, judged against the policy in force.
    Explain(ExplainArgs),
    /// Propose the least widening of an identity's policy that allows what
    /// it was refused (enforce) or would have been (audit), each addition
    /// commented with its evidence and proven against the recording before
    /// anything is applied. The proposal goes to stdout, the summary to
    /// stderr.
    Suggest(super::suggest::SuggestArgs),
}

#[derive(clap::Args, Debug)]
#[command(group(
    clap::ArgGroup::new("op").required(true).args(["connect", "bind", "open", "syscall"])
))]
pub struct ExplainArgs {
    #[arg(long)]
    pub identity: String,
    /// A connect (or UDP send with --udp) to HOST:PORT; HOST may be a name,
    /// resolved by the daemon; IPv6 as [ADDR]:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub connect: Option<String>,
    /// A bind to ADDR:PORT.
    #[arg(long, value_name = "ADDR:PORT")]
    pub bind: Option<String>,
    /// UDP instead of TCP (with --connect or --bind).
    #[arg(long)]
    pub udp: bool,
    /// Opening a file: which [files] rule decides (symlinks are followed,
    /// as the kernel judges the real path).
    #[arg(long, value_name = "PATH")]
    pub open: Option<PathBuf>,
    /// With --open: what the open asks for (default read); `read,write` is
    /// an O_RDWR open, `exec` running the file.
    #[arg(
        long,
        requires = "open",
        // `requires` alone does not refuse `--connect X --access write`
        // (clap 4.6), and an ignored flag would mislead.
        conflicts_with_all = ["connect", "bind", "syscall"],
        value_delimiter = ',',
        value_parser = ["read", "write", "exec"]
    )]
    pub access: Vec<String>,
    /// A system call (syscall rules).
    #[arg(long, value_name = "NAME")]
    pub syscall: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(client: &Client, cmd: PolicyCmd) -> anyhow::Result<u8> {
    match cmd {
        PolicyCmd::Check { path } => check(&path),
        PolicyCmd::Apply { dir } => apply(client, dir),
        PolicyCmd::Diff { dir, json } => diff(client, dir, json),
        PolicyCmd::Show { name, json } => show(client, &name, json),
        PolicyCmd::Explain(a) => explain(client, &a),
        PolicyCmd::Suggest(a) => super::suggest::run(client, &a),
    }
}

fn call(
    client: &Client,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    client.json(method, path, body)
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// A directory given to the daemon, which may run elsewhere in the tree.
fn absolute(dir: Option<PathBuf>) -> Option<PathBuf> {
    dir.map(|d| std::fs::canonicalize(&d).unwrap_or(d))
}

fn check(path: &std::path::Path) -> anyhow::Result<u8> {
    let r = if path.is_dir() {
        crate::daemon::compile_dir(path).map(|set| set.len())
    } else {
        crate::policy::load_file(path).and_then(|p| crate::policy::compile_network(&p).map(|_| 1))
    };
    match r {
        Ok(n) => {
            println!(
                "{}: ok ({n} identit{})",
                path.display(),
                if n == 1 { "y" } else { "ies" }
            );
            Ok(0)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(1)
        }
    }
}

fn apply(client: &Client, dir: Option<PathBuf>) -> anyhow::Result<u8> {
    let body = json!({ "dir": absolute(dir) });
    let v = call(client, Method::POST, "/v1/policy/apply", Some(&body))?;
    let r = &v["report"];
    println!("applied generation {}", v["generation"]);
    for (k, label) in [
        ("changed", "changed"),
        ("unchanged", "unchanged"),
        ("removed", "removed"),
        ("orphaned", "orphaned (processes remain, all denied)"),
    ] {
        let names = strs(&r[k]);
        if !names.is_empty() {
            println!("  {label}: {}", names.join(", "));
        }
    }
    Ok(0)
}

fn diff(client: &Client, dir: Option<PathBuf>, json: bool) -> anyhow::Result<u8> {
    let body = json!({ "dir": absolute(dir) });
    let v = call(client, Method::POST, "/v1/policy/diff", Some(&body))?;
    let d = &v["diff"];
    if json {
        print_json(d);
        return Ok(0);
    }
    let rules = |i: &Value| {
        for (k, sign) in [("rules_added", '+'), ("rules_removed", '-')] {
            for r in i[k].as_array().into_iter().flatten() {
                println!("    {sign} {}  ({})", s(&r["rule"]), s(&r["origin"]));
            }
        }
    };
    let mut any = false;
    for i in d["added"].as_array().into_iter().flatten() {
        any = true;
        println!(
            "+ {} ({}, new identity and cgroup) from {}",
            s(&i["name"]),
            s(&i["mode"][0]),
            s(&i["source"])
        );
        rules(i);
    }
    for i in d["changed"].as_array().into_iter().flatten() {
        any = true;
        println!("~ {} from {}", s(&i["name"]), s(&i["source"]));
        if let Some([was, now]) = i["mode"].as_array().map(Vec::as_slice) {
            println!("    mode {} -> {}", s(was), s(now));
        }
        rules(i);
    }
    for i in d["removed"].as_array().into_iter().flatten() {
        any = true;
        println!(
            "- {} ({} processes): {}",
            s(&i["name"]),
            i["processes"],
            s(&i["outcome"])
        );
    }
    let same = strs(&d["unchanged"]);
    if !same.is_empty() {
        println!("  unchanged: {}", same.join(", "));
    }
    if !any {
        println!(
            "no changes: a reload of {} would leave everything as it is",
            s(&d["dir"])
        );
    }
    Ok(0)
}

/// Host names in the rules, with what they resolve to now.
fn print_hosts(hosts: &Value) {
    for h in hosts.as_array().into_iter().flatten() {
        let addrs: Vec<String> = h["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| s(a).to_string())
            .collect();
        let state = match s(&h["state"]) {
            "ok" => format!("resolved {}", s(&h["resolved_at"])),
            "failing" => format!(
                "NOT RESOLVING since {} ({}): keeping these until {}",
                s(&h["failing_since"]),
                s(&h["error"]),
                s(&h["keep_until"])
            ),
            "expired" => format!(
                "EXPIRED: not resolving since {} ({}); its allow rules are dropped, \
                 its deny rules keep these addresses",
                s(&h["failing_since"]),
                s(&h["error"])
            ),
            other => other.to_string(),
        };
        println!(
            "  host {} -> {} ({state}; refreshed every {})",
            s(&h["name"]),
            addrs.join(", "),
            s(&h["refresh_every"])
        );
    }
}

fn show(client: &Client, name: &str, json: bool) -> anyhow::Result<u8> {
    let v = call(client, Method::GET, &format!("/v1/policy/{name}"), None)?;
    if json {
        print_json(&v);
        return Ok(0);
    }
    if v["orphaned"] == true {
        println!("{} (orphaned): {}", s(&v["name"]), s(&v["note"]));
        return Ok(0);
    }
    println!(
        "{} ({}) from {}",
        s(&v["name"]),
        s(&v["mode"]),
        s(&v["source"])
    );
    for r in v["network"].as_array().into_iter().flatten() {
        let origin = &r["origin"];
        println!(
            "  #{:<3} {:<5} {:<7} {:<4} {:<24} ports {:<11} {}:{}:{}",
            r["id"],
            s(&r["action"]),
            s(&r["direction"]),
            s(&r["proto"]),
            s(&r["net"]),
            s(&r["ports"]),
            s(&origin["file"]),
            origin["line"],
            origin["col"],
        );
    }
    let unix_note = if v["unix_enforced"] == true {
        ""
    } else {
        " (NOT ENFORCED: see `corral status`)"
    };
    for u in v["unix"].as_array().into_iter().flatten() {
        println!("  #{:<3} unix  {}{unix_note}", u["id"], s(&u["path"]));
    }
    print_hosts(&v["hosts"]);
    let protected_note = if v["protected_paths_enforced"] == true {
        ""
    } else {
        " (NOT ENFORCED: needs BPF LSM, see `corral status`)"
    };
    for p in v["protected_paths"].as_array().into_iter().flatten() {
        println!(
            "  protected {:<40} refused: {:<15} {}{protected_note}",
            s(&p["path"]),
            s(&p["refused"]),
            s(&p["why"])
        );
    }
    crate::policy::syscalls::print_show(&v["syscalls"]);
    let k = &v["kernel_entries"];
    println!(
        "  kernel: ruleset {}, {} IPv4 + {} IPv6 LPM entries",
        k["ruleset"], k["v4"], k["v6"]
    );
    Ok(0)
}

fn explain(client: &Client, a: &ExplainArgs) -> anyhow::Result<u8> {
    if let Some(name) = &a.syscall {
        let p = call(
            client,
            Method::GET,
            &format!("/v1/policy/{}?sections=syscalls", a.identity),
            None,
        )?;
        let v = crate::policy::syscalls::explain(&p, name).map_err(UsageError)?;
        if a.json {
            print_json(&v);
        } else {
            println!(
                "{} ({}): {} (#{}) -> {}{} [{}]",
                s(&v["identity"]),
                s(&v["mode"]),
                s(&v["syscall"]),
                v["nr"],
                s(&v["decision"]),
                v["by"]
                    .as_str()
                    .map(|b| format!(" by {b}"))
                    .unwrap_or_default(),
                s(&v["layer"])
            );
        }
        return Ok(0);
    }
    // The daemon's working directory is not the caller's.
    let open = a.open.as_deref().map(std::path::absolute).transpose()?;
    let body = json!({
        "identity": a.identity,
        "connect": a.connect,
        "bind": a.bind,
        "udp": a.udp,
        "open": open,
        // Absent means read, as the daemon reads it.
        "access": open.as_ref().map(|_| &a.access).filter(|a| !a.is_empty()),
    });
    let v = call(client, Method::POST, "/v1/policy/explain", Some(&body))?;
    if a.json {
        print_json(&v);
    } else if open.is_some() {
        print!("{}", render_open(&v));
    } else {
        print!("{}", render_net(&v));
    }
    Ok(0)
}

fn addr_port(addr: &str, port: &Value) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

fn render_net(v: &Value) -> String {
    let mut out = format!(
        "{} ({}): {} {} {}\n",
        s(&v["identity"]),
        s(&v["mode"]),
        s(&v["op"]),
        s(&v["proto"]),
        s(&v["target"])
    );
    for ans in v["answers"].as_array().into_iter().flatten() {
        let judged = addr_port(s(&ans["address"]), &ans["port"]);
        let shown = match ans["written"].as_str() {
            Some(w) => format!("{} judged as {judged}", addr_port(w, &ans["port"])),
            None => judged,
        };
        out += &format!(
            "  {shown}: {} -> {}\n    {}\n",
            s(&ans["decision"]).to_uppercase(),
            s(&ans["outcome"]),
            s(&ans["reason"])
        );
        if let Some(note) = ans["note"].as_str() {
            out += &format!("    note: {note}\n");
        }
    }
    out
}

fn render_open(v: &Value) -> String {
    let mut out = format!(
        "{} ({}): open {} for {}: {} -> {}\n    {}\n",
        s(&v["identity"]),
        s(&v["mode"]),
        s(&v["path"]),
        strs(&v["access"]).join("+"),
        s(&v["decision"]).to_uppercase(),
        s(&v["outcome"]),
        s(&v["reason"])
    );
    if let Some(note) = v["note"].as_str() {
        out += &format!("    path: {note}\n");
    }
    let per: Vec<&Value> = v["per_access"].as_array().into_iter().flatten().collect();
    if per.len() > 1 {
        for p in per {
            let by = p["rule"]["describe"]
                .as_str()
                .unwrap_or("no rule: default deny");
            out += &format!("    {:<5} {} by {by}\n", s(&p["access"]), s(&p["decision"]));
        }
    }
    out += &format!(
        "    layer: {}{}\n",
        s(&v["layer"]),
        v["layer_note"]
            .as_str()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    );
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<ExplainArgs, clap::Error> {
        let mut argv = vec!["corral", "policy", "explain", "--identity", "t"];
        argv.extend(args);
        match crate::cli::Cli::try_parse_from(argv)?.command {
            crate::cli::Cmd::Policy(PolicyCmd::Explain(a)) => Ok(a),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn open_takes_an_access_list_defaulting_to_read() {
        assert!(
            parse(&["--open", "/etc/hostname"])
                .unwrap()
                .access
                .is_empty()
        );
        let a = parse(&["--open", "/srv/x", "--access", "read,write"]).unwrap();
        assert_eq!(a.access, ["read", "write"]);
        assert!(parse(&["--open", "/x", "--access", "append"]).is_err());
        assert!(parse(&["--connect", "a:1", "--access", "write"]).is_err());
        assert!(parse(&["--open", "/x", "--connect", "a:1"]).is_err());
    }

    #[test]
    fn rewritten_destinations_are_shown_with_the_note() {
        let v = json!({ "identity": "t", "mode": "enforce", "op": "connect", "proto": "tcp",
            "target": "0.0.0.0:8080", "answers": [{ "address": "127.0.0.1", "port": 8080,
            "written": "0.0.0.0", "decision": "deny", "outcome": "denied",
            "reason": "deny tcp://127.0.0.1:* (t.toml:5:9)", "note": "0.0.0.0 (unspecified) \
            means this host: the kernel judges the destination as 127.0.0.1" }] });
        let out = render_net(&v);
        assert!(
            out.contains("0.0.0.0:8080 judged as 127.0.0.1:8080: DENY -> denied"),
            "{out}"
        );
        assert!(
            out.contains("    note: 0.0.0.0 (unspecified) means this host"),
            "{out}"
        );
        let mut plain = v.clone();
        plain["answers"][0]["written"] = Value::Null;
        plain["answers"][0]["note"] = Value::Null;
        assert!(!render_net(&plain).contains("note"));
    }

    #[test]
    fn open_explanations_name_rule_path_and_layer() {
        let v = json!({ "identity": "t", "mode": "enforce", "path": "/srv/link/a",
            "access": ["read", "write"], "decision": "deny", "outcome": "denied (EPERM)",
            "reason": "no rule grants write here: default deny",
            "note": "resolves to /srv/kb/a", "layer": "lsm", "layer_note": "BPF LSM file_open",
            "per_access": [
                { "access": "read", "decision": "allow",
                  "rule": { "describe": "read /srv/kb/ (t.toml:4:9)" } },
                { "access": "write", "decision": "deny", "rule": null }] });
        let out = render_open(&v);
        assert!(
            out.starts_with(
                "t (enforce): open /srv/link/a for read+write: DENY -> denied (EPERM)\n"
            ),
            "{out}"
        );
        assert!(out.contains("    path: resolves to /srv/kb/a\n"), "{out}");
        assert!(
            out.contains("    read  allow by read /srv/kb/ (t.toml:4:9)\n"),
            "{out}"
        );
        assert!(
            out.contains("    write deny by no rule: default deny\n"),
            "{out}"
        );
        assert!(
            out.ends_with("    layer: lsm (BPF LSM file_open)\n"),
            "{out}"
        );
    }
}
