//! The audit log under faults: a full disk never slows or stops
//! enforcement and is reported, then declared in the log; a daemon killed
//! with SIGKILL loses at most the last second, and its successor says so.

use std::{
    io::Read as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use corral_tests::{audit::*, lease::*, *};
use serde_json::Value;

fn agent(s: &Path) -> String {
    policy("agent", s, "", "")
}

fn status_text(lab: &Lab, cmd: &str) -> String {
    let out = lab.d().cli(&[cmd]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Status (first thing after the header) and doctor say the log is
/// failing; returns how many records status says were not written.
fn failing_is_said_loudly(lab: &Lab) -> u64 {
    let st = lab.d().status();
    let f = &st["audit"]["failing"];
    assert_eq!(f["error"], "No space left on device", "{st:#}");
    let not_written = f["not_written"].as_u64().expect("not_written");
    assert!(not_written >= 2, "{st:#}");
    let text = status_text(lab, "status");
    let line = text.lines().nth(1).unwrap_or_default();
    assert!(
        line.starts_with("!! audit: FAILING (No space left on device), ")
            && line.contains(" records not written"),
        "{text}"
    );
    let doc = status_text(lab, "doctor");
    assert!(
        doc.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("audit log") && l.contains("FAILING")),
        "{doc}"
    );

    not_written
}

#[test]
fn a_full_disk_is_reported_never_blocks_enforcement_and_the_gap_is_declared() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let ps = port.to_string();
    let (mut lab, disk) = Lab::start_prepared(&[("agent", &agent)], &[], |d: &Dirs| {
        Tmpfs::mount(&d.state_dir.join("audit"), "256k")
    });
    let dir = disk.path.clone();
    let tail = lab.d().tail(None);

    // Denials until the log's filesystem is full.
    let r = connect_burst(lab.d(), "agent", &ps, 1500);
    r.assert_eperm("connect", 0);
    assert_eq!(r.step("burst", 0)["eperm"], 1500, "{r:#?}");
    let failing = tail.expect(|e| e["kind"] == "audit" && e["audit"]["action"] == "write-failing");
    assert_eq!(
        failing["audit"]["error"], "No space left on device",
        "{failing:#}"
    );

    // Enforcement and the event stream are untouched: the next denial is
    // refused and reported as ever, and the port is open to others.
    let r2 = lab
        .d()
        .probe_as("agent", &["pid", "connect", "127.0.0.1", &ps]);
    r2.assert_eperm("connect", 0);
    let ev = tail.expect(|e| e["kind"] == "net" && e["tgid"] == r2.pid());
    assert_net_event(&ev, "agent", r2.pid(), "connect", "127.0.0.1", port);
    probe_outside(&["connect", "127.0.0.1", &ps]).assert_ok("connect", 0);

    let not_written = failing_is_said_loudly(&lab);

    // Room again: the writer recovers by itself, declaring the gap first.
    disk.resize("4m");
    let rec = tail.expect(|e| e["kind"] == "audit" && e["audit"]["action"] == "write-recovered");
    let declared = rec["audit"]["not_written"].as_u64().expect("count");
    assert!(declared >= not_written, "{rec:#} vs {not_written}");
    assert!(lab.d().status()["audit"]["failing"].is_null());
    let r3 = lab
        .d()
        .probe_as("agent", &["pid", "connect", "127.0.0.1", &ps]);
    r3.assert_eperm("connect", 0);
    lab.stop();

    // The log verifies, and says what it does not hold.
    let (ok, text) = verify(&dir, &["--sealed"]);
    assert!(ok && text.contains("intact"), "{text}");
    assert!(
        text.contains(&format!("{declared} records were not written"))
            && text.contains("(audit log write failed): No space left on device"),
        "{text}"
    );
    let losses = query(&dir, &["--kind", "loss"]);
    assert_eq!(losses.len(), 1, "{losses:#?}");
    assert_eq!(losses[0]["body"]["count"], declared);
    // Right after it: the recovery notice, then the logged denial; the one
    // made while failing is part of the declared gap.
    let all = query(&dir, &[]);
    let at = all
        .iter()
        .position(|r| r["type"] == "loss")
        .expect("loss record");
    assert_eq!(all[at + 1]["body"]["audit"]["action"], "write-recovered");
    let net = |pid: u64| {
        all.iter()
            .any(|r| r["body"]["kind"] == "net" && r["body"]["tgid"] == pid)
    };
    assert!(net(r3.pid()) && !net(r2.pid()));
    lab.restart();
}

/// A probe in the identity's cgroup that waits for `go` before connecting
/// to `port`: it can be made to act while no daemon runs.
fn waiting_probe(lab: &Lab, go: &Path, port: &str) -> std::process::Child {
    let child = Command::new(probe_bin())
        .args([
            "pid",
            "wait-file",
            path_str(go),
            "connect",
            "127.0.0.1",
            port,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("probe");
    let pid = child.id().to_string();
    let out = lab
        .d()
        .cli(&["assign", "--identity", "agent", "--pid", &pid]);
    assert!(out.status.success(), "{out:?}");
    child
}

#[test]
fn a_killed_daemon_loses_at_most_the_last_second_and_its_successor_says_so() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let ps = port.to_string();
    let mut lab = Lab::start(&[("agent", &agent)]);
    // A clean stop first: the killed run then has a checkpoint to name
    // (the default interval, 60 s, writes none during this test).
    lab.stop();
    lab.restart();
    let dir = lab.dirs.state_dir.join("audit");
    let state: Value =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).expect("state.json"))
            .expect("json");
    let go = tempfile::tempdir().expect("tmp");
    let go_file = go.path().join("go");
    let mut later = waiting_probe(&lab, &go_file, &ps);

    let n = 40;
    let r = connect_burst(lab.d(), "agent", &ps, n);
    r.assert_eperm("connect", 0);
    assert_eq!(r.step("burst", 0)["eperm"], n, "{r:#?}");
    // Past the flush interval (1 s), then no shutdown at all.
    std::thread::sleep(Duration::from_millis(1500));
    lab.kill();

    // With no daemon, the pins still refuse; the event waits in the ring.
    std::fs::write(&go_file, "").expect("go");
    let status = wait_for(Duration::from_secs(20), "the probe", || {
        later.try_wait().expect("wait")
    });
    let mut out = String::new();
    later
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("probe output");
    let down = ProbeRun::from(std::process::Output {
        status,
        stdout: out.into_bytes(),
        stderr: Vec::new(),
    });
    down.assert_eperm("connect", 0);
    probe_outside(&["connect", "127.0.0.1", &ps]).assert_ok("connect", 0);

    lab.restart();
    std::thread::sleep(Duration::from_millis(1500));
    let starts = query(&dir, &["--kind", "start"]);
    let last = &starts.last().expect("start")["body"];
    assert_eq!(last["previous_run"], "unclean", "{starts:#?}");
    assert_eq!(
        last["previous_checkpoint"], state["checkpoint"],
        "{starts:#?}"
    );
    // Every denial made a second before the kill is on disk.
    let net = query(&dir, &["--identity", "agent", "--kind", "net"]);
    let mine = net.iter().filter(|e| e["body"]["tgid"] == r.pid()).count();
    assert_eq!(mine as u64, n + 1, "{net:#?}");
    let ev = &net
        .iter()
        .find(|e| e["body"]["tgid"] == r.pid())
        .expect("denial")["body"];
    assert_net_event(ev, "agent", r.pid(), "connect", "127.0.0.1", port);
    let (ok, text) = verify(&dir, &[]);
    assert!(ok && text.contains("intact"), "{text}");
    assert!(
        text.contains("(1 after a run that ended without a checkpoint)"),
        "{text}"
    );
    kernel_queued(&net, &down, &starts, port);
}

/// The denial made while no daemon ran: read from the ring by the next
/// one and logged with its kernel time, from before that daemon started.
fn kernel_queued(net: &[Value], down: &ProbeRun, starts: &[Value], port: u16) {
    let Some(rec) = net.iter().find(|e| e["body"]["tgid"] == down.pid()) else {
        panic!("the denial made while the daemon was down is not logged: {net:#?}");
    };
    let ev = &rec["body"];
    assert_event_source(ev, "net", "agent", down.pid());
    assert_eq!(ev["net"]["port"], port, "{ev:#}");
    let started = starts.last().expect("start")["time"]
        .as_str()
        .expect("time");
    assert!(
        ev["time"].as_str().expect("time") < started,
        "{ev:#} vs {started}"
    );
}
