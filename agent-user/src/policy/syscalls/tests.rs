use std::path::Path;

use super::*;
use crate::policy::parse_str;

fn no_dns(_: &str) -> std::io::Result<Vec<std::net::IpAddr>> {
    Err(std::io::Error::other("no DNS in unit tests"))
}

fn load(body: &str) -> Result<crate::policy::IdentityPolicy, String> {
    let text = format!("[identity]\nname = \"a\"\n{body}");
    parse_str(Path::new("a.toml"), &text, &no_dns).map_err(|e| e.to_string())
}

#[test]
fn table_is_sorted_unique_and_fits_the_bitmap() {
    for w in SYSCALLS.windows(2) {
        assert!(w[0].nr < w[1].nr, "{} {}", w[0].name, w[1].name);
    }
    let mut names: Vec<&str> = SYSCALLS.iter().map(|s| s.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), SYSCALLS.len());
    let max = SYSCALLS.last().expect("rows").nr;
    assert!(max < agent_common::syscall::PSEUDO_BASE, "{max}");
    assert_eq!(nr_of("read"), Some(0));
    assert_eq!(nr_of("io_uring_setup"), Some(425));
    assert_eq!(nr_of("file_setattr"), Some(469));
    assert_eq!(name_of(41), Some("socket"));
    assert_eq!(
        name_of(agent_common::syscall::PSEUDO_SOCKET_RAW),
        Some("socket:raw")
    );
}

#[test]
fn io_uring_is_in_no_group_and_default_is_a_real_baseline() {
    for n in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        let sc = SYSCALLS.iter().find(|s| s.name == n).expect("row");
        assert_eq!(sc.groups, 0, "{n}");
    }
    let d = group_set(table::DEFAULT);
    for n in [
        "read",
        "openat",
        "mmap",
        "futex",
        "clone3",
        "execve",
        "exit_group",
        "rt_sigreturn",
        "epoll_wait",
        "getrandom",
        "rseq",
        "prlimit64",
    ] {
        assert!(d.contains(nr_of(n).expect(n)), "{n}");
    }
    for n in [
        "socket", "mkdir", "ptrace", "mount", "bpf", "setuid", "unshare",
    ] {
        assert!(!d.contains(nr_of(n).expect(n)), "{n}");
    }
}

#[test]
fn allow_minus_deny_plus_always() {
    let p = load("[syscalls]\nallow = [\"@default\", \"mkdir\"]\ndeny = [\"kill\", \"@debug\"]\n")
        .expect("valid");
    let s = p.syscalls.expect("section");
    assert!(s.allowed.contains(nr_of("mkdir").expect("mkdir")));
    assert!(!s.allowed.contains(nr_of("kill").expect("kill")));
    assert!(s.denied.contains(nr_of("ptrace").expect("ptrace")));
    assert!(s.allowed.contains(nr_of("exit_group").expect("x")));
    assert_eq!(s.assigned, Assigned::Audit);
    let (a, e) = s
        .deciding_entry(nr_of("kill").expect("kill"))
        .expect("entry");
    assert_eq!(a, Action::Deny);
    assert_eq!(e.describe(a), "deny kill (a.toml:5:10)");
    let (a, e) = s
        .deciding_entry(nr_of("mkdir").expect("mkdir"))
        .expect("entry");
    assert_eq!((a, e.text.as_str()), (Action::Allow, "mkdir"));
    assert!(s.deciding_entry(nr_of("mount").expect("mount")).is_none());
}

#[test]
fn no_section_means_no_confinement() {
    let p = load("").expect("valid");
    assert!(p.syscalls.is_none());
}

#[test]
fn unknown_names_are_errors_at_their_position() {
    let e = load("[syscalls]\nallow = [\"read\", \"mkdri\", \"@defualt\"]\nassigned = \"maim\"\n")
        .expect_err("invalid");
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 3, "{e}");
    assert!(
        lines[0]
            .starts_with("a.toml:4:19: unknown syscall `mkdri` (x86_64); did you mean `mkdir`?"),
        "{e}"
    );
    assert!(
        lines[1].starts_with("a.toml:4:28: unknown syscall group `@defualt`"),
        "{e}"
    );
    assert!(
        lines[2].starts_with("a.toml:5:13: bad `assigned` value `maim`"),
        "{e}"
    );
    let e = load("[syscalls]\ndeny = [\"exit_group\"]\n").expect_err("invalid");
    assert!(e.contains("cannot be denied"), "{e}");
    let e = load("[syscalls]\nalow = []\n").expect_err("invalid");
    assert!(e.contains("unknown field `alow`"), "{e}");
}

#[test]
fn map_value_and_digest_follow_the_policy() {
    let a = load("[syscalls]\nallow = [\"@default\"]\nassigned = \"kill\"\n").expect("valid");
    let b = load("[syscalls]\nallow = [\"@default\", \"mkdir\"]\nassigned = \"kill\"\n")
        .expect("valid");
    let c = load("[syscalls]\nallow = [\"@default\"]\n").expect("valid");
    let n = load("").expect("valid");
    assert_ne!(a.digest, b.digest);
    assert_ne!(a.digest, c.digest);
    assert_ne!(a.digest, n.digest);
    let v = a
        .syscalls
        .as_ref()
        .expect("section")
        .map_value(7, Mode::Enforce, "a");
    assert_eq!(v.generation, 7);
    assert_eq!(v.flags, FLAG_CONFINED | FLAG_ASSIGNED_KILL);
    assert!(v.allows(0, &[0; 3]));
    assert!(!v.allows(nr_of("mkdir").expect("mkdir"), &[0; 3]));
    assert_eq!(&v.name[..2], b"a\0");
}

#[test]
fn hot_allowed_is_hot_and_allowed() {
    let p = load("[syscalls]\nallow = [\"@default\", \"@network-io\"]\ndeny = [\"sendto\"]\n")
        .expect("valid");
    let s = p.syscalls.expect("section");
    let hot = s.hot_allowed();
    assert!(hot.contains(0));
    assert!(hot.contains(nr_of("exit_group").expect("x")));
    assert!(!hot.contains(nr_of("sendto").expect("sendto")));
    assert!(!hot.contains(nr_of("socket").expect("socket")));
    assert!(!hot.contains(nr_of("execve").expect("execve")));
    assert!(hot.contains(nr_of("recvfrom").expect("recvfrom")));
}
