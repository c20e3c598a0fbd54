//! The file rule compiler against the kernel's lookup, replayed.

use super::*;

const R: u32 = ACCESS_READ;
const W: u32 = ACCESS_READ | ACCESS_WRITE;
const X: u32 = ACCESS_READ | ACCESS_EXEC;
const ALL: u32 = ACCESS_READ | ACCESS_WRITE | ACCESS_EXEC;

fn r(path: &str, access: u32, deny: bool, id: u32) -> RuleIn {
    RuleIn {
        path: path.into(),
        access,
        deny,
        id,
        expires_ns: 0,
    }
}

fn allowed(e: &[FileEntry], path: &str, access: u32) -> bool {
    decide(e, path, access).0 == ACTION_ALLOW
}

/// The issue's example policy, with an exec list (so read rules do not
/// grant exec).
fn example() -> Vec<FileEntry> {
    compile(&[
        r("/usr/", R, false, 1),
        r("/etc/ssl/", R, false, 2),
        r("/srv/kb/", R, false, 3),
        r("/etc/hostname", R, false, 4),
        r("/srv/tickets/", W, false, 5),
        r("/usr/bin/", X, false, 6),
        r("/srv/tickets/vip/", ALL, true, 7),
        r("/etc/shadow", ALL, true, 8),
    ])
    .unwrap()
}

#[test]
fn beneath_rules_cover_the_directory_itself_and_no_siblings() {
    let e = example();
    assert!(allowed(&e, "/srv/kb/", R), "the directory itself");
    assert!(allowed(&e, "/srv/kb/a/b.md", R));
    assert!(!allowed(&e, "/srv/kbx", R));
    assert!(!allowed(&e, "/srv/kbx/", R));
    assert!(!allowed(&e, "/srv/kb.md", R));
    assert_eq!(decide(&e, "/srv/kbx", R), (0, 0), "no rule");
}

#[test]
fn exact_rules_cover_one_path() {
    let e = example();
    assert_eq!(decide(&e, "/etc/hostname", R), (ACTION_ALLOW, 4));
    assert!(!allowed(&e, "/etc/hostname.bak", R));
    assert!(
        allowed(&e, "/etc/hostname/", R),
        "a directory of that name too"
    );
    assert!(!allowed(&e, "/etc/hostname/x", R));
    assert!(!allowed(&e, "/etc/hostname", ACCESS_WRITE));
    assert!(allowed(&e, "/etc/ssl/certs/x.pem", R));
    // An exact rule beats the beneath rule of the same path for the
    // directory itself, not beneath it.
    let both = compile(&[r("/d/", W, false, 1), r("/d", ALL, true, 2)]).unwrap();
    assert_eq!(decide(&both, "/d/", R), (ACTION_DENY, 2));
    assert_eq!(decide(&both, "/d/f", ACCESS_WRITE), (ACTION_ALLOW, 1));
}

#[test]
fn most_specific_decides_and_deny_wins_ties() {
    let e = example();
    assert!(allowed(&e, "/srv/tickets/1.txt", ACCESS_WRITE));
    assert_eq!(decide(&e, "/srv/tickets/vip/1.txt", R), (ACTION_DENY, 7));
    assert_eq!(decide(&e, "/srv/tickets/vip/", R), (ACTION_DENY, 7));
    assert_eq!(decide(&e, "/etc/shadow", R), (ACTION_DENY, 8));
    let tie = compile(&[
        r("/a/", R, false, 1),
        r("/a/", R, true, 2),
        r("/a/", R, false, 3),
    ])
    .unwrap();
    assert_eq!(decide(&tie, "/a/x", R), (ACTION_DENY, 2));
    // A longer allow under a deny wins: it is more specific.
    let nested = compile(&[r("/a/", ALL, true, 1), r("/a/b/", R, false, 2)]).unwrap();
    assert_eq!(decide(&nested, "/a/b/c", R), (ACTION_ALLOW, 2));
    assert_eq!(decide(&nested, "/a/c", R), (ACTION_DENY, 1));
}

