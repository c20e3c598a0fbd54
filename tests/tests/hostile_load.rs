//! The daemon under a hostile local user: the agent socket is
//! world-connectable, so unprivileged processes flood it with idle
//! connections and oversized bodies, and an agent storms it with requests.
//! Meanwhile the operator's control socket answers, a revoke still reaches
//! the kernel, an anomaly freeze still happens, memory stays bounded, and
//! afterwards no descriptor is left behind.

use std::{
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use corral_tests::{
    Tail, assert_net_event, is_root,
    lease::{Lab, PROBE_WAIT, frozen, leases_section, policy},
    probe_bin, probe_outside, tcp_listener, wait_for,
};
use serde_json::Value;

/// A flooder: the probe, as `uid`, in the test's own cgroup (no identity).
fn flooder(uid: u32, steps: &[&str]) -> Child {
    Command::new(probe_bin())
        .args(steps)
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("flooder")
}

fn finish(c: Child) -> Value {
    let out = c.wait_with_output().expect("flooder output");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("null")).expect("flooder JSON")
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// `corral status` must answer (a liveness check with a generous bound,
/// not a timing assertion): returns how long it took.
fn status_answers(lab: &Lab) -> Duration {
    let t = Instant::now();
    let mut c = Command::new(corral_tests::corral_bin())
        .arg("--socket")
        .arg(&lab.dirs.socket)
        .args(["status", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("status");
    while c.try_wait().expect("wait").is_none() {
        if t.elapsed() > Duration::from_secs(20) {
            let _ = c.kill();
            panic!("`corral status` did not answer during the flood");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = c.wait_with_output().expect("status output");
    assert!(out.status.success(), "{out:?}");
    t.elapsed()
}

/// An agent storming its own socket is rate-limited and reported.
fn storm_is_rate_limited(lab: &Lab, tail: &Tail, sock: &str) {
    let storm = lab.d().probe_as("agent", &["lease-storm", sock, "100"]);
    let s = &storm.step("lease-storm", 0)["statuses"];
    assert!(
        s["429"].as_u64().unwrap_or(0) > 0,
        "storm must hit the rate limit: {s}"
    );
    assert!(s["200"].as_u64().unwrap_or(0) > 0, "some pass: {s}");
    let rl = tail.expect(|e| e["kind"] == "lease" && e["lease"]["action"] == "rate-limited");
    assert_eq!(rl["identity"], "agent");
    assert!(rl["lease"]["refused"].as_u64().unwrap() >= 1, "{rl:#}");
}

/// What the flooders saw: capped, told why, bodies refused unread.
fn flooders_were_capped(held: Value, b: Value, rss_before: u64, rss_max: u64) {
    assert!(held["max_held"].as_u64().unwrap() <= 32, "{held}");
    assert!(held["refused"].as_u64().unwrap() > 0, "{held}");
    let codes = b["statuses"].as_object().expect("statuses");
    assert!(
        codes.keys().all(|c| c == "413" || c == "503"),
        "oversized bodies get 413 (or 503 when over the connection limit): {b}"
    );
    assert!(codes.get("413").is_some(), "{b}");
    assert_eq!(b["chunked"], 411, "{b}");
    eprintln!(
        "MEASURE flood: idle held at most {} (refused {}, closed by daemon {}), bodies {:?}; \
         daemon RSS {} KiB before, {} KiB at most during",
        held["max_held"], held["refused"], held["closed_by_daemon"], codes, rss_before, rss_max
    );
}

#[test]
fn agent_socket_flood_leaves_control_enforcement_and_anomaly_response_intact() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let no = tcp_listener("127.0.0.1:0");
    let leases = format!(
        "{}[anomaly]\nmax_denials = 10\nwindow = \"30s\"\nactions = [\"alert\", \"freeze\"]\n",
        leases_section(port, port)
    );
    let lab = Lab::start_opts(
        &[("agent", &|s: &Path| policy("agent", s, "", &leases))],
        &["--lease-rate", "20"],
    );
    let d = lab.d();
    let pid = d.pid();
    let sock = lab.sock();
    // Settle, then the baseline the daemon must come back to.
    std::thread::sleep(Duration::from_millis(500));
    let (fds_before, rss_before) = (fds(pid), rss_kib(pid));
    let tail = d.tail(Some("agent"));

    // Unprivileged, outside any identity: 2,000 idle connections (reopened
    // whenever the daemon drops them) and a stream of 1 MiB bodies, from two
    // uids.
    let idle = flooder(65534, &["hold-conns", &sock, "2000", "12"]);
    let bodies = flooder(65533, &["body-flood", &sock, "1048576", "60"]);
    std::thread::sleep(Duration::from_millis(1500));

    // The control socket answers, and reports the load against its limits.
    let took = status_answers(&lab);
    let st = d.status();
    let agent = &st["sockets"]["agent"];
    assert!(
        agent["open"].as_u64().unwrap() <= 32 * 2,
        "two flooding uids hold at most 32 each: {agent:#}"
    );
    assert!(
        agent["refused_over_per_uid"].as_u64().unwrap() > 0,
        "{agent:#}"
    );
    eprintln!("MEASURE `corral status` under the flood: {took:?}");
    let mut rss_max = rss_kib(pid);

    storm_is_rate_limited(&lab, &tail, &sock);
    rss_max = rss_max.max(rss_kib(pid));

    // A revoke by the operator reaches the kernel.
    let v = lab.issue("agent", &["db:write"], "50s");
    let id = v["id"].as_str().unwrap().to_string();
    let ps = port.to_string();
    let (r, latency_us, _) = lab.revoke_and_watch(&id, port);
    eprintln!("MEASURE revoke -> kernel deny under the flood: {latency_us} us");
    let ev = tail.expect(|e| e["kind"] == "net" && e["net"]["port"] == port);
    assert_net_event(&ev, "agent", r.pid(), "connect", "127.0.0.1", port);
    probe_outside(&["connect", "127.0.0.1", &ps]).assert_ok("connect", 0);
    rss_max = rss_max.max(rss_kib(pid));

    // The anomaly response still freezes the agent.
    let ns = no.to_string();
    let burst = lab.spawn_probe("agent", &["pid", "burst", "127.0.0.1", &ns, "12"]);
    let fr = tail.expect(|e| e["kind"] == "anomaly" && e["anomaly"]["action"] == "freeze");
    assert_eq!(fr["anomaly"]["frozen"], true, "{fr:#}");
    let cg = lab.dirs.parent_cgroup().join("agent");
    assert!(frozen(&cg));
    probe_outside(&["connect", "127.0.0.1", &ns]).assert_ok("connect", 0);
    let out = d.cli(&["thaw", "agent"]);
    assert!(out.status.success(), "{out:?}");
    burst.finish_within(PROBE_WAIT);
    rss_max = rss_max.max(rss_kib(pid));

    flooders_were_capped(finish(idle), finish(bodies), rss_before, rss_max);
    assert!(
        rss_max < rss_before + 64 * 1024,
        "daemon memory must stay bounded: {rss_before} KiB -> {rss_max} KiB"
    );

    // Recovered: every connection slot and descriptor given back.
    let after = wait_for(Duration::from_secs(20), "descriptors back", || {
        let n = fds(pid);
        let open = d.status()["sockets"]["agent"]["open"].as_u64();
        (n <= fds_before + 2 && open == Some(0)).then_some(n)
    });
    eprintln!("MEASURE daemon descriptors: {fds_before} before, {after} after the flood");
    drop(tail);
}

#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    if !is_root() {
        return;
    }
    let lab = Lab::start_opts(
        &[("agent", &|s: &Path| policy("agent", s, "", ""))],
        &["--lease-idle-timeout", "1s"],
    );
    let sock = lab.sock();
    // Idle connections are dropped by the daemon, not held forever.
    let idle = flooder(65534, &["hold-conns", &sock, "5", "4"]);
    let held = finish(idle);
    assert!(
        held["closed_by_daemon"].as_u64().unwrap() >= 5,
        "idle connections must be closed after the idle timeout: {held}"
    );
    assert_eq!(held["refused"], 0, "{held}");
    let open = wait_for(Duration::from_secs(10), "slots freed", || {
        lab.d().status()["sockets"]["agent"]["open"]
            .as_u64()
            .filter(|&n| n == 0)
    });
    assert_eq!(open, 0);
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime: fields 14 and 15 of stat, 12 and 13 after `comm`.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// Sets the soft descriptor limit of `pid` (the hard one stays); returns
/// the old soft limit.
fn set_nofile(pid: u32, n: u64) -> u64 {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscall; `old` is a valid out-parameter.
    let rc = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above, with a valid new limit.
    let rc = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    old.rlim_cur
}

#[test]
fn out_of_descriptors_backs_off_instead_of_spinning() {
    if !is_root() {
        return;
    }
    let lab = Lab::start(&[("agent", &|s: &Path| policy("agent", s, "", ""))]);
    let d = lab.d();
    let pid = d.pid();
    // Leave the daemon a handful of descriptors, then queue connections
    // it cannot accept.
    let soft = set_nofile(pid, fds(pid) as u64 + 4);
    let idle = flooder(65534, &["hold-conns", &lab.sock(), "40", "4"]);
    std::thread::sleep(Duration::from_millis(1000));
    let t0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(pid) - t0;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    eprintln!("MEASURE daemon CPU while out of descriptors: {used} ticks in 2 s (hz {hz})");
    // A spinning accept loop burns a whole core (2 s); backing off, a
    // few ticks.
    assert!(used < hz / 2, "accept loop spins at EMFILE: {used} ticks");
    finish(idle);
    set_nofile(pid, soft);
    let st = d.status();
    assert!(
        st["sockets"]["agent"]["accept_errors"].as_u64().unwrap() > 0,
        "{:#}",
        st["sockets"]
    );
    assert!(d.log_text().contains("backing off"), "{}", d.log_text());
    // Served again once descriptors are back.
    let r = d.probe_as(
        "agent",
        &["lease-call", &lab.sock(), "GET", "/v1/whoami", ""],
    );
    assert_eq!(r.step("lease-call", 0)["status"], 200, "{r:#?}");
}
