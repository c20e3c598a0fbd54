//! Ways around a `[files]` rule that the BPF LSM programs close: symlinks,
//! hard links and renames, re-opens through /proc/self/fd and O_PATH,
//! openat2, io_uring, relative paths and paths longer than PATH_MAX. The
//! rules themselves are in `files_lsm.rs`.
//!
//! Like `files_lsm.rs`, these say "skipping: …" where BPF LSM is
//! unavailable and run for real in `cargo xtask vm-test`'s QEMU guest.
//! Every denial test shows the errno inside the identity, success outside
//! it (untagged), and the event with identity, tgid, comm and path.

use std::{ffi::CString, os::unix::ffi::OsStrExt as _, path::Path};

use corral_tests::*;

#[test]
fn symlink_to_a_denied_file_is_judged_by_its_target() {
    let Some((t, d)) = lsm_lab() else { return };
    let tail = d.tail(Some("files"));
    let link = t.p("tickets/to-shadow");
    std::os::unix::fs::symlink(t.p("shadow"), &link).expect("symlink");
    let ok_link = t.p("tickets/to-kb");
    std::os::unix::fs::symlink(t.p("kb/a.md"), &ok_link).expect("symlink");
    let r = d.probe_as("files", &["pid", "open", &link, "r", "open", &ok_link, "r"]);
    r.assert_eperm("open", 0);
    r.assert_ok("open", 1);
    expect_lsm_denial(&tail, "files", r.pid(), &t.p("shadow"), "read");
    probe_outside(&["open", &link, "r"]).assert_ok("open", 0);
}

#[test]
fn hard_links_and_renames_cannot_widen_access() {
    let Some((t, d)) = lsm_lab() else { return };
    let tail = d.tail(Some("files"));
    let r = d.probe_as(
        "files",
        &[
            "pid",
            "link",
            &t.p("shadow"),
            &t.p("tickets/l1"),
            "link",
            &t.p("tickets/t.txt"),
            &t.p("kb/l2"),
            "link",
            &t.p("tickets/t.txt"),
            &t.p("tickets/l3"),
            "rename",
            &t.p("tickets/vip/x"),
            &t.p("tickets/y"),
            "rename",
            &t.p("kb/a.md"),
            &t.p("tickets/a.md"),
            "rename",
            &t.p("tickets/t2.txt"),
            &t.p("kb/t2.txt"),
            "rename",
            &t.p("tickets/t3.txt"),
            &t.p("rw/t3.txt"),
            "rename",
            &t.p("tickets"),
            &t.p("rw/tickets"),
        ],
    );
    r.assert_eperm("link", 0); // link of a denied file
    r.assert_eperm("link", 1); // link into a read-only dir
    r.assert_ok("link", 2); // link within a write rule
    r.assert_eperm("rename", 0); // rename of a denied file
    r.assert_eperm("rename", 1); // rename out of a read-only dir
    r.assert_eperm("rename", 2); // rename into a read-only dir
    r.assert_ok("rename", 3); // rename between write rules
    r.assert_eperm("rename", 4); // a directory with rules beneath it stays put
    for (path, op) in [
        (t.p("shadow"), "link-source"),
        (t.p("kb/l2"), "link-target"),
        (t.p("tickets/vip/x"), "rename-source"),
        (t.p("kb/a.md"), "rename-source"),
        (t.p("kb/t2.txt"), "rename-target"),
        (t.p("tickets/"), "rename-source"),
    ] {
        let ev = tail.expect(|e| e["kind"] == "file" && e["file"]["path"] == path.as_str());
        assert_eq!(ev["file"]["op"], op, "{ev:#}");
        assert_eq!(ev["tgid"].as_u64(), Some(r.pid()), "{ev:#}");
        assert_eq!(ev["identity"], "files", "{ev:#}");
    }
    let out = probe_outside(&[
        "link",
        &t.p("shadow"),
        &t.p("tickets/o1"),
        "rename",
        &t.p("kb/a.md"),
        &t.p("tickets/a.md"),
    ]);
    out.assert_ok("link", 0);
    out.assert_ok("rename", 0);
}

/// An fd opened before the process was tagged (or passed to it) does not
/// let it re-open the file: the re-open through /proc/self/fd is a new
/// open of the real path. O_PATH opens are not opens of the file at all,
/// and their re-opens are judged the same way.
#[test]
fn proc_self_fd_and_o_path_reopens_are_judged_by_the_real_path() {
    let Some((t, d)) = lsm_lab() else { return };
    let tail = d.tail(Some("files"));
    let shadow = t.p("shadow");
    let cg = d.dirs.parent_cgroup().join("files");
    // Untagged at first (probe_outside), then joins the identity.
    let r = probe_outside(&[
        "hold",
        &shadow,
        "join-cgroup",
        path_str(&cg),
        "pid",
        "reopen-fd",
        "held",
        "read-fd",
        "held",
        "o-path-reopen",
        &shadow,
    ]);
    r.assert_ok("hold", 0);
    r.assert_ok("join-cgroup", 0);
    r.assert_eperm("reopen-fd", 0);
    r.assert_ok("read-fd", 0); // an fd it holds keeps working
    r.assert_ok("o-path", 0); // O_PATH opens nothing
    r.assert_eperm("o-path-reopen", 0);
    expect_lsm_denial(&tail, "files", r.pid(), &shadow, "read");
    probe_outside(&["o-path-reopen", &shadow]).assert_ok("o-path-reopen", 0);
}