#[test]
fn accesses_are_decided_separately() {
    let e = example();
    assert!(allowed(&e, "/srv/tickets/t", R));
    assert!(!allowed(&e, "/srv/kb/x", ACCESS_WRITE));
    assert!(allowed(&e, "/usr/bin/ls", ACCESS_EXEC));
    assert!(!allowed(&e, "/usr/lib/x.so", ACCESS_EXEC));
    assert!(!allowed(&e, "/srv/tickets/run.sh", ACCESS_EXEC));
    // A read rule under a write rule does not take writing away.
    let e = compile(&[r("/w/", W, false, 1), r("/w/ro/", R, false, 2)]).unwrap();
    assert_eq!(decide(&e, "/w/ro/f", ACCESS_WRITE), (ACTION_ALLOW, 1));
    assert_eq!(decide(&e, "/w/ro/f", R), (ACTION_ALLOW, 2));
}

#[test]
fn root_rule_and_rules_below_flags() {
    let e = compile(&[r("/", R, false, 1), r("/home/u/secret/", ALL, true, 2)]).unwrap();
    assert!(allowed(&e, "/etc/passwd", R));
    assert!(allowed(&e, "/", R));
    assert!(!allowed(&e, "/home/u/secret/k", R));
    let flag = |p: &str| {
        e.iter()
            .find(|x| x.path == p.as_bytes())
            .map(|x| x.value.flags & FILE_VALUE_RULES_BELOW != 0)
    };
    assert_eq!(flag("/home/"), Some(true));
    assert_eq!(flag("/home/u/"), Some(true));
    assert_eq!(flag("/home/u/secret/"), Some(false));
    assert_eq!(flag("/etc/"), None);
}

#[test]
fn long_paths_are_judged_by_their_first_bytes() {
    let e = compile(&[r("/a/", R, false, 1)]).unwrap();
    let long = format!("/a/{}", "x".repeat(600));
    assert!(allowed(&e, &long, R));
    let too_long = format!("/{}", "y".repeat(FILE_KEY_PATH_LEN));
    assert!(matches!(
        compile(&[r(&too_long, R, false, 1)]),
        Err(CompileError::TooLong(_))
    ));
}

fn grant(path: &str, access: u32, id: u32, expires_ns: u64) -> RuleIn {
    RuleIn {
        expires_ns,
        ..r(path, access, false, id)
    }
}

#[test]
fn grants_end_on_time_and_fall_back_to_the_written_rules() {
    let written = [
        r("/srv/", R, false, 1),
        r("/srv/refunds/secret/", ALL, true, 2),
        r("/srv/kb/", R, false, 3),
        r("/srv/kb/w", W, false, 4),
    ];
    let mut all = written.to_vec();
    all.push(grant("/srv/refunds/", W, 100, 1_000));
    all.push(grant("/srv/kb/new/", W, 101, 2_000));
    all.push(grant("/srv/kb/w", W, 102, 3_000));
    let e = compile(&all).unwrap();
    let at = |path: &str, bit: u32, now: u64| decide_at(&e, path, bit, now);
    const WR: u32 = ACCESS_WRITE;
    assert_eq!(at("/srv/refunds/a", WR, 500), (ACTION_ALLOW, 100));
    assert_eq!(at("/srv/refunds/", WR, 500), (ACTION_ALLOW, 100));
    assert_eq!(at("/srv/refunds/secret/x", WR, 500), (ACTION_DENY, 2));
    assert_eq!(at("/srv/refunds/a", WR, 1_000), (0, 0), "ended");
    assert_eq!(at("/srv/refunds/a", R, 1_000), (ACTION_ALLOW, 1));
    assert_eq!(at("/srv/kb/new/x", WR, 1_500), (ACTION_ALLOW, 101));
    assert_eq!(at("/srv/kb/new/x", WR, 2_000), (0, 0));
    assert_eq!(at("/srv/kb/new/x", R, 2_000), (ACTION_ALLOW, 3));
    // A written rule outlives a grant of the same path.
    assert_eq!(at("/srv/kb/w", WR, 9_000), (ACTION_ALLOW, 4));
    // Once every grant has ended, exactly the written policy.
    let base = compile(&written).unwrap();
    for path in [
        "/",
        "/srv/",
        "/srv/a",
        "/srv/refunds/",
        "/srv/refunds/a",
        "/srv/refunds/secret/",
        "/srv/refunds/secret/x",
        "/srv/refundsx",
        "/srv/kb/",
        "/srv/kb/new/",
        "/srv/kb/new/x",
        "/srv/kb/w",
        "/srv/kb/wx",
        "/srv/kb/w/",
        "/etc/x",
    ] {
        for bit in [ACCESS_READ, ACCESS_WRITE, ACCESS_EXEC] {
            assert_eq!(
                at(path, bit, 5_000),
                decide(&base, path, bit),
                "{path} {bit}"
            );
        }
    }
    // Written rules never carry an end.
    assert!(base.iter().all(|x| {
        x.value
            .exact
            .iter()
            .chain(&x.value.beneath)
            .all(|d| d.expires_ns == 0)
    }));
}

