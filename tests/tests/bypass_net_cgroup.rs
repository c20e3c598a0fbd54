//! Network bypass review, staying the agent: new network and cgroup
//! namespaces and deep sub-cgroups (closed), and root agents moving
//! themselves out of their identity (open for root, closed with --user).
//!
//! Each test proves today's behaviour on this kernel. Closed: EPERM
//! inside, success outside, and the event. Open: the documented behaviour
//! (README.md, "What is and is not enforced"), asserted as it is, with a
//! comment saying why it is open. Targets are loopback addresses, or
//! addresses in a network namespace the probe makes for itself
//! (`bp-netns`: it dies with the probe).

use corral_tests::*;

/// A new network namespace (and cgroup namespace) changes nothing: cgroup
/// programs follow the cgroup, not the namespace.
#[test]
fn new_network_and_cgroup_namespaces_are_still_judged() {
    if !is_root() {
        return;
    }
    let (d, tail) = Daemon::start_tailed(
        "ns",
        &enforce_policy("ns", "allow = []\nbind = [\"tcp://127.0.0.1:7000\"]"),
    );
    let steps = [
        "bp-netns",
        "bp-cgroupns",
        "bp-listen",
        "127.0.0.1",
        "7000",
        "connect",
        "127.0.0.1",
        "7000",
        "bp-cgroup",
    ];
    let r = d.probe_as("ns", &with_pid(&steps));
    r.assert_ok("bp-netns", 0);
    r.assert_ok("bp-cgroupns", 0);
    r.assert_ok("bp-listen", 0);
    r.assert_eperm("connect", 0);
    // The cgroup namespace hides the path from the process, not from the
    // kernel.
    assert_eq!(r.step("bp-cgroup", 0)["cgroup"], "/", "{r:#?}");
    let ev = net_event(&tail, "127.0.0.1", 7000);
    assert_net_event(&ev, "ns", r.pid(), "connect", "127.0.0.1", 7000);
    assert!(
        ev["cgroup"].as_str().unwrap_or("").ends_with("/ns"),
        "{ev:#}"
    );
    probe_outside(&steps).assert_ok("connect", 0);
}

/// Sub-cgroups deeper than the 32-level walk: the walk goes down from the
/// root, so the identity's cgroup (near the top) is always found.
#[test]
fn deep_sub_cgroups_are_still_the_agent() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let (d, tail) = Daemon::start_tailed("deep", &enforce_policy("deep", "allow = []"));
    let nested = (0..40)
        .map(|i| format!("d{i}"))
        .collect::<Vec<_>>()
        .join("/");
    let s = port.to_string();
    let r = d.probe_as(
        "deep",
        &["pid", "subcgroup", &nested, "connect", "127.0.0.1", &s],
    );
    r.assert_ok("subcgroup", 0);
    r.assert_eperm("connect", 0);
    let ev = net_event(&tail, "127.0.0.1", port);
    assert!(
        ev["cgroup"].as_str().unwrap_or("").ends_with("/d39"),
        "{ev:#}"
    );
}

/// Root under Landlock: the write to cgroup.procs is refused, clone3
/// (CLONE_INTO_CGROUP) still leaves.
fn landlock_stops_the_write_not_clone3(d: &Daemon, steps: &[&str]) {
    match d.mechanism("files")["state"].as_str() {
        Some("fallback") => {
            let r = d.probe_as("boxed", steps);
            assert!(r.stderr.contains("Landlock"), "{}", r.stderr);
            r.assert_eperm("connect", 0);
            r.assert_errno("bp-escape", 0, EACCES);
            assert_eq!(
                r.step("bp-clone-into-parent", 0)["child_errno"],
                0,
                "OPEN: clone3(CLONE_INTO_CGROUP) passes Landlock: {r:#?}"
            );
            r.assert_eperm("connect", 1);
        }
        other => skip(&format!("the Landlock part: files mechanism is {other:?}")),
    }
}

/// OPEN for root (documented; `corral run` warns): a root agent moves
/// itself out of its identity by writing its pid into another cgroup's
/// cgroup.procs, or starts a child elsewhere with clone3(CLONE_INTO_CGROUP),
/// and is then untagged: nothing is judged. Landlock `[files]` rules stop
/// the cgroup.procs write but not clone3 (it needs only an O_PATH fd of the
/// target directory, and Landlock does not mediate the attach). CLOSED with
/// `--user`: both need write access to the target cgroup.procs (EACCES).
#[test]
fn root_agents_can_leave_their_identity() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let probe = std::fs::canonicalize(probe_bin()).expect("probe");
    let files = format!(
        "[identity]\nname = \"boxed\"\n[network]\nallow = []\n[files]\n\
         read = [\"/usr/\", \"/etc/ld.so.cache\", \"{}\", \"/proc/\"]\nwrite = [\"/dev/null\"]\n",
        probe.display()
    );
    let d = Daemon::start(&[
        ("rooty", &enforce_policy("rooty", "allow = []")),
        ("boxed", &files),
    ]);
    let tail = d.tail(None);
    let s = port.to_string();
    let steps = [
        "pid",
        "connect",
        "127.0.0.1",
        &s,
        "bp-clone-into-parent",
        "127.0.0.1",
        &s,
        "bp-escape",
        "bp-cgroup",
        "connect",
        "127.0.0.1",
        &s,
    ];

    // Root, no file confinement: both ways out work.
    let r = d.probe_as("rooty", &steps);
    assert!(
        r.stderr.contains("WARNING") && r.stderr.contains("runs as ROOT"),
        "corral run must warn: {}",
        r.stderr
    );
    assert!(r.stderr.contains("no file confinement"), "{}", r.stderr);
    r.assert_eperm("connect", 0);
    let clone = r.step("bp-clone-into-parent", 0);
    assert_eq!(clone["ok"], true, "{r:#?}");
    assert_eq!(clone["child_errno"], 0, "the child connected: {r:#?}");
    r.assert_ok("bp-escape", 0);
    assert!(
        !r.step("bp-cgroup", 0)["cgroup"]
            .as_str()
            .unwrap_or("")
            .contains(&d.dirs.cgroup_parent),
        "{r:#?}"
    );
    r.assert_ok("connect", 1);
    let ev = net_event(&tail, "127.0.0.1", port);
    assert_net_event(&ev, "rooty", r.pid(), "connect", "127.0.0.1", port);

    landlock_stops_the_write_not_clone3(&d, &steps);

    // --user: no warning, no way out.
    let r = d.probe_as_user("rooty", "nobody", &steps);
    assert!(!r.stderr.contains("WARNING"), "{}", r.stderr);
    r.assert_eperm("connect", 0);
    r.assert_errno("bp-clone-into-parent", 0, EACCES);
    r.assert_errno("bp-escape", 0, EACCES);
    assert!(
        r.step("bp-cgroup", 0)["cgroup"]
            .as_str()
            .unwrap_or("")
            .ends_with("/rooty"),
        "{r:#?}"
    );
    r.assert_eperm("connect", 1);
}
