//! `corral policy suggest`: a real workload (Python: resolves a name,
//! connects to local services, sends a datagram, reads and writes files,
//! makes syscalls outside `@default`) runs under an identity; the proposal
//! made from the audit log is applied through the normal reload; the same
//! workload then runs with zero denials, and what it never did stays
//! refused (errno inside, success outside, event with identity, pid,
//! comm, target).

use std::{
    net::{TcpListener, UdpSocket},
    process::{Command, Output},
    time::Duration,
};

use corral_tests::*;
use serde_json::Value;

const PY: &str = "/usr/bin/python3";
const PORTS: [u16; 3] = [23451, 23452, 23453];
const UDP_PORT: u16 = 23454;
const OTHER_PORT: u16 = 23455;

/// Resolves `localhost`, connects to the three services, sends one
/// datagram, makes and removes a directory (`mkdir`/`rmdir` are outside
/// `@default`), reads and writes files when given a tree.
const NET_WORKLOAD: &str = r#"
import os, socket, sys
for port in (23451, 23452, 23453):
    addr = socket.getaddrinfo("localhost", port, socket.AF_INET, socket.SOCK_STREAM)[0][4]
    s = socket.create_connection(addr, timeout=5)
    s.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.sendto(b"x", ("127.0.0.1", 23454))
u.close()
os.mkdir(sys.argv[1])
print("workload done")
"#;

fn run_as(d: &Daemon, identity: &str, args: &[&str]) -> Output {
    let mut a = vec!["run", "--identity", identity, "--", PY];
    a.extend_from_slice(args);
    d.cli(&a)
}

/// `args` (a Python script that prints `refused` when its operation is
/// refused) prints it as `identity`, and runs cleanly and silently outside.
fn refused_inside_only(d: &Daemon, identity: &str, args: &[&str], refused: &str) {
    let out = run_as(d, identity, args);
    let inside = String::from_utf8_lossy(&out.stdout);
    assert_eq!(inside.trim(), refused, "{out:?}");
    let outside = Command::new(PY).args(args).output().expect("python");
    assert!(
        outside.status.success() && outside.stdout.is_empty(),
        "{outside:?}"
    );
}

fn suggest(d: &Daemon, identity: &str, extra: &[&str]) -> Value {
    let mut a = vec!["policy", "suggest", "--identity", identity, "--json"];
    a.extend_from_slice(extra);
    d.cli_json(&a)
}

/// Polls until the audit log holds what `ready` needs (written every 1 s).
fn suggest_when(d: &Daemon, identity: &str, ready: impl Fn(&Value) -> bool) -> Value {
    wait_for(Duration::from_secs(15), "events in the audit log", || {
        let v = suggest(d, identity, &[]);
        ready(&v).then_some(v)
    })
}

fn listeners() -> (Vec<TcpListener>, UdpSocket) {
    let tcp = PORTS
        .iter()
        .chain([&OTHER_PORT])
        .map(|p| TcpListener::bind(("127.0.0.1", *p)).expect("listen"))
        .collect();
    (tcp, UdpSocket::bind(("127.0.0.1", UDP_PORT)).expect("udp"))
}

/// What the audit-mode run did comes back as the proposal: the four TCP
/// services, the UDP send, `mkdir`; the replay allows all of it, and the
/// text keeps the operator's comment and names the command.
fn learnt_from_the_audit_log(d: &Daemon) -> String {
    let v = suggest_when(d, "adv", |v| {
        suggested(v, "allow")
            .iter()
            .filter(|a| a.contains("127.0.0.1:2345"))
            .count()
            == 4
    });
    let allow = suggested(&v, "allow");
    for p in PORTS {
        assert!(
            allow.contains(&format!("tcp://127.0.0.1:{p}").as_str()),
            "{allow:?}"
        );
    }
    assert!(allow.contains(&"udp://127.0.0.1:23454"), "{allow:?}");
    assert!(allow.iter().any(|a| a.starts_with("mkdir")), "{allow:?}");
    assert_eq!(v["events_from"], "the audit log");
    let r = &v["replay"];
    assert_eq!(
        r["allowed"].as_u64(),
        Some(
            r["operations"].as_u64().unwrap() - r["still_refused"].as_array().unwrap().len() as u64
        )
    );
    assert!(r["still_refused"].as_array().unwrap().is_empty(), "{r}");
    let text = v["proposal"].as_str().unwrap();
    assert!(text.starts_with("# advisor test\n"));
    assert!(text.contains("# suggested: "), "{text}");
    assert!(
        text.contains(", python3"),
        "evidence names the command: {text}"
    );

    text.to_string()
}

