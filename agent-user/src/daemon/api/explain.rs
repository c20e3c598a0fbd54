//! `POST /v1/policy/explain` beyond what `inspect::explain` judges: file
//! opens (decided by `policy::decide_file`, the model every file layer
//! implements) and destinations the kernel rewrites before judging them.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde_json::{Value, json};

use super::super::{
    fileobs,
    inspect::{self, Op, Subject},
};
use crate::policy::{ACCESS_EXEC, ACCESS_READ, ACCESS_WRITE, Action, IdentityPolicy, mode_name};
use crate::views::FilesLayer;

/// See [`crate::policy::judged_destination`]: only connects are rewritten.
pub fn judged_destination(op: Op, ip: IpAddr) -> Option<IpAddr> {
    if op != Op::Connect {
        return None;
    }
    crate::policy::judged_destination(ip)
}

/// `inspect::explain` on the addresses the kernel actually judges; answers
/// whose address was rewritten carry `written` and a `note` saying so.
pub fn net(view: &Subject, op: Op, udp: bool, target: &str, addrs: &[IpAddr], port: u16) -> Value {
    let judged: Vec<IpAddr> = addrs
        .iter()
        .map(|&a| judged_destination(op, a).unwrap_or(a))
        .collect();
    let mut v = json!(inspect::explain(view, op, udp, target, &judged, port));
    let answers = v["answers"].as_array_mut().into_iter().flatten();
    for ((ans, written), judged) in answers.zip(addrs).zip(&judged) {
        if written != judged {
            ans["written"] = json!(written);
            ans["note"] = json!(format!(
                "{written} (unspecified) means this host: the kernel judges the destination as \
                 {judged} and rewrites it to that address, so the connection goes where it was \
                 judged"
            ));
        }
    }
    v
}

const ACCESS_NAMES: [(u32, &str); 3] = [
    (ACCESS_READ, "read"),
    (ACCESS_WRITE, "write"),
    (ACCESS_EXEC, "exec"),
];

/// `"access"` of the request: `"read"`, `"read,write"` or a list of names;
/// absent means read. Read and write together is an `O_RDWR` open; exec is
/// what the kernel asks for when it opens a binary to execute it.
pub fn parse_access(v: Option<&Value>) -> Result<u32, String> {
    let names: Vec<&str> = match v {
        None | Some(Value::Null) => return Ok(ACCESS_READ),
        Some(Value::String(s)) => s.split(',').collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        Some(other) => return Err(format!("bad access {other}: expected read, write or exec")),
    };
    let mut access = 0;
    for n in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let (bit, _) = ACCESS_NAMES
            .iter()
            .find(|(_, name)| *name == n)
            .ok_or_else(|| format!("unknown access `{n}`: expected read, write or exec"))?;
        access |= bit;
    }
    if access == 0 {
        return Err("empty access: expected read, write or exec".into());
    }
    Ok(access)
}

fn access_names(access: u32) -> Vec<&'static str> {
    ACCESS_NAMES
        .iter()
        .filter(|(b, _)| access & b != 0)
        .map(|(_, n)| *n)
        .collect()
}

/// The path an open is judged by, and why it differs from the one given:
/// rules name real paths (the LSM resolves the opened file, Landlock
/// follows symlinks), so symlinks are followed; a path that does not exist
/// yet is what an `O_CREAT` open would create, under its parent's real
/// path.
pub(super) fn judged_path(path: &Path) -> Result<(PathBuf, Option<String>), String> {
    if !path.is_absolute() {
        return Err(format!(
            "`{}` is not absolute (the daemon's working directory is not yours)",
            path.display()
        ));
    }
    if let Ok(real) = std::fs::canonicalize(path) {
        let note = (real != path).then(|| format!("resolves to {}", real.display()));
        return Ok((real, note));
    }
    // `a/./b/../c` as the kernel walks it, symlinks aside.
    let lexical = PathBuf::from(crate::policy::text::normalise_file(&path.to_string_lossy()));
    // The deepest ancestor that exists carries the symlinks that matter.
    for base in lexical.ancestors().skip(1) {
        if let Ok(real) = std::fs::canonicalize(base) {
            let rest = lexical.strip_prefix(base).unwrap_or(&lexical);
            let judged = real.join(rest);
            return Ok((
                judged.clone(),
                Some(format!(
                    "does not exist: judged as {} (what an O_CREAT open would create)",
                    judged.display()
                )),
            ));
        }
    }
    Ok((lexical, None))
}

fn rule_json(p: &IdentityPolicy, id: u32) -> Value {
    match p.files.rules.iter().find(|r| r.id == id) {
        Some(r) => json!({ "id": id, "list": r.list.name(), "text": r.text,
            "origin": r.origin.to_string(), "describe": r.describe() }),
        None => json!({ "id": id }),
    }
}

