//! `[files]`: the grammar, the decision and the digest.

use std::path::Path;

use super::*;
use crate::policy::{PolicyErrors, parse_str};

fn no_dns(h: &str) -> std::io::Result<Vec<std::net::IpAddr>> {
    panic!("no DNS in file tests ({h})")
}

fn load(files: &str) -> Result<crate::policy::IdentityPolicy, PolicyErrors> {
    let text = format!(
        "[identity]\nname = \"t\"\n[network]\nallow = [\"tcp://10.0.0.0/8:443\"]\n\
         unix = [\"/run/x.sock\"]\n[files]\n{files}"
    );
    parse_str(Path::new("p/t.toml"), &text, &no_dns)
}

fn files(files: &str) -> FilePolicy {
    load(files).unwrap_or_else(|e| panic!("{e}")).files
}

fn error(files: &str) -> String {
    match load(files) {
        Ok(p) => panic!("parsed: {:?}", p.files),
        Err(PolicyErrors(es)) => {
            assert_eq!(es.len(), 1, "{es:?}");
            es[0].to_string()
        }
    }
}

const ISSUE: &str = r#"read  = ["/usr/", "/lib/", "/etc/ssl/", "/srv/kb/", "/etc/hostname"]
write = ["/srv/tickets/", "/tmp/"]
exec  = ["/usr/bin/", "/usr/local/bin/"]
deny  = ["/srv/tickets/vip/", "/etc/shadow"]
"#;

fn d(p: &FilePolicy, path: &str, access: u32) -> Option<(Action, u32)> {
    decide_file(p, path, false, access)
}

#[test]
fn parses_lists_ids_and_access() {
    let f = files(ISSUE);
    assert!(f.exec_restricted);
    // Network rule 1, unix rule 2: files start at 3.
    let ids: Vec<(u32, &str, FileList)> = f
        .rules
        .iter()
        .map(|r| (r.id, r.path.as_str(), r.list))
        .collect();
    assert_eq!(ids[0], (3, "/usr/", FileList::Read));
    assert_eq!(ids[5], (8, "/srv/tickets/", FileList::Write));
    assert_eq!(ids[7], (10, "/usr/bin/", FileList::Exec));
    assert_eq!(ids[10], (13, "/etc/shadow", FileList::Deny));
    let r = |i: usize| (f.rules[i].beneath, f.rules[i].access, f.rules[i].action);
    assert_eq!(r(0), (true, ACCESS_READ, Action::Allow));
    assert_eq!(r(4), (false, ACCESS_READ, Action::Allow));
    assert_eq!(r(5), (true, ACCESS_READ | ACCESS_WRITE, Action::Allow));
    assert_eq!(r(7), (true, ACCESS_READ | ACCESS_EXEC, Action::Allow));
    assert_eq!(r(10), (false, ACCESS_ALL, Action::Deny));
    let o = &f.rules[5].origin;
    assert_eq!((o.line, o.col), (8, 11));
    assert_eq!(
        f.rules[9].describe(),
        "deny /srv/tickets/vip/ (t.toml:10:11)"
    );
}

#[test]
fn without_exec_list_readable_means_executable() {
    let f = files("read = [\"/usr/\"]\nwrite = [\"/tmp/\"]\n");
    assert!(!f.exec_restricted);
    assert_eq!(f.rules[0].access, ACCESS_READ | ACCESS_EXEC);
    assert_eq!(
        d(&f, "/usr/bin/ls", ACCESS_EXEC),
        Some((Action::Allow, f.rules[0].id))
    );
    assert_eq!(
        d(&f, "/tmp/x", ACCESS_EXEC),
        Some((Action::Allow, f.rules[1].id))
    );
    // An empty exec list is a list: nothing may be executed.
    let f = files("read = [\"/usr/\"]\nexec = []\n");
    assert!(f.exec_restricted);
    assert_eq!(d(&f, "/usr/bin/ls", ACCESS_EXEC), None);
    assert!(d(&f, "/usr/bin/ls", ACCESS_READ).is_some());
}

