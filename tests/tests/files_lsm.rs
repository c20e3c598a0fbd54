//! `[files]` rules enforced by the BPF LSM programs: which opens, writes
//! and execs an identity's rules allow, the events of those refused, rule
//! changes and daemon restarts, and the open benchmark. The ways around a
//! rule are in `files_lsm_bypass.rs`, self-protection in
//! `files_lsm_protect.rs`, lease file grants in `files_lsm_leases.rs`.
//!
//! These need a kernel that runs BPF LSM programs; our dev and CI machines
//! do not (PVM: no trampolines), so there every test says "skipping: …"
//! and `cargo xtask vm-test` runs them in a QEMU guest booting Debian's
//! kernel (where `CORRAL_VM=1` turns a missing BPF LSM into a failure).
//!
//! Every denial test shows the errno inside the identity, success outside
//! it (untagged), and the event with identity, tgid, comm and path.

use std::{path::Path, time::Duration};

use corral_tests::*;
use serde_json::Value;

// --- mechanisms --------------------------------------------------------------------

/// Never pretend: status says whether the LSM half is in force and, when
/// not, why — and the rest of Corral still enforces.
#[test]
fn mechanisms_say_what_is_enforced() {
    if !is_root() {
        return;
    }
    let d = Daemon::start(&[("netonly", NETONLY_POLICY)]);
    let files = d.mechanism("bpf lsm: files");
    let protect = d.mechanism("bpf lsm: self-protection");
    let net = d.status()["daemon"]["mechanisms"][0].clone();
    assert_eq!(net["state"], "enforcing", "{net}");
    if in_vm() {
        assert_eq!(files["state"], "enforcing", "{files}");
        assert_eq!(protect["state"], "enforcing", "{protect}");
    } else if files["state"] != "enforcing" {
        assert_eq!(files["state"], "unavailable", "{files}");
        assert!(
            files["detail"]
                .as_str()
                .unwrap_or("")
                .contains("NOT ENFORCED"),
            "{files}"
        );
        assert!(d.log_text().contains("NOT ENFORCED"), "{}", d.log_text());
        // `corral doctor` tries for real too.
        let doc = d.cli_json(&["doctor", "--json"]);
        let lsm = doc
            .as_array()
            .and_then(|c| c.iter().find(|c| c["check"] == "BPF LSM").cloned())
            .unwrap_or(Value::Null);
        assert_eq!(lsm["ok"], false, "{lsm}");
    }
}

// --- file rules --------------------------------------------------------------------

#[test]
fn allowed_read_and_denied_reads_with_events() {
    let Some((t, d)) = lsm_lab() else { return };
    let tail = d.tail(Some("files"));
    let (a, secret, shadow) = (t.p("kb/a.md"), t.p("secret.txt"), t.p("shadow"));
    let r = d.probe_as(
        "files",
        &[
            "pid", "open", &a, "r", "open", &secret, "r", "open", &shadow, "r",
        ],
    );
    r.assert_ok("open", 0);
    r.assert_eperm("open", 1);
    r.assert_eperm("open", 2);
    let ev = expect_lsm_denial(&tail, "files", r.pid(), &secret, "read");
    assert_eq!(ev["reason"], "no-rule", "{ev:#}");
    let ev = expect_lsm_denial(&tail, "files", r.pid(), &shadow, "read");
    assert_eq!(ev["reason"], "deny-rule", "{ev:#}");
    assert!(
        ev["rule"].as_str().unwrap_or("").contains("shadow"),
        "the deciding rule is named: {ev:#}"
    );
    let out = probe_outside(&["open", &secret, "r", "open", &shadow, "r"]);
    out.assert_ok("open", 0);
    out.assert_ok("open", 1);
}

