//! `corral policy suggest` learning `[files]` in audit mode, where BPF LSM
//! reports what it would refuse (in the guest: `cargo xtask vm-test`;
//! natively the daemon reports the Landlock fallback and this skips, and
//! `policy_suggest.rs` learns files from enforce-mode refusals instead).
//! The proposal is applied, the identity switched to enforce, and the same
//! opens then succeed with no denial, while a file the workload never
//! opened is refused (EPERM, allowed outside, event).

use std::time::Duration;

use corral_tests::*;

#[test]
fn audit_mode_file_opens_become_rules_that_then_enforce() {
    let data: Vec<String> = (0..12).map(|i| format!("data/f{i}")).collect();
    let mut files: Vec<&str> = data.iter().map(String::as_str).collect();
    files.extend(["docs/a.md", "docs/b.md", "other/x"]);
    let t = ScratchTree::new(&["data", "docs", "out", "other"], &files);
    let mut read: Vec<String> = PROBE_SYSTEM_READ.map(String::from).to_vec();
    read.push(probe_real());
    let policy = format!(
        "[identity]\nname = \"learn\"\nmode = \"audit\"\n[files]\nread = [{}]\n\
         write = [\"/dev/null\"]\n",
        toml_list(&read)
    );
    let Some(d) = lsm_daemon(&[("learn", &policy)]) else {
        return;
    };
    let mut steps: Vec<String> = vec!["pid".into()];
    for f in &files[..14] {
        steps.extend(["open".into(), t.p(f), "r".into()]);
    }
    steps.extend(["create".into(), t.p("out/report.txt")]);
    steps.extend(["readdir".into(), t.p("docs")]);
    let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
    let r = d.probe_as("learn", &steps);
    for n in 0..14 {
        r.assert_ok("open", n);
    }
    r.assert_ok("create", 0);

    let v = wait_for(Duration::from_secs(30), "audit events on disk", || {
        let v = d.cli_json(&["policy", "suggest", "--identity", "learn", "--json"]);
        (suggested(&v, "read").len() == 4 && !suggested(&v, "write").is_empty()).then_some(v)
    });
    assert_eq!(
        suggested(&v, "read"),
        [
            t.p("data/"),
            t.p("docs"),
            t.p("docs/a.md"),
            t.p("docs/b.md")
        ],
        "12 files: their directory; 2: exact; a listed directory: itself"
    );
    assert!(
        suggested(&v, "write").contains(&t.p("out/report.txt").as_str()),
        "{v}"
    );
    let r_ = &v["replay"];
    assert_eq!(r_["allowed"], r_["operations"], "{r_}");

    let applied = d.cli_json(&[
        "policy",
        "suggest",
        "--identity",
        "learn",
        "--apply",
        "--yes",
        "--json",
    ]);
    assert_eq!(applied["applied"]["ok"], true, "{applied}");
    let file = d.dirs.policy_dir.join("learn.toml");
    let text = std::fs::read_to_string(&file).expect("policy");
    let g = d.generation();
    d.write_policy(
        "learn",
        &text.replace("mode = \"audit\"", "mode = \"enforce\""),
    );
    d.wait_generation_past(g, Duration::from_secs(60));

    let tail = d.tail(Some("learn"));
    let r = d.probe_as("learn", &steps);
    for n in 0..14 {
        r.assert_ok("open", n);
    }
    r.assert_ok("create", 0);
    r.assert_ok("readdir", 0);
    let late = tail.drain_kind("file", Duration::from_secs(2));
    assert!(late.is_empty(), "{late:#?}");

    let other = t.p("other/x");
    let r = d.probe_as("learn", &["pid", "open", &other, "r"]);
    r.assert_eperm("open", 0);
    probe_outside(&["open", &other, "r"]).assert_ok("open", 0);
    expect_lsm_denial(&tail, "learn", r.pid(), &other, "read");
}
