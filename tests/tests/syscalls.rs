//! Syscall allowlists (`[syscalls]`): the seccomp filter `corral run`
//! installs, the launcher answering notifications from the live policy, the
//! observers reporting every refusal, and kill mode for assigned processes.
//! Every denial test shows the errno inside the identity, success outside
//! it, and the event.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use corral_tests::*;
use serde_json::Value;

const ENOSYS: i64 = 38;
const NR_MKDIR: u64 = 83;
const NR_KCMP: u64 = 312;

fn policy(name: &str, mode: &str, syscalls: &str) -> String {
    format!("[identity]\nname = \"{name}\"\nmode = \"{mode}\"\n[syscalls]\n{syscalls}\n")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

fn touch(p: &Path) {
    std::fs::write(p, b"").expect("touch");
}

fn is_syscall(e: &Value, name: &str) -> bool {
    e["kind"] == "syscall" && e["syscall"]["name"] == name
}

/// Asserts a syscall event's identity, process, call, layer and verdict.
fn assert_syscall_event(
    ev: &Value,
    identity: &str,
    tgid: u64,
    (name, nr): (&str, u64),
    layer: &str,
    verdict: &str,
) {
    assert_eq!(ev["kind"], "syscall", "{ev:#}");
    assert_eq!(ev["identity"], identity, "{ev:#}");
    assert_eq!(ev["tgid"].as_u64(), Some(tgid), "{ev:#}");
    assert_eq!(ev["comm"], "corral-probe", "{ev:#}");
    assert_eq!(ev["syscall"]["name"], name, "{ev:#}");
    assert_eq!(ev["syscall"]["nr"].as_u64(), Some(nr), "{ev:#}");
    assert_eq!(ev["syscall"]["layer"], layer, "{ev:#}");
    assert_eq!(ev["verdict"], verdict, "{ev:#}");
    assert!(ev["mode"].is_string(), "{ev:#}");
}

fn apply(d: &Daemon) {
    let out = d.cli(&["policy", "apply"]);
    assert!(
        out.status.success(),
        "policy apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn denied_in_the_kernel_and_by_the_launcher_with_events() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let inside = tmp.path().join("inside");
    let p = policy("sc", "enforce", "allow = [\"@default\"]\ndeny = [\"kcmp\"]");
    let d = Daemon::start(&[("sc", &p)]);
    let tail = d.tail(Some("sc"));

    let r = d.probe_as(
        "sc",
        &[
            "pid",
            "sys",
            "getppid",
            "sys",
            "kcmp",
            "sys",
            "mkdir",
            path_str(&inside),
        ],
    );
    assert_eq!(r.code, Some(0), "{r:#?}");
    assert_eq!(r.step("sys", 0)["ok"], true, "hot and allowed: {r:#?}");
    assert_eq!(r.step("sys", 1)["errno"], EPERM, "deny entry: {r:#?}");
    assert_eq!(r.step("sys", 2)["errno"], EPERM, "not allowed: {r:#?}");
    assert!(!inside.exists());

    let ev = tail.expect(|e| is_syscall(e, "kcmp"));
    assert_syscall_event(&ev, "sc", r.pid(), ("kcmp", NR_KCMP), "kernel", "deny");
    assert_eq!(ev["reason"], "deny-rule", "{ev:#}");
    assert_eq!(ev["syscall"]["errno"], "EPERM", "{ev:#}");
    assert!(
        ev["rule"]
            .as_str()
            .unwrap_or("")
            .starts_with("deny kcmp (sc.toml:"),
        "{ev:#}"
    );
    let ev = tail.expect(|e| is_syscall(e, "mkdir"));
    assert_syscall_event(&ev, "sc", r.pid(), ("mkdir", NR_MKDIR), "notify", "deny");
    assert_eq!(ev["reason"], "no-rule", "{ev:#}");
    assert_eq!(ev["mode"], "enforce", "{ev:#}");

    let out = probe_outside(&["sys", "kcmp", "sys", "mkdir", path_str(&inside)]);
    assert_eq!(out.step("sys", 0)["ok"], true, "outside: {out:#?}");
    assert_eq!(out.step("sys", 1)["ok"], true, "outside: {out:#?}");
    assert!(inside.is_dir());
}

#[test]
fn a_policy_change_reaches_a_running_process_both_ways() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let t = |n: &str| tmp.path().join(n);
    let without = policy("live", "enforce", "allow = [\"@default\"]");
    let with = policy("live", "enforce", "allow = [\"@default\", \"mkdir\"]");
    let d = Daemon::start(&[("live", &without)]);
    let tail = d.tail(Some("live"));
    let (d1, d2, d3, go1, go2) = (t("d1"), t("d2"), t("d3"), t("go1"), t("go2"));
    let mut p = d.spawn_probe_as(
        "live",
        &[
            "pid",
            "sys",
            "mkdir",
            path_str(&d1),
            "wait-file",
            path_str(&go1),
            "sys",
            "mkdir",
            path_str(&d2),
            "wait-file",
            path_str(&go2),
            "sys",
            "mkdir",
            path_str(&d3),
        ],
    );
    let pid = p.next_step("pid")["pid"].as_u64().expect("pid");
    assert_eq!(p.next_step("sys")["errno"], EPERM);
    let ev = tail.expect(|e| is_syscall(e, "mkdir"));
    assert_syscall_event(&ev, "live", pid, ("mkdir", NR_MKDIR), "notify", "deny");

    d.write_policy("live", &with);
    apply(&d);
    touch(&go1);
    let s = p.next_step("sys");
    assert_eq!(s["ok"], true, "allowed after the change: {s}");
    assert!(d2.is_dir());

    d.write_policy("live", &without);
    apply(&d);
    touch(&go2);
    assert_eq!(p.next_step("sys")["errno"], EPERM, "denied again");
    assert!(!d3.exists());
    let ev = tail.expect(|e| is_syscall(e, "mkdir"));
    assert_syscall_event(&ev, "live", pid, ("mkdir", NR_MKDIR), "notify", "deny");
    assert_eq!(p.finish().code, Some(0));
}

#[test]
fn a_daemon_restart_does_not_disturb_a_running_agent() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let t = |n: &str| tmp.path().join(n);
    let p = policy("keep", "enforce", "allow = [\"@default\", \"mkdir\"]");
    let d = Daemon::start(&[("keep", &p)]);
    let (d1, d2, d3, go1, go2) = (t("d1"), t("d2"), t("d3"), t("go1"), t("go2"));
    let mut probe = d.spawn_probe_as(
        "keep",
        &[
            "sys",
            "mkdir",
            path_str(&d1),
            "wait-file",
            path_str(&go1),
            "sys",
            "mkdir",
            path_str(&d2),
            "sys",
            "kcmp",
            "wait-file",
            path_str(&go2),
            "sys",
            "mkdir",
            path_str(&d3),
            "sys",
            "kcmp",
        ],
    );
    assert_eq!(probe.next_step("sys")["ok"], true);

    // No daemon at all: the launcher answers from the pinned map.
    let dirs = d.stop_keep_pins();
    touch(&go1);
    assert_eq!(probe.next_step("sys")["ok"], true, "mkdir with no daemon");
    assert_eq!(
        probe.next_step("sys")["errno"],
        EPERM,
        "kcmp with no daemon"
    );
    assert!(d2.is_dir());

    let d = Daemon::start_with(dirs).expect("restart");
    let tail = d.tail(Some("keep"));
    touch(&go2);
    assert_eq!(
        probe.next_step("sys")["ok"],
        true,
        "mkdir after the restart"
    );
    assert_eq!(
        probe.next_step("sys")["errno"],
        EPERM,
        "kcmp after the restart"
    );
    let ev = tail.expect(|e| is_syscall(e, "kcmp"));
    assert_eq!(ev["syscall"]["layer"], "notify", "{ev:#}");
    assert_eq!(probe.finish().code, Some(0));
    drop(d);
}