#[test]
fn read_allowed_but_write_denied() {
    let Some((t, d)) = lsm_lab() else { return };
    let tail = d.tail(Some("files"));
    let (a, new, tk) = (t.p("kb/a.md"), t.p("kb/new"), t.p("tickets/t.txt"));
    let r = d.probe_as(
        "files",
        &[
            "pid",
            "open",
            &a,
            "r",
            "open",
            &a,
            "w",
            "append",
            &a,
            "ro-trunc",
            &a,
            "create",
            &new,
            "truncate-path",
            &a,
            "open",
            &tk,
            "rw",
            "create",
            &t.p("tickets/new"),
        ],
    );
    r.assert_ok("open", 0);
    r.assert_eperm("open", 1); // O_WRONLY
    r.assert_eperm("append", 0); // O_APPEND
    r.assert_eperm("ro-trunc", 0); // O_RDONLY|O_TRUNC
    r.assert_eperm("create", 0); // O_CREAT in a read-only dir
    assert!(!Path::new(&new).exists(), "nothing was created");
    r.assert_eperm("truncate-path", 0); // truncate(2)
    assert_eq!(
        std::fs::read_to_string(&a).unwrap(),
        "data\n",
        "not truncated"
    );
    r.assert_ok("open", 2); // a write rule
    r.assert_ok("create", 1); // create under a write rule
    expect_lsm_denial(&tail, "files", r.pid(), &a, "write");
    let ev = tail.expect(|e| e["kind"] == "file" && e["file"]["path"] == new.as_str());
    assert_eq!(ev["file"]["op"], "create", "{ev:#}");
    assert_eq!(ev["tgid"].as_u64(), Some(r.pid()), "{ev:#}");
    let out = probe_outside(&["open", &a, "w", "create", &new]);
    out.assert_ok("open", 0);
    out.assert_ok("create", 0);
}

#[test]
fn deny_beats_a_shorter_allow() {
    let Some((t, d)) = lsm_lab() else { return };
    let tail = d.tail(Some("files"));
    let (x, vip) = (t.p("tickets/vip/x"), t.p("tickets/vip"));
    let r = d.probe_as(
        "files",
        &[
            "pid",
            "open",
            &t.p("tickets/t.txt"),
            "r",
            "open",
            &x,
            "r",
            "readdir",
            &vip,
        ],
    );
    r.assert_ok("open", 0);
    r.assert_eperm("open", 1);
    r.assert_eperm("readdir", 0); // the directory itself
    let ev = expect_lsm_denial(&tail, "files", r.pid(), &x, "read");
    assert_eq!(ev["reason"], "deny-rule", "{ev:#}");
    assert!(ev["rule"].as_str().unwrap_or("").contains("vip"), "{ev:#}");
    // The directory is looked up as `.../vip/`.
    expect_lsm_denial(&tail, "files", r.pid(), &format!("{vip}/"), "read");
    probe_outside(&["open", &x, "r"]).assert_ok("open", 0);
}

#[test]
fn beneath_rule_has_no_sibling_prefix_leak() {
    let Some((t, d)) = lsm_lab() else { return };
    let tail = d.tail(Some("files"));
    let (kbx, kbmd) = (t.p("kbx/doc"), t.p("kb.md"));
    let r = d.probe_as(
        "files",
        &[
            "pid",
            "readdir",
            &t.p("kb"),
            "open",
            &t.p("kb/sub/b.md"),
            "r",
            "open",
            &kbx,
            "r",
            "open",
            &kbmd,
            "r",
        ],
    );
    r.assert_ok("readdir", 0); // kb/ covers the directory kb itself
    r.assert_ok("open", 0);
    r.assert_eperm("open", 1); // /kb/ must not cover /kbx
    r.assert_eperm("open", 2); // /kb/ must not cover /kb.md
    expect_lsm_denial(&tail, "files", r.pid(), &kbx, "read");
    expect_lsm_denial(&tail, "files", r.pid(), &kbmd, "read");
    probe_outside(&["open", &kbx, "r"]).assert_ok("open", 0);
}

#[test]
fn exact_file_rules() {
    let Some((t, d)) = lsm_lab() else { return };
    let tail = d.tail(Some("files"));
    let (h, bak) = (t.p("hostname"), t.p("hostname.bak"));
    let r = d.probe_as(
        "files",
        &["pid", "open", &h, "r", "open", &bak, "r", "open", &h, "w"],
    );
    r.assert_ok("open", 0);
    r.assert_eperm("open", 1);
    r.assert_eperm("open", 2); // an exact read rule grants no write
    expect_lsm_denial(&tail, "files", r.pid(), &bak, "read");
    probe_outside(&["open", &bak, "r"]).assert_ok("open", 0);
}

#[test]
fn exec_allowed_and_denied() {
    let Some((t, d)) = lsm_lab() else { return };
    let tail = d.tail(Some("files"));
    let (yes, no) = (t.p("bin/corral-probe"), t.p("nox/corral-probe"));
    let r = d.probe_as("files", &["pid", "exec", &yes, "exec", &no]);
    r.assert_ok("exec", 0);
    r.assert_eperm("exec", 1);
    // The exec happens in the forked child: same comm, another tgid.
    let ev = tail.expect(|e| e["kind"] == "file" && e["file"]["path"] == no.as_str());
    assert_eq!(ev["identity"], "files", "{ev:#}");
    assert_eq!(ev["comm"], "corral-probe", "{ev:#}");
    assert_eq!(ev["file"]["access"], "exec", "{ev:#}");
    assert!(ev["tgid"].as_u64().is_some_and(|p| p > 0), "{ev:#}");
    probe_outside(&["exec", &no]).assert_ok("exec", 0);
}

