//! `[files]` rules enforced by the fallback layer, natively: BPF LSM does
//! not load on this kernel, so `corral run` applies the rules with Landlock
//! (EACCES inside) and the syscall observer reports each refused open or
//! exec to `corral tail` as layer `landlock`. Every denial is also shown to
//! succeed outside the identity (untagged, unconfined).
//!
//! Where the daemon reports the BPF-LSM layer instead, these tests say
//! "skipping: …": the VM run proves that layer.

use std::{path::PathBuf, time::Duration};

use corral_tests::*;
use serde_json::Value;

const EXDEV: i64 = 18;

/// The scratch tree: kb/doc, kbx/doc, secret, tickets/{a, vip/x},
/// etc/{hostname, hostname2}, drafts/d, out/, bin/{ok,no}/true,
/// kb/link -> secret.
fn tree() -> ScratchTree {
    let t = ScratchTree::new(
        &[
            "kb",
            "kbx",
            "tickets/vip",
            "etc",
            "bin/ok",
            "bin/no",
            "out",
            "drafts",
        ],
        &[
            "kb/doc",
            "kbx/doc",
            "secret",
            "tickets/a",
            "tickets/vip/x",
            "drafts/d",
            "etc/hostname",
            "etc/hostname2",
        ],
    );
    for d in ["bin/ok", "bin/no"] {
        std::fs::copy("/usr/bin/true", t.root.join(d).join("true")).expect("copy true");
    }
    std::os::unix::fs::symlink(t.root.join("secret"), t.root.join("kb/link")).expect("symlink");
    t
}

/// A policy that always holds what the probe needs: `/usr/` (the loader and
/// libc), the loader's cache, the probe binary; `/dev/null` to write.
fn policy(
    name: &str,
    read: &[String],
    write: &[String],
    exec: Option<&[String]>,
    deny: &[String],
) -> String {
    let mut r = vec![s("/usr/"), s("/etc/ld.so.cache"), probe_real()];
    r.extend_from_slice(read);
    let mut w = vec![s("/dev/null")];
    w.extend_from_slice(write);
    let exec = exec.map_or(String::new(), |e| format!("exec = [{}]\n", toml_list(e)));
    format!(
        "[identity]\nname = \"{name}\"\n[files]\nread = [{}]\nwrite = [{}]\n{exec}deny = [{}]\n",
        toml_list(&r),
        toml_list(&w),
        toml_list(deny)
    )
}

/// Starts a daemon, or says why the fallback is not what is in force here.
fn daemon(policies: &[(&str, &str)]) -> Option<Daemon> {
    if !is_root() {
        return None;
    }
    let d = Daemon::start(policies);
    let files = d.mechanism("files");
    if files["state"] != "fallback" {
        skip(&format!(
            "the files layer here is not the Landlock fallback: {files}"
        ));
        return None;
    }
    Some(d)
}

fn s(x: &str) -> String {
    x.to_string()
}

/// Asserts a file denial event from the Landlock layer.
fn assert_landlock_event(ev: &Value, identity: &str, tgid: u64, path: &str, access: &str) {
    assert_file_event(ev, identity, tgid, path, access);
    assert_eq!(ev["file"]["layer"], "landlock", "{ev:#}");
    assert_eq!(ev["file"]["errno"], "EACCES", "{ev:#}");
}

fn file_event(tail: &Tail, path: &str) -> Value {
    let path = path.to_string();
    tail.expect(move |e| e["kind"] == "file" && e["file"]["path"] == path.as_str())
}

/// The same for one access: the audit records also report the links and
/// renames Landlock refuses, which name the same paths.
fn file_event_for(tail: &Tail, path: &str, access: &str) -> Value {
    let (path, access) = (path.to_string(), access.to_string());
    tail.expect(move |e| {
        e["kind"] == "file"
            && e["file"]["path"] == path.as_str()
            && e["file"]["access"] == access.as_str()
    })
}

/// Landlock refuses with EACCES.
fn denied(run: &ProbeRun, op: &str, n: usize) {
    run.assert_errno(op, n, EACCES);
}