#[test]
fn killing_the_supervisor_fails_closed() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let (dir, go) = (tmp.path().join("d"), tmp.path().join("go"));
    let p = policy("orphan", "enforce", "allow = [\"@default\", \"mkdir\"]");
    let d = Daemon::start(&[("orphan", &p)]);
    let tail = d.tail(Some("orphan"));
    let mut probe = d.spawn_probe_as(
        "orphan",
        &[
            "pid",
            "wait-file",
            path_str(&go),
            "sys",
            "getppid",
            "sys",
            "mkdir",
            path_str(&dir),
        ],
    );
    let pid = probe.next_step("pid")["pid"].as_u64().expect("pid");
    // SAFETY: plain syscall on the test's own child (the launcher).
    unsafe { libc::kill(probe.launcher_pid() as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(100));
    touch(&go);
    assert_eq!(
        probe.next_step("sys")["ok"],
        true,
        "hot syscalls need no supervisor"
    );
    let s = probe.next_step("sys");
    assert_eq!(
        s["errno"], ENOSYS,
        "allowed, but nobody answers: closed ({s})"
    );
    assert!(!dir.exists());
    let ev = tail.expect(|e| is_syscall(e, "mkdir"));
    assert_syscall_event(&ev, "orphan", pid, ("mkdir", NR_MKDIR), "notify", "deny");
    assert_eq!(ev["syscall"]["errno"], "ENOSYS", "{ev:#}");
    assert_eq!(ev["reason"], "fail-closed", "{ev:#}");
}

