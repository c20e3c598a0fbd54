//! Ways out of an identity that go around the plain hooks (issue 9, BPF
//! LSM parts): signals through a file's owner (SIGIO), Corral's own files
//! (signing key, policy dir, binary) for a root agent allowed everything,
//! and views of the file system an agent builds (chroot, user namespaces,
//! detached mount trees), judged by host path.
//!
//! Like `files_lsm_protect.rs`: "skipping: …" where BPF LSM is unavailable,
//! for real in `cargo xtask vm-test`. Every denial shows the errno inside,
//! success outside (untagged) and the event with identity, pid and comm.

use std::{
    ffi::CString,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Child, Command},
    time::Duration,
};

use corral_tests::*;

const EINVAL: i64 = 22;
/// `F_SETOWN_EX` (not in every libc crate version).
const F_SETOWN_EX: u32 = 15;

/// A root agent allowed everything by its written rules.
const ROOT_RW_POLICY: &str = "[identity]\nname = \"rootrw\"\nmode = \"enforce\"\n[files]\n\
                              read = [\"/\"]\nwrite = [\"/\"]\nexec = [\"/\"]\n";

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

fn sleeper() -> Child {
    Command::new("sleep").arg("60").spawn().expect("sleep")
}

/// A FIFO whose read end this (untagged) process holds, with O_ASYNC and
/// `owner` as its signal owner: whoever writes to it makes the kernel send
/// SIGIO to `owner` (`file_send_sigiotask`).
struct SigioFifo {
    path: String,
    fd: i32,
}

impl SigioFifo {
    fn new(path: String, owner: u32) -> SigioFifo {
        let p = c(&path);
        // SAFETY: plain syscalls on a valid path and our own fd.
        unsafe {
            assert_eq!(libc::mkfifo(p.as_ptr(), 0o666), 0, "mkfifo");
            let fd = libc::open(
                p.as_ptr(),
                libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
            );
            assert!(fd >= 0, "open fifo");
            assert_eq!(libc::fcntl(fd, libc::F_SETOWN, owner as i32), 0);
            assert_eq!(
                libc::fcntl(fd, libc::F_SETFL, libc::O_ASYNC | libc::O_NONBLOCK),
                0
            );
            SigioFifo { path, fd }
        }
    }
}

impl Drop for SigioFifo {
    fn drop(&mut self) {
        // SAFETY: our own fd.
        unsafe { libc::close(self.fd) };
        let _ = std::fs::remove_file(&self.path);
    }
}