#[test]
fn read_allowed_denied_and_write_refused_with_events() {
    let t = tree();
    let text = policy("files-a", &[t.p("kb/")], &[], None, &[]);
    let Some(d) = daemon(&[("files-a", &text)]) else {
        return;
    };
    // Status says, per identity, who enforces its file rules.
    let ids = d.cli_json(&["identities", "--json"]);
    let me = ids
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == "files-a"))
        .expect("identity listed");
    assert_eq!(me["files"]["enforced_by"], "landlock", "{me:#}");
    let files = d.mechanism("files");
    assert!(!files.is_null(), "no files mechanism");
    let detail = files["detail"].as_str().unwrap_or("");
    assert!(
        detail.starts_with("landlock (fallback, applied by corral run at launch")
            && detail.contains("denials reach `corral tail` through"),
        "{files:#}"
    );
    let tail = d.tail(Some("files-a"));
    let run = d.probe_as(
        "files-a",
        &[
            "pid",
            "open",
            &t.p("kb/doc"),
            "r",
            "open",
            &t.p("secret"),
            "r",
            "open",
            &t.p("kb/doc"),
            "w",
            "readdir",
            &t.p("kb"),
        ],
    );
    run.assert_ok("open", 0);
    denied(&run, "open", 1);
    denied(&run, "open", 2);
    run.assert_ok("readdir", 0);
    let pid = run.pid();
    let ev = file_event(&tail, &t.p("secret"));
    assert_landlock_event(&ev, "files-a", pid, &t.p("secret"), "read");
    assert_eq!(ev["reason"], "no-rule", "{ev:#}");
    let ev = file_event(&tail, &t.p("kb/doc"));
    assert_landlock_event(&ev, "files-a", pid, &t.p("kb/doc"), "write");
    // Outside the identity, the same opens succeed.
    let out = probe_outside(&["open", &t.p("secret"), "r", "open", &t.p("kb/doc"), "w"]);
    out.assert_ok("open", 0);
    out.assert_ok("open", 1);
}

