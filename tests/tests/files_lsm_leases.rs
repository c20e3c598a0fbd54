//! Lease file grants: `[[leases.grant]] files = { write = [...] }` widens an
//! identity's `[files]` rules in the kernel while the lease lives, and the
//! BPF LSM program ends the grant on its own at the lease's end (the expiry
//! is in the map value), daemon or no daemon.
//!
//! Where BPF LSM is unavailable (our dev and CI hosts) file grants are
//! withheld — never widened — and the lease says so; the first test proves
//! that natively. The kernel half runs in `cargo xtask vm-test`'s guest.

use std::time::{Duration, Instant};

use corral_tests::{lease::PROBE_WAIT, *};
use serde_json::{Value, json};

/// A policy text that ignores the lease socket path.
type Maker = Box<dyn Fn(&std::path::Path) -> String>;

/// The shared lease lab (`corral_tests::lease::Lab`: start, stop, restart,
/// clean-up) with a file tree beside it.
struct Lab {
    lab: lease::Lab,
    t: ScratchTree,
}

impl Lab {
    /// A tree `refunds/{r.txt, secret/s.txt}`, `notes/n.txt` and the
    /// identity `agent`: reads everywhere in the tree, writes nowhere,
    /// `refunds/secret/` denied; the scope `refunds:issue` grants writing
    /// beneath `refunds/`.
    fn start() -> Option<Lab> {
        Lab::start_with("", &[])
    }

