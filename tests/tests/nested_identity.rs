//! One rule decides who a process is: the identity of the deepest tagged
//! cgroup among its ancestors. It is written three times in the kernel's
//! terms — `identity::deepest_tagged` (the aya programs: network, files,
//! syscall observers), the hand-assembled unix programs, and
//! `lsm::kernel::task_identity` for a signal's target — so this test puts
//! an identity's cgroup inside another's and checks the network and unix
//! programs agree on which one a process below both is.

use std::{os::unix::net::UnixListener, path::Path};

use corral_tests::*;

/// A stream listener that accepts in the background.
fn unix_socket(dir: &Path, name: &str) -> String {
    let p = dir.join(name);
    let l = UnixListener::bind(&p).expect("unix listen");
    std::thread::spawn(move || for _ in l.incoming() {});
    p.to_str().expect("utf-8").to_string()
}

#[test]
fn the_deepest_tagged_cgroup_decides_for_network_and_unix_alike() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = unix_socket(dir.path(), "outer.sock");
    // `outer` allows the port and the socket; `inner` allows neither.
    let outer = net_policy(
        "outer",
        "enforce",
        &format!(
            "allow = [\"tcp://127.0.0.1:{port}\"]\nunix = [{}]",
            toml_list(&[&sock])
        ),
    );
    let inner = net_policy("inner", "enforce", "allow = []");
    let d = Daemon::start(&[("outer", &outer), ("inner", &inner)]);
    let tail = d.tail(None);
    // `inner` tags a cgroup inside `outer`'s.
    let inner_cg = d.dirs.parent_cgroup().join("outer/x/inner");
    std::fs::create_dir_all(&inner_cg).expect("mkdir inner cgroup");
    let out = d.cli(&[
        "assign",
        "--identity",
        "inner",
        "--cgroup",
        inner_cg.to_str().expect("utf-8"),
    ]);
    assert!(
        out.status.success(),
        "assign: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The same connects, from a sub-cgroup of `outer`'s.
    let s = port.to_string();
    let from = |sub: &str| {
        let steps = ["pid", "subcgroup", sub, "connect", "127.0.0.1", &s];
        d.probe_as("outer", &[&steps[..], &["unix-connect", &sock]].concat())
    };

    // Below both: `inner` is the deepest tagged ancestor, for both programs.
    let r = from("x/inner/deeper");
    r.assert_ok("subcgroup", 0);
    r.assert_eperm("connect", 0);
    r.assert_eperm("unix-connect", 0);
    let ev = net_event(&tail, "127.0.0.1", port);
    assert_net_event(&ev, "inner", r.pid(), "connect", "127.0.0.1", port);
    let ev = tail.expect(|e| e["kind"] == "unix" && e["unix"]["path"] == sock.as_str());
    assert_unix_event(&ev, "inner", r.pid(), "connect", &sock);

    // Beside `inner`, still inside `outer`: outer's rules, for both.
    let r = from("x/beside");
    r.assert_ok("subcgroup", 0);
    r.assert_ok("connect", 0);
    r.assert_ok("unix-connect", 0);
    // And outside every identity, the same operations succeed.
    let out = probe_outside(&["connect", "127.0.0.1", &s, "unix-connect", &sock]);
    out.assert_ok("connect", 0);
    out.assert_ok("unix-connect", 0);
}
