//! `unix = [...]` rules enforced in the kernel (cgroup connect_unix and
//! sendmsg_unix): every denial test shows the errno inside the identity,
//! success outside it, and the event.

use std::{
    os::{
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr, UnixDatagram, UnixListener},
    },
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use corral_tests::*;

fn unix_rules(paths: &[&str]) -> String {
    format!("unix = [{}]", toml_list(paths))
}

/// A stream listener that accepts in the background.
fn listener_at(addr: &SocketAddr) {
    let l = UnixListener::bind_addr(addr).expect("unix listen");
    std::thread::spawn(move || for _ in l.incoming() {});
}

fn stream_socket(dir: &Path, name: &str) -> String {
    let p = dir.join(name);
    listener_at(&SocketAddr::from_pathname(&p).expect("path"));
    p.to_str().expect("utf-8").to_string()
}

/// A datagram socket that exists so sends have a target.
fn dgram_socket(dir: &Path, name: &str) -> String {
    let p = dir.join(name);
    let s = UnixDatagram::bind(&p).expect("unix dgram bind");
    std::thread::spawn(move || {
        let mut b = [0u8; 64];
        while s.recv(&mut b).is_ok() {}
    });
    p.to_str().expect("utf-8").to_string()
}

/// Entries in the pinned kernel map itself, not the daemon's view of it.
fn unix_map_entries(pin_dir: &Path) -> usize {
    use agent_common::unix::{UnixKey, UnixRuleValue};
    let data =
        aya::maps::MapData::from_pin(pin_dir.join("maps/UNIX_RULES")).expect("UNIX_RULES pin");
    let map = aya::maps::Map::from_map_data(data).expect("map");
    let m: aya::maps::HashMap<_, UnixKey, UnixRuleValue> = map.try_into().expect("hash map");
    m.keys().count()
}

#[test]
fn unix_connect_allowed_denied_and_untouched_outside() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ok = stream_socket(dir.path(), "ok.sock");
    let no = stream_socket(dir.path(), "no.sock");
    let d = Daemon::start(&[("ux", &net_policy("ux", "enforce", &unix_rules(&[&ok])))]);
    let st = d.cli_json(&["status", "--json"]);
    let m = mechanism_in(&st, "unix socket paths");
    assert!(!m.is_null(), "no mechanism `unix socket paths`: {st:#}");
    assert_eq!(m["state"], "enforcing", "{m:#}");
    let tail = d.tail(Some("ux"));

    // Another spelling of the allowed path is another string: refused.
    // Bytes after the path's NUL are not part of the address: the padded
    // connects are judged by their paths.
    let other_spelling = ok.replacen('/', "//", 1);
    let r = d.probe_as(
        "ux",
        &[
            "pid",
            "unix-connect",
            &ok,
            "unix-connect",
            &no,
            "unix-connect",
            &other_spelling,
            "unix-connect-padded",
            &ok,
            "unix-connect-padded",
            &no,
        ],
    );
    r.assert_ok("unix-connect", 0);
    r.assert_eperm("unix-connect", 1);
    r.assert_eperm("unix-connect", 2);
    r.assert_ok("unix-connect-padded", 0);
    r.assert_eperm("unix-connect-padded", 1);

    let ev = tail.expect(|e| e["kind"] == "unix");
    assert_unix_event(&ev, "ux", r.pid(), "connect", &no);
    assert_eq!(ev["verdict"], "deny", "{ev:#}");
    assert_eq!(ev["mode"], "enforce", "{ev:#}");
    assert_eq!(ev["reason"], "no-rule", "{ev:#}");
    let ev = tail.expect(|e| e["kind"] == "unix");
    assert_unix_event(&ev, "ux", r.pid(), "connect", &other_spelling);
    let ev = tail.expect(|e| e["kind"] == "unix");
    assert_unix_event(&ev, "ux", r.pid(), "connect", &no);

    let out = probe_outside(&[
        "unix-connect",
        &no,
        "unix-connect",
        &other_spelling,
        "unix-connect-padded",
        &no,
    ]);
    assert_eq!(
        out.step("unix-connect", 0)["ok"],
        true,
        "untagged process must not be judged"
    );
    out.assert_ok("unix-connect", 1);
    out.assert_ok("unix-connect-padded", 0);

    let ids = d.cli_json(&["identities", "--json"]);
    assert_eq!(ids[0]["kernel_entries"]["unix"], 1, "{ids:#}");
    assert!(
        ids[0]["counters"]["denied"].as_u64().unwrap_or(0) >= 3,
        "{ids:#}"
    );
    assert!(
        ids[0]["counters"]["allowed"].as_u64().unwrap_or(0) >= 1,
        "{ids:#}"
    );
    let show = d.cli(&["policy", "show", "ux"]);
    let text = String::from_utf8_lossy(&show.stdout);
    // The unix rule is enforced (built-in protected paths may say NOT
    // ENFORCED where BPF LSM does not run: another line).
    let rule = text
        .lines()
        .find(|l| l.contains(&ok))
        .unwrap_or_else(|| panic!("no unix rule line: {text}"));
    assert!(!rule.contains("NOT ENFORCED"), "{text}");
}