#[test]
fn threads_and_execve_stay_confined() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let (d1, d2) = (tmp.path().join("thread"), tmp.path().join("exec"));
    let p = policy("tx", "enforce", "allow = [\"@default\"]");
    let d = Daemon::start(&[("tx", &p)]);
    let tail = d.tail(Some("tx"));
    let r = d.probe_as(
        "tx",
        &[
            "pid",
            "sys-thread",
            "mkdir",
            path_str(&d1),
            "sys-exec",
            "pid",
            "sys",
            "mkdir",
            path_str(&d2),
            "sys-thread",
            "kcmp",
        ],
    );
    assert_eq!(r.code, Some(0), "{r:#?}");
    let pid = r.pid();
    assert_eq!(r.step("sys-thread", 0)["errno"], EPERM, "{r:#?}");
    // After execve: same process, same filter, same identity.
    assert_eq!(r.step("pid", 1)["pid"].as_u64(), Some(pid), "{r:#?}");
    assert_eq!(r.step("sys", 0)["errno"], EPERM, "{r:#?}");
    assert_eq!(r.step("sys-thread", 1)["errno"], EPERM, "{r:#?}");
    let ev = tail.expect(|e| is_syscall(e, "mkdir") && e["pid"] != e["tgid"]);
    assert_syscall_event(&ev, "tx", pid, ("mkdir", NR_MKDIR), "notify", "deny");
    let ev = tail.expect(|e| is_syscall(e, "mkdir") && e["pid"] == e["tgid"]);
    assert_syscall_event(&ev, "tx", pid, ("mkdir", NR_MKDIR), "notify", "deny");
    let ev = tail.expect(|e| is_syscall(e, "kcmp"));
    assert_syscall_event(&ev, "tx", pid, ("kcmp", NR_KCMP), "notify", "deny");

    let out = probe_outside(&["sys-thread", "mkdir", path_str(&d1)]);
    assert_eq!(out.step("sys-thread", 0)["ok"], true, "outside: {out:#?}");
}

#[test]
fn io_uring_and_raw_socket_families_are_denied() {
    if !is_root() {
        return;
    }
    let p = policy("net", "enforce", "allow = [\"@default\", \"@network-io\"]");
    let d = Daemon::start(&[("net", &p)]);
    let tail = d.tail(Some("net"));
    let steps = [
        "pid",
        "io-uring-setup",
        "socket",
        "packet",
        "socket",
        "raw",
        "socket",
        "netlink-generic",
        "socket",
        "netlink-route",
        "socket",
        "inet",
        "socket",
        "unix",
    ];
    let r = d.probe_as("net", &steps);
    assert_eq!(r.code, Some(0), "{r:#?}");
    assert_eq!(r.step("io-uring-setup", 0)["errno"], EPERM, "{r:#?}");
    for (i, kind) in ["packet", "raw", "netlink-generic"].iter().enumerate() {
        assert_eq!(r.step("socket", i)["errno"], EPERM, "{kind}: {r:#?}");
    }
    for i in 3..6 {
        assert_eq!(r.step("socket", i)["ok"], true, "{r:#?}");
    }
    let ev = tail.expect(|e| is_syscall(e, "io_uring_setup"));
    assert_syscall_event(
        &ev,
        "net",
        r.pid(),
        ("io_uring_setup", 425),
        "notify",
        "deny",
    );
    let ev = tail.expect(|e| {
        is_syscall(e, "socket")
            && e["syscall"]["detail"]
                .as_str()
                .unwrap_or("")
                .contains("AF_PACKET")
    });
    assert_syscall_event(&ev, "net", r.pid(), ("socket", 41), "notify", "deny");
    assert!(
        ev["syscall"]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("socket:packet"),
        "{ev:#}"
    );

    let out = probe_outside(&steps[1..]);
    assert_eq!(
        out.step("io-uring-setup", 0)["ok"],
        true,
        "outside: {out:#?}"
    );
    assert_eq!(
        out.step("socket", 0)["ok"],
        true,
        "AF_PACKET outside: {out:#?}"
    );
}