#[test]
fn deny_beats_a_shorter_allow_and_no_sibling_prefix_leak() {
    let t = tree();
    let text = policy(
        "files-b",
        &[t.p("kb/"), t.p("etc/hostname")],
        &[t.p("tickets/")],
        None,
        &[t.p("tickets/vip/")],
    );
    let Some(d) = daemon(&[("files-b", &text)]) else {
        return;
    };
    let tail = d.tail(Some("files-b"));
    let steps = [
        ("open", t.p("tickets/a"), "rw"), // 0 allowed (write implies read)
        ("open", t.p("tickets/vip/x"), "r"), // 1 denied: deny beats the shorter allow
        ("open", t.p("kbx/doc"), "r"),    // 2 denied: /kb/ does not cover /kbx
        ("open", t.p("kb/doc"), "r"),     // 3 allowed
        ("open", t.p("etc/hostname"), "r"), // 4 allowed: exact rule
        ("open", t.p("etc/hostname2"), "r"), // 5 denied: exact is not a prefix
        ("open", t.p("etc/hostname"), "w"), // 6 denied: read-only exact rule
    ];
    let mut args = vec![s("pid")];
    for (op, p, m) in &steps {
        args.extend([s(op), p.clone(), s(m)]);
    }
    // The deny under tickets/ expands it at launch: its existing entries
    // are reachable, but nothing can be created directly in it.
    args.extend([s("create"), t.p("tickets/new")]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = d.probe_as("files-b", &argv);
    for (n, ok) in [true, false, false, true, true, false, false]
        .iter()
        .enumerate()
    {
        if *ok {
            run.assert_ok("open", n);
        } else {
            denied(&run, "open", n);
        }
    }
    denied(&run, "create", 0);
    let pid = run.pid();
    let ev = file_event(&tail, &t.p("tickets/vip/x"));
    assert_landlock_event(&ev, "files-b", pid, &t.p("tickets/vip/x"), "read");
    assert_eq!(ev["reason"], "deny-rule", "{ev:#}");
    assert!(
        ev["rule"]
            .as_str()
            .is_some_and(|r| r.starts_with("deny ") && r.contains("tickets/vip/")),
        "{ev:#}"
    );
    assert_landlock_event(
        &file_event(&tail, &t.p("kbx/doc")),
        "files-b",
        pid,
        &t.p("kbx/doc"),
        "read",
    );
    assert_landlock_event(
        &file_event(&tail, &t.p("etc/hostname2")),
        "files-b",
        pid,
        &t.p("etc/hostname2"),
        "read",
    );
    let out = probe_outside(&[
        "open",
        &t.p("tickets/vip/x"),
        "r",
        "open",
        &t.p("kbx/doc"),
        "r",
        "open",
        &t.p("etc/hostname2"),
        "r",
    ]);
    for n in 0..3 {
        out.assert_ok("open", n);
    }
}

#[test]
fn exec_allowed_and_denied() {
    let t = tree();
    let exec = [
        probe_real(),
        s("/usr/lib/x86_64-linux-gnu/"),
        t.p("bin/ok/"),
    ];
    let text = policy("files-c", &[t.p("bin/")], &[], Some(&exec), &[]);
    let Some(d) = daemon(&[("files-c", &text)]) else {
        return;
    };
    let tail = d.tail(Some("files-c"));
    let run = d.probe_as(
        "files-c",
        &[
            "pid",
            "exec",
            &t.p("bin/ok/true"),
            "exec",
            &t.p("bin/no/true"),
            "open",
            &t.p("bin/no/true"),
            "r",
        ],
    );
    run.assert_ok("exec", 0);
    denied(&run, "exec", 1);
    // Readable, not executable.
    run.assert_ok("open", 0);
    let ev = file_event(&tail, &t.p("bin/no/true"));
    // The probe forks, and its child's execve is what Landlock refuses.
    // ppid is read from /proc by the daemon: absent when the child has
    // already exited, and then it must not be someone else's.
    if let Some(ppid) = ev["ppid"].as_u64() {
        assert_eq!(ppid, run.pid(), "{ev:#}");
    }
    let child = ev["tgid"].as_u64().expect("tgid");
    assert_landlock_event(&ev, "files-c", child, &t.p("bin/no/true"), "exec");
    probe_outside(&["exec", &t.p("bin/no/true")]).assert_ok("exec", 0);
}

/// Symlinks, hard links and renames in and out of what the rules allow,
/// then relative opens after chdir.
fn link_steps(t: &ScratchTree) -> Vec<String> {
    vec![
        "pid".into(),
        // A symlink to a denied file, existing and made by the agent.
        "open".into(),
        t.p("kb/link"),
        "r".into(),
        "symlink".into(),
        t.p("secret"),
        t.p("out/link2"),
        "open".into(),
        t.p("out/link2"),
        "r".into(),
        // Hard links cannot widen access (REFER).
        "link".into(),
        t.p("secret"),
        t.p("out/stolen"),
        "link".into(),
        t.p("tickets/vip/x"),
        t.p("out/vip"),
        "link".into(),
        t.p("kb/doc"),
        t.p("out/doc"),
        // Renames neither.
        "rename".into(),
        t.p("kb/doc"),
        t.p("out/doc"),
        "rename".into(),
        t.p("tickets/a"),
        t.p("tickets/vip/a"),
        // Out of an expanded directory (no right on the directory).
        "rename".into(),
        t.p("tickets/a"),
        t.p("out/a"),
        "rename".into(),
        t.p("drafts/d"),
        t.p("out/d"),
        // Relative paths after chdir.
        "chdir".into(),
        t.p("kb"),
        "open".into(),
        "doc".into(),
        "r".into(),
        "chdir".into(),
        t.p(""),
        "open".into(),
        "secret".into(),
        "r".into(),
        // Relative paths are made absolute from the process's working
        // directory when the daemon reads the event: stay alive for it.
        "sleep".into(),
        "1".into(),
    ]
}

/// Hard links and renames that would widen access fail (EACCES, or
/// EXDEV across a Landlock boundary), three of each.
fn links_and_renames_refused(run: &ProbeRun) {
    for n in 0..3 {
        let st = run.step("link", n);
        assert_eq!(st["ok"], false, "link#{n}: {run:#?}");
        assert!(
            [EACCES, EXDEV].contains(&st["errno"].as_i64().unwrap_or(0)),
            "link#{n}: {st}"
        );
    }
    for n in 0..3 {
        let st = run.step("rename", n);
        assert_eq!(st["ok"], false, "rename#{n}: {run:#?}");
        assert!(
            [EACCES, EXDEV].contains(&st["errno"].as_i64().unwrap_or(0)),
            "rename#{n}: {st}"
        );
    }
}

/// What the agent was refused, done outside: all of it succeeds.
fn the_same_succeed_outside(t: &ScratchTree) {
    let out = probe_outside(&[
        "open",
        &t.p("kb/link"),
        "r",
        "link",
        &t.p("secret"),
        &t.p("kbx/stolen"),
        "rename",
        &t.p("kb/doc"),
        &t.p("kbx/doc2"),
    ]);
    out.assert_ok("open", 0);
    out.assert_ok("link", 0);
    out.assert_ok("rename", 0);
}

#[test]
fn symlinks_links_renames_and_relative_paths() {
    let t = tree();
    let text = policy(
        "files-d",
        &[t.p("kb/")],
        &[t.p("tickets/"), t.p("out/"), t.p("drafts/")],
        None,
        &[t.p("tickets/vip/")],
    );
    let Some(d) = daemon(&[("files-d", &text)]) else {
        return;
    };
    let tail = d.tail(Some("files-d"));
    let steps = link_steps(&t);
    let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
    let run = d.probe_as("files-d", &steps);
    let pid = run.pid();
    denied(&run, "open", 0);
    run.assert_ok("symlink", 0);
    denied(&run, "open", 1);
    links_and_renames_refused(&run);
    // Between two writable directories a rename is fine (no widening).
    run.assert_ok("rename", 3);
    run.assert_ok("open", 2);
    denied(&run, "open", 3);
    // The symlink is judged by its target: the event names what was asked.
    let ev = file_event(&tail, &t.p("kb/link"));
    assert_landlock_event(&ev, "files-d", pid, &t.p("kb/link"), "read");
    assert_eq!(ev["reason"], "no-rule", "judged by the target: {ev:#}");
    assert_eq!(
        ev["file"]["note"].as_str(),
        Some(format!("resolves to {}", t.p("secret")).as_str()),
        "{ev:#}"
    );
    // The relative open is reported with the absolute path.
    let ev = file_event_for(&tail, &t.p("secret"), "read");
    assert_landlock_event(&ev, "files-d", pid, &t.p("secret"), "read");
    the_same_succeed_outside(&t);
}

#[test]
fn sub_cgroup_untagged_and_policy_change_reaches_new_launches_only() {
    let t = tree();
    let text = policy("files-e", &[t.p("kb/")], &[], None, &[]);
    let Some(d) = daemon(&[("files-e", &text)]) else {
        return;
    };
    let tail = d.tail(Some("files-e"));
    let go = t.root.join("go");
    let mut bg = d.spawn_probe_as(
        "files-e",
        &[
            "pid",
            "wait-file",
            go.to_str().expect("utf-8"),
            "open",
            &t.p("secret"),
            "r",
            // Alive while the daemon reads its cgroup for the event.
            "sleep",
            "1",
        ],
    );
    let pid = bg.next_step("pid")["pid"].as_u64().expect("pid");
    // Move the running agent into a sub-cgroup of its identity's cgroup:
    // Landlock follows the process tree, the observer the cgroup ancestry.
    let ids = d.cli_json(&["identities", "--json"]);
    let cg = ids
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == "files-e"))
        .and_then(|i| i["cgroup"].as_str())
        .map(PathBuf::from)
        .expect("cgroup");
    let sub = cg.join("sub");
    std::fs::create_dir_all(&sub).expect("sub-cgroup");
    std::fs::write(sub.join("cgroup.procs"), pid.to_string()).expect("move");
    // Meanwhile the policy starts allowing the secret: running processes
    // keep the rules they were launched with.
    let g = d.generation();
    d.write_policy(
        "files-e",
        &policy("files-e", &[t.p("kb/"), t.p("secret")], &[], None, &[]),
    );
    d.wait_generation_past(g, Duration::from_secs(10));
    std::fs::write(&go, "").expect("go");
    let run = bg.finish();
    denied(&run, "open", 0);
    let ev = file_event(&tail, &t.p("secret"));
    assert_landlock_event(&ev, "files-e", pid, &t.p("secret"), "read");
    // Reported from the sub-cgroup (a cgroup's id is its inode number).
    use std::os::unix::fs::MetadataExt as _;
    let sub_id = std::fs::metadata(&sub).expect("sub-cgroup").ino();
    assert_eq!(ev["cgroup_id"].as_u64(), Some(sub_id), "{ev:#}");
    // The policy now allows it (the event says the layer's rules are older).
    assert_eq!(ev["reason"], "not-by-policy", "{ev:#}");
    // A new launch gets the new policy.
    d.probe_as("files-e", &["open", &t.p("secret"), "r"])
        .assert_ok("open", 0);
    // Untagged processes are unaffected.
    probe_outside(&["open", &t.p("secret"), "r"]).assert_ok("open", 0);
    let _ = std::fs::remove_dir(&sub);
}