fn exited_by_signal(child: &mut Child, wait: Duration) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt as _;
    let end = std::time::Instant::now() + wait;
    while std::time::Instant::now() < end {
        if let Some(st) = child.try_wait().expect("wait") {
            return st.signal();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn sigio_to_processes_outside_the_identity_is_refused() {
    let Some((t, d)) = lsm_lab() else { return };
    for identity in ["netonly", "files"] {
        let tail = d.tail(Some(identity));
        let mut outside = sleeper();
        let fifo = SigioFifo::new(t.p("rw/sigio.fifo"), outside.id());
        // Setting an owner: only itself, by value.
        let target = outside.id().to_string();
        let r = d.probe_as(
            identity,
            &[
                "pid",
                "setown",
                &target,
                "setown",
                "self",
                "setown-ex-self",
                "fiosetown-self",
                // Delivery: the agent's write raises SIGIO to the FIFO's
                // owner, a process outside.
                "write-file",
                &fifo.path,
                "x",
            ],
        );
        r.assert_eperm("setown", 0);
        r.assert_ok("setown", 1);
        r.assert_eperm("setown-ex", 0);
        r.assert_eperm("fiosetown", 0);
        r.assert_ok("write-file", 0);
        assert_eq!(
            exited_by_signal(&mut outside, Duration::from_millis(500)),
            None,
            "the outside process got the agent's SIGIO"
        );
        let ev = tail.expect(|e| e["kind"] == "protect" && e["protect"]["op"] == "setown");
        assert_event_source(&ev, "protect", identity, r.pid());
        assert_eq!(ev["protect"]["target_pid"], outside.id(), "{ev:#}");
        assert_eq!(ev["protect"]["arg"], libc::F_SETOWN, "{ev:#}");
        let ev = tail.expect(|e| e["kind"] == "protect" && e["protect"]["arg"] == F_SETOWN_EX);
        assert_eq!(ev["protect"]["op"], "setown", "{ev:#}");
        let ev = tail.expect(|e| e["kind"] == "protect" && e["protect"]["op"] == "sigio");
        assert_event_source(&ev, "protect", identity, r.pid());
        assert_eq!(ev["reason"], "self-protection", "{ev:#}");
        assert_eq!(ev["protect"]["target_pid"], outside.id(), "{ev:#}");
        assert_eq!(ev["protect"]["arg"], libc::SIGIO, "{ev:#}");
        // Outside: the same write delivers SIGIO (default action: exit).
        let o = probe_outside(&[
            "setown",
            &target,
            "setown-ex-self",
            "fiosetown-self",
            "write-file",
            &fifo.path,
            "x",
        ]);
        o.assert_ok("setown", 0);
        o.assert_ok("setown-ex", 0);
        o.assert_ok("fiosetown", 0);
        o.assert_ok("write-file", 0);
        assert_eq!(
            exited_by_signal(&mut outside, Duration::from_secs(5)),
            Some(libc::SIGIO),
            "outside, SIGIO reaches the owner"
        );
    }
}

/// A pipe this process made (inherited by every child: no CLOEXEC) whose
/// read end has `owner` as its signal owner, not yet armed.
struct OwnedPipe {
    r: i32,
    w: i32,
}

impl OwnedPipe {
    fn new(owner: u32) -> OwnedPipe {
        let mut fds = [0i32; 2];
        // SAFETY: plain syscalls on our own fds.
        unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            assert_eq!(libc::fcntl(fds[0], libc::F_SETOWN, owner as i32), 0);
        }
        OwnedPipe {
            r: fds[0],
            w: fds[1],
        }
    }

    fn poke(&self) {
        // SAFETY: one byte into our own pipe.
        assert_eq!(unsafe { libc::write(self.w, b"x".as_ptr().cast(), 1) }, 1);
    }
}

impl Drop for OwnedPipe {
    fn drop(&mut self) {
        // SAFETY: our own fds.
        unsafe {
            libc::close(self.r);
            libc::close(self.w);
        }
    }
}

#[test]
fn arming_a_file_owned_outside_is_refused() {
    let Some((_t, d)) = lsm_lab() else { return };
    let tail = d.tail(Some("netonly"));
    let mut outside = sleeper();
    let pipe = OwnedPipe::new(outside.id());
    let fd = pipe.r.to_string();
    // The agent inherited a file whose owner is outside: choosing its
    // signal (SIGKILL) or turning on O_ASYNC would let the owner's own I/O
    // deliver the agent's choice.
    let steps = [
        "pid",
        "fd-setsig",
        &fd,
        "9",
        "fd-async",
        &fd,
        "fd-fioasync",
        &fd,
    ];
    let r = d.probe_as("netonly", &steps);
    r.assert_eperm("fd-setsig", 0);
    r.assert_eperm("fd-async", 0);
    r.assert_eperm("fd-fioasync", 0);
    pipe.poke();
    assert_eq!(
        exited_by_signal(&mut outside, Duration::from_millis(500)),
        None
    );
    // F_SETSIG, F_SETFL, FIOASYNC.
    for cmd in [10u32, libc::F_SETFL as u32, 0x5452] {
        let ev = tail.expect(|e| e["kind"] == "protect" && e["protect"]["arg"] == cmd);
        assert_event_source(&ev, "protect", "netonly", r.pid());
        assert_eq!(ev["protect"]["op"], "setown", "{ev:#}");
        assert_eq!(ev["protect"]["target_pid"], outside.id(), "{ev:#}");
    }
    // Outside: the same arming works, and the owner's next I/O delivers
    // the chosen SIGKILL.
    let o = probe_outside(&steps[1..]);
    o.assert_ok("fd-setsig", 0);
    o.assert_ok("fd-async", 0);
    o.assert_ok("fd-fioasync", 0);
    pipe.poke();
    assert_eq!(
        exited_by_signal(&mut outside, Duration::from_secs(5)),
        Some(libc::SIGKILL)
    );
}

#[test]
fn protected_paths_are_refused_to_a_root_agent_allowed_everything() {
    let t = lsm_tree();
    let p = lsm_files_policy(&t);
    let Some(d) = lsm_daemon(&[
        ("files", &p),
        ("netonly", NETONLY_POLICY),
        ("rootrw", ROOT_RW_POLICY),
    ]) else {
        return;
    };
    let state = std::fs::canonicalize(&d.dirs.state_dir).expect("state dir");
    let key = state.join("lease-signing-key.pem").display().to_string();
    assert!(Path::new(&key).exists(), "the daemon made its key");
    let policy = std::fs::canonicalize(d.dirs.policy_dir.join("rootrw.toml"))
        .expect("policy file")
        .display()
        .to_string();
    let bin = std::fs::canonicalize(corral_bin()).expect("corral binary");
    let mode = format!(
        "{:o}",
        std::fs::metadata(&bin).expect("stat").permissions().mode() & 0o7777
    );
    let bin = bin.display().to_string();
    let shown = d.cli_json(&["policy", "show", "rootrw", "--json"]);
    assert_eq!(shown["protected_paths_enforced"], true, "{shown:#}");
    let listed: Vec<&str> = shown["protected_paths"]
        .as_array()
        .expect("protected_paths")
        .iter()
        .filter_map(|p| p["path"].as_str())
        .collect();
    let policy_dir = format!(
        "{}/",
        std::fs::canonicalize(&d.dirs.policy_dir)
            .expect("policy dir")
            .display()
    );
    for path in [&key, &bin, &policy_dir] {
        assert!(listed.contains(&path.as_str()), "{path} in {listed:?}");
    }
    // The directory above the state dir: moving it would carry the key
    // out from under its rule.
    let above = state.parent().expect("parent").display().to_string();
    let moved = format!("{above}.moved");
    for identity in ["rootrw", "netonly"] {
        let tail = d.tail(Some(identity));
        let r = d.probe_as(
            identity,
            &[
                "pid", "open", &key, "r", "append", &policy, "chmod", &bin, &mode, "rename",
                &above, &moved,
            ],
        );
        r.assert_eperm("open", 0);
        r.assert_eperm("append", 0);
        r.assert_eperm("chmod", 0);
        r.assert_eperm("rename", 0);
        assert!(Path::new(&key).exists());
        for (path, access) in [(&key, "read"), (&policy, "write"), (&bin, "write")] {
            let ev = tail.expect(|e| e["kind"] == "file" && e["file"]["path"] == path.as_str());
            assert_event_source(&ev, "file", identity, r.pid());
            assert_eq!(ev["reason"], "self-protection", "{ev:#}");
            assert!(
                ev["file"]["access"].as_str().unwrap_or("").contains(access),
                "{ev:#}"
            );
            assert!(
                ev["rule"].to_string().contains("built-in"),
                "the event names the built-in rule: {ev:#}"
            );
        }
        let ev = tail.expect(|e| e["kind"] == "file" && e["file"]["path"] == format!("{above}/"));
        assert_event_source(&ev, "file", identity, r.pid());
        assert_eq!(ev["file"]["op"], "rename-source", "{ev:#}");
        assert_eq!(ev["reason"], "self-protection", "{ev:#}");
    }
    let o = probe_outside(&["open", &key, "r", "append", &policy, "chmod", &bin, &mode]);
    o.assert_ok("open", 0);
    o.assert_ok("append", 0);
    o.assert_ok("chmod", 0);
}

#[test]
fn a_chrooted_agent_is_judged_by_host_path() {
    let Some((t, d)) = lsm_lab() else { return };
    // In the tree, `etc/x`: inside the chroot it is `/etc/x`, which the
    // rule `/etc/` would allow if the path were the chroot's view; and a
    // static program at `usr/lib/bb`, which `/usr/lib/` lets run.
    std::fs::create_dir_all(t.p("etc")).expect("mkdir");
    std::fs::write(t.p("etc/x"), "x\n").expect("write");
    std::fs::create_dir_all(t.p("usr/lib")).expect("mkdir");
    std::fs::copy("/bin/busybox", t.p("usr/lib/bb")).expect("a static busybox");
    let tail = d.tail(Some("files"));
    let root = t.root.display().to_string();
    let steps = [
        "pid",
        "pivot-root",
        &root,
        &t.p("rw"),
        "chroot",
        &root,
        "open",
        "/etc/x",
        "r",
        "open",
        "/kb/a.md",
        "r",
        "execve",
        "/usr/lib/bb",
    ];
    let r = d.probe_as("files", &steps);
    r.assert_eperm("pivot-root", 0);
    r.assert_ok("chroot", 0);
    r.assert_eperm("open", 0); // host path <tree>/etc/x: no rule
    r.assert_ok("open", 1); // host path <tree>/kb/a.md: allowed
    r.assert_eperm("execve", 0); // host path <tree>/usr/lib/bb: no exec rule
    let ev = tail.expect(|e| e["kind"] == "protect" && e["protect"]["op"] == "pivot-root");
    assert_event_source(&ev, "protect", "files", r.pid());
    expect_lsm_denial(&tail, "files", r.pid(), &t.p("etc/x"), "read");
    let ev = tail.expect(|e| e["kind"] == "file" && e["file"]["path"] == t.p("usr/lib/bb"));
    assert_eq!(ev["file"]["access"], "exec", "{ev:#}");
    assert_eq!(ev["identity"], "files", "{ev:#}");
    let o = probe_outside(&steps[1..]);
    // Outside the kernel gets past the hook (and refuses: not a mount).
    o.assert_errno("pivot-root", 0, EINVAL);
    o.assert_ok("chroot", 0);
    o.assert_ok("open", 0);
    o.assert_ok("open", 1);
    o.assert_ok("execve", 0);
}

#[test]
fn user_namespaces_and_detached_mount_trees_are_refused() {
    let Some((t, d)) = lsm_lab() else { return };
    std::fs::create_dir_all(t.p("etc")).expect("mkdir");
    std::fs::write(t.p("etc/x"), "x\n").expect("write");
    let root = t.root.display().to_string();
    for identity in ["files", "netonly"] {
        let tail = d.tail(Some(identity));
        let r = d.probe_as(
            identity,
            &[
                "pid",
                "userns",
                "open-tree-read",
                &root,
                "etc/x",
                "fsmount-create",
                "new",
            ],
        );
        if identity == "files" {
            r.assert_eperm("userns", 0);
            let ev = tail.expect(|e| e["kind"] == "protect" && e["protect"]["op"] == "userns");
            let child = r.step("userns-child", 0)["pid"].as_u64().expect("pid");
            assert_event_source(&ev, "protect", identity, child);
        } else {
            r.assert_ok("userns", 0);
        }
        // A detached copy of the tree (root may clone it): `etc/x` in it is
        // `/etc/x` to d_path. It has no host path: refused, fail closed.
        r.assert_ok("open-tree", 0);
        r.assert_eperm("open-tree-read", 0);
        let ev = tail.expect(|e| e["kind"] == "file" && e["reason"] == "fail-closed");
        assert_event_source(&ev, "file", identity, r.pid());
        assert!(
            ev["file"]["note"]
                .as_str()
                .unwrap_or("")
                .contains("detached"),
            "{ev:#}"
        );
        // A new file system mounted nowhere (fsopen/fsmount): creating in
        // it is refused the same way (the path hooks' walk).
        r.assert_ok("fsmount", 0);
        r.assert_eperm("fsmount-create", 0);
        let ev = tail.expect(|e| {
            e["kind"] == "file" && e["reason"] == "fail-closed" && e["file"]["op"] == "create"
        });
        assert_event_source(&ev, "file", identity, r.pid());
    }
    let o = probe_outside(&[
        "userns",
        "open-tree-read",
        &root,
        "etc/x",
        "fsmount-create",
        "new",
    ]);
    o.assert_ok("userns", 0);
    o.assert_ok("open-tree-read", 0);
    o.assert_ok("fsmount-create", 0);
}

#[test]
fn protected_paths_stay_refused_to_an_orphaned_identity_without_files() {
    let Some((_t, d)) = lsm_lab() else { return };
    let tail = d.tail(Some("netonly"));
    let state = std::fs::canonicalize(&d.dirs.state_dir).expect("state dir");
    let key = state.join("lease-signing-key.pem").display().to_string();
    let flags = tempfile::tempdir().expect("tempdir");
    let go = flags.path().join("go");
    let mut p = d.spawn_probe_as(
        "netonly",
        &[
            "pid",
            "wait-file",
            go.to_str().expect("utf-8"),
            "open",
            &key,
            "r",
        ],
    );
    let pid = p.next_step("pid")["pid"].as_u64().expect("pid");
    // Its policy file goes while it runs: tagged, everything denied, and
    // the protected paths must stay refused (it has no [files] rules).
    let g = d.generation();
    std::fs::remove_file(d.dirs.policy_dir.join("netonly.toml")).expect("rm policy");
    d.wait_generation_past(g, Duration::from_secs(5));
    let r = &d.status()["reload"]["last_report"];
    assert_eq!(r["orphaned"][0], "netonly", "{r:#}");
    std::fs::write(&go, "").expect("go");
    assert_eq!(p.next_step("open")["errno"], 1, "EPERM");
    let ev = tail.expect(|e| e["kind"] == "file" && e["file"]["path"] == key.as_str());
    assert_event_source(&ev, "file", "netonly", pid);
    assert_eq!(ev["reason"], "self-protection", "{ev:#}");
    probe_outside(&["open", &key, "r"]).assert_ok("open", 0);
    drop(p);
}