#[test]
fn openat2_is_judged() {
    let Some((t, d)) = lsm_lab() else { return };
    let tail = d.tail(Some("files"));
    let shadow = t.p("shadow");
    let r = d.probe_as(
        "files",
        &["pid", "openat2", &t.p("kb/a.md"), "openat2", &shadow],
    );
    r.assert_ok("openat2", 0);
    r.assert_eperm("openat2", 1);
    expect_lsm_denial(&tail, "files", r.pid(), &shadow, "read");
    probe_outside(&["openat2", &shadow]).assert_ok("openat2", 0);
}

/// io_uring opens bypass seccomp and the syscall tracepoints, not LSM.
#[test]
fn io_uring_open_is_judged() {
    let Some((t, d)) = lsm_lab() else { return };
    let tail = d.tail(Some("files"));
    let shadow = t.p("shadow");
    // io_uring works here.
    probe_outside(&["uring-open", &shadow]).assert_ok("uring-open", 0);
    let r = d.probe_as(
        "files",
        &["pid", "uring-open", &t.p("kb/a.md"), "uring-open", &shadow],
    );
    r.assert_ok("uring-open", 0);
    r.assert_eperm("uring-open", 1);
    // The open may run in an io-wq worker thread (comm iou-wrk-N) of the
    // same process.
    let ev = tail.expect(|e| e["kind"] == "file" && e["file"]["path"] == shadow.as_str());
    assert_eq!(ev["identity"], "files", "{ev:#}");
    assert_eq!(ev["tgid"].as_u64(), Some(r.pid()), "{ev:#}");
}

#[test]
fn relative_path_after_chdir() {
    let Some((t, d)) = lsm_lab() else { return };
    let tail = d.tail(Some("files"));
    let r = d.probe_as(
        "files",
        &[
            "pid",
            "chdir",
            &t.p("kb"),
            "open",
            "a.md",
            "r",
            "chdir",
            &t.p(""),
            "open",
            "secret.txt",
            "r",
        ],
    );
    r.assert_ok("open", 0);
    r.assert_eperm("open", 1);
    expect_lsm_denial(&tail, "files", r.pid(), &t.p("secret.txt"), "read");
}

/// mkdirat/openat chain: a directory tree whose full path is longer than
/// PATH_MAX (no single call sees the whole path).
fn deep_tree(base: &str, name: &str, depth: usize) {
    let c = |s: &str| CString::new(Path::new(s).as_os_str().as_bytes()).unwrap();
    // SAFETY: plain syscalls on fds we own; names are valid C strings.
    unsafe {
        let mut dir = libc::open(c(base).as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY);
        assert!(dir >= 0);
        for _ in 0..depth {
            assert_eq!(libc::mkdirat(dir, c(name).as_ptr(), 0o755), 0);
            let next = libc::openat(dir, c(name).as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY);
            assert!(next >= 0);
            libc::close(dir);
            dir = next;
        }
        let f = libc::openat(dir, c("f").as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644);
        assert!(f >= 0);
        libc::close(f);
        libc::close(dir);
    }
}

#[test]
fn over_long_path_fails_closed() {
    let Some((t, d)) = lsm_lab() else { return };
    let tail = d.tail(Some("files"));
    let name = "d".repeat(200);
    let depth = 22; // 22 × 201 bytes > PATH_MAX
    deep_tree(&t.p("rw"), &name, depth);
    let n = depth.to_string();
    let steps = [
        "chdir",
        &t.p("rw"),
        "chdir-deep",
        &name,
        &n,
        "open",
        "f",
        "r",
    ];
    let r = d.probe_as("files", &with_pid(&steps));
    r.assert_ok("chdir-deep", 0);
    r.assert_eperm("open", 0);
    let ev = tail.expect(|e| e["kind"] == "file" && e["reason"] == "fail-closed");
    assert_eq!(ev["tgid"].as_u64(), Some(r.pid()), "{ev:#}");
    assert!(
        ev["file"]["note"].as_str().unwrap_or("").contains("longer"),
        "{ev:#}"
    );
    probe_outside(&steps).assert_ok("open", 0);
}

/// chmod, fchmod and chown need write access, like truncate: an agent
/// cannot open up (or give away) what it may only read.
#[test]
fn mode_and_owner_changes_need_write_access() {
    let Some((t, d)) = lsm_lab() else { return };
    let tail = d.tail(Some("files"));
    let r = d.probe_as(
        "files",
        &[
            "pid",
            "chmod",
            &t.p("kb/a.md"),
            "666",
            "fchmod",
            &t.p("kb/sub/b.md"),
            "666",
            "chown",
            &t.p("kb"),
            "0",
            "0",
            "chmod",
            &t.p("tickets/t.txt"),
            "600",
            "chown",
            &t.p("rw"),
            "0",
            "0",
            "sleep",
            "0.3",
        ],
    );
    r.assert_eperm("chmod", 0);
    r.assert_eperm("fchmod", 0);
    r.assert_eperm("chown", 0);
    r.assert_ok("chmod", 1);
    r.assert_ok("chown", 1);
    for (path, op) in [
        (t.p("kb/a.md"), "chmod"),
        (t.p("kb/sub/b.md"), "chmod"),
        (t.p("kb/"), "chown"),
    ] {
        let ev = tail.expect(|e| e["kind"] == "file" && e["file"]["path"] == path.as_str());
        assert_eq!(ev["file"]["op"], op, "{ev:#}");
        assert_eq!(ev["tgid"].as_u64(), Some(r.pid()), "{ev:#}");
        assert_eq!(ev["identity"], "files", "{ev:#}");
        assert_eq!(ev["comm"], "corral-probe", "{ev:#}");
        assert_eq!(ev["verdict"], "deny", "{ev:#}");
    }
    let out = probe_outside(&[
        "chmod",
        &t.p("kb/a.md"),
        "644",
        "chown",
        &t.p("kb"),
        "0",
        "0",
    ]);
    out.assert_ok("chmod", 0);
    out.assert_ok("chown", 0);
}