/// Which `[files]` rule decides an open of `path` for `access` (`ACCESS_*`
/// bits), judged against the policy in force, and what the layer enforcing
/// it does with that decision.
pub fn open(view: &Subject, path: &Path, access: u32, files_lsm: bool) -> Result<Value, String> {
    let (real, note) = judged_path(path)?;
    let judged = real.to_string_lossy().into_owned();
    let is_dir = crate::policy::files_is_dir(&real);
    let mut v = json!({
        "identity": view.name,
        "mode": mode_name(view.mode),
        "op": "open",
        "path": path,
        "judged_path": judged,
        "is_dir": is_dir,
        "access": access_names(access),
        "note": note,
    });
    let Some(p) = &view.policy else {
        v["layer"] = json!(if files_lsm { "lsm" } else { "landlock" });
        v["decision"] = json!("deny");
        v["outcome"] = json!("denied");
        v["reason"] = json!(
            "the identity's policy file was removed while processes remain: file access that \
             was confined stays confined, with no rule left (processes confined by Landlock \
             keep the rules they were started with)"
        );
        return Ok(v);
    };
    let (layer, layer_note) = fileobs::files_layer(&p.files, p.mode, files_lsm);
    v["layer"] = json!(layer);
    v["layer_note"] = json!(layer_note);
    if !p.files.confined {
        v["decision"] = json!("allow");
        v["outcome"] = json!("allowed");
        v["reason"] = json!("no [files] section: file access is not confined");
        return Ok(v);
    }
    let per_access: Vec<Value> = ACCESS_NAMES
        .iter()
        .filter(|(b, _)| access & b != 0)
        .map(|&(bit, name)| {
            let d = crate::policy::decide_file(&p.files, &judged, is_dir, bit);
            json!({
                "access": name,
                "decision": if matches!(d, Some((Action::Allow, _))) { "allow" } else { "deny" },
                "rule": d.map(|(_, id)| rule_json(p, id)),
            })
        })
        .collect();
    let decided = crate::policy::decide_file(&p.files, &judged, is_dir, access);
    let allowed = matches!(decided, Some((Action::Allow, _)));
    v["decision"] = json!(if allowed { "allow" } else { "deny" });
    v["outcome"] = json!(match (allowed, layer, p.mode) {
        (true, ..) => "allowed",
        (false, FilesLayer::Lsm, agent_common::identity::Mode::Audit) => "allowed (audit)",
        (false, FilesLayer::Lsm, _) => "denied (EPERM)",
        (false, FilesLayer::Landlock, _) =>
            "denied (EACCES) for processes started with `corral run`",
        _ => "allowed (NOT enforced: audit mode without BPF LSM)",
    });
    v["rule"] = decided.map_or(Value::Null, |(_, id)| rule_json(p, id));
    v["reason"] = json!(match decided {
        Some((_, id)) => rule_json(p, id)["describe"]
            .as_str()
            .map_or_else(|| format!("rule #{id}"), str::to_string),
        None => {
            let missing: Vec<&str> = per_access
                .iter()
                .filter(|a| a["rule"].is_null())
                .filter_map(|a| a["access"].as_str())
                .collect();
            format!("no rule grants {} here: default deny", missing.join(" or "))
        }
    });
    v["per_access"] = json!(per_access);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use agent_common::identity::Mode;

    use super::*;
    use crate::policy;

    fn subject(text: &str) -> Subject {
        let p = policy::parse_str(Path::new("p/t.toml"), text, &|_| Ok(Vec::new()))
            .unwrap_or_else(|e| panic!("{e}"));
        Subject {
            name: p.name.clone(),
            mode: p.mode,
            policy: Some(Arc::new(p)),
        }
    }

    #[test]
    fn unspecified_destinations_are_judged_as_loopback() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let j = |s: &str| judged_destination(Op::Connect, ip(s));
        assert_eq!(j("0.0.0.0"), Some(ip("127.0.0.1")));
        assert_eq!(j("::"), Some(ip("::1")));
        assert_eq!(j("::ffff:0.0.0.0"), Some(ip("::ffff:127.0.0.1")));
        assert_eq!(j("10.0.0.1"), None);
        assert_eq!(j("::1"), None);
        assert_eq!(judged_destination(Op::Bind, ip("0.0.0.0")), None);

        let v = subject(
            "[identity]\nname = \"t\"\n[network]\nallow = [\"tcp://*:*\"]\n\
             deny = [\"tcp://127.0.0.1:*\", \"tcp://[::1]:*\"]\n",
        );
        let ask = |op, addr: &str, port| {
            net(&v, op, false, addr, &[ip(addr)], port)["answers"][0].clone()
        };
        for (written, judged) in [
            ("0.0.0.0", "127.0.0.1"),
            ("::", "::1"),
            ("::ffff:0.0.0.0", "127.0.0.1"),
        ] {
            let a = ask(Op::Connect, written, 8080);
            assert_eq!(a["decision"], "deny", "{written}: {a}");
            assert_eq!(a["address"], judged, "{a}");
            assert_eq!(a["written"], written, "{a}");
            assert!(
                a["note"]
                    .as_str()
                    .unwrap()
                    .contains("judges the destination as")
            );
        }
        // Written loopback and ordinary addresses carry no note.
        assert!(ask(Op::Connect, "127.0.0.1", 80)["note"].is_null());
        assert_eq!(ask(Op::Connect, "192.0.2.1", 80)["decision"], "allow");
        // A bind to 0.0.0.0 is a local address, judged as written.
        let b = ask(Op::Bind, "0.0.0.0", 8080);
        assert_eq!(b["address"], "0.0.0.0");
        assert!(b["note"].is_null());
    }

    #[test]
    fn access_is_read_by_default_and_names_combine() {
        assert_eq!(parse_access(None), Ok(ACCESS_READ));
        assert_eq!(
            parse_access(Some(&json!("read,write"))),
            Ok(ACCESS_READ | ACCESS_WRITE)
        );
        assert_eq!(parse_access(Some(&json!(["exec"]))), Ok(ACCESS_EXEC));
        assert!(parse_access(Some(&json!("append"))).is_err());
        assert!(parse_access(Some(&json!(""))).is_err());
    }

    #[test]
    fn open_names_the_deciding_file_rule() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().canonicalize().unwrap();
        std::fs::create_dir_all(d.join("kb/vip")).unwrap();
        std::fs::write(d.join("kb/a.txt"), "x").unwrap();
        std::os::unix::fs::symlink(d.join("kb/vip"), d.join("link")).unwrap();
        let text = format!(
            "[identity]\nname = \"t\"\n[files]\nread = [\"{0}/kb/\"]\n\
             write = [\"{0}/kb/out/\"]\ndeny = [\"{0}/kb/vip/\"]\n",
            d.display()
        );
        let v = subject(&text);
        let ask = |p: PathBuf, access| open(&v, &p, access, false).unwrap();

        let a = ask(d.join("kb/a.txt"), ACCESS_READ);
        assert_eq!(
            (a["decision"].as_str(), a["layer"].as_str()),
            (Some("allow"), Some("landlock"))
        );
        assert_eq!(a["rule"]["list"], "read");
        assert_eq!(a["rule"]["origin"], "p/t.toml:4:10");

        let a = ask(d.join("kb/a.txt"), ACCESS_READ | ACCESS_WRITE);
        assert_eq!(a["decision"], "deny");
        assert!(a["rule"].is_null());
        assert_eq!(a["reason"], "no rule grants write here: default deny");
        assert_eq!(a["per_access"][0]["decision"], "allow");

        // Through a symlink, the real path decides.
        let a = ask(d.join("link/x"), ACCESS_READ);
        assert_eq!(a["decision"], "deny");
        assert_eq!(a["rule"]["list"], "deny");
        assert_eq!(a["judged_path"], d.join("kb/vip/x").display().to_string());
        assert!(
            a["note"].as_str().unwrap().contains("does not exist"),
            "{a}"
        );
        assert!(
            a["outcome"]
                .as_str()
                .unwrap()
                .starts_with("denied (EACCES)")
        );

        // A file to be created beneath a write rule.
        let a = ask(d.join("kb/out/new.txt"), ACCESS_WRITE);
        assert_eq!(a["decision"], "allow");
        assert_eq!(a["rule"]["list"], "write");

        assert!(open(&v, Path::new("kb/a.txt"), ACCESS_READ, false).is_err());
    }

    #[test]
    fn open_without_files_section_or_policy() {
        let mut v = subject("[identity]\nname = \"t\"\n");
        let a = open(&v, Path::new("/etc/hostname"), ACCESS_WRITE, false).unwrap();
        assert_eq!(
            (a["decision"].as_str(), a["layer"].as_str()),
            (Some("allow"), Some("none"))
        );
        v.policy = None;
        v.mode = Mode::Enforce;
        let a = open(&v, Path::new("/etc/hostname"), ACCESS_READ, false).unwrap();
        assert_eq!(a["decision"], "deny");
        assert!(a["reason"].as_str().unwrap().contains("removed"));
    }
}