#[test]
fn python_node_and_rust_programs_run_under_default() {
    if !is_root() {
        return;
    }
    let p = policy("rt", "enforce", "allow = [\"@default\"]");
    let d = Daemon::start(&[("rt", &p)]);
    let tail = d.tail(Some("rt"));
    let script = "import json, os, threading, subprocess, hashlib, tempfile, time\n\
        out = []\n\
        t = threading.Thread(target=lambda: out.append(hashlib.sha256(b'x').hexdigest()[:8]))\n\
        t.start(); t.join()\n\
        with tempfile.TemporaryFile() as f:\n    f.write(b'corral'); f.seek(0); out.append(f.read().decode())\n\
        out.append(subprocess.run(['true']).returncode)\n\
        time.sleep(0.01)\n\
        print(json.dumps({'ok': True, 'out': out, 'pid': os.getpid()}))\n";
    let o = d.cli(&["run", "--identity", "rt", "--", "python3", "-c", script]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "python3 under @default: {stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains(r#""ok": true"#), "{stdout}");
    assert!(stdout.contains(r#""2d711642", "corral", 0"#), "{stdout}");

    // Node too, where it is installed (libuv threads, epoll, timers).
    let node = "const fs = require('fs'); const os = require('os');\n\
        const n = fs.readdirSync('/').length;\n\
        setTimeout(() => console.log(JSON.stringify({ok: true, n, cpus: os.cpus().length})), 5);";
    match Command::new("node").arg("--version").output() {
        Ok(v) if v.status.success() => {
            let o = d.cli(&["run", "--identity", "rt", "--", "node", "-e", node]);
            let stdout = String::from_utf8_lossy(&o.stdout);
            assert!(
                o.status.success() && stdout.contains(r#""ok":true"#),
                "node under @default: {stdout}\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        _ => eprintln!("skipping the Node part: no `node` on PATH"),
    }

    // A user lookup with HOME unset (as under CI and systemd): glibc asks
    // nscd over an AF_UNIX socket first, which `@default` must allow.
    let o = d.cli(&[
        "run", "--identity", "rt", "--", "env", "-u", "HOME", "bash", "-c", "echo ~",
    ]);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).trim().starts_with('/'),
        "user lookup under @default: {o:?}"
    );

    let r = d.probe_as(
        "rt",
        &[
            "pid",
            "socket",
            "unix",
            "socket",
            "inet",
            "sys",
            "getppid",
            "sys-thread",
            "uname",
            "sys",
            "sysinfo",
            "exit",
            "0",
        ],
    );
    assert_eq!(r.code, Some(0), "{r:#?}");
    assert_eq!(r.step("sys", 1)["ok"], true, "{r:#?}");
    assert_eq!(r.step("sys-thread", 0)["ok"], true, "{r:#?}");
    assert_eq!(r.step("socket", 0)["ok"], true, "AF_UNIX: {r:#?}");
    assert_eq!(r.step("socket", 1)["errno"], EPERM, "AF_INET: {r:#?}");
    let denials: Vec<Value> = tail
        .drain_for(Duration::from_millis(500))
        .into_iter()
        .filter(|e| e["kind"] == "syscall")
        .collect();
    // The only expected refusal: an AF_INET socket needs `socket`.
    let (inet, other): (Vec<Value>, Vec<Value>) = denials.into_iter().partition(|e| {
        e["tgid"].as_u64() == Some(r.pid())
            && e["syscall"]["detail"]
                .as_str()
                .unwrap_or("")
                .contains("AF_INET")
    });
    assert!(other.is_empty(), "@default was not enough: {other:#?}");
    let ev = inet.first().expect("a denial event for the AF_INET socket");
    assert_syscall_event(ev, "rt", r.pid(), ("socket", 41), "notify", "deny");
    let out = probe_outside(&["socket", "inet"]);
    assert_eq!(out.step("socket", 0)["ok"], true, "outside: {out:#?}");
}

#[test]
fn kill_mode_kills_an_assigned_process_after_the_call_and_audit_reports() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let t = |n: &str| tmp.path().join(n);
    let kill = policy(
        "killer",
        "enforce",
        "allow = [\"@default\"]\nassigned = \"kill\"",
    );
    let audit = policy("watcher", "enforce", "allow = [\"@default\"]");
    let d = Daemon::start(&[("killer", &kill), ("watcher", &audit)]);
    let status = d.cli_json(&["status", "--json"]);
    let mechs = status["daemon"]["mechanisms"]
        .as_array()
        .expect("mechanisms")
        .clone();
    let km = mechs
        .iter()
        .find(|m| m["name"].as_str().unwrap_or("").contains("kill mode"))
        .expect("kill mode in status");
    assert_eq!(km["state"], "enforcing", "{km:#}");
    assert!(
        km["detail"]
            .as_str()
            .unwrap_or("")
            .contains("AFTER THE FACT"),
        "{km:#}"
    );

    let tail = d.tail(None);
    for (identity, dir, go, killed) in [
        ("killer", t("k"), t("go-k"), true),
        ("watcher", t("w"), t("go-w"), false),
    ] {
        // The test's own child, not started by `corral run`: no filter.
        let mut child = Command::new(probe_bin())
            .args([
                "wait-file",
                path_str(&go),
                "sys",
                "mkdir",
                path_str(&dir),
                "sleep",
                "0.2",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("probe");
        let pid = child.id().to_string();
        let out = d.cli(&["assign", "--identity", identity, "--pid", &pid]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        touch(&go);
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            assert!(Instant::now() < deadline, "probe did not finish");
            std::thread::sleep(Duration::from_millis(10));
        };
        use std::os::unix::process::ExitStatusExt as _;
        // Either way the call ran: kill mode does not prevent it.
        assert!(dir.is_dir(), "{identity}: mkdir ran");
        let ev = tail.expect(|e| e["identity"] == identity && is_syscall(e, "mkdir"));
        assert_syscall_event(
            &ev,
            identity,
            child.id() as u64,
            ("mkdir", NR_MKDIR),
            if killed { "kill" } else { "observed" },
            if killed { "kill" } else { "audit" },
        );
        if killed {
            assert_eq!(
                status.signal(),
                Some(libc::SIGKILL),
                "{identity}: {status:?}"
            );
        } else {
            assert_eq!(status.code(), Some(0), "{identity}: {status:?}");
        }
    }
}

#[test]
fn audit_mode_allows_and_reports_and_no_section_means_unconfined() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("a");
    let audit = policy("aud", "audit", "allow = [\"@default\"]\ndeny = [\"kcmp\"]");
    let free = "[identity]\nname = \"free\"\n";
    let d = Daemon::start(&[("aud", &audit), ("free", free)]);
    let tail = d.tail(Some("aud"));
    let r = d.probe_as(
        "aud",
        &["pid", "sys", "mkdir", path_str(&dir), "sys", "kcmp"],
    );
    assert_eq!(r.step("sys", 0)["ok"], true, "audit allows: {r:#?}");
    assert_eq!(
        r.step("sys", 1)["ok"],
        true,
        "audit allows deny entries too: {r:#?}"
    );
    let ev = tail.expect(|e| is_syscall(e, "mkdir"));
    assert_syscall_event(&ev, "aud", r.pid(), ("mkdir", NR_MKDIR), "notify", "audit");
    assert_eq!(ev["mode"], "audit", "{ev:#}");
    let ev = tail.expect(|e| is_syscall(e, "kcmp"));
    assert_eq!(ev["reason"], "deny-rule", "{ev:#}");

    let show = d.cli_json(&["policy", "show", "free", "--json"]);
    assert_eq!(show["syscalls"]["confined"], false, "{show:#}");
    let show = d.cli_json(&["policy", "show", "aud", "--json"]);
    assert_eq!(show["syscalls"]["confined"], true, "{show:#}");
    let r = d.probe_as("free", &["sys", "kcmp", "io-uring-setup"]);
    assert_eq!(r.step("sys", 0)["ok"], true, "{r:#?}");
    assert_eq!(r.step("io-uring-setup", 0)["ok"], true, "{r:#?}");
}

/// The bundled policies' `[syscalls]` sections reach the pinned map the
/// launchers read: read back through the pin, bit by bit, against the
/// names the daemon reports.
#[test]
fn bundled_syscall_sections_reach_the_pinned_map() {
    if !is_root() {
        return;
    }
    use agent_common::{maps, syscall::SyscallPolicy};
    use aya::maps::{HashMap as BpfHashMap, MapData};
    let src = workspace().join("policies");
    let files: Vec<(String, String)> = std::fs::read_dir(&src)
        .expect("policies/")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
        .map(|e| {
            let stem = e
                .path()
                .file_stem()
                .expect("stem")
                .to_string_lossy()
                .into_owned();
            (stem, std::fs::read_to_string(e.path()).expect("read"))
        })
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let d = Daemon::start(&refs);
    let pin = d.dirs.pin_dir.join("maps").join(maps::SYSCALL_POLICY);
    let m: BpfHashMap<MapData, u32, SyscallPolicy> = BpfHashMap::try_from(aya::maps::Map::HashMap(
        MapData::from_pin(&pin).expect("pin"),
    ))
    .expect("hash map");
    let mut confined = 0;
    for (name, _) in &files {
        let ident = d.cli_json(&["policy", "show", name, "--json"]);
        let name = ident["name"].as_str().expect("name");
        let id = ident["identity_id"].as_u64().expect("id") as u32;
        let v = m.get(&id, 0).expect("every identity has a value");
        assert_eq!(&v.name[..name.len()], name.as_bytes());
        let s = &ident["syscalls"];
        assert_eq!(v.confined(), s["confined"] == true, "{name}");
        if !v.confined() {
            continue;
        }
        confined += 1;
        let bits =
            |words: &[u64; 8]| -> usize { words.iter().map(|w| w.count_ones() as usize).sum() };
        let allowed = s["allowed"].as_array().expect("allowed");
        let denied = s["denied"].as_array().expect("denied");
        assert_eq!(bits(&v.allow), allowed.len(), "{name}: allowed");
        assert_eq!(bits(&v.deny), denied.len(), "{name}: denied");
        // Spot checks by number: read (0), ptrace (101).
        let has = |l: &[Value], n: &str| l.iter().any(|x| x == n);
        assert_eq!(v.allowed_bit(0), has(allowed, "read"), "{name}");
        assert_eq!(v.allowed_bit(101), has(allowed, "ptrace"), "{name}");
        assert_eq!(v.denied_bit(101), has(denied, "ptrace"), "{name}");
    }
    assert!(confined >= 1, "a bundled policy shows [syscalls]");
}

/// `corral unload` ends enforcement, but a running agent's filter cannot be
/// removed: its launcher then refuses every notified syscall (closed), it
/// does not go on answering from a policy nobody maintains.
#[test]
fn unload_leaves_running_agents_closed() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let (dir, go) = (tmp.path().join("d"), tmp.path().join("go"));
    let p = policy("gone", "enforce", "allow = [\"@default\", \"mkdir\"]");
    let d = Daemon::start(&[("gone", &p)]);
    let mut probe = d.spawn_probe_as(
        "gone",
        &[
            "pid",
            "wait-file",
            path_str(&go),
            "sys",
            "getppid",
            "sys",
            "mkdir",
            path_str(&dir),
        ],
    );
    probe.next_step("pid");
    let dirs = d.stop_keep_pins();
    let out = Command::new(corral_bin())
        .args(["unload", "--pin-dir"])
        .arg(&dirs.pin_dir)
        .args(["--cgroup-parent", &dirs.cgroup_parent])
        .output()
        .expect("corral unload");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    touch(&go);
    assert_eq!(probe.next_step("sys")["ok"], true, "hot: in the filter");
    assert_eq!(probe.next_step("sys")["errno"], EPERM, "notified: refused");
    assert!(!dir.exists());
    drop(probe);
    cleanup(&dirs);
}
