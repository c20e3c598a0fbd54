//! `assigned = "kill"` cannot be talked out of: a process tagged with
//! `corral assign` is killed for a syscall its policy does not allow even
//! when it runs under a seccomp filter of its own (it used to pass for an
//! agent under Corral's filter), and an i386 syscall (`int 0x80` from a
//! 64-bit process; its number is not an x86_64 number) is never judged as
//! the x86_64 call of the same number. Agents that `corral run` started are
//! told apart by their launcher, registered in `SC_LAUNCHERS`.

use std::{os::unix::process::ExitStatusExt as _, time::Duration};

use corral_tests::*;

fn killer_policy() -> String {
    syscall_policy(
        "killer",
        "enforce",
        "allow = [\"@default\"]\nassigned = \"kill\"",
    )
}

#[test]
fn an_own_seccomp_filter_does_not_escape_kill_mode() {
    if !is_root() {
        skip("needs root");
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("made");
    let (d, tail) = Daemon::start_tailed("killer", &killer_policy());
    // Filtered before it is assigned, like a service with systemd's
    // SystemCallFilter= or a sandboxed browser process (installing one
    // afterwards is itself a call @default does not allow).
    let (child, status) = d.assigned_probe(
        "killer",
        &["seccomp-own"],
        &["sys", "mkdir", path_str(&dir), "sleep", "0.2"],
    );
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    let ev = tail.expect(|e| is_syscall(e, "mkdir"));
    assert_syscall_event(
        &ev,
        "killer",
        child.id() as u64,
        ("mkdir", 83),
        "kill",
        "kill",
    );

    // Outside the identity the same steps run to the end.
    let out = probe_outside(&[
        "seccomp-own",
        "sys",
        "mkdir",
        path_str(&tmp.path().join("o")),
    ]);
    out.assert_ok("seccomp-own", 0);
    out.assert_ok("sys", 0);
}

#[test]
fn an_i386_syscall_is_not_judged_as_an_x86_64_one() {
    if !is_root() {
        skip("needs root");
        return;
    }
    // i386 getpid is 20, x86_64 writev: allowed by @default. As an i386
    // call it is one no x86_64 policy allows.
    let (d, tail) = Daemon::start_tailed("killer", &killer_policy());
    let (child, status) = d.assigned_probe("killer", &[], &["ia32-getpid", "sleep", "0.2"]);
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    let ev = tail.expect(|e| e["kind"] == "syscall");
    assert_event_source(&ev, "syscall", "killer", child.id() as u64);
    assert_eq!(ev["syscall"]["name"], "ia32:#20", "{ev:#}");
    assert_eq!(ev["verdict"], "kill", "{ev:#}");

    // A launched agent: the launch-time filter refuses every i386 call.
    let r = d.probe_as("killer", &["pid", "ia32-getpid"]);
    r.assert_eperm("ia32-getpid", 0);
    let ev = tail.expect(|e| e["kind"] == "syscall" && e["tgid"] == r.pid());
    assert_syscall_event(
        &ev,
        "killer",
        r.pid(),
        ("ia32:#20", 0x8000_0014),
        "kernel",
        "deny",
    );

    // Outside: getpid through int 0x80 works.
    probe_outside(&["ia32-getpid"]).assert_ok("ia32-getpid", 0);
}

#[test]
fn launched_agents_are_not_taken_for_assigned_ones() {
    if !is_root() {
        skip("needs root");
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let go = tmp.path().join("go");
    let (d, tail) = Daemon::start_tailed("killer", &killer_policy());
    // getppid is hot: the launch-time filter allows it in the kernel. Once
    // the policy denies it, a launched agent's call still runs (the filter
    // is fixed at launch) and is reported; it is not killed, as it would be
    // if it were taken for an assigned process.
    let mut bg = d.spawn_probe_as(
        "killer",
        &[
            "pid",
            "wait-file",
            path_str(&go),
            "sys",
            "getppid",
            "exit",
            "0",
        ],
    );
    let pid = bg.next_step("pid")["pid"].as_u64().expect("pid");
    let gen0 = d.generation();
    d.write_policy(
        "killer",
        &syscall_policy(
            "killer",
            "enforce",
            "allow = [\"@default\"]\ndeny = [\"getppid\"]\nassigned = \"kill\"",
        ),
    );
    d.wait_generation_past(gen0, Duration::from_secs(10));
    touch(&go);
    let r = bg.finish();
    assert_eq!(r.code, Some(0), "not killed: {r:#?}");
    r.assert_ok("sys", 0);
    let ev = tail.expect(|e| is_syscall(e, "getppid"));
    assert_syscall_event(&ev, "killer", pid, ("getppid", 110), "kernel", "audit");
}
