//! The Landlock fallback's denials through Landlock's own audit records
//! (issue 11: no host-wide hook). Natively on a kernel with Landlock ABI 7
//! and audit, the daemon reads them instead of attaching syscall
//! tracepoints; elsewhere these tests skip, counted.
//! - No tracepoint link is pinned, and a process of the host (not in the
//!   observed group) gets no audit context: its own Landlock denial comes
//!   without a SYSCALL record, so its syscalls never took the audit path.
//! - An agent's denial names the process that was refused (pid, comm),
//!   not the one that started the agent.
//! - Stopping the daemon puts the audit status back; denials made while it
//!   was down come back as a `lost` event when the domain ends.

use std::{
    ffi::CString,
    time::{Duration, Instant},
};

use agent_user::daemon::llaudit::{
    OBSERVED_GID, netlink,
    record::{self, Record},
};
use corral_tests::*;

const EACCES: i64 = 13;

fn policy(name: &str, t: &ScratchTree) -> String {
    let mut read: Vec<String> = PROBE_SYSTEM_READ.iter().map(|s| s.to_string()).collect();
    read.push(probe_real());
    read.push(t.p("kb/"));
    format!(
        "[identity]\nname = \"{name}\"\n[files]\nread = [{}]\nwrite = [\"/dev/null\"]\n",
        toml_list(&read)
    )
}

fn tree() -> ScratchTree {
    ScratchTree::new(&["kb"], &["kb/doc", "secret"])
}

/// A daemon whose file observer reads audit records, or a counted skip.
fn daemon(policies: &[(&str, &str)]) -> Option<Daemon> {
    if !is_root() {
        return None;
    }
    let d = Daemon::start(policies);
    let files = d.mechanism("files");
    let detail = files["detail"].as_str().unwrap_or("");
    if files["state"] != "fallback" || !detail.contains("Landlock audit records") {
        skip(&format!(
            "the Landlock denials are not read from audit records here: {files}"
        ));
        return None;
    }
    Some(d)
}

fn audit_enabled() -> u32 {
    netlink::Control::open()
        .and_then(|mut c| c.status())
        .map(|s| s.enabled)
        .expect("audit status")
}

#[test]
fn agents_are_named_per_process_and_the_host_pays_nothing() {
    let t = tree();
    let Some(d) = daemon(&[("ll-audit", &policy("ll-audit", &t))]) else {
        return;
    };
    // No tracepoint observer is pinned (every syscall would pay for it).
    let fileobs = d.dirs.pin_dir.join("links").join("fileobs");
    let pinned = std::fs::read_dir(&fileobs).map_or(0, |r| r.count());
    assert_eq!(
        pinned,
        0,
        "tracepoint links pinned in {}",
        fileobs.display()
    );
    let tail = d.tail(Some("ll-audit"));
    // A shell starts the agent and the probe is its child: the event must
    // name the probe, not the shell that started the session.
    let script = format!("{} pid open {} r; true", probe_real(), t.p("secret"));
    let run = ProbeRun::from(d.cli(&[
        "run",
        "--identity",
        "ll-audit",
        "--",
        "/bin/sh",
        "-c",
        &script,
    ]));
    run.assert_errno("open", 0, EACCES);
    let pid = run.pid();
    let want = t.p("secret");
    let ev = tail.expect(|e| e["kind"] == "file" && e["file"]["path"] == want.as_str());
    assert_file_event(&ev, "ll-audit", pid, &want, "read");
    assert_eq!(ev["file"]["layer"], "landlock", "{ev:#}");
    // The same read outside the identity succeeds.
    probe_outside(&["open", &want, "r"]).assert_ok("open", 0);
    host_processes_have_no_audit_context(&want);
}

/// Forks a child that confines itself with Landlock and is refused a read
/// of `path`, from this test's process (not in the group) and from one in
/// the group; only the second's denial carries a SYSCALL record.
fn host_processes_have_no_audit_context(path: &str) {
    let listener = netlink::listener().expect("audit log group");
    let target = CString::new(path).expect("path");
    let host = refused_child(&target, false);
    let member = refused_child(&target, true);
    let mut syscall_pids = Vec::new();
    let mut denied = 0;
    let mut buf = vec![0u8; 16384];
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        if !netlink::wait_readable(&listener, Duration::from_millis(100)) {
            continue;
        }
        let Ok(Some(n)) = netlink::recv(&listener, &mut buf) else {
            continue;
        };
        for (ty, _, body) in netlink::messages(&buf[..n]) {
            match record::parse(ty, body) {
                Some((_, Record::Syscall { pid, .. })) => syscall_pids.push(pid),
                Some((_, Record::Access { path: Some(p), .. })) if p == path => denied += 1,
                _ => {}
            }
        }
    }
    assert!(denied >= 2, "both children's denials logged ({denied})");
    assert!(
        !syscall_pids.contains(&host),
        "a host process got an audit context: {host} in {syscall_pids:?}"
    );
    assert!(
        syscall_pids.contains(&member),
        "a member of the observed group got no audit context: {member} not in {syscall_pids:?}"
    );
}