#[test]
fn a_process_in_a_sub_cgroup_is_still_the_identity() {
    let Some((t, d)) = lsm_lab() else { return };
    let tail = d.tail(Some("files"));
    let sub = d.dirs.parent_cgroup().join("files/worker");
    std::fs::create_dir_all(&sub).expect("sub-cgroup");
    let shadow = t.p("shadow");
    let r = probe_outside(&[
        "join-cgroup",
        path_str(&sub),
        "pid",
        "open",
        &t.p("kb/a.md"),
        "r",
        "open",
        &shadow,
        "r",
    ]);
    r.assert_ok("join-cgroup", 0);
    r.assert_ok("open", 0);
    r.assert_eperm("open", 1);
    let ev = expect_lsm_denial(&tail, "files", r.pid(), &shadow, "read");
    // The event names the task's own cgroup (a cgroup's id is its inode).
    let worker_id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&sub).expect("stat"));
    assert_eq!(ev["cgroup_id"].as_u64(), Some(worker_id), "{ev:#}");
}

#[test]
fn untagged_processes_are_unaffected() {
    let Some((t, d)) = lsm_lab() else { return };
    let tail = d.tail(None);
    let out = probe_outside(&[
        "open",
        &t.p("shadow"),
        "r",
        "open",
        &t.p("secret.txt"),
        "w",
        "exec",
        &t.p("nox/corral-probe"),
        "rename",
        &t.p("tickets/vip/x"),
        &t.p("kb/x"),
        "bpf-map",
    ]);
    for (op, n) in [
        ("open", 0),
        ("open", 1),
        ("exec", 0),
        ("rename", 0),
        ("bpf-map", 0),
    ] {
        out.assert_ok(op, n);
    }
    let evs = tail.drain_for(Duration::from_millis(500));
    assert!(
        evs.iter().all(|e| e["kind"] == "lost"),
        "no events for untagged processes: {evs:#?}"
    );
}

// --- changes and restarts ----------------------------------------------------------

/// A policy edit reaches the kernel at once (new ruleset beside the old,
/// one flip, old entries removed), for processes already running too.
#[test]
fn file_rule_changes_apply_at_once() {
    let Some((t, d)) = lsm_lab() else { return };
    let secret = t.p("secret.txt");
    let r = d.probe_as("files", &["open", &secret, "r"]);
    r.assert_eperm("open", 0);
    let before = d.generation();
    let p = lsm_files_policy(&t).replace("read = [", &format!("read = [\"{secret}\", "));
    d.write_policy("files", &p);
    d.wait_generation_past(before, Duration::from_secs(20));
    let r = d.probe_as(
        "files",
        &["open", &secret, "r", "open", &t.p("shadow"), "r"],
    );
    r.assert_ok("open", 0); // the new rule is in force
    r.assert_eperm("open", 1);
    // One ruleset's worth of entries: the old one is gone.
    let (_, id) = d.api("GET", "/v1/identities/files", None);
    let entries = id["kernel_entries"]["files"].as_u64().unwrap_or(0);
    let depth = path_str(&t.root).matches('/').count() as u64;
    assert!(entries > 0 && entries < 40 + depth, "{id:#}");
}

/// The LSM links are pinned: with the daemon stopped the rules stay in
/// force, and a new daemon hands the links over without a gap (and without
/// piling up a second set).
#[test]
fn lsm_enforcement_survives_a_daemon_restart() {
    let Some((t, d)) = lsm_lab() else { return };
    let shadow = t.p("shadow");
    let cg = d.dirs.parent_cgroup().join("files");
    let links = d.dirs.pin_dir.join("links/lsm");
    let pins = |p: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let before = pins(&links);
    assert!(before.iter().any(|p| p == "corral_file_open"), "{before:?}");
    let dirs = d.stop_keep_pins();
    // No daemon: a process joining the identity is still judged.
    let r = probe_outside(&["join-cgroup", path_str(&cg), "open", &shadow, "r"]);
    r.assert_eperm("open", 0); // no daemon, rules in force
    let d = Daemon::start_with(dirs).expect("restart");
    assert_eq!(pins(&links), before, "links handed over, not duplicated");
    let r = d.probe_as(
        "files",
        &["open", &shadow, "r", "open", &t.p("kb/a.md"), "r"],
    );
    r.assert_eperm("open", 0);
    r.assert_ok("open", 1);
}