/// `--write` into the policy dir and `--apply` without `--yes` are
/// refused; `--apply --yes` writes the proposal, reloads, and both the
/// reload and the call reach the audit log. Returns the file as written.
fn apply_is_guarded_and_logged(d: &Daemon, text: &str) -> String {
    // The policy dir is not a --write target; --apply needs --yes.
    let into = d.dirs.policy_dir.join("adv-new.toml");
    let refused = d.cli(&[
        "policy",
        "suggest",
        "--identity",
        "adv",
        "--write",
        path_str(&into),
    ]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(!into.exists());
    let no_yes = d.cli(&["policy", "suggest", "--identity", "adv", "--apply"]);
    assert_eq!(no_yes.status.code(), Some(2), "{no_yes:?}");

    let before = d.generation();
    let applied = suggest(d, "adv", &["--apply", "--yes"]);
    assert_eq!(applied["applied"]["ok"], true, "{applied}");
    assert!(d.generation() > before);
    let file = d.dirs.policy_dir.join("adv.toml");
    let written = std::fs::read_to_string(&file).expect("policy");
    assert_eq!(written, text);
    // The reload and the operator's call are in the audit log.
    let audit = d.dirs.state_dir.join("audit");
    let query = |kind: &str| {
        let out = d.cli(&[
            "audit",
            "query",
            "--dir",
            path_str(&audit),
            "--kind",
            kind,
            "--json",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_for(
        Duration::from_secs(10),
        "the suggest reload on disk",
        || {
            let logged = query("policy").contains("\"trigger\":\"suggest\"")
                && query("operator").contains("/v1/policy/suggest");
            logged.then_some(())
        },
    );

    written
}

#[test]
fn audit_then_enforce_network_and_syscalls() {
    if !is_root() {
        return skip("needs root");
    }
    let policy = "# advisor test\n[identity]\nname = \"adv\"\nmode = \"audit\"\n\n\
                  [network]\nallow = [\"udp://127.0.0.53:53\"]\n\n\
                  [syscalls]\nallow = [\"@default\"]\n";
    let d = Daemon::start(&[("adv", policy)]);
    let _l = listeners();
    let scratch = tempfile::tempdir().expect("tmp");
    let made = scratch.path().join("made");
    let script = scratch.path().join("w.py");
    std::fs::write(&script, NET_WORKLOAD).expect("script");
    let out = run_as(&d, "adv", &[path_str(&script), path_str(&made)]);
    assert!(out.status.success(), "audit run: {out:?}");
    std::fs::remove_dir(&made).expect("made by the workload");

    let text = learnt_from_the_audit_log(&d);
    let written = apply_is_guarded_and_logged(&d, &text);

    // The operator switches to enforce: the same workload, zero denials.
    let g = d.generation();
    d.write_policy(
        "adv",
        &written.replace("mode = \"audit\"", "mode = \"enforce\""),
    );
    d.wait_generation_past(g, Duration::from_secs(10));
    let tail = d.tail(Some("adv"));
    let out = run_as(&d, "adv", &[path_str(&script), path_str(&made)]);
    assert!(out.status.success(), "enforce run: {out:?}");
    let denials: Vec<Value> = tail
        .drain_for(Duration::from_millis(1500))
        .into_iter()
        .filter(|e| e["verdict"] == "deny")
        .collect();
    assert!(denials.is_empty(), "{denials:#?}");

    // What the workload never did stays refused, and only inside.
    let other = format!(
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {OTHER_PORT}), timeout=5)\n\
         except PermissionError:\n    print('EPERM')\n"
    );
    refused_inside_only(&d, "adv", &["-c", &other], "EPERM");
    let ev = tail.expect(|e| e["kind"] == "net" && e["net"]["port"] == OTHER_PORT);
    assert_eq!(ev["identity"], "adv");
    assert_eq!(ev["comm"], "python3");
    assert!(ev["pid"].as_u64().unwrap() > 0);
    assert_eq!(ev["net"]["addr"], "127.0.0.1");

    let rm = "import os, sys\ntry:\n    os.rmdir(sys.argv[1])\nexcept PermissionError:\n    print('EPERM')\n";
    refused_inside_only(&d, "adv", &["-c", rm, path_str(&made)], "EPERM");
    let ev = tail.expect(|e| e["kind"] == "syscall" && e["syscall"]["name"] == "rmdir");
    assert_eq!(
        (ev["identity"].as_str(), ev["comm"].as_str()),
        (Some("adv"), Some("python3"))
    );
    assert!(ev["pid"].as_u64().unwrap() > 0);
    assert!(!made.exists(), "rmdir outside the identity");
}

/// Reads every file of `data/` and `docs/`, writes new files into `out/`;
/// refusals are counted, not fatal (the first round runs under the
/// written policy in enforce mode).
const FILE_WORKLOAD: &str = r#"
import os, sys
root = sys.argv[1]
refused = 0
for d in ("data", "docs"):
    for name in sorted(os.listdir(os.path.join(root, "list-" + d))):
        try:
            open(os.path.join(root, d, name)).read()
        except PermissionError:
            refused += 1
for i in range(3):
    try:
        with open(os.path.join(root, "out", "r%d.txt" % i), "w") as f:
            f.write("x")
    except PermissionError:
        refused += 1
print("refused", refused)
"#;

#[test]
fn enforce_rounds_learn_files_under_landlock() {
    if !is_root() {
        return skip("needs root");
    }
    let data: Vec<String> = (0..12).map(|i| format!("data/f{i}.csv")).collect();
    let mut files: Vec<&str> = data.iter().map(String::as_str).collect();
    files.extend(["docs/a.md", "docs/b.md", "other/x"]);
    let t = ScratchTree::new(
        &["data", "docs", "out", "other", "list-data", "list-docs"],
        &files,
    );
    // Names to read, listed where the policy needs no rule for them.
    for f in &files {
        if let Some((d, n)) = f.split_once('/')
            && d != "other"
        {
            std::fs::write(t.root.join(format!("list-{d}")).join(n), "").expect("list");
        }
    }
    let script = t.root.join("w.py");
    std::fs::write(&script, FILE_WORKLOAD).expect("script");
    let policy = format!(
        "[identity]\nname = \"advf\"\nmode = \"enforce\"\n\n[files]\n\
         read = [\"/usr/\", \"/etc/\", \"{0}/w.py\", \"{0}/list-data/\", \"{0}/list-docs/\"]\n\
         write = [\"/dev/null\"]\ndeny = [\"{0}/other/\"]\n",
        t.root.display()
    );
    let d = Daemon::start(&[("advf", &policy)]);
    if d.mechanism("files")["state"] != "fallback" {
        return skip("BPF LSM enforces [files] here (the guest's LSM suites cover it)");
    }
    let root = path_str(&t.root);
    let out = run_as(&d, "advf", &[path_str(&script), root]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.trim(), "refused 17", "{out:?}");

    let v = suggest_when(&d, "advf", |v| {
        suggested(v, "write").len() == 1 && suggested(v, "read").len() == 3
    });
    let dir = |rel: &str| format!("{root}/{rel}");
    // 12 files in one directory: one rule; 2: exact; created files: their
    // directory (a Landlock rule names what exists at launch).
    assert_eq!(
        suggested(&v, "read"),
        [dir("data/"), dir("docs/a.md"), dir("docs/b.md")]
    );
    assert_eq!(suggested(&v, "write"), [dir("out/")]);
    let added: Vec<&Value> = v["additions"].as_array().unwrap().iter().collect();
    assert!(
        !added.iter().any(|a| a.to_string().contains("other")),
        "{added:?}"
    );
    // Landlock's audit records name a create by its directory only: the
    // three writes into out/ are then one operation.
    let audit_records = d.mechanism("files")["detail"]
        .as_str()
        .unwrap_or("")
        .contains("Landlock audit records");
    let ops = if audit_records { 15 } else { 17 };
    let r = &v["replay"];
    assert_eq!(
        (r["allowed"].as_u64(), r["operations"].as_u64()),
        (Some(ops), Some(ops)),
        "{r}"
    );

    let applied = suggest(&d, "advf", &["--apply", "--yes"]);
    assert_eq!(applied["applied"]["ok"], true, "{applied}");
    let tail = d.tail(Some("advf"));
    let out = run_as(&d, "advf", &[path_str(&script), root]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "refused 0",
        "{out:?}"
    );
    assert!(
        tail.drain_kind("file", Duration::from_millis(1500))
            .is_empty()
    );

    // A directory the workload never read stays refused (and is denied by
    // a rule the proposal did not touch); outside, it reads.
    let read_other = format!(
        "try:\n    open('{root}/other/x').read()\nexcept PermissionError:\n    print('EACCES')\n"
    );
    refused_inside_only(&d, "advf", &["-c", &read_other], "EACCES");
    let ev = tail.expect(|e| e["kind"] == "file");
    assert_eq!(ev["identity"], "advf");
    assert_eq!(ev["comm"], "python3");
    assert!(ev["pid"].as_u64().unwrap() > 0);
    assert_eq!(ev["file"]["path"], dir("other/x"));
}

/// Without the audit log: `--record DUR` learns from the live stream.
#[test]
fn a_live_recording_window_instead_of_the_audit_log() {
    if !is_root() {
        return skip("needs root");
    }
    let policy = "[identity]\nname = \"advr\"\nmode = \"audit\"\n[network]\nallow = []\n";
    let d = Daemon::start(&[("advr", policy)]);
    let _l = listeners();
    let socket = d.dirs.socket.clone();
    let recorder = std::thread::spawn(move || {
        Command::new(corral_bin())
            .arg("--socket")
            .arg(&socket)
            .args([
                "policy",
                "suggest",
                "--identity",
                "advr",
                "--record",
                "4s",
                "--json",
            ])
            .output()
            .expect("corral")
    });
    // The recording starts when the stream is live; give it a moment.
    std::thread::sleep(Duration::from_millis(1000));
    let connect = format!(
        "import socket\nsocket.create_connection(('127.0.0.1', {}), timeout=5).close()\n",
        PORTS[0]
    );
    let out = run_as(&d, "advr", &["-c", &connect]);
    assert!(out.status.success(), "{out:?}");
    let out = recorder.join().expect("recorder");
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["events_from"], "recorded live");
    assert_eq!(
        suggested(&v, "allow"),
        [format!("tcp://127.0.0.1:{}", PORTS[0])]
    );
    assert_eq!(v["replay"]["allowed"], 1);
}
