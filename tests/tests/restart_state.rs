//! What a restarted daemon must rebuild from the pins and the state dir:
//! the cgroups assigned with `corral assign --cgroup` (orphaning, freezes
//! and lease attestation reach them), and ruleset ids that a daemon killed
//! mid-apply left entries under (never handed to another identity).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    time::Duration,
};

use agent_common::{
    identity::IdentityState,
    maps,
    net::{Net4Key, NetRuleList},
};
use aya::maps::{HashMap as BpfHashMap, LpmTrie, Map, MapData};
use corral_tests::{lease::*, *};
use serde_json::{Value, json};

/// A cgroup of the test's own outside the daemon's parent (like a systemd
/// unit's), with the test's probe in it; both gone on drop.
struct Assigned {
    cg: PathBuf,
    probe: Option<Child>,
    lines: Option<std::io::Lines<BufReader<ChildStdout>>>,
    go: tempfile::TempDir,
}

impl Assigned {
    /// Makes the cgroup, assigns it to `identity`, and starts the probe
    /// inside it; the probe waits for `go(n)` before each group of steps.
    fn new(d: &Daemon, identity: &str, steps: &[&str]) -> Assigned {
        let cg = cgroup2_root().join(format!("{}-ext", d.dirs.tag));
        std::fs::create_dir(&cg).expect("own cgroup");
        let rel = cg
            .strip_prefix(cgroup2_root())
            .expect("rel")
            .to_string_lossy()
            .into_owned();
        let out = d.cli(&["assign", "--identity", identity, "--cgroup", &rel]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let go = tempfile::tempdir().expect("tmp");
        let mut child = Command::new(probe_bin())
            .args(steps.iter().map(|s| s.replace("GO", path_str(go.path()))))
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("probe");
        std::fs::write(cg.join("cgroup.procs"), child.id().to_string()).expect("move probe");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Assigned {
            cg,
            probe: Some(child),
            lines: Some(lines),
            go,
        }
    }

    fn go(&self, n: u32) {
        touch(&self.go.path().join(n.to_string()));
    }

    /// The probe's next step line.
    fn next(&mut self, op: &str) -> Value {
        let lines = self.lines.as_mut().expect("stdout");
        for l in lines.by_ref() {
            let v: Value = serde_json::from_str(&l.expect("probe stdout")).expect("json step");
            if v["op"] == op {
                return v;
            }
        }
        panic!("probe ended without a {op} step");
    }

    fn pid(&self) -> u64 {
        u64::from(self.probe.as_ref().expect("probe").id())
    }
}

impl Drop for Assigned {
    fn drop(&mut self) {
        // `cgroup.kill` also ends a frozen probe.
        let _ = std::fs::write(self.cg.join("cgroup.kill"), "1");
        if let Some(mut c) = self.probe.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = wait_for_removal(&self.cg);
    }
}

fn wait_for_removal(cg: &Path) -> bool {
    for _ in 0..50 {
        if std::fs::remove_dir(cg).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn identity<'a>(ids: &'a Value, name: &str) -> &'a Value {
    ids.as_array()
        .expect("identities")
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no identity {name}: {ids:#}"))
}

#[test]
fn assigned_cgroup_is_orphaned_not_untagged_after_restart_and_policy_removal() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let s = port.to_string();
    let d = Daemon::start(&[(
        "unit",
        &enforce_policy("unit", &format!("allow = [\"tcp://127.0.0.1:{port}\"]")),
    )]);
    let mut a = Assigned::new(
        &d,
        "unit",
        &[
            "wait-file",
            "GO/1",
            "pid",
            "connect",
            "127.0.0.1",
            &s,
            "wait-file",
            "GO/2",
            "connect",
            "127.0.0.1",
            &s,
        ],
    );
    a.go(1);
    // Allowed by the policy while it exists.
    assert_eq!(a.next("connect")["ok"], true);

    let dirs = d.stop_keep_pins();
    let d = Daemon::start_with(dirs).expect("restart");
    let ids = d.cli_json(&["identities", "--json"]);
    assert_eq!(
        identity(&ids, "unit")["assigned_cgroups"],
        json!([a.cg]),
        "the restarted daemon names the assigned cgroup: {ids:#}"
    );
    let recorded: Value = serde_json::from_slice(
        &std::fs::read(d.dirs.state_dir.join("assigned.json")).expect("assigned.json"),
    )
    .expect("json");
    assert_eq!(recorded["assigned"][0]["path"], json!(a.cg), "{recorded:#}");

    let tail = d.tail(Some("unit"));
    let g = d.generation();
    std::fs::remove_file(d.dirs.policy_dir.join("unit.toml")).expect("remove policy");
    d.wait_generation_past(g, Duration::from_secs(10));
    let ids = d.cli_json(&["identities", "--json"]);
    let unit = identity(&ids, "unit");
    assert_eq!(unit["orphaned"], true, "{ids:#}");
    assert_eq!(unit["processes"], 1, "{ids:#}");

    // Still tagged, everything denied: EPERM inside, the event names the
    // identity, the probe and the target; the same connect works outside.
    a.go(2);
    let step = a.next("connect");
    assert_eq!(step["errno"], libc::EPERM, "{step}");
    let ev = tail.expect(|e| e["kind"] == "net" && e["tgid"] == a.pid());
    assert_net_event(&ev, "unit", a.pid(), "connect", "127.0.0.1", port);
    assert_eq!(ev["verdict"], "deny", "{ev:#}");
    probe_outside(&["connect", "127.0.0.1", &s]).assert_ok("connect", 0);
}

#[test]
fn assigned_cgroup_is_found_and_attached_again_without_its_record_or_links() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let s = port.to_string();
    let d = Daemon::start(&[("unit", &enforce_policy("unit", "allow = []"))]);
    let mut a = Assigned::new(
        &d,
        "unit",
        &["wait-file", "GO/1", "pid", "connect", "127.0.0.1", &s],
    );
    let dirs = d.stop_keep_pins();
    // Lost while no daemon ran: the record, and the links at the cgroup
    // (their pins were all that kept those programs attached).
    let cg_id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&a.cg).expect("cg"));
    std::fs::remove_file(dirs.state_dir.join("assigned.json")).expect("assigned.json");
    std::fs::remove_dir_all(dirs.pin_dir.join("links").join(cg_id.to_string())).expect("links");
    let d = Daemon::start_with(dirs).expect("restart");
    let ids = d.cli_json(&["identities", "--json"]);
    assert_eq!(
        identity(&ids, "unit")["assigned_cgroups"],
        json!([a.cg]),
        "{ids:#}"
    );
    let tail = d.tail(Some("unit"));
    a.go(1);
    assert_eq!(a.next("connect")["errno"], libc::EPERM);
    let ev = tail.expect(|e| e["kind"] == "net" && e["tgid"] == a.pid());
    assert_net_event(&ev, "unit", a.pid(), "connect", "127.0.0.1", port);
    probe_outside(&["connect", "127.0.0.1", &s]).assert_ok("connect", 0);
    assert!(d.dirs.state_dir.join("assigned.json").exists());
}