#[test]
fn unix_datagram_sendto_allowed_and_denied() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ok = dgram_socket(dir.path(), "ok.dgram");
    let no = dgram_socket(dir.path(), "no.dgram");
    let (d, tail) = Daemon::start_tailed("dg", &net_policy("dg", "enforce", &unix_rules(&[&ok])));
    let r = d.probe_as(
        "dg",
        &[
            "pid",
            "unix-sendto",
            &ok,
            "unix-sendto",
            &no,
            "unix-dgram-connect",
            &ok,
            "unix-dgram-connect",
            &no,
        ],
    );
    r.assert_ok("unix-sendto", 0);
    r.assert_eperm("unix-sendto", 1);
    // connect() on a datagram socket is judged too (later sends carry no address).
    r.assert_ok("unix-dgram-connect", 0);
    r.assert_eperm("unix-dgram-connect", 1);
    let ev = tail.expect(|e| e["kind"] == "unix");
    assert_unix_event(&ev, "dg", r.pid(), "sendmsg", &no);
    assert_eq!(ev["verdict"], "deny", "{ev:#}");
    let ev = tail.expect(|e| e["kind"] == "unix");
    assert_unix_event(&ev, "dg", r.pid(), "connect", &no);
    let out = probe_outside(&["unix-sendto", &no, "unix-dgram-connect", &no]);
    out.assert_ok("unix-sendto", 0);
    out.assert_ok("unix-dgram-connect", 0);
}

#[test]
fn unix_abstract_names_need_an_explicit_at_rule() {
    if !is_root() {
        return;
    }
    let base = format!("corral-test-{}", std::process::id());
    let (ok, no) = (format!("{base}-ok"), format!("{base}-no"));
    for n in [&ok, &no] {
        listener_at(&SocketAddr::from_abstract_name(n).expect("abstract"));
    }
    let (ok_at, no_at) = (format!("@{ok}"), format!("@{no}"));
    let (d, tail) =
        Daemon::start_tailed("ab", &net_policy("ab", "enforce", &unix_rules(&[&ok_at])));
    let r = d.probe_as(
        "ab",
        &["pid", "unix-connect", &ok_at, "unix-connect", &no_at],
    );
    r.assert_ok("unix-connect", 0);
    r.assert_eperm("unix-connect", 1);
    let ev = tail.expect(|e| e["kind"] == "unix");
    assert_unix_event(&ev, "ab", r.pid(), "connect", &no_at);
    probe_outside(&["unix-connect", &no_at]).assert_ok("unix-connect", 0);
}

#[test]
fn unix_audit_mode_allows_and_reports() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let s = stream_socket(dir.path(), "watched.sock");
    let (d, tail) = Daemon::start_tailed("uw", &net_policy("uw", "audit", "unix = []"));
    let r = d.probe_as("uw", &["pid", "unix-connect", &s]);
    assert_eq!(
        r.step("unix-connect", 0)["ok"],
        true,
        "audit mode must not deny: {r:#?}"
    );
    let ev = tail.expect(|e| e["kind"] == "unix");
    assert_unix_event(&ev, "uw", r.pid(), "connect", &s);
    assert_eq!(ev["verdict"], "audit", "{ev:#}");
    assert_eq!(ev["mode"], "audit", "{ev:#}");
    let ids = d.cli_json(&["identities", "--json"]);
    assert!(
        ids[0]["counters"]["audited"].as_u64().unwrap_or(0) >= 1,
        "{ids:#}"
    );
}