#[test]
/// Time is measured by `cargo xtask bench` (policy apply), not here.
fn many_rules_compile() {
    let rules: Vec<RuleIn> = (0..100_000)
        .map(|i| r(&format!("/srv/d{}/f{i}", i % 100), R, false, i + 1))
        .collect();
    let e = compile(&rules).unwrap();
    assert_eq!(e.len(), 100_000 + 100 + 2);
}

/// The compiled entries decide exactly as the policy model's reference
/// (`policy::decide_file`), bit by bit, over a grid of paths.
#[test]
fn agrees_with_the_policy_model() {
    let text = r#"
[identity]
name = "t"
[files]
read  = ["/usr/", "/lib/", "/etc/ssl/", "/srv/kb/", "/etc/hostname", "/d/", "/"]
write = ["/srv/tickets/", "/tmp/", "/w/"]
exec  = ["/usr/bin/", "/usr/local/bin/", "/w/bin"]
deny  = ["/srv/tickets/vip/", "/etc/shadow", "/d", "/w/ro/", "/"]
"#;
    let no_dns = |_: &str| -> std::io::Result<Vec<std::net::IpAddr>> { Ok(vec![]) };
    let p =
        crate::policy::parse_str(std::path::Path::new("t.toml"), text, &no_dns).expect("policy");
    let entries = compile(&rules_of(&p.files).expect("confined")).expect("compile");
    let paths = [
        "/",
        "/usr",
        "/usr/bin",
        "/usr/bin/ls",
        "/usr/binx",
        "/usr/lib/x.so",
        "/lib",
        "/etc",
        "/etc/ssl",
        "/etc/ssl/a",
        "/etc/hostname",
        "/etc/hostname.bak",
        "/etc/shadow",
        "/srv",
        "/srv/kb",
        "/srv/kbx",
        "/srv/kb/x",
        "/srv/tickets",
        "/srv/tickets/a",
        "/srv/tickets/vip",
        "/srv/tickets/vip/a",
        "/srv/tickets/vipx",
        "/tmp",
        "/tmp/x",
        "/d",
        "/d/x",
        "/w",
        "/w/bin",
        "/w/bin/x",
        "/w/ro",
        "/w/ro/f",
        "/w/rox",
        "/other",
    ];
    for path in paths {
        for is_dir in [false, true] {
            for bit in [ACCESS_READ, ACCESS_WRITE, ACCESS_EXEC] {
                let want = crate::policy::deciding_rule(&p.files, path, is_dir, bit)
                    .map(|r| {
                        let a = if r.action == crate::policy::Action::Deny {
                            ACTION_DENY
                        } else {
                            ACTION_ALLOW
                        };
                        (a, r.id)
                    })
                    .unwrap_or((0, 0));
                let looked = if is_dir && path != "/" {
                    format!("{path}/")
                } else {
                    path.to_string()
                };
                assert_eq!(
                    decide(&entries, &looked, bit),
                    want,
                    "{path} dir={is_dir} bit={bit}"
                );
            }
        }
    }
}