#[test]
fn precedence() {
    let f = files(ISSUE);
    let id = |p: &str| f.rules.iter().find(|r| r.path == p).expect(p).id;
    let allow = |p: &str| Some((Action::Allow, id(p)));
    let deny = |p: &str| Some((Action::Deny, id(p)));
    assert_eq!(d(&f, "/usr/share/doc/x", ACCESS_READ), allow("/usr/"));
    assert_eq!(d(&f, "/usr/share/doc/x", ACCESS_WRITE), None);
    // exec needs the exec list, which is more specific for reads too.
    assert_eq!(d(&f, "/usr/bin/ls", ACCESS_EXEC), allow("/usr/bin/"));
    assert_eq!(d(&f, "/usr/bin/ls", ACCESS_READ), allow("/usr/bin/"));
    assert_eq!(d(&f, "/usr/lib/libc.so", ACCESS_EXEC), None);
    // write implies read.
    assert_eq!(d(&f, "/srv/tickets/1", ACCESS_READ), allow("/srv/tickets/"));
    assert_eq!(
        d(&f, "/srv/tickets/1", ACCESS_READ | ACCESS_WRITE),
        allow("/srv/tickets/")
    );
    // A longer deny beats a shorter allow, for every bit.
    assert_eq!(
        d(&f, "/srv/tickets/vip/1", ACCESS_READ),
        deny("/srv/tickets/vip/")
    );
    assert_eq!(
        d(&f, "/srv/tickets/vip/1", ACCESS_WRITE),
        deny("/srv/tickets/vip/")
    );
    // Exact rules.
    assert_eq!(d(&f, "/etc/hostname", ACCESS_READ), allow("/etc/hostname"));
    assert_eq!(d(&f, "/etc/hostname", ACCESS_WRITE), None);
    assert_eq!(d(&f, "/etc/hostname2", ACCESS_READ), None);
    assert_eq!(d(&f, "/etc/shadow", ACCESS_READ), deny("/etc/shadow"));
    assert_eq!(d(&f, "/etc/passwd", ACCESS_READ), None);
    // Unlisted: default deny.
    assert_eq!(d(&f, "/root/.ssh/id_ed25519", ACCESS_READ), None);
    // Read allowed, write refused by the deny: the deny is named.
    let f2 = files("read = [\"/a/\"]\ndeny = [\"/a/b\"]\nwrite = [\"/a/\"]\n");
    assert_eq!(
        d(&f2, "/a/b", ACCESS_READ | ACCESS_WRITE),
        Some((Action::Deny, f2.rules[2].id))
    );
}

#[test]
fn equal_specificity_deny_wins_and_deeper_allow_reopens() {
    let f = files("read = [\"/a/\", \"/a/b/c/\"]\ndeny = [\"/a/\", \"/a/b/\"]\n");
    let deny_a = f.rules[2].id;
    assert_eq!(d(&f, "/a/x", ACCESS_READ), Some((Action::Deny, deny_a)));
    assert_eq!(
        d(&f, "/a/b/x", ACCESS_READ),
        Some((Action::Deny, f.rules[3].id))
    );
    assert_eq!(
        d(&f, "/a/b/c/x", ACCESS_READ),
        Some((Action::Allow, f.rules[1].id))
    );
    // Exact beats beneath at the same path, whatever the action.
    let f = files("read = [\"/d\"]\ndeny = [\"/d/\"]\n");
    assert_eq!(
        decide_file(&f, "/d", true, ACCESS_READ),
        Some((Action::Allow, f.rules[0].id))
    );
    assert_eq!(
        d(&f, "/d/x", ACCESS_READ),
        Some((Action::Deny, f.rules[1].id))
    );
}

#[test]
fn no_sibling_prefix_leak() {
    let f = files("read = [\"/srv/kb/\"]\n");
    assert!(d(&f, "/srv/kb/a", ACCESS_READ).is_some());
    assert_eq!(d(&f, "/srv/kbx", ACCESS_READ), None);
    assert_eq!(d(&f, "/srv/kbx/a", ACCESS_READ), None);
    assert_eq!(decide_file(&f, "/srv/kbx", true, ACCESS_READ), None);
    assert_eq!(d(&f, "/srv", ACCESS_READ), None);
    // An exact rule is not a prefix either.
    let f = files("read = [\"/etc/hostname\"]\n");
    assert_eq!(d(&f, "/etc/hostname.bak", ACCESS_READ), None);
    assert_eq!(d(&f, "/etc/hostname/x", ACCESS_READ), None);
}