#[test]
fn lease_attestation_and_freeze_reach_an_assigned_cgroup_after_restart() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let no = tcp_listener("127.0.0.1:0");
    let ns = no.to_string();
    let leases = format!(
        "{}[anomaly]\nmax_denials = 10\nwindow = \"30s\"\nactions = [\"alert\", \"freeze\"]\n",
        leases_section(port, port)
    );
    let mut lab = Lab::start(&[("unit", &|s: &Path| policy("unit", s, "", &leases))]);
    let sock = lab.sock();
    let body = call_body(&["tickets:read"], "30s", json!({}));
    let mut a = Assigned::new(
        lab.d(),
        "unit",
        &[
            "wait-file",
            "GO/1",
            "pid",
            "lease-call",
            &sock,
            "POST",
            "/v1/leases",
            &body,
            "burst",
            "127.0.0.1",
            &ns,
            "12",
            "connect",
            "127.0.0.1",
            &ns,
        ],
    );
    lab.stop();
    lab.restart();
    let tail = lab.d().tail(Some("unit"));
    a.go(1);

    // The agent socket attests the caller by its cgroup: the assigned one.
    let ans = a.next("lease-call");
    assert_eq!(ans["status"], 200, "{ans:#}");
    assert_eq!(ans["body"]["identity"], "unit", "{ans:#}");
    assert_eq!(ans["body"]["requested_by"]["pid"].as_u64(), Some(a.pid()));

    // Denials from the assigned cgroup trip the anomaly response, which
    // freezes it too.
    let ev = tail.expect(|e| e["kind"] == "net" && e["tgid"] == a.pid());
    assert_net_event(&ev, "unit", a.pid(), "connect", "127.0.0.1", no);
    let fr = tail.expect(|e| e["kind"] == "anomaly" && e["anomaly"]["action"] == "freeze");
    assert!(
        fr["anomaly"]["cgroups"]
            .as_array()
            .expect("cgroups")
            .contains(&json!(a.cg)),
        "{fr:#}"
    );
    assert_eq!(fr["anomaly"]["frozen"], true, "{fr:#}");
    assert!(frozen(&a.cg));
    probe_outside(&["connect", "127.0.0.1", &ns]).assert_ok("connect", 0);
    let out = lab.d().cli(&["thaw", "unit"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!frozen(&a.cg));
}

