//! Nothing is exempt from judgement by pid. The kernel programs used to
//! skip the daemon's tgid, recorded at load time; pins outlive the daemon,
//! so while it was stopped a tagged process given that pid was judged by
//! nothing. Now the daemon stays unjudged by staying untagged: it refuses
//! to tag a cgroup that holds it, and to start inside a tagged one.

use std::{
    io::{BufRead as _, BufReader, Lines},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
};

use corral_tests::*;
use serde_json::Value;

/// A cgroup of the test's own, removed (with whatever it holds) on drop.
struct OwnCgroup(PathBuf);

impl OwnCgroup {
    fn new(tag: &str) -> OwnCgroup {
        let p = cgroup2_root().join(format!("corral-test-own-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&p).expect("test cgroup");
        OwnCgroup(p)
    }
}

impl Drop for OwnCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Starts the probe with exactly `pid` (the kernel hands out the pid after
/// `ns_last_pid`), already inside `cgroup` when it execs. `None` if another
/// process keeps taking the pid first.
fn spawn_with_pid(
    pid: u32,
    cgroup: &Path,
    steps: &[&str],
) -> Option<(Child, Lines<BufReader<ChildStdout>>)> {
    let procs = std::ffi::CString::new(path_str(&cgroup.join("cgroup.procs"))).expect("no NUL");
    for _ in 0..50 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).expect("ns_last_pid");
        let mut cmd = Command::new(probe_bin());
        cmd.args(steps).stdout(Stdio::piped()).stderr(Stdio::null());
        let procs = procs.clone();
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            })
        };
        let mut child = cmd.spawn().expect("probe");
        if child.id() == pid {
            let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
            return Some((child, lines));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

fn next_step(lines: &mut Lines<BufReader<ChildStdout>>) -> Value {
    let l = lines.next().expect("a step line").expect("read");
    serde_json::from_str(&l).expect("json step")
}

#[test]
fn a_process_given_the_stopped_daemons_pid_is_judged() {
    if !is_root() {
        skip("needs root");
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let d = Daemon::start(&[("stale", &enforce_policy("stale", "allow = []"))]);
    let daemon_pid = d.pid();
    let cgroup = d.dirs.parent_cgroup().join("stale");
    let dirs = d.stop_keep_pins();
    // The daemon is gone, its programs (pinned) still run; a tagged process
    // now holds the pid they were loaded with.
    let dir = tempfile::tempdir().expect("tempdir");
    let go = dir.path().join("go");
    let s = port.to_string();
    let Some((mut child, mut lines)) = spawn_with_pid(
        daemon_pid,
        &cgroup,
        &[
            "pid",
            "connect",
            "127.0.0.1",
            &s,
            "wait-file",
            path_str(&go),
            "connect",
            "127.0.0.1",
            &s,
        ],
    ) else {
        cleanup(&dirs);
        panic!("pid {daemon_pid} could not be had for the probe");
    };
    assert_eq!(
        next_step(&mut lines)["pid"].as_u64(),
        Some(daemon_pid as u64)
    );
    let st = next_step(&mut lines);
    assert_eq!(st["op"], "connect");
    assert_eq!(st["errno"], EPERM, "judged with no daemon running: {st:#}");

    // A new daemon: the same process, same pid, judged and reported.
    let d = Daemon::start_with(dirs).expect("restart");
    let tail = d.tail(Some("stale"));
    touch(&go);
    let st = next_step(&mut lines);
    let _ = child.wait();
    assert_eq!(st["errno"], EPERM, "{st:#}");
    let ev = net_event(&tail, "127.0.0.1", port);
    assert_net_event(
        &ev,
        "stale",
        daemon_pid as u64,
        "connect",
        "127.0.0.1",
        port,
    );
    // Both refusals were counted for the identity (the first one while no
    // daemon ran).
    let ids = d.cli_json(&["identities", "--json"]);
    let denied = ids
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["name"] == "stale")
        .map(|i| i["counters"]["denied"].as_u64().unwrap_or(0));
    assert!(denied >= Some(2), "{ids:#}");

    // Outside the identity the same connect works.
    probe_outside(&["connect", "127.0.0.1", &s]).assert_ok("connect", 0);
}

#[test]
fn the_daemon_never_tags_the_cgroup_it_runs_in() {
    if !is_root() {
        skip("needs root");
        return;
    }
    let own = OwnCgroup::new("daemon");
    let base = tempfile::tempdir().expect("tempdir");
    let mut dirs = Dirs::new(base.path());
    std::fs::write(
        dirs.policy_dir.join("a.toml"),
        enforce_policy("a", "allow = []"),
    )
    .expect("policy");
    dirs.daemon_cgroup = Some(own.0.clone());
    let d = Daemon::start_with(dirs).expect("daemon in its own cgroup");
    let out = d.cli(&["assign", "--identity", "a", "--cgroup", path_str(&own.0)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("holds the corral daemon"), "{err}");
    // Spelt through `..`, it is still the daemon's cgroup.
    let name = own.0.file_name().and_then(|n| n.to_str()).expect("name");
    let dotted = d.dirs.parent_cgroup().join("..").join(name);
    let out = d.cli(&["assign", "--identity", "a", "--cgroup", path_str(&dotted)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    // A thread of the daemon moves the whole daemon: refused like its pid.
    let tid = std::fs::read_dir(format!("/proc/{}/task", d.pid()))
        .expect("daemon threads")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|t| *t != d.pid())
        .expect("the daemon has threads");
    let out = d.cli(&["assign", "--identity", "a", "--pid", &tid.to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("that is the corral daemon"), "{err}");
    assert!(d.cli(&["status"]).status.success());

    // A daemon restarted inside a cgroup an earlier daemon tagged refuses
    // to start, and says why.
    let mut dirs = d.stop_keep_pins();
    dirs.daemon_cgroup = None;
    let d = Daemon::start_with(dirs).expect("daemon outside");
    let out = d.cli(&["assign", "--identity", "a", "--cgroup", path_str(&own.0)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut dirs = d.stop_keep_pins();
    dirs.daemon_cgroup = Some(own.0.clone());
    let err = match Daemon::start_with(dirs.clone()) {
        Ok(_) => panic!("a daemon started inside a tagged cgroup"),
        Err(e) => e,
    };
    assert!(err.contains("holds the corral daemon"), "{err}");
    cleanup(&dirs);
}