#[test]
fn directory_rule_covers_the_directory_itself() {
    let f = files("read = [\"/srv/kb/\"]\n");
    let id = f.rules[0].id;
    assert_eq!(
        decide_file(&f, "/srv/kb", true, ACCESS_READ),
        Some((Action::Allow, id))
    );
    assert_eq!(
        decide_file(&f, "/srv/kb/", true, ACCESS_READ),
        Some((Action::Allow, id))
    );
    // A regular file of that name is not "beneath" anything.
    assert_eq!(decide_file(&f, "/srv/kb", false, ACCESS_READ), None);
    let f = files("read = [\"/\"]\ndeny = [\"/root/\"]\n");
    assert!(decide_file(&f, "/", true, ACCESS_READ).is_some());
    assert!(d(&f, "/etc/passwd", ACCESS_READ).is_some());
    assert_eq!(
        decide_file(&f, "/root", true, ACCESS_READ),
        Some((Action::Deny, f.rules[1].id))
    );
}

#[test]
fn errors_name_file_line_col_and_suggest_the_normal_form() {
    assert_eq!(
        error("read = [\"/usr/../etc/\"]\n"),
        "p/t.toml:7:10: file path `/usr/../etc/` is not normalised (no `//`, `/./` or `..`); \
         write `/etc/`"
    );
    assert!(error("read = [\"/usr//lib\"]\n").ends_with("write `/usr/lib`"));
    assert!(error("write = [\"/tmp/./x/\"]\n").ends_with("write `/tmp/x/`"));
    assert!(error("deny = [\"/a/..\"]\n").ends_with("write `/`"));
    let e = error("read = [\"/ok/\",\n  \"usr/\"]\n");
    assert!(
        e.starts_with("p/t.toml:8:4: file path `usr/` must be absolute"),
        "{e}"
    );
    let e = error("exec = [\"\"]\n");
    assert!(e.contains("must be absolute"), "{e}");
    // Over-long: a component, then the whole path.
    let long = format!("/srv/{}/x", "n".repeat(256));
    let e = error(&format!("read = [\"{long}\"]\n"));
    assert!(e.starts_with("p/t.toml:7:15:"), "{e}");
    assert!(e.contains("256 bytes, over the 255"), "{e}");
    let deep = "/d".repeat(2048);
    let e = error(&format!("read = [\"{deep}\"]\n"));
    assert!(e.contains("4096 bytes, over the 4095"), "{e}");
    let e = error(&format!("read = [\"{}\"]\n", &deep[..4094]));
    assert!(
        e.contains("4094 bytes; the kernel's path table holds rules of at most 252"),
        "{e}"
    );
    assert!(e.starts_with("p/t.toml:7:262:"), "{e}");
    assert!(load(&format!("read = [\"{}\"]\n", &deep[..252])).is_ok());
    // Unknown keys are errors with a position.
    let e = error("raed = [\"/usr/\"]\n");
    assert!(e.starts_with("p/t.toml:7:1: unknown field `raed`"), "{e}");
    // All errors are reported, each at its own value.
    let Err(PolicyErrors(es)) = load("read = [\"a\", \"/b//\"]\ndeny = [\"/./\"]\n") else {
        panic!("parsed")
    };
    let at: Vec<(usize, usize)> = es.iter().map(|e| (e.line, e.col)).collect();
    assert_eq!(at, [(7, 10), (7, 15), (8, 10)]);
}

#[test]
fn check_file_path_forms() {
    assert_eq!(check_file_path("/"), Ok(true));
    assert_eq!(check_file_path("/a"), Ok(false));
    assert_eq!(check_file_path("/a/b/"), Ok(true));
    assert_eq!(check_file_path("/a b/c\u{e9}"), Ok(false));
    assert!(check_file_path("//").is_err());
    assert!(check_file_path("/a\0b").is_err_and(|e| e.0 == 2));
}

#[test]
fn digest_sees_file_rules() {
    let a = load("read = [\"/usr/\"]\n").expect("loads");
    let b = load("read = [\"/usr/\"]\ndeny = [\"/usr/x\"]\n").expect("loads");
    let c = load("read = [\"/usr/\"]\nexec = []\n").expect("loads");
    let none = load("").expect("loads");
    assert!(none.files.confined && none.files.rules.is_empty());
    let absent = parse_str(
        Path::new("p/t.toml"),
        "[identity]\nname = \"t\"\n[network]\nallow = [\"tcp://10.0.0.0/8:443\"]\n\
         unix = [\"/run/x.sock\"]\n",
        &no_dns,
    )
    .expect("loads");
    assert!(!absent.files.confined);
    assert_ne!(absent.digest, none.digest);
    let digests = [a.digest, b.digest, c.digest, none.digest];
    for (i, x) in digests.iter().enumerate() {
        for y in &digests[i + 1..] {
            assert_ne!(x, y);
        }
    }
    assert_eq!(
        a.digest,
        load("read = [\"/usr/\"]\n").expect("loads").digest
    );
}
