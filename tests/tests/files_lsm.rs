//! `[files]` rules and self-protection enforced by the BPF LSM programs.
//!
//! These need a kernel that runs BPF LSM programs; our dev and CI machines
//! do not (PVM: no trampolines), so there every test says "skipping: …"
//! and `cargo xtask vm-test` runs them in a QEMU guest booting Debian's
//! kernel (where `CORRAL_VM=1` turns a missing BPF LSM into a failure).
//!
//! Every denial test shows the errno inside the identity, success outside
//! it (untagged), and the event with identity, tgid, comm and path.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use corral_tests::*;
use serde_json::Value;

/// A scratch tree under a temp dir, by real path (rules name real paths):
/// kb/{a.md, sub/b.md}, kbx/doc, kb.md, secret.txt, shadow, hostname,
/// hostname.bak, tickets/{t.txt, t2.txt, t3.txt, vip/x}, rw/, bin/probe,
/// nox/probe.
struct Tree {
    _t: tempfile::TempDir,
    root: PathBuf,
}

impl Tree {
    fn new() -> Tree {
        let t = tempfile::tempdir().expect("tempdir");
        let root = std::fs::canonicalize(t.path()).expect("real path");
        for d in ["kb/sub", "kbx", "tickets/vip", "rw", "bin", "nox"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        for f in [
            "kb/a.md",
            "kb/sub/b.md",
            "kbx/doc",
            "kb.md",
            "secret.txt",
            "shadow",
            "hostname",
            "hostname.bak",
            "tickets/t.txt",
            "tickets/t2.txt",
            "tickets/t3.txt",
            "tickets/vip/x",
        ] {
            std::fs::write(root.join(f), "data\n").expect("write");
        }
        for d in ["bin", "nox"] {
            std::fs::copy(probe_bin(), root.join(d).join("corral-probe")).expect("copy probe");
        }
        Tree { _t: t, root }
    }

    fn p(&self, rel: &str) -> String {
        self.root.join(rel).display().to_string()
    }
}

fn list(items: &[String]) -> String {
    items
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn probe_real() -> String {
    std::fs::canonicalize(probe_bin())
        .expect("probe")
        .display()
        .to_string()
}

/// The identity `files`: the system paths the probe needs to start (libc,
/// the loader, /proc/self/maps), plus the tree's rules. An exec list, so
/// reading does not imply executing.
fn files_policy(t: &Tree) -> String {
    let sys = ["/usr/", "/lib/", "/lib64/", "/etc/", "/proc/"].map(String::from);
    let mut read: Vec<String> = sys.to_vec();
    read.extend([t.p("kb/"), t.p("hostname"), probe_real()]);
    let write = [String::from("/dev/null"), t.p("tickets/"), t.p("rw/")];
    let exec = [
        probe_real(),
        t.p("bin/"),
        "/lib/".into(),
        "/lib64/".into(),
        "/usr/lib/".into(),
        "/usr/lib64/".into(),
    ];
    let deny = [t.p("tickets/vip/"), t.p("shadow")];
    format!(
        "[identity]\nname = \"files\"\nmode = \"enforce\"\n[files]\nread = [{}]\nwrite = [{}]\n\
         exec = [{}]\ndeny = [{}]\n",
        list(&read),
        list(&write),
        list(&exec),
        list(&deny)
    )
}

/// An identity without `[files]`: self-protection still applies.
const NETONLY: &str = "[identity]\nname = \"netonly\"\nmode = \"enforce\"\n[network]\nallow = []\n";

fn mechanism(d: &Daemon, name: &str) -> Value {
    d.status()["daemon"]["mechanisms"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == name).cloned())
        .unwrap_or(Value::Null)
}

fn in_vm() -> bool {
    std::env::var_os("CORRAL_VM").is_some()
}

/// Starts a daemon; `None` (after saying why) where BPF LSM is unavailable.
fn daemon(policies: &[(&str, &str)]) -> Option<Daemon> {
    if !is_root() {
        return None;
    }
    let d = Daemon::start(policies);
    let m = mechanism(&d, "bpf lsm: files");
    if m["state"] != "enforcing" {
        assert!(
            !in_vm(),
            "BPF LSM must be enforcing in the VM: {m}\n{}",
            d.log_text()
        );
        eprintln!(
            "skipping: BPF LSM unavailable (proven in cargo xtask vm-test): {}",
            m["detail"]
        );
        return None;
    }
    Some(d)
}

fn with_tree() -> Option<(Tree, Daemon)> {
    let t = Tree::new();
    let p = files_policy(&t);
    let d = daemon(&[("files", &p), ("netonly", NETONLY)])?;
    Some((t, d))
}

/// Waits for the `file` event about `path` and checks who it names.
fn file_event(tail: &Tail, pid: u64, path: &str, access: &str) -> Value {
    let ev = tail.expect(|e| e["kind"] == "file" && e["file"]["path"] == path);
    assert_eq!(ev["identity"], "files", "{ev:#}");
    assert_eq!(ev["tgid"].as_u64(), Some(pid), "{ev:#}");
    assert_eq!(ev["comm"], "corral-probe", "{ev:#}");
    assert_eq!(ev["verdict"], "deny", "{ev:#}");
    assert_eq!(ev["file"]["layer"], "lsm", "{ev:#}");
    assert_eq!(ev["file"]["errno"], "EPERM", "{ev:#}");
    assert!(
        ev["file"]["access"].as_str().unwrap_or("").contains(access),
        "access {access}: {ev:#}"
    );
    ev
}

fn errno(r: &ProbeRun, op: &str, n: usize) -> i64 {
    r.step(op, n)["errno"].as_i64().unwrap_or(-1)
}

fn ok(r: &ProbeRun, op: &str, n: usize) -> bool {
    r.step(op, n)["ok"] == true
}

// --- mechanisms --------------------------------------------------------------------

/// Never pretend: status says whether the LSM half is in force and, when
/// not, why — and the rest of Corral still enforces.
#[test]
fn mechanisms_say_what_is_enforced() {
    if !is_root() {
        return;
    }
    let d = Daemon::start(&[("netonly", NETONLY)]);
    let files = mechanism(&d, "bpf lsm: files");
    let protect = mechanism(&d, "bpf lsm: self-protection");
    let net = d.status()["daemon"]["mechanisms"][0].clone();
    assert_eq!(net["state"], "enforcing", "{net}");
    if in_vm() {
        assert_eq!(files["state"], "enforcing", "{files}");
        assert_eq!(protect["state"], "enforcing", "{protect}");
    } else if files["state"] != "enforcing" {
        assert_eq!(files["state"], "unavailable", "{files}");
        assert!(
            files["detail"]
                .as_str()
                .unwrap_or("")
                .contains("NOT ENFORCED"),
            "{files}"
        );
        assert!(d.log_text().contains("NOT ENFORCED"), "{}", d.log_text());
        // `corral doctor` tries for real too.
        let doc = d.cli_json(&["doctor", "--json"]);
        let lsm = doc
            .as_array()
            .and_then(|c| c.iter().find(|c| c["check"] == "BPF LSM").cloned())
            .unwrap_or(Value::Null);
        assert_eq!(lsm["ok"], false, "{lsm}");
    }
}

// --- file rules --------------------------------------------------------------------

#[test]
fn allowed_read_and_denied_reads_with_events() {
    let Some((t, d)) = with_tree() else { return };
    let tail = d.tail(Some("files"));
    let (a, secret, shadow) = (t.p("kb/a.md"), t.p("secret.txt"), t.p("shadow"));
    let r = d.probe_as(
        "files",
        &[
            "pid", "open", &a, "r", "open", &secret, "r", "open", &shadow, "r",
        ],
    );
    assert!(ok(&r, "open", 0), "{r:#?}");
    assert_eq!(errno(&r, "open", 1), EPERM, "{r:#?}");
    assert_eq!(errno(&r, "open", 2), EPERM, "{r:#?}");
    let ev = file_event(&tail, r.pid(), &secret, "read");
    assert_eq!(ev["reason"], "no-rule", "{ev:#}");
    let ev = file_event(&tail, r.pid(), &shadow, "read");
    assert_eq!(ev["reason"], "deny-rule", "{ev:#}");
    assert!(
        ev["rule"].as_str().unwrap_or("").contains("shadow"),
        "the deciding rule is named: {ev:#}"
    );
    let out = probe_outside(&["open", &secret, "r", "open", &shadow, "r"]);
    assert!(ok(&out, "open", 0) && ok(&out, "open", 1), "{out:#?}");
}

#[test]
fn read_allowed_but_write_denied() {
    let Some((t, d)) = with_tree() else { return };
    let tail = d.tail(Some("files"));
    let (a, new, tk) = (t.p("kb/a.md"), t.p("kb/new"), t.p("tickets/t.txt"));
    let r = d.probe_as(
        "files",
        &[
            "pid",
            "open",
            &a,
            "r",
            "open",
            &a,
            "w",
            "append",
            &a,
            "ro-trunc",
            &a,
            "create",
            &new,
            "truncate-path",
            &a,
            "open",
            &tk,
            "rw",
            "create",
            &t.p("tickets/new"),
        ],
    );
    assert!(ok(&r, "open", 0), "{r:#?}");
    assert_eq!(errno(&r, "open", 1), EPERM, "O_WRONLY: {r:#?}");
    assert_eq!(errno(&r, "append", 0), EPERM, "O_APPEND: {r:#?}");
    assert_eq!(errno(&r, "ro-trunc", 0), EPERM, "O_RDONLY|O_TRUNC: {r:#?}");
    assert_eq!(
        errno(&r, "create", 0),
        EPERM,
        "O_CREAT in a read-only dir: {r:#?}"
    );
    assert!(!Path::new(&new).exists(), "nothing was created");
    assert_eq!(errno(&r, "truncate-path", 0), EPERM, "truncate(2): {r:#?}");
    assert_eq!(
        std::fs::read_to_string(&a).unwrap(),
        "data\n",
        "not truncated"
    );
    assert!(ok(&r, "open", 2), "write rule: {r:#?}");
    assert!(ok(&r, "create", 1), "create under a write rule: {r:#?}");
    file_event(&tail, r.pid(), &a, "write");
    let ev = tail.expect(|e| e["kind"] == "file" && e["file"]["path"] == new.as_str());
    assert_eq!(ev["file"]["op"], "create", "{ev:#}");
    assert_eq!(ev["tgid"].as_u64(), Some(r.pid()), "{ev:#}");
    let out = probe_outside(&["open", &a, "w", "create", &new]);
    assert!(ok(&out, "open", 0) && ok(&out, "create", 0), "{out:#?}");
}

#[test]
fn deny_beats_a_shorter_allow() {
    let Some((t, d)) = with_tree() else { return };
    let tail = d.tail(Some("files"));
    let (x, vip) = (t.p("tickets/vip/x"), t.p("tickets/vip"));
    let r = d.probe_as(
        "files",
        &[
            "pid",
            "open",
            &t.p("tickets/t.txt"),
            "r",
            "open",
            &x,
            "r",
            "readdir",
            &vip,
        ],
    );
    assert!(ok(&r, "open", 0), "{r:#?}");
    assert_eq!(errno(&r, "open", 1), EPERM, "{r:#?}");
    assert_eq!(
        errno(&r, "readdir", 0),
        EPERM,
        "the directory itself: {r:#?}"
    );
    let ev = file_event(&tail, r.pid(), &x, "read");
    assert_eq!(ev["reason"], "deny-rule", "{ev:#}");
    assert!(ev["rule"].as_str().unwrap_or("").contains("vip"), "{ev:#}");
    // The directory is looked up as `.../vip/`.
    file_event(&tail, r.pid(), &format!("{vip}/"), "read");
    assert!(ok(&probe_outside(&["open", &x, "r"]), "open", 0));
}

#[test]
fn beneath_rule_has_no_sibling_prefix_leak() {
    let Some((t, d)) = with_tree() else { return };
    let tail = d.tail(Some("files"));
    let (kbx, kbmd) = (t.p("kbx/doc"), t.p("kb.md"));
    let r = d.probe_as(
        "files",
        &[
            "pid",
            "readdir",
            &t.p("kb"),
            "open",
            &t.p("kb/sub/b.md"),
            "r",
            "open",
            &kbx,
            "r",
            "open",
            &kbmd,
            "r",
        ],
    );
    assert!(
        ok(&r, "readdir", 0),
        "kb/ covers the directory kb itself: {r:#?}"
    );
    assert!(ok(&r, "open", 0), "{r:#?}");
    assert_eq!(
        errno(&r, "open", 1),
        EPERM,
        "/kb/ must not cover /kbx: {r:#?}"
    );
    assert_eq!(
        errno(&r, "open", 2),
        EPERM,
        "/kb/ must not cover /kb.md: {r:#?}"
    );
    file_event(&tail, r.pid(), &kbx, "read");
    file_event(&tail, r.pid(), &kbmd, "read");
    let out = probe_outside(&["open", &kbx, "r"]);
    assert!(ok(&out, "open", 0), "{out:#?}");
}

#[test]
fn exact_file_rules() {
    let Some((t, d)) = with_tree() else { return };
    let tail = d.tail(Some("files"));
    let (h, bak) = (t.p("hostname"), t.p("hostname.bak"));
    let r = d.probe_as(
        "files",
        &["pid", "open", &h, "r", "open", &bak, "r", "open", &h, "w"],
    );
    assert!(ok(&r, "open", 0), "{r:#?}");
    assert_eq!(errno(&r, "open", 1), EPERM, "{r:#?}");
    assert_eq!(
        errno(&r, "open", 2),
        EPERM,
        "an exact read rule grants no write: {r:#?}"
    );
    file_event(&tail, r.pid(), &bak, "read");
    assert!(ok(&probe_outside(&["open", &bak, "r"]), "open", 0));
}

#[test]
fn exec_allowed_and_denied() {
    let Some((t, d)) = with_tree() else { return };
    let tail = d.tail(Some("files"));
    let (yes, no) = (t.p("bin/corral-probe"), t.p("nox/corral-probe"));
    let r = d.probe_as("files", &["pid", "exec", &yes, "exec", &no]);
    assert!(ok(&r, "exec", 0), "{r:#?}");
    assert_eq!(errno(&r, "exec", 1), EPERM, "{r:#?}");
    // The exec happens in the forked child: same comm, another tgid.
    let ev = tail.expect(|e| e["kind"] == "file" && e["file"]["path"] == no.as_str());
    assert_eq!(ev["identity"], "files", "{ev:#}");
    assert_eq!(ev["comm"], "corral-probe", "{ev:#}");
    assert_eq!(ev["file"]["access"], "exec", "{ev:#}");
    assert!(ev["tgid"].as_u64().is_some_and(|p| p > 0), "{ev:#}");
    assert!(ok(&probe_outside(&["exec", &no]), "exec", 0));
}

#[test]
fn symlink_to_a_denied_file_is_judged_by_its_target() {
    let Some((t, d)) = with_tree() else { return };
    let tail = d.tail(Some("files"));
    let link = t.p("tickets/to-shadow");
    std::os::unix::fs::symlink(t.p("shadow"), &link).expect("symlink");
    let ok_link = t.p("tickets/to-kb");
    std::os::unix::fs::symlink(t.p("kb/a.md"), &ok_link).expect("symlink");
    let r = d.probe_as("files", &["pid", "open", &link, "r", "open", &ok_link, "r"]);
    assert_eq!(errno(&r, "open", 0), EPERM, "{r:#?}");
    assert!(ok(&r, "open", 1), "{r:#?}");
    file_event(&tail, r.pid(), &t.p("shadow"), "read");
    assert!(ok(&probe_outside(&["open", &link, "r"]), "open", 0));
}

#[test]
fn hard_links_and_renames_cannot_widen_access() {
    let Some((t, d)) = with_tree() else { return };
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
    assert_eq!(errno(&r, "link", 0), EPERM, "link of a denied file: {r:#?}");
    assert_eq!(
        errno(&r, "link", 1),
        EPERM,
        "link into a read-only dir: {r:#?}"
    );
    assert!(ok(&r, "link", 2), "link within a write rule: {r:#?}");
    assert_eq!(
        errno(&r, "rename", 0),
        EPERM,
        "rename of a denied file: {r:#?}"
    );
    assert_eq!(
        errno(&r, "rename", 1),
        EPERM,
        "rename out of a read-only dir: {r:#?}"
    );
    assert_eq!(
        errno(&r, "rename", 2),
        EPERM,
        "rename into a read-only dir: {r:#?}"
    );
    assert!(ok(&r, "rename", 3), "rename between write rules: {r:#?}");
    assert_eq!(
        errno(&r, "rename", 4),
        EPERM,
        "a directory with rules beneath it stays put: {r:#?}"
    );
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
    assert!(ok(&out, "link", 0) && ok(&out, "rename", 0), "{out:#?}");
}

/// An fd opened before the process was tagged (or passed to it) does not
/// let it re-open the file: the re-open through /proc/self/fd is a new
/// open of the real path. O_PATH opens are not opens of the file at all,
/// and their re-opens are judged the same way.
#[test]
fn proc_self_fd_and_o_path_reopens_are_judged_by_the_real_path() {
    let Some((t, d)) = with_tree() else { return };
    let tail = d.tail(Some("files"));
    let shadow = t.p("shadow");
    let cg = d.dirs.parent_cgroup().join("files");
    let cg = cg.display().to_string();
    // Untagged at first (probe_outside), then joins the identity.
    let r = probe_outside(&[
        "hold",
        &shadow,
        "join-cgroup",
        &cg,
        "pid",
        "reopen-fd",
        "held",
        "read-fd",
        "held",
        "o-path-reopen",
        &shadow,
    ]);
    assert!(ok(&r, "hold", 0) && ok(&r, "join-cgroup", 0), "{r:#?}");
    assert_eq!(errno(&r, "reopen-fd", 0), EPERM, "{r:#?}");
    assert!(ok(&r, "read-fd", 0), "an fd it holds keeps working: {r:#?}");
    assert!(ok(&r, "o-path", 0), "O_PATH opens nothing: {r:#?}");
    assert_eq!(errno(&r, "o-path-reopen", 0), EPERM, "{r:#?}");
    file_event(&tail, r.pid(), &shadow, "read");
    let out = probe_outside(&["o-path-reopen", &shadow]);
    assert!(ok(&out, "o-path-reopen", 0), "{out:#?}");
}

#[test]
fn openat2_is_judged() {
    let Some((t, d)) = with_tree() else { return };
    let tail = d.tail(Some("files"));
    let shadow = t.p("shadow");
    let r = d.probe_as(
        "files",
        &["pid", "openat2", &t.p("kb/a.md"), "openat2", &shadow],
    );
    assert!(ok(&r, "openat2", 0), "{r:#?}");
    assert_eq!(errno(&r, "openat2", 1), EPERM, "{r:#?}");
    file_event(&tail, r.pid(), &shadow, "read");
    assert!(ok(&probe_outside(&["openat2", &shadow]), "openat2", 0));
}

/// io_uring opens bypass seccomp and the syscall tracepoints, not LSM.
#[test]
fn io_uring_open_is_judged() {
    let Some((t, d)) = with_tree() else { return };
    let tail = d.tail(Some("files"));
    let shadow = t.p("shadow");
    let out = probe_outside(&["uring-open", &shadow]);
    assert!(ok(&out, "uring-open", 0), "io_uring works here: {out:#?}");
    let r = d.probe_as(
        "files",
        &["pid", "uring-open", &t.p("kb/a.md"), "uring-open", &shadow],
    );
    assert!(ok(&r, "uring-open", 0), "{r:#?}");
    assert_eq!(errno(&r, "uring-open", 1), EPERM, "{r:#?}");
    // The open may run in an io-wq worker thread (comm iou-wrk-N) of the
    // same process.
    let ev = tail.expect(|e| e["kind"] == "file" && e["file"]["path"] == shadow.as_str());
    assert_eq!(ev["identity"], "files", "{ev:#}");
    assert_eq!(ev["tgid"].as_u64(), Some(r.pid()), "{ev:#}");
}

#[test]
fn relative_path_after_chdir() {
    let Some((t, d)) = with_tree() else { return };
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
    assert!(ok(&r, "open", 0), "{r:#?}");
    assert_eq!(errno(&r, "open", 1), EPERM, "{r:#?}");
    file_event(&tail, r.pid(), &t.p("secret.txt"), "read");
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
    let Some((t, d)) = with_tree() else { return };
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
    let mut inside = vec!["pid"];
    inside.extend_from_slice(&steps);
    let r = d.probe_as("files", &inside);
    assert!(ok(&r, "chdir-deep", 0), "{r:#?}");
    assert_eq!(errno(&r, "open", 0), EPERM, "{r:#?}");
    let ev = tail.expect(|e| e["kind"] == "file" && e["reason"] == "fail-closed");
    assert_eq!(ev["tgid"].as_u64(), Some(r.pid()), "{ev:#}");
    assert!(
        ev["file"]["note"].as_str().unwrap_or("").contains("longer"),
        "{ev:#}"
    );
    let out = probe_outside(&steps);
    assert!(ok(&out, "open", 0), "{out:#?}");
}

#[test]
fn a_process_in_a_sub_cgroup_is_still_the_identity() {
    let Some((t, d)) = with_tree() else { return };
    let tail = d.tail(Some("files"));
    let sub = d.dirs.parent_cgroup().join("files/worker");
    std::fs::create_dir_all(&sub).expect("sub-cgroup");
    let sub_s = sub.display().to_string();
    let shadow = t.p("shadow");
    let r = probe_outside(&[
        "join-cgroup",
        &sub_s,
        "pid",
        "open",
        &t.p("kb/a.md"),
        "r",
        "open",
        &shadow,
        "r",
    ]);
    assert!(ok(&r, "join-cgroup", 0), "{r:#?}");
    assert!(ok(&r, "open", 0), "{r:#?}");
    assert_eq!(errno(&r, "open", 1), EPERM, "{r:#?}");
    let ev = file_event(&tail, r.pid(), &shadow, "read");
    // The event names the task's own cgroup (a cgroup's id is its inode).
    let worker_id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&sub).expect("stat"));
    assert_eq!(ev["cgroup_id"].as_u64(), Some(worker_id), "{ev:#}");
}