// --- measurement -------------------------------------------------------------------

/// The table: each row's median, as a ratio over the baseline's.
fn print_rows(rows: &[(&str, Vec<f64>)], n: &str, rounds: usize) {
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let base_ns = median(&rows[0].1);
    println!(
        "\nopen+close of one allowed file, {n} per run, median of {rounds} (TCG guest: compare ratios only)"
    );
    for (name, v) in rows {
        let m = median(v);
        println!(
            "  {name:<28} {m:>9.0} ns  x{:.2}  (+{:.0} ns)",
            m / base_ns,
            m - base_ns
        );
    }
}

/// open+close of one allowed file: untagged, tagged with 10 / 1,000 /
/// 100,000 rules, and the same allowlist under Landlock (no Corral), as
/// ratios over the untagged baseline. Run by `cargo xtask vm-test --bench`.
#[test]
#[ignore = "benchmark: cargo xtask vm-test --bench"]
fn bench_file_open() {
    if std::env::var_os("CORRAL_VM_BENCH").is_none() || !is_root() {
        skip("benchmark: set CORRAL_VM_BENCH=1 (cargo xtask vm-test --bench)");
        return;
    }
    let t = lsm_tree();
    let target = t.p("kb/a.md");
    let base = lsm_files_policy(&t);
    let with_rules = |name: &str, n: usize| -> String {
        let extra: Vec<String> = (0..n.saturating_sub(10))
            .map(|i| format!("/srv/bench/d{}/f{i}", i % 1000))
            .collect();
        base.replace("name = \"files\"", &format!("name = \"{name}\""))
            .replace("read = [", &format!("read = [{}, ", toml_list(&extra)))
            .replace("[, ", "[")
    };
    let (p10, p1k, p100k) = (
        with_rules("r10", 10),
        with_rules("r1k", 1_000),
        with_rules("r100k", 100_000),
    );
    let n = std::env::var("CORRAL_BENCH_OPENS").unwrap_or_else(|_| "20000".into());
    let ns = |r: &ProbeRun| -> f64 {
        let s = r.step("open-loop", 0);
        assert_eq!(s["errors"], 0, "{r:#?}");
        s["ns_per_op"].as_f64().expect("ns")
    };
    let rounds = 3;
    let mut rows: Vec<(&str, Vec<f64>)> = vec![
        ("no Corral (baseline)", vec![]),
        ("Landlock, same allowlist", vec![]),
        ("Corral, untagged process", vec![]),
        ("Corral, tagged, 10 rules", vec![]),
        ("Corral, tagged, 1,000 rules", vec![]),
        ("Corral, tagged, 100,000 rules", vec![]),
        // Protected paths are judged for identities without [files] too.
        ("Corral, tagged, no [files]", vec![]),
    ];
    let dirs: Vec<String> = PROBE_SYSTEM_READ
        .iter()
        .map(|s| s.to_string())
        .chain([t.p("kb"), t.p("hostname"), probe_real()])
        .filter(|p| Path::new(p).exists())
        .collect();
    // Without Corral: the plain kernel, and Landlock enforcing the same
    // allowlist (what the fallback costs where BPF LSM is missing).
    for _ in 0..rounds {
        rows[0]
            .1
            .push(ns(&probe_outside(&["open-loop", &target, &n])));
        let mut ll: Vec<&str> = vec!["landlock-read"];
        ll.extend(dirs.iter().map(String::as_str));
        ll.extend(["--", "open-loop", &target, &n]);
        let r = probe_outside(&ll);
        r.assert_ok("landlock-read", 0);
        rows[1].1.push(ns(&r));
    }
    let Some(d) = lsm_daemon(&[
        ("r10", &p10),
        ("r1k", &p1k),
        ("r100k", &p100k),
        ("netonly", NETONLY_POLICY),
    ]) else {
        return;
    };
    for _ in 0..rounds {
        rows[2]
            .1
            .push(ns(&probe_outside(&["open-loop", &target, &n])));
        for (row, id) in [(3, "r10"), (4, "r1k"), (5, "r100k"), (6, "netonly")] {
            rows[row]
                .1
                .push(ns(&d.probe_as(id, &["open-loop", &target, &n])));
        }
    }
    print_rows(&rows, &n, rounds);
    let (_, ids) = d.api("GET", "/v1/identities", None);
    for i in ids.as_array().into_iter().flatten() {
        println!("  {}: kernel entries {}", i["name"], i["kernel_entries"]);
    }
}