/// The pid of a child that was refused `target` by its own Landlock
/// domain; forked by a member of `OBSERVED_GID` when `member`.
fn refused_child(target: &CString, member: bool) -> u32 {
    let ruleset = agent_user::sandbox::landlock::empty_ruleset().expect("ruleset");
    let mut fds = [0i32; 2];
    // SAFETY: a valid array of two fds.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    let [r, w] = fds;
    // SAFETY: the children make raw syscalls only, on data made before.
    let outer = unsafe { libc::fork() };
    assert!(outer >= 0, "fork");
    if outer == 0 {
        unsafe {
            if member {
                let g = [OBSERVED_GID];
                libc::setgroups(1, g.as_ptr());
            }
            let pid = libc::fork();
            if pid == 0 {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                let _ = agent_user::sandbox::landlock::restrict_thread(&ruleset, 0);
                libc::open(target.as_ptr(), libc::O_RDONLY);
                libc::_exit(0);
            }
            let b = (pid as u32).to_ne_bytes();
            libc::write(w, b.as_ptr().cast(), 4);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
            libc::_exit(0);
        }
    }
    let mut b = [0u8; 4];
    // SAFETY: our own pipe and child.
    unsafe {
        libc::close(w);
        assert_eq!(libc::read(r, b.as_mut_ptr().cast(), 4), 4, "child pid");
        libc::close(r);
        libc::waitpid(outer, std::ptr::null_mut(), 0);
    }
    u32::from_ne_bytes(b)
}

#[test]
fn stop_restores_audit_and_a_restart_counts_what_it_missed() {
    let t = tree();
    let before = audit_enabled();
    let Some(d) = daemon(&[("ll-back", &policy("ll-back", &t))]) else {
        return;
    };
    let secret = t.p("secret");
    let (go, go2) = (t.root.join("go"), t.root.join("go2"));
    let tail = d.tail(Some("ll-back"));
    let mut bg = d.spawn_probe_as(
        "ll-back",
        &[
            "pid",
            "open",
            &secret,
            "r",
            "wait-file",
            path_str(&go),
            "open",
            &secret,
            "r",
            "open",
            &secret,
            "r",
            "wait-file",
            path_str(&go2),
        ],
    );
    let pid = bg.next_step("pid")["pid"].as_u64().expect("pid");
    let ev = tail.expect(|e| e["kind"] == "file" && e["file"]["path"] == secret.as_str());
    assert_file_event(&ev, "ll-back", pid, &secret, "read");
    let dirs = d.stop_keep_pins();
    assert_eq!(audit_enabled(), before, "the audit status put back on stop");
    // Two refusals while no daemon listens.
    touch(&go);
    bg.next_step("open");
    bg.next_step("open");
    let d = Daemon::start_with(dirs).expect("restart");
    let tail = d.tail(None);
    touch(&go2);
    let run = bg.finish();
    run.assert_errno("open", 1, EACCES);
    let lost = tail.expect(|e| e["kind"] == "lost" && e["lost"]["source"] == "landlock-audit");
    assert_eq!(lost["lost"]["count"], 2, "{lost:#}");
}

/// An agent that can read another identity's launch token (here from the
/// API, as a client of the daemon) names itself with it and stacks a
/// Landlock domain of its own: its refusal is still its own identity's,
/// judged by its cgroup, never the token's identity. Root and not.
#[test]
fn a_borrowed_launch_token_does_not_lend_another_identity() {
    let t = tree();
    let Some(d) = daemon(&[
        ("ll-mine", &policy("ll-mine", &t)),
        ("ll-other", &policy("ll-other", &t)),
    ]) else {
        return;
    };
    // A non-root agent must pass DAC to reach Landlock at all.
    use std::os::unix::fs::PermissionsExt as _;
    for dir in [t.root.clone(), t.root.join("kb")] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let doc = t.p("kb/doc");
    for user in [None, Some("nobody")] {
        let (code, v) = d.api("GET", "/v1/policy/ll-other?sections=files", None);
        assert_eq!(code, 200, "{v}");
        let token = v["files"]["audit"]["token"]
            .as_str()
            .expect("a launch token")
            .to_string();
        let tail = d.tail(Some("ll-mine"));
        // kb/doc is allowed to ll-mine: only the agent's own domain refuses.
        let steps = [
            "pid",
            "sandbox-self",
            &token,
            "open",
            &doc,
            "r",
            "sleep",
            "1",
        ];
        let run = match user {
            None => d.probe_as("ll-mine", &steps),
            Some(u) => d.probe_as_user("ll-mine", u, &steps),
        };
        run.assert_ok("sandbox-self", 0);
        run.assert_errno("open", 0, EACCES);
        let ev = tail.expect(|e| e["kind"] == "file" && e["file"]["path"] == doc.as_str());
        assert_eq!(ev["identity"], "ll-mine", "judged by its cgroup: {ev:#}");
        assert_eq!(ev["tgid"].as_u64(), Some(run.pid()), "{ev:#}");
        // The name it gave itself is what the kernel reports.
        assert_eq!(ev["comm"], token.as_str(), "{ev:#}");
        assert_eq!(ev["verdict"], "deny", "{ev:#}");
        assert_eq!(ev["file"]["access"], "read", "{ev:#}");
        probe_outside(&["open", &doc, "r"]).assert_ok("open", 0);
    }
}