#[test]
fn untagged_processes_are_unaffected() {
    let Some((t, d)) = with_tree() else { return };
    let tail = d.tail(None);
    let out = probe_outside(&[
        "open",
        &t.p("shadow"),
        "r",
        "open",
        &t.p("secret.txt"),
        "w",
        "exec",
        &t.p("nox/corral-probe"),
        "rename",
        &t.p("tickets/vip/x"),
        &t.p("kb/x"),
        "bpf-map",
    ]);
    for (op, n) in [
        ("open", 0),
        ("open", 1),
        ("exec", 0),
        ("rename", 0),
        ("bpf-map", 0),
    ] {
        assert!(ok(&out, op, n), "{op}#{n}: {out:#?}");
    }
    let evs = tail.drain_for(Duration::from_millis(500));
    assert!(
        evs.iter().all(|e| e["kind"] == "lost"),
        "no events for untagged processes: {evs:#?}"
    );
}

/// A policy edit reaches the kernel at once (new ruleset beside the old,
/// one flip, old entries removed), for processes already running too.
#[test]
fn file_rule_changes_apply_at_once() {
    let Some((t, d)) = with_tree() else { return };
    let secret = t.p("secret.txt");
    let r = d.probe_as("files", &["open", &secret, "r"]);
    assert_eq!(errno(&r, "open", 0), EPERM, "{r:#?}");
    let before = d.status()["reload"]["generation"].as_u64();
    let p = files_policy(&t).replace("read = [", &format!("read = [\"{secret}\", "));
    d.write_policy("files", &p);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while d.status()["reload"]["generation"].as_u64() == before {
        assert!(std::time::Instant::now() < deadline, "no reload");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = d.probe_as(
        "files",
        &["open", &secret, "r", "open", &t.p("shadow"), "r"],
    );
    assert!(ok(&r, "open", 0), "the new rule is in force: {r:#?}");
    assert_eq!(errno(&r, "open", 1), EPERM, "{r:#?}");
    // One ruleset's worth of entries: the old one is gone.
    let (_, id) = d.api("GET", "/v1/identities/files", None);
    let entries = id["kernel_entries"]["files"].as_u64().unwrap_or(0);
    let p = t.root.display().to_string();
    let depth = p.matches('/').count() as u64;
    assert!(entries > 0 && entries < 40 + depth, "{id:#}");
}

/// The LSM links are pinned: with the daemon stopped the rules stay in
/// force, and a new daemon hands the links over without a gap (and without
/// piling up a second set).
#[test]
fn lsm_enforcement_survives_a_daemon_restart() {
    let Some((t, d)) = with_tree() else { return };
    let shadow = t.p("shadow");
    let cg = d.dirs.parent_cgroup().join("files").display().to_string();
    let links = d.dirs.pin_dir.join("links/lsm");
    let pins = |p: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let before = pins(&links);
    assert!(before.iter().any(|p| p == "corral_file_open"), "{before:?}");
    let dirs = d.stop_keep_pins();
    // No daemon: a process joining the identity is still judged.
    let r = probe_outside(&["join-cgroup", &cg, "open", &shadow, "r"]);
    assert_eq!(
        errno(&r, "open", 0),
        EPERM,
        "no daemon, rules in force: {r:#?}"
    );
    let d = Daemon::start_with(dirs).expect("restart");
    assert_eq!(pins(&links), before, "links handed over, not duplicated");
    let r = d.probe_as(
        "files",
        &["open", &shadow, "r", "open", &t.p("kb/a.md"), "r"],
    );
    assert_eq!(errno(&r, "open", 0), EPERM, "{r:#?}");
    assert!(ok(&r, "open", 1), "{r:#?}");
}

// --- self-protection ---------------------------------------------------------------

#[test]
fn cgroup_escape_and_bpffs_are_refused() {
    let Some((_t, d)) = with_tree() else { return };
    let tail = d.tail(None);
    let root = cgroup2_root().display().to_string();
    let own = d.dirs.parent_cgroup().join("netonly").display().to_string();
    let pin = d.dirs.pin_dir.join("maps/IDENTITIES").display().to_string();
    let link_pin = d
        .dirs
        .pin_dir
        .join("links/lsm/corral_file_open")
        .display()
        .to_string();
    let sub = d
        .dirs
        .parent_cgroup()
        .join("netonly/sub")
        .display()
        .to_string();
    for identity in ["netonly", "files"] {
        let r = d.probe_as(
            identity,
            &[
                "pid",
                "join-cgroup",
                &root,
                "join-cgroup",
                &own,
                "open",
                &pin,
                "r",
                "clone-into-cgroup",
                &root,
                "unlink",
                &link_pin,
                "rename",
                &pin,
                &format!("{pin}2"),
                "mkdir",
                &sub,
            ],
        );
        assert_eq!(errno(&r, "join-cgroup", 0), EPERM, "{identity}: {r:#?}");
        assert_eq!(errno(&r, "join-cgroup", 1), EPERM, "{identity}: {r:#?}");
        assert_eq!(errno(&r, "open", 0), EPERM, "{identity}: {r:#?}");
        assert_eq!(
            errno(&r, "clone-into-cgroup", 0),
            EPERM,
            "{identity}: {r:#?}"
        );
        assert_eq!(errno(&r, "unlink", 0), EPERM, "unpinning a link: {r:#?}");
        assert_eq!(errno(&r, "rename", 0), EPERM, "{identity}: {r:#?}");
        assert_eq!(errno(&r, "mkdir", 0), EPERM, "mkdir in cgroupfs: {r:#?}");
        assert!(Path::new(&link_pin).exists() && Path::new(&pin).exists());
        // Events arrive in order; `expect` skips what comes before a match.
        let procs = format!("{root}/cgroup.procs");
        let ev = tail.expect(|e| {
            e["kind"] == "file" && e["identity"] == identity && e["file"]["path"] == procs.as_str()
        });
        assert_eq!(ev["reason"], "self-protection", "{ev:#}");
        assert_eq!(ev["tgid"].as_u64(), Some(r.pid()), "{ev:#}");
        assert_eq!(ev["comm"], "corral-probe", "{ev:#}");
        let ev = tail.expect(|e| {
            e["kind"] == "file" && e["identity"] == identity && e["file"]["path"] == pin.as_str()
        });
        assert_eq!(ev["reason"], "self-protection", "{ev:#}");
        let ev = tail.expect(|e| {
            e["kind"] == "protect"
                && e["identity"] == identity
                && e["protect"]["op"] == "clone-into-cgroup"
        });
        assert_eq!(ev["tgid"].as_u64(), Some(r.pid()), "{ev:#}");
        let ev = tail.expect(|e| {
            e["kind"] == "file"
                && e["identity"] == identity
                && e["file"]["path"] == link_pin.as_str()
        });
        assert_eq!(ev["file"]["op"], "unlink", "{ev:#}");
        assert_eq!(ev["reason"], "self-protection", "{ev:#}");
    }
    // Outside: an untagged process may move itself (to where it already is).
    let here = std::fs::read_to_string("/proc/self/cgroup").expect("cgroup");
    let rel = here
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("v2");
    let mine = format!("{root}{rel}");
    let out = probe_outside(&["join-cgroup", &mine]);
    assert!(ok(&out, "join-cgroup", 0), "{out:#?}");
}

#[test]
fn bpf_is_refused() {
    let Some((_t, d)) = with_tree() else { return };
    let tail = d.tail(Some("netonly"));
    let r = d.probe_as("netonly", &["pid", "bpf-map"]);
    assert_eq!(errno(&r, "bpf-map", 0), EPERM, "{r:#?}");
    let ev = tail.expect(|e| e["kind"] == "protect");
    assert_eq!(ev["protect"]["op"], "bpf", "{ev:#}");
    assert_eq!(ev["tgid"].as_u64(), Some(r.pid()), "{ev:#}");
    assert_eq!(ev["comm"], "corral-probe", "{ev:#}");
    assert_eq!(ev["reason"], "self-protection", "{ev:#}");
    assert!(ok(&probe_outside(&["bpf-map"]), "bpf-map", 0));
}

#[test]
fn signals_and_ptrace_across_identities_are_refused() {
    let Some((_t, d)) = with_tree() else { return };
    let tail = d.tail(Some("netonly"));
    let daemon_pid = d.status()["daemon"]["pid"]
        .as_u64()
        .expect("daemon pid")
        .to_string();
    let mut sleeper = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("sleep");
    let other = sleeper.id().to_string();
    let r = d.probe_as(
        "netonly",
        &[
            "pid",
            "signal",
            &daemon_pid,
            "18",
            "signal",
            &other,
            "18",
            "ptrace",
            &daemon_pid,
            "ptrace",
            &other,
        ],
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(errno(&r, "signal", 0), EPERM, "the daemon: {r:#?}");
    assert_eq!(errno(&r, "signal", 1), EPERM, "an untagged process: {r:#?}");
    assert_eq!(errno(&r, "ptrace", 0), EPERM, "{r:#?}");
    assert_eq!(errno(&r, "ptrace", 1), EPERM, "{r:#?}");
    let ev = tail.expect(|e| e["kind"] == "protect" && e["protect"]["op"] == "signal");
    assert_eq!(ev["protect"]["target_is_daemon"], true, "{ev:#}");
    assert_eq!(ev["protect"]["arg"], 18, "{ev:#}");
    assert_eq!(ev["tgid"].as_u64(), Some(r.pid()), "{ev:#}");
    assert_eq!(ev["comm"], "corral-probe", "{ev:#}");
    let ev = tail.expect(|e| e["kind"] == "protect" && e["protect"]["op"] == "ptrace");
    assert_eq!(ev["protect"]["target_is_daemon"], true, "{ev:#}");
    // Within its own identity a process may signal (here: itself).
    let own = d.probe_as("netonly", &["signal", "self", "18"]);
    assert!(ok(&own, "signal", 0), "{own:#?}");
    // Outside: the daemon may be signalled (SIGCONT is harmless).
    assert!(ok(
        &probe_outside(&["signal", &daemon_pid, "18"]),
        "signal",
        0
    ));
}

#[test]
fn mounts_are_refused() {
    let Some((t, d)) = with_tree() else { return };
    let tail = d.tail(Some("files"));
    let dir = t.p("rw");
    // A tmpfs the harness mounts, for the umount attempt.
    let m = t.p("rw/m");
    std::fs::create_dir_all(&m).expect("mkdir");
    let c = |s: &str| CString::new(s).unwrap();
    // SAFETY: valid strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            c("tmpfs").as_ptr(),
            c(&m).as_ptr(),
            c("tmpfs").as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "harness mount");
    let r = d.probe_as("files", &["pid", "mount-tmpfs", &dir, "umount", &m]);
    // SAFETY: as above.
    let still = unsafe { libc::umount(c(&m).as_ptr()) } == 0;
    assert_eq!(errno(&r, "mount-tmpfs", 0), EPERM, "{r:#?}");
    assert_eq!(errno(&r, "umount", 0), EPERM, "{r:#?}");
    assert!(still, "the tmpfs was still mounted");
    let ev = tail.expect(|e| e["kind"] == "file" && e["file"]["op"] == "mount");
    assert_eq!(ev["file"]["path"], dir.as_str(), "{ev:#}");
    assert_eq!(ev["tgid"].as_u64(), Some(r.pid()), "{ev:#}");
    assert!(ok(&probe_outside(&["mount-tmpfs", &dir]), "mount-tmpfs", 0));
}

// --- measurement -------------------------------------------------------------------

/// open+close of one allowed file: untagged, tagged with 10 / 1,000 /
/// 100,000 rules, and the same allowlist under Landlock (no Corral), as
/// ratios over the untagged baseline. Run by `cargo xtask vm-test --bench`.
#[test]
#[ignore = "benchmark: cargo xtask vm-test --bench"]
fn bench_file_open() {
    if std::env::var_os("CORRAL_VM_BENCH").is_none() || !is_root() {
        eprintln!("skipping: set CORRAL_VM_BENCH=1 (cargo xtask vm-test --bench)");
        return;
    }
    let t = Tree::new();
    let target = t.p("kb/a.md");
    let base = files_policy(&t);
    let with_rules = |name: &str, n: usize| -> String {
        let extra: Vec<String> = (0..n.saturating_sub(10))
            .map(|i| format!("/srv/bench/d{}/f{i}", i % 1000))
            .collect();
        base.replace("name = \"files\"", &format!("name = \"{name}\""))
            .replace("read = [", &format!("read = [{}, ", list(&extra)))
            .replace("[, ", "[")
    };
    let (p10, p1k, p100k) = (
        with_rules("r10", 10),
        with_rules("r1k", 1_000),
        with_rules("r100k", 100_000),
    );
    let n = std::env::var("CORRAL_BENCH_OPENS").unwrap_or_else(|_| "20000".into());
    let ns = |r: &ProbeRun| -> f64 {
        let s = r.step("open-loop", 0);
        assert_eq!(s["errors"], 0, "{r:#?}");
        s["ns_per_op"].as_f64().expect("ns")
    };
    let rounds = 3;
    let mut rows: Vec<(&str, Vec<f64>)> = vec![
        ("no Corral (baseline)", vec![]),
        ("Landlock, same allowlist", vec![]),
        ("Corral, untagged process", vec![]),
        ("Corral, tagged, 10 rules", vec![]),
        ("Corral, tagged, 1,000 rules", vec![]),
        ("Corral, tagged, 100,000 rules", vec![]),
    ];
    let dirs: Vec<String> = ["/usr/", "/lib/", "/lib64/", "/etc/", "/proc/"]
        .iter()
        .map(|s| s.to_string())
        .chain([t.p("kb"), t.p("hostname"), probe_real()])
        .filter(|p| Path::new(p).exists())
        .collect();
    // Without Corral: the plain kernel, and Landlock enforcing the same
    // allowlist (what the fallback costs where BPF LSM is missing).
    for _ in 0..rounds {
        rows[0]
            .1
            .push(ns(&probe_outside(&["open-loop", &target, &n])));
        let mut ll: Vec<&str> = vec!["landlock-read"];
        ll.extend(dirs.iter().map(String::as_str));
        ll.extend(["--", "open-loop", &target, &n]);
        let r = probe_outside(&ll);
        assert!(ok(&r, "landlock-read", 0), "{r:#?}");
        rows[1].1.push(ns(&r));
    }
    let Some(d) = daemon(&[("r10", &p10), ("r1k", &p1k), ("r100k", &p100k)]) else {
        return;
    };
    for _ in 0..rounds {
        rows[2]
            .1
            .push(ns(&probe_outside(&["open-loop", &target, &n])));
        for (row, id) in [(3, "r10"), (4, "r1k"), (5, "r100k")] {
            rows[row]
                .1
                .push(ns(&d.probe_as(id, &["open-loop", &target, &n])));
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let base_ns = median(&rows[0].1);
    println!(
        "\nopen+close of one allowed file, {n} per run, median of {rounds} (TCG guest: compare ratios only)"
    );
    for (name, v) in &rows {
        let m = median(v);
        println!(
            "  {name:<28} {m:>9.0} ns  x{:.2}  (+{:.0} ns)",
            m / base_ns,
            m - base_ns
        );
    }
    let (_, ids) = d.api("GET", "/v1/identities", None);
    for i in ids.as_array().into_iter().flatten() {
        println!("  {}: kernel entries {}", i["name"], i["kernel_entries"]);
    }
}
