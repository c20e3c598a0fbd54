//! Syscall events without host-wide hooks: a `corral run` agent's refusals
//! are reported by its launcher (report socket), so the `sys_enter` /
//! `sys_exit` observers stay detached; they attach only while a tagged
//! process has no launcher reporting for it (`corral assign`) and detach
//! when it leaves. Reports made while no daemon listens arrive after the
//! restart.

use std::time::Duration;

use corral_tests::*;
use serde_json::Value;

fn observers_attached(d: &Daemon) -> bool {
    d.dirs.pin_dir.join("links").join("syscalls").exists()
}

#[test]
fn launched_agents_are_reported_by_their_launcher_without_observers() {
    if !is_root() {
        skip("needs root");
        return;
    }
    let p = syscall_policy(
        "rep",
        "enforce",
        "allow = [\"@default\"]\ndeny = [\"kcmp\"]",
    );
    let (d, tail) = Daemon::start_tailed("rep", &p);
    assert!(
        !observers_attached(&d),
        "no process needs the observers yet"
    );
    let r = d.probe_as("rep", &["pid", "sys", "kcmp", "ia32-getpid"]);
    assert_eq!(r.step("sys", 0)["errno"], EPERM, "deny entry: {r:#?}");
    assert_eq!(r.step("ia32-getpid", 0)["ok"], false, "i386 call: {r:#?}");
    let ev = tail.expect(|e| is_syscall(e, "kcmp"));
    assert_syscall_event(&ev, "rep", r.pid(), ("kcmp", NR_KCMP), "kernel", "deny");
    assert_eq!(ev["reason"], "deny-rule", "{ev:#}");
    assert_eq!(ev["syscall"]["errno"], "EPERM", "{ev:#}");
    assert!(
        !observers_attached(&d),
        "the event came from the launcher, not from host-wide observers"
    );
    probe_outside(&["sys", "kcmp"]).assert_ok("sys", 0);

    // An assigned process has no launcher: the observers attach for it,
    // and detach once it is gone.
    let (_child, status) = d.assigned_probe("rep", &[], &["sys", "getppid"]);
    assert!(
        status.success(),
        "audit only (assigned = \"audit\"): {status}"
    );
    wait_for(Duration::from_secs(10), "the observers to detach", || {
        (!observers_attached(&d)).then_some(())
    });
}

#[test]
fn reports_made_while_the_daemon_is_down_arrive_after_the_restart() {
    if !is_root() {
        skip("needs root");
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let go = tmp.path().join("go");
    let p = syscall_policy(
        "later",
        "enforce",
        "allow = [\"@default\"]\ndeny = [\"kcmp\"]",
    );
    let d = Daemon::start(&[("later", &p)]);
    let mut probe = d.spawn_probe_as(
        "later",
        &[
            "pid",
            "wait-file",
            path_str(&go),
            "sys",
            "kcmp",
            "sleep",
            "3",
        ],
    );
    let pid = probe.next_step("pid")["pid"].as_u64().expect("pid");
    let dirs = d.stop_keep_pins();
    touch(&go);
    assert_eq!(
        probe.next_step("sys")["errno"],
        EPERM,
        "refused with no daemon"
    );
    let d = Daemon::start_with(dirs).expect("restart");
    // The launcher may deliver before any `tail` could subscribe; the
    // audit log records it whoever listens.
    let audit = d.dirs.state_dir.join("audit");
    let ev = wait_for(
        Duration::from_secs(15),
        "the report in the audit log",
        || {
            let out = d.cli(&[
                "audit",
                "query",
                "--dir",
                path_str(&audit),
                "--identity",
                "later",
                "--kind",
                "syscall",
                "--json",
            ]);
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .map(|r| r["body"].clone())
                .find(|e| is_syscall(e, "kcmp"))
        },
    );
    assert_syscall_event(&ev, "later", pid, ("kcmp", NR_KCMP), "kernel", "deny");
    assert_eq!(probe.finish().code, Some(0));
}

/// A long-running agent launched under the live policy needs no observer;
/// once its policy drops a hot syscall its filter still passes in the
/// kernel, only the observers can see that call, so they attach, report
/// it, and detach when the agent is gone.
#[test]
fn observers_attach_only_when_a_running_agents_filter_is_out_of_date() {
    if !is_root() {
        skip("needs root");
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let go = tmp.path().join("go");
    let p = syscall_policy(
        "long",
        "enforce",
        "allow = [\"@default\"]\ndeny = [\"kcmp\"]",
    );
    let (d, tail) = Daemon::start_tailed("long", &p);
    let mut probe = d.spawn_probe_as(
        "long",
        &["pid", "wait-file", path_str(&go), "sys", "getppid"],
    );
    let pid = probe.next_step("pid")["pid"].as_u64().expect("pid");
    // The daemon re-checks every 50 ms: ten rounds with the agent running.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !observers_attached(&d),
        "an agent launched under the live policy needs no host-wide observer"
    );
    let g = d.generation();
    let dropped = syscall_policy(
        "long",
        "enforce",
        "allow = [\"@default\"]\ndeny = [\"kcmp\", \"getppid\"]",
    );
    d.write_policy("long", &dropped);
    d.wait_generation_past(g, Duration::from_secs(10));
    wait_for(Duration::from_secs(10), "the observers to attach", || {
        observers_attached(&d).then_some(())
    });
    touch(&go);
    let ev = tail.expect(|e| is_syscall(e, "getppid"));
    assert_eq!(ev["pid"].as_u64(), Some(pid), "{ev:#}");
    assert_eq!(ev["identity"], "long", "{ev:#}");
    assert_eq!(ev["comm"], "corral-probe", "{ev:#}");
    probe.finish();
    wait_for(Duration::from_secs(10), "the observers to detach", || {
        (!observers_attached(&d)).then_some(())
    });
}