#[test]
fn assign_warns_that_a_running_process_gets_no_file_rules() {
    let t = tree();
    let text = policy("files-f", &[t.p("kb/")], &[], None, &[]);
    let Some(d) = daemon(&[("files-f", &text)]) else {
        return;
    };
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("sleep");
    let out = d.cli(&[
        "assign",
        "--identity",
        "files-f",
        "--pid",
        &child.id().to_string(),
    ]);
    let _ = child.kill();
    let _ = child.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("NOT file-confined"), "{stderr}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !d.log_text().contains("WITHOUT file confinement") {
        assert!(
            std::time::Instant::now() < deadline,
            "no warning in the daemon log:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn audit_mode_is_not_applied_and_says_so() {
    let t = tree();
    let text = policy("files-g", &[t.p("kb/")], &[], None, &[]).replace(
        "name = \"files-g\"\n",
        "name = \"files-g\"\nmode = \"audit\"\n",
    );
    let Some(d) = daemon(&[("files-g", &text)]) else {
        return;
    };
    let shown = d.cli_json(&["policy", "show", "files-g", "--json"]);
    assert_eq!(shown["files"]["enforced_by"], "none", "{shown:#}");
    assert!(
        shown["files"]["note"]
            .as_str()
            .is_some_and(|n| n.contains("audit mode")),
        "{shown:#}"
    );
    // Landlock can only refuse: an audit identity runs unconfined here.
    d.probe_as("files-g", &["open", &t.p("secret"), "r"])
        .assert_ok("open", 0);
}
