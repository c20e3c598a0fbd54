//! Syscall allowlists (`[syscalls]`): the seccomp filter `corral run`
//! installs, the launcher answering notifications from the live policy, the
//! observers reporting every refusal, restarts, unload and audit mode
//! (threads, execve, socket families, real programs and kill mode:
//! `syscalls_programs.rs`). Every denial test shows the errno inside the
//! identity, success outside it, and the event.

use std::{process::Command, time::Duration};

use corral_tests::*;
use serde_json::Value;

const ENOSYS: i64 = 38;

#[test]
fn denied_in_the_kernel_and_by_the_launcher_with_events() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let inside = tmp.path().join("inside");
    let p = syscall_policy("sc", "enforce", "allow = [\"@default\"]\ndeny = [\"kcmp\"]");
    let (d, tail) = Daemon::start_tailed("sc", &p);

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
    let without = syscall_policy("live", "enforce", "allow = [\"@default\"]");
    let with = syscall_policy("live", "enforce", "allow = [\"@default\", \"mkdir\"]");
    let (d, tail) = Daemon::start_tailed("live", &without);
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
    d.apply();
    touch(&go1);
    let s = p.next_step("sys");
    assert_eq!(s["ok"], true, "allowed after the change: {s}");
    assert!(d2.is_dir());

    d.write_policy("live", &without);
    d.apply();
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
    let p = syscall_policy("keep", "enforce", "allow = [\"@default\", \"mkdir\"]");
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
    let p = syscall_policy("orphan", "enforce", "allow = [\"@default\", \"mkdir\"]");
    let (d, tail) = Daemon::start_tailed("orphan", &p);
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
fn audit_mode_allows_and_reports_and_no_section_means_unconfined() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("a");
    let audit = syscall_policy("aud", "audit", "allow = [\"@default\"]\ndeny = [\"kcmp\"]");
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
    r.assert_ok("sys", 0);
    r.assert_ok("io-uring-setup", 0);
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
    let files = bundled_policies();
    let d = Daemon::start(&policy_refs(&files));
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
    let p = syscall_policy("gone", "enforce", "allow = [\"@default\", \"mkdir\"]");
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