/// Rulesets `IDENTITIES` points at.
fn live_rulesets(mdir: &Path) -> BTreeSet<u32> {
    let m = MapData::from_pin(mdir.join(maps::IDENTITIES)).expect("IDENTITIES pin");
    let ids: BpfHashMap<MapData, u32, IdentityState> =
        BpfHashMap::try_from(Map::HashMap(m)).expect("IDENTITIES");
    ids.iter()
        .filter_map(Result::ok)
        .map(|(_, st)| st.ruleset)
        .collect()
}

/// `NET4_RULES` entries per ruleset, counting at most `limit` in all.
fn net4_by_ruleset(mdir: &Path, limit: usize) -> BTreeMap<u32, usize> {
    let m = MapData::from_pin(mdir.join(maps::NET4_RULES)).expect("NET4_RULES pin");
    let trie: LpmTrie<MapData, Net4Key, NetRuleList> =
        LpmTrie::try_from(Map::LpmTrie(m)).expect("NET4_RULES");
    let mut out = BTreeMap::new();
    for k in trie.keys().filter_map(Result::ok).take(limit) {
        *out.entry(u32::from_be(k.data().ruleset_be)).or_default() += 1;
    }
    out
}

/// 127.0.0.1:`port` first, then `n` /32s above it (the compiler writes
/// entries in address order, so the loopback entry is in the kernel as soon
/// as the apply has begun).
fn big_policy(port: u16, n: u32) -> String {
    let mut allow = vec![format!("\"tcp://127.0.0.1:{port}\"")];
    allow.extend((0..n).map(|k| {
        format!(
            "\"tcp://128.{}.{}.{}:443\"",
            k >> 16,
            (k >> 8) & 0xff,
            k & 0xff
        )
    }));
    enforce_policy("big", &format!("allow = [{}]", allow.join(", ")))
}

#[test]
fn a_killed_apply_leaves_no_rules_for_the_next_identity() {
    if !is_root() {
        return;
    }
    const RULES: u32 = 80_000;
    const MID: usize = 2_000;
    let port = tcp_listener("127.0.0.1:0");
    let ok = tcp_listener("127.0.0.2:0");
    let base = tempfile::tempdir().expect("tmp");
    let d = Daemon::start_with(Dirs::new(base.path())).expect("daemon");
    let mdir = d.dirs.pin_dir.join("maps");
    d.write_policy("big", &big_policy(port, RULES));
    // Killed while the entries are being written, before the flip.
    let written = wait_for(Duration::from_secs(120), "the large apply to begin", || {
        assert!(
            live_rulesets(&mdir).is_empty(),
            "the apply finished before it could be killed: raise RULES"
        );
        let n: usize = net4_by_ruleset(&mdir, MID).values().sum();
        (n >= MID).then_some(n)
    });
    // SAFETY: plain syscall on our own child.
    unsafe { libc::kill(d.pid() as i32, libc::SIGKILL) };
    let dirs = d.stop_keep_pins();
    assert!(
        live_rulesets(&mdir).is_empty(),
        "the apply finished before the kill: raise RULES"
    );
    let stale = net4_by_ruleset(&mdir, usize::MAX);
    let stale_ids: BTreeSet<u32> = stale.keys().copied().collect();
    eprintln!(
        "MEASURE killed mid-apply: {written}+ entries seen, {stale:?} left (ruleset: entries)"
    );
    assert_eq!(stale_ids.len(), 1, "{stale:?}");
    assert!(
        stale.values().sum::<usize>() < RULES as usize,
        "not mid-apply: {stale:?}"
    );

    // The killed identity's policy is gone; another one comes.
    std::fs::remove_file(dirs.policy_dir.join("big.toml")).expect("remove big");
    std::fs::write(
        dirs.policy_dir.join("next.toml"),
        enforce_policy("next", &format!("allow = [\"tcp://127.0.0.2:{ok}\"]")),
    )
    .expect("next policy");
    let d = Daemon::start_with(dirs).expect("restart");
    let tail = d.tail(Some("next"));
    // Decisions are `next`'s own: the killed apply's loopback allow is not.
    d.assert_connect_denied(&tail, "next", "127.0.0.1", port);
    d.assert_connect_allowed("next", "127.0.0.2", ok);

    // Only `next`'s entries are left in the kernel.
    let live = live_rulesets(&mdir);
    let now = net4_by_ruleset(&mdir, usize::MAX);
    let ids = d.cli_json(&["identities", "--json"]);
    let next = identity(&ids, "next");
    assert_eq!(
        now.keys().copied().collect::<BTreeSet<_>>(),
        live,
        "entries of rulesets nothing points at: {now:?}"
    );
    assert_eq!(
        now.values().sum::<usize>() as u64,
        next["kernel_entries"]["v4"].as_u64().expect("v4"),
        "{now:?} {next:#}"
    );
}
