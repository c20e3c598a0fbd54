//! Daemon and launcher lifecycle: restarts without an enforcement gap,
//! `corral run` semantics, refusing bad policy, assigning processes.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use corral_tests::*;

fn policy(name: &str, body: &str) -> String {
    identity_policy(name, None, "network", body)
}

#[test]
fn restart_keeps_enforcement_without_a_gap_and_readopts_pins() {
    if !is_root() {
        return;
    }
    let ok = tcp_listener("127.0.0.1:0");
    let no = tcp_listener("127.0.0.1:0");
    let d = Daemon::start(&[(
        "steady",
        &policy("steady", &format!("allow = [\"tcp://127.0.0.1:{ok}\"]")),
    )]);
    let (t_ok, t_no) = (
        format!("127.0.0.1:{ok}=allow"),
        format!("127.0.0.1:{no}=deny"),
    );
    // The prober runs across the restart; any allowed connect to the
    // denied port (or refused allowed one) counts as wrong.
    let prober = d.spawn_probe_as("steady", &["loop", &t_ok, &t_no, "4"]);
    std::thread::sleep(Duration::from_millis(800));
    let dirs = d.stop_keep_pins();
    // No daemon at all for a while: the pinned links keep enforcing.
    std::thread::sleep(Duration::from_millis(700));
    let d2 = Daemon::start_with(dirs).expect("restart");
    let r = prober.finish();
    let lp = r.step("loop", 0);
    assert!(lp["attempts"].as_u64().unwrap_or(0) > 100, "{r:#?}");
    assert_eq!(lp["wrong"], 0, "enforcement gap across restart: {r:#?}");

    let st = d2.cli_json(&["status", "--json"]);
    assert_eq!(st["daemon"]["adopted_pins"], true, "{st:#}");
    // Links were handed over, not duplicated: one pin per program.
    let links = link_pins(&d2.dirs.pin_dir);
    assert!(links.iter().all(|l| !l.ends_with("_new")), "{links:?}");
    assert_eq!(
        links
            .iter()
            .filter(|l| l.as_str() == "corral_connect4")
            .count(),
        1,
        "{links:?}"
    );
    // The same identity id survives, and enforcement still works.
    let tail = d2.tail(Some("steady"));
    d2.assert_connect_denied(&tail, "steady", "127.0.0.1", no);
}

