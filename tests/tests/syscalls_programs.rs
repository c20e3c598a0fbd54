//! Syscall allowlists (`[syscalls]`) around real programs and process
//! shapes: threads and execve stay confined, socket families and io_uring
//! are refused, Python, Node and Rust programs run under `@default`, and
//! kill mode for assigned processes. Every denial test shows the errno
//! inside the identity, success outside it, and the event.

use std::{process::Command, time::Duration};

use corral_tests::*;
use serde_json::Value;

#[test]
fn threads_and_execve_stay_confined() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let (d1, d2) = (tmp.path().join("thread"), tmp.path().join("exec"));
    let p = syscall_policy("tx", "enforce", "allow = [\"@default\"]");
    let (d, tail) = Daemon::start_tailed("tx", &p);
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
    r.assert_eperm("sys-thread", 0);
    // After execve: same process, same filter, same identity.
    assert_eq!(r.step("pid", 1)["pid"].as_u64(), Some(pid), "{r:#?}");
    r.assert_eperm("sys", 0);
    r.assert_eperm("sys-thread", 1);
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
    let p = syscall_policy("net", "enforce", "allow = [\"@default\", \"@network-io\"]");
    let (d, tail) = Daemon::start_tailed("net", &p);
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
        // AF_INET + SOCK_PACKET: the kernel makes an AF_PACKET socket.
        "socket",
        "inet-packet",
    ];
    let r = d.probe_as("net", &steps);
    assert_eq!(r.code, Some(0), "{r:#?}");
    r.assert_eperm("io-uring-setup", 0);
    for (i, kind) in ["packet", "raw", "netlink-generic"].iter().enumerate() {
        assert_eq!(r.step("socket", i)["errno"], EPERM, "{kind}: {r:#?}");
    }
    for i in 3..6 {
        r.assert_ok("socket", i);
    }
    r.assert_eperm("socket", 6);
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
    let ev = tail.expect(|e| {
        is_syscall(e, "socket")
            && e["syscall"]["detail"]
                .as_str()
                .unwrap_or("")
                .contains("AF_INET SOCK_PACKET (needs `socket:packet`)")
    });
    assert_syscall_event(&ev, "net", r.pid(), ("socket", 41), "notify", "deny");

    let out = probe_outside(&steps[1..]);
    out.assert_ok("socket", 6);
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

/// Node, where it is installed (libuv threads, epoll, timers), and a user
/// lookup with HOME unset (as under CI and systemd: glibc asks nscd over
/// an AF_UNIX socket first), both under `@default`.
fn node_and_user_lookup_run(d: &Daemon) {
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
        _ => skip("the Node part: no `node` on PATH"),
    }

    // A user lookup with HOME unset (as under CI and systemd): glibc asks
    // nscd over an AF_UNIX socket first, which `@default` must allow.
    let o = d.cli(&[
        "run",
        "--identity",
        "rt",
        "--",
        "env",
        "-u",
        "HOME",
        "bash",
        "-c",
        "echo ~",
    ]);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).trim().starts_with('/'),
        "user lookup under @default: {o:?}"
    );
}

#[test]
fn python_node_and_rust_programs_run_under_default() {
    if !is_root() {
        return;
    }
    let p = syscall_policy("rt", "enforce", "allow = [\"@default\"]");
    let (d, tail) = Daemon::start_tailed("rt", &p);
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

    node_and_user_lookup_run(&d);

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
    r.assert_ok("sys", 1);
    r.assert_ok("sys-thread", 0);
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
    let kill = syscall_policy(
        "killer",
        "enforce",
        "allow = [\"@default\"]\nassigned = \"kill\"",
    );
    let audit = syscall_policy("watcher", "enforce", "allow = [\"@default\"]");
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
    for (identity, dir, killed) in [("killer", t("k"), true), ("watcher", t("w"), false)] {
        // The test's own child, not started by `corral run`: no filter.
        let (child, status) = d.assigned_probe(
            identity,
            &[],
            &["sys", "mkdir", path_str(&dir), "sleep", "0.2"],
        );
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