#[test]
fn unix_rules_follow_a_policy_apply() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let a = stream_socket(dir.path(), "a.sock");
    let b = stream_socket(dir.path(), "b.sock");
    let d = Daemon::start(&[("re", &net_policy("re", "enforce", &unix_rules(&[&a])))]);
    let r = d.probe_as("re", &["unix-connect", &a, "unix-connect", &b]);
    r.assert_ok("unix-connect", 0);
    r.assert_eperm("unix-connect", 1);
    d.write_policy("re", &net_policy("re", "enforce", &unix_rules(&[&b])));
    d.apply();
    let tail = d.tail(Some("re"));
    let r = d.probe_as("re", &["pid", "unix-connect", &a, "unix-connect", &b]);
    r.assert_eperm("unix-connect", 0);
    r.assert_ok("unix-connect", 1);
    assert_unix_event(
        &tail.expect(|e| e["kind"] == "unix"),
        "re",
        r.pid(),
        "connect",
        &a,
    );
    // The old ruleset's entry is gone: one entry, under the new ruleset.
    let ids = d.cli_json(&["identities", "--json"]);
    assert_eq!(ids[0]["kernel_entries"]["unix"], 1, "{ids:#}");
    assert_eq!(unix_map_entries(&d.dirs.pin_dir), 1);
}

#[test]
fn unix_rules_stay_enforced_across_a_daemon_restart() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ok = stream_socket(dir.path(), "ok.sock");
    let no = stream_socket(dir.path(), "no.sock");
    let d = Daemon::start(&[("keep", &net_policy("keep", "enforce", &unix_rules(&[&ok])))]);
    let identity_cgroup: PathBuf = d.dirs.parent_cgroup().join("keep");
    // The prober runs across the restart; a refused allowed connect or an
    // allowed denied one counts as wrong.
    let prober = d.spawn_probe_as(
        "keep",
        &[
            "unix-loop",
            &format!("{ok}=allow"),
            &format!("{no}=deny"),
            "4",
        ],
    );
    std::thread::sleep(Duration::from_millis(800));
    let dirs = d.stop_keep_pins();
    // No daemon at all: the pinned links keep judging, new processes too.
    let gap = Command::new("sh")
        .arg("-c")
        .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
        .arg("sh")
        .arg(&identity_cgroup)
        .arg(probe_bin())
        .args(["unix-connect", &no, "unix-connect", &ok])
        .output()
        .expect("probe without daemon");
    let gap = ProbeRun::from(gap);
    gap.assert_eperm("unix-connect", 0);
    gap.assert_ok("unix-connect", 1);
    std::thread::sleep(Duration::from_millis(300));
    let d2 = Daemon::start_with(dirs).expect("restart");
    let r = prober.finish();
    let lp = r.step("unix-loop", 0);
    assert!(lp["attempts"].as_u64().unwrap_or(0) > 100, "{r:#?}");
    assert_eq!(
        lp["wrong"], 0,
        "unix enforcement gap across restart: {r:#?}"
    );

    // Links handed over, not duplicated.
    let links = link_pins(&d2.dirs.pin_dir);
    assert!(links.iter().all(|l| !l.ends_with("_new")), "{links:?}");
    for name in ["corral_connect_unix", "corral_sendmsg_unix"] {
        assert_eq!(
            links.iter().filter(|l| l.as_str() == name).count(),
            1,
            "{links:?}"
        );
    }
    let tail = d2.tail(Some("keep"));
    let r = d2.probe_as("keep", &["pid", "unix-connect", &ok, "unix-connect", &no]);
    r.assert_ok("unix-connect", 0);
    r.assert_eperm("unix-connect", 1);
    assert_unix_event(
        &tail.expect(|e| e["kind"] == "unix"),
        "keep",
        r.pid(),
        "connect",
        &no,
    );
    probe_outside(&["unix-connect", &no]).assert_ok("unix-connect", 0);
    // The old ruleset's entries were collected: one entry, the new one.
    let ids = d2.cli_json(&["identities", "--json"]);
    assert_eq!(ids[0]["kernel_entries"]["unix"], 1, "{ids:#}");
    assert_eq!(unix_map_entries(&d2.dirs.pin_dir), 1);
}

/// Not a correctness test: what the hook costs an allowed connect. Prints
/// ns per connect inside the identity (program runs, allows) and outside
/// (no program on that socket's cgroup).
#[test]
fn unix_connect_cost() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ok = stream_socket(dir.path(), "ok.sock");
    let d = Daemon::start(&[("cost", &net_policy("cost", "enforce", &unix_rules(&[&ok])))]);
    let target = format!("{ok}=allow");
    let inside = d.probe_as("cost", &["unix-loop", &target, "1"]);
    let outside = probe_outside(&["unix-loop", &target, "1"]);
    let (i, o) = (inside.step("unix-loop", 0), outside.step("unix-loop", 0));
    assert_eq!(i["wrong"], 0, "{inside:#?}");
    eprintln!(
        "unix connect: {} ns inside the identity, {} ns outside ({} / {} attempts)",
        i["ns_per_op"], o["ns_per_op"], i["attempts"], o["attempts"]
    );
}