#[test]
fn run_propagates_exit_status_signals_and_stdio() {
    if !is_root() {
        return;
    }
    let d = Daemon::start(&[("runner", &policy("runner", "allow = []"))]);
    assert_eq!(d.probe_as("runner", &["exit", "7"]).code, Some(7));
    assert_eq!(d.probe_as("runner", &["kill", "9"]).code, Some(128 + 9));
    assert_eq!(d.probe_as("runner", &["kill", "15"]).code, Some(128 + 15));

    // stdin and stdout pass through.
    let mut child = Command::new(corral_bin())
        .arg("--socket")
        .arg(&d.dirs.socket)
        .args(["run", "--identity", "runner", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run cat");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"through the corral\n")
        .expect("write");
    let out = child.wait_with_output().expect("cat");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through the corral\n");

    // Tagged from the first instruction, with no_new_privs, as --user.
    let out = d.cli(&[
        "run",
        "--identity",
        "runner",
        "--user",
        "nobody",
        "--",
        "sh",
        "-c",
        "cat /proc/self/cgroup; grep NoNewPrivs /proc/self/status; id -u",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("0::/{}/runner", d.dirs.cgroup_parent)),
        "{text}"
    );
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    assert!(text.lines().any(|l| l.trim() == "65534"), "{text}");
}

#[test]
fn unknown_identity_and_dead_daemon_are_clear_errors() {
    if !is_root() {
        return;
    }
    let d = Daemon::start(&[("known-one", &policy("known-one", "allow = []"))]);
    let out = d.cli(&["run", "--identity", "nobody-here", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown identity `nobody-here`") && err.contains("known-one"),
        "{err}"
    );

    let started = Instant::now();
    let out = Command::new(corral_bin())
        .args([
            "--socket",
            "/nonexistent/corral.sock",
            "run",
            "--identity",
            "x",
            "--",
            "true",
        ])
        .output()
        .expect("corral");
    assert!(started.elapsed() < Duration::from_secs(5), "must not hang");
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not reachable") && err.contains("/nonexistent/corral.sock"),
        "{err}"
    );
}

#[test]
fn malformed_policy_refuses_start_with_file_line_col() {
    if !is_root() {
        return;
    }
    let base = tempfile::tempdir().expect("tmp");
    let dirs = Dirs::new(base.path());
    std::fs::write(
        dirs.policy_dir.join("bad.toml"),
        "[identity]\nname = \"bad\"\n[network]\nallow = [\"tcp://10.0.0.0/33:443\"]\n",
    )
    .expect("write");
    let err = match Daemon::start_with(dirs.clone()) {
        Ok(_) => panic!("daemon started on a bad policy"),
        Err(e) => e,
    };
    assert!(err.contains("bad.toml:4:"), "{err}");
    assert!(err.contains("10.0.0.0/33"), "{err}");
    // Nothing was set up: no pins, no cgroup.
    assert!(!dirs.pin_dir.exists());
    assert!(!dirs.parent_cgroup().exists());
    cleanup(&dirs);
}

#[test]
fn assign_pid_puts_a_running_process_under_enforcement() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let (d, tail) = Daemon::start_tailed("late", &policy("late", "allow = []"));
    let s = port.to_string();
    // Our own child: connects before and after being assigned.
    let child = Command::new(probe_bin())
        .args([
            "pid",
            "connect",
            "127.0.0.1",
            &s,
            "sleep",
            "1.5",
            "connect",
            "127.0.0.1",
            &s,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("probe");
    let pid = child.id().to_string();
    std::thread::sleep(Duration::from_millis(400));
    let out = d.cli(&["assign", "--identity", "late", "--pid", &pid]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = ProbeRun::from(child.wait_with_output().expect("probe"));
    r.assert_ok("connect", 0);
    r.assert_eperm("connect", 1);
    assert_net_event(
        &tail.expect(|e| e["kind"] == "net"),
        "late",
        r.pid(),
        "connect",
        "127.0.0.1",
        port,
    );

    let out = d.cli(&["assign", "--identity", "late", "--pid", "1"]);
    assert!(!out.status.success(), "pid 1 must be refused");
}

/// A cgroup of the test's own, outside the corral parent, removed on drop.
struct OwnCgroup(std::path::PathBuf);

impl Drop for OwnCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        std::thread::sleep(Duration::from_millis(100));
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn assign_cgroup_outside_the_parent_attaches_there() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let d = Daemon::start(&[("unit", &policy("unit", "allow = []"))]);
    let cg = OwnCgroup(cgroup2_root().join(format!("{}-ext", d.dirs.tag)));
    std::fs::create_dir(&cg.0).expect("own cgroup");
    let rel =
        cg.0.strip_prefix(cgroup2_root())
            .expect("rel")
            .to_string_lossy()
            .into_owned();
    let out = d.cli(&["assign", "--identity", "unit", "--cgroup", &rel]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let tail = d.tail(Some("unit"));
    let s = port.to_string();
    let child = Command::new(probe_bin())
        .args(["sleep", "0.3", "pid", "connect", "127.0.0.1", &s])
        .stdout(Stdio::piped())
        .spawn()
        .expect("probe");
    std::fs::write(cg.0.join("cgroup.procs"), child.id().to_string()).expect("move child");
    let r = ProbeRun::from(child.wait_with_output().expect("probe"));
    r.assert_eperm("connect", 0);
    assert_net_event(
        &tail.expect(|e| e["kind"] == "net"),
        "unit",
        r.pid(),
        "connect",
        "127.0.0.1",
        port,
    );
    probe_outside(&["connect", "127.0.0.1", &s]).assert_ok("connect", 0);
    let ids = d.cli_json(&["identities", "--json"]);
    assert_eq!(
        ids[0]["assigned_cgroups"][0],
        cg.0.to_string_lossy().as_ref(),
        "{ids:#}"
    );
}