    /// `rotate`: more of `[leases]` (a `[leases.rotate]` table); `others`:
    /// more identities (name, policy).
    fn start_with(rotate: &str, others: &[(&str, &str)]) -> Option<Lab> {
        if !is_root() {
            return None;
        }
        let t = ScratchTree::new(
            &["tree/refunds/secret", "tree/notes"],
            &[
                "tree/refunds/r.txt",
                "tree/refunds/secret/s.txt",
                "tree/notes/n.txt",
            ],
        );
        let policy = format!(
            "[identity]\nname = \"agent\"\n[files]\n\
             read = [{sys}, \"{root}/\", \"{probe}\"]\n\
             write = [\"/dev/null\"]\ndeny = [\"{root}/refunds/secret/\"]\n\
             [leases]\nmax_ttl = \"1m\"\nscopes = [\"refunds:issue\", \"tickets:read\"]\n\
             {rotate}\n\
             [[leases.grant]]\nscope = \"refunds:issue\"\nfiles = {{ write = [\"{root}/refunds/\"] }}\n",
            sys = toml_list(&PROBE_SYSTEM_READ),
            root = t.p("tree"),
            probe = probe_real(),
        );
        let texts: Vec<(&str, String)> = std::iter::once(("agent", policy))
            .chain(others.iter().map(|(n, p)| (*n, p.to_string())))
            .collect();
        let makers: Vec<Maker> = texts
            .iter()
            .map(|(_, p)| {
                let p = p.clone();
                Box::new(move |_: &std::path::Path| p.clone()) as Maker
            })
            .collect();
        let policies: Vec<lease::PolicyText<'_>> = texts
            .iter()
            .zip(&makers)
            .map(|((n, _), m)| (*n, m.as_ref()))
            .collect();
        // Root's alone, as the daemon's state dir is under systemd (0700).
        let (lab, ()) = lease::Lab::start_prepared(&policies, &[], |dirs| {
            let base = dirs.state_dir.parent().expect("base dir");
            std::fs::set_permissions(base, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .expect("chmod");
        });
        Some(Lab { lab, t })
    }

    fn d(&self) -> &Daemon {
        self.lab.d()
    }

    fn p(&self, rel: &str) -> String {
        self.t.p(&format!("tree/{rel}"))
    }

    fn issue(&self, scopes: &[&str], ttl: &str) -> Value {
        self.lab.issue("agent", scopes, ttl)
    }

    fn write(&self, rel: &str) -> ProbeRun {
        self.d()
            .probe_as("agent", &["pid", "open", &self.p(rel), "w", "sleep", "0.3"])
    }
}

/// The refused write's event: who, what, and the leases held at the time.
fn write_event(tail: &Tail, pid: u64, path: &str, errno: &str) -> Value {
    expect_file_denial(tail, "agent", pid, path, "write", errno)
}

fn writable_outside(path: &str) {
    probe_outside(&["open", path, "w"]).assert_ok("open", 0);
}

/// Without BPF LSM the grant is withheld: the write stays refused (by
/// Landlock) and the lease says the grant is not enforced here.
#[test]
fn without_bpf_lsm_file_grants_are_withheld_and_said_so() {
    let Some(lab) = Lab::start() else { return };
    if lab.d().bpf_lsm_enforcing() {
        eprintln!("BPF LSM enforcing: the kernel tests below cover this host");
        return;
    }
    let v = lab.issue(&["refunds:issue"], "30s");
    assert_eq!(v["state"], "active", "{v:#}");
    assert_eq!(v["grants"][0]["files_enforced"], false, "{v:#}");
    assert!(
        v["warnings"][0]
            .as_str()
            .unwrap_or("")
            .contains("NOT ENFORCED"),
        "{v:#}"
    );
    let tail = lab.d().tail(Some("agent"));
    let r = lab.write("refunds/r.txt");
    r.assert_errno("open", 0, EACCES);
    let ev = write_event(&tail, r.pid(), &lab.p("refunds/r.txt"), "EACCES");
    assert_eq!(ev["file"]["layer"], "landlock", "{ev:#}");
    assert_eq!(ev["leases"][0]["id"], v["id"], "{ev:#}");
    writable_outside(&lab.p("refunds/r.txt"));
}

#[test]
fn a_file_grant_opens_writes_and_ends_in_the_kernel_with_the_daemon_stopped() {
    let Some(mut lab) = Lab::start() else { return };
    if !lab.d().bpf_lsm_or_skip() {
        return;
    }
    let target = lab.p("refunds/r.txt");
    let tail = lab.d().tail(Some("agent"));
    // No lease: refused in the kernel, with the event; fine untagged.
    let r = lab.write("refunds/r.txt");
    r.assert_eperm("open", 0);
    let ev = expect_lsm_denial(&tail, "agent", r.pid(), &target, "write");
    assert_eq!(ev["leases"], json!([]), "{ev:#}");
    writable_outside(&target);

    let v = lab.issue(&["refunds:issue"], "3s");
    assert_eq!(v["grants"][0]["files_enforced"], true, "{v:#}");
    let issued = Instant::now();
    // Granted now, the deny beneath still wins, and after the lease's end
    // refused again, with no daemon to take the grant out.
    let child = lab.d().spawn_probe_as(
        "agent",
        &[
            "pid",
            "open",
            &target,
            "w",
            "open",
            &lab.p("refunds/secret/s.txt"),
            "w",
            "sleep",
            "4.5",
            "open",
            &target,
            "w",
        ],
    );
    std::thread::sleep(Duration::from_millis(700));
    lab.lab.stop();
    let r = child.finish_within(PROBE_WAIT);
    r.assert_ok("open", 0); // granted
    r.assert_eperm("open", 1); // deny beats the grant
    r.assert_eperm("open", 2); // ended with no daemon
    assert!(issued.elapsed() > Duration::from_secs(3));
    writable_outside(&target);

    lab.lab.restart();
    let l = lab
        .d()
        .cli_json(&["lease", "show", v["id"].as_str().unwrap(), "--json"]);
    assert_eq!(l["state"], "expired", "{l:#}");
}

#[test]
fn revoking_the_lease_closes_the_file_grant_and_events_name_it() {
    let Some(lab) = Lab::start() else { return };
    if !lab.d().bpf_lsm_or_skip() {
        return;
    }
    let target = lab.p("refunds/r.txt");
    let other = lab.p("notes/n.txt");
    let v = lab.issue(&["refunds:issue"], "30s");
    let id = v["id"].as_str().expect("id").to_string();
    let tail = lab.d().tail(Some("agent"));
    let r = lab.d().probe_as(
        "agent",
        &[
            "pid", "open", &target, "w", "open", &other, "w", "sleep", "0.3",
        ],
    );
    r.assert_ok("open", 0); // granted
    r.assert_eperm("open", 1); // not granted
    // A denial under the lease names it.
    let ev = write_event(&tail, r.pid(), &other, "EPERM");
    assert_eq!(
        ev["leases"],
        json!([{ "id": id, "scopes": ["refunds:issue"] }]),
        "{ev:#}"
    );
    writable_outside(&other);

    let t = Instant::now();
    let v = lab.d().cli_json(&["lease", "revoke", &id, "--json"]);
    let r = lab.write("refunds/r.txt");
    // A report, not a check: the daemon's own figure (request to the new
    // ruleset in force) and, from the CLI start, until a fresh probe's
    // write is refused.
    eprintln!(
        "revoke: kernel applied in {} µs; CLI start → write refused {:?}",
        v["kernel_applied_us"],
        t.elapsed()
    );
    r.assert_eperm("open", 0); // revoked
    let ev = write_event(&tail, r.pid(), &target, "EPERM");
    assert_eq!(ev["leases"], json!([]), "{ev:#}");
    writable_outside(&target);
}

/// "Only that identity may read it": the rotated token file goes to the
/// user the agent runs as (0400), and in the kernel every other identity
/// is refused the token directory even when its own rules allow all of `/`.
#[test]
fn a_rotated_token_is_its_owners_and_only_its_identity_reads_it() {
    let other = "[identity]\nname = \"other\"\n[files]\nread = [\"/\"]\n";
    let rotate =
        "[leases.rotate]\nscopes = [\"tickets:read\"]\nttl = \"30s\"\nowner = \"65534:65534\"\n";
    let Some(lab) = Lab::start_with(rotate, &[("other", other)]) else {
        return;
    };
    let token = std::fs::canonicalize(&lab.lab.dirs.state_dir)
        .expect("state dir")
        .join("tokens/agent.jwt");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !token.exists() {
        assert!(
            Instant::now() < deadline,
            "no token file\n{}",
            lab.d().log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(&token).expect("token");
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (65534, 65534, 0o400));
    // The state dir is root's (0700): said loudly, not silently unreadable.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lab.d().log_text().contains("cannot reach its token") {
        assert!(Instant::now() < deadline, "{}", lab.d().log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    if !lab.d().bpf_lsm_enforcing() {
        skip("the kernel half: BPF LSM unavailable (proven in cargo xtask vm-test)");
        return;
    }
    let t = token.display().to_string();
    let tail = lab.d().tail(None);
    let r = lab
        .d()
        .probe_as("other", &["pid", "open", &t, "r", "sleep", "0.3"]);
    r.assert_eperm("open", 0); // another identity
    let ev = tail.expect(|e| e["kind"] == "file" && e["file"]["path"] == t.as_str());
    assert_event_source(&ev, "file", "other", r.pid());
    assert!(
        ev["rule"]
            .as_str()
            .unwrap_or("")
            .contains("built-in: lease token files"),
        "{ev:#}"
    );
    let r = lab.d().probe_as("agent", &["pid", "open", &t, "r"]);
    r.assert_ok("open", 0); // its own identity
    probe_outside(&["open", &t, "r"]).assert_ok("open", 0); // untagged root
}
