//! Property test: for random `[files]` sections (nested and sibling paths,
//! exact and `/` rules of the same path, deny and allow at equal
//! specificity, with and without an `exec` list, lease grants with
//! different ends), the compiled FILE_RULES entries decide as the written
//! policy means (`policies/README.md`, "How an open is decided"; a grant
//! that has ended falls back to the written rules alone).
//!
//! `model_file` reads the generated rules; `kernel_file` replays agent-ebpf
//! `lsm/files/verdict.rs` (longest byte prefix of the key, a directory
//! looked up with `/` appended, `exact` vs `beneath`, the grant's end and
//! fallback) on the compiled entries.

use agent_common::{
    file::{ACCESS_EXEC, ACCESS_READ, ACCESS_WRITE, FILE_VALUE_EXACT},
    net::{ACTION_ALLOW, ACTION_DENY},
};
use proptest::prelude::*;

use super::prop_net::{LeaseSpec, leases, leases_toml, load, toml_list};

const PATHS: [&str; 8] = ["/", "/a/", "/a", "/a/b/", "/a/b", "/a/bc", "/a/b/c", "/x/"];

/// One written rule: list 0 read, 1 write, 2 exec, 3 deny.
#[derive(Debug, Clone)]
struct FileSpec {
    list: u8,
    path: &'static str,
}

fn file_spec(lists: std::ops::Range<u8>) -> impl Strategy<Value = FileSpec> {
    (lists, prop::sample::select(PATHS.to_vec())).prop_map(|(list, path)| FileSpec { list, path })
}

/// A rule as the model reads it: the bits it speaks about, deny, end (0:
/// never).
#[derive(Clone, Copy)]
struct Meaning {
    path: &'static str,
    bits: u32,
    deny: bool,
    end: u64,
}

fn bits(list: u8, exec_list: bool) -> u32 {
    let implied = if exec_list { 0 } else { ACCESS_EXEC };
    match list {
        0 => ACCESS_READ | implied,
        1 => ACCESS_READ | ACCESS_WRITE | implied,
        2 => ACCESS_READ | ACCESS_EXEC,
        _ => ACCESS_READ | ACCESS_WRITE | ACCESS_EXEC,
    }
}

/// Specificity of `rule` for the path `p` (no trailing `/`; the root is
/// ""), None when it does not speak about it: an exact rule names one path
/// (file or directory); a `/` rule covers its directory and what lies
/// beneath, and loses to an exact rule of the same path.
fn covers(rule: &str, p: &str, is_dir: bool) -> Option<(usize, bool)> {
    match rule.strip_suffix('/') {
        Some(d) => {
            let beneath = p.len() > d.len() && p.starts_with(d) && p.as_bytes()[d.len()] == b'/';
            ((is_dir && p == d) || beneath).then_some((d.len(), false))
        }
        None => (rule == p).then_some((p.len(), true)),
    }
}

/// The written meaning for one access bit at `now`: the most specific rule
/// speaking about it, deny at equal specificity, the longest-lived of equal
/// rules; a grant that has ended gives way to the written rules alone.
fn model_file(rules: &[Meaning], p: &str, is_dir: bool, bit: u32, now: u64) -> u32 {
    // (specificity, exact, deny, lifetime): the greatest decides.
    type Rank = (usize, bool, bool, u64);
    let mut best: Option<(Rank, &Meaning)> = None;
    for r in rules.iter().filter(|r| r.bits & bit != 0) {
        if let Some((len, exact)) = covers(r.path, p, is_dir) {
            let life = if r.end == 0 { u64::MAX } else { r.end };
            let key = (len, exact, r.deny, life);
            if best.as_ref().is_none_or(|(b, _)| key > *b) {
                best = Some((key, r));
            }
        }
    }
    match best {
        None => 0,
        Some((_, r)) if r.end != 0 && r.end <= now => {
            let written: Vec<Meaning> = rules.iter().filter(|r| r.end == 0).copied().collect();
            model_file(&written, p, is_dir, bit, now)
        }
        Some((_, r)) if r.deny => ACTION_DENY,
        Some(_) => ACTION_ALLOW,
    }
}

/// agent-ebpf `lsm::files::verdict::{lookup, decide}` on compiled entries.
fn kernel_file(
    entries: &[super::lsm::FileEntry],
    p: &str,
    is_dir: bool,
    bit: u32,
    now: u64,
) -> u32 {
    let key = if is_dir {
        format!("{p}/")
    } else {
        p.to_string()
    };
    let key = key.as_bytes();
    let Some(v) = entries
        .iter()
        .filter(|e| key.starts_with(&e.path))
        .max_by_key(|e| e.path.len())
        .map(|e| e.value)
    else {
        return 0;
    };
    let len = key.len() as u32;
    let own = v.len == len || (is_dir && v.flags & FILE_VALUE_EXACT != 0 && v.len + 1 == len);
    let idx = [ACCESS_READ, ACCESS_WRITE, ACCESS_EXEC]
        .iter()
        .position(|b| *b == bit)
        .expect("bit");
    let d = if own { v.exact[idx] } else { v.beneath[idx] };
    if d.expires_ns != 0 && d.expires_ns <= now {
        d.fallback_action
    } else {
        d.action
    }
}

proptest! {
    #![proptest_config(super::prop_net::config())]

    #[test]
    fn file_entries_decide_as_the_written_policy(
        written in prop::collection::vec(file_spec(0..4), 0..=8),
        exec_list in any::<bool>(),
        grants in prop::collection::vec(prop::collection::vec(file_spec(0..2), 0..=2), 2),
        live in leases(),
    ) {
        let list = |l: u8| toml_list(written.iter().filter(|r| r.list == l).map(|r| r.path.to_string()));
        let exec = if exec_list || written.iter().any(|r| r.list == 2) {
            format!("exec = {}\n", list(2))
        } else {
            String::new()
        };
        let exec_list = !exec.is_empty();
        let bodies: Vec<String> = grants
            .iter()
            .map(|g| {
                let l = |n: u8| toml_list(g.iter().filter(|r| r.list == n).map(|r| r.path.to_string()));
                format!("files = {{ read = {}, write = {} }}\n", l(0), l(1))
            })
            .collect();
        let text = format!(
            "[identity]\nname = \"prop\"\n[files]\nread = {}\nwrite = {}\n{exec}deny = {}\n{}",
            list(0), list(1), list(3), leases_toml(&bodies),
        );
        let (p, _) = load(&text, &live);
        let rules = super::lsm::compile::rules_of(&p.files).expect("[files] is written");
        let entries = super::lsm::compile(&rules).expect("compiles");

        let mut meaning: Vec<Meaning> = written
            .iter()
            .map(|r| Meaning { path: r.path, bits: bits(r.list, exec_list), deny: r.list == 3, end: 0 })
            .collect();
        for LeaseSpec { scopes, end } in &live {
            for &s in scopes {
                meaning.extend(grants[s].iter().map(|r| Meaning {
                    path: r.path,
                    bits: bits(r.list, exec_list),
                    deny: false,
                    end: *end,
                }));
            }
        }
        let files = ["/a", "/a/b", "/a/bc", "/a/b/c", "/a/b/c/d", "/x", "/x/q", "/y/z", "/ab"];
        let dirs = ["", "/a", "/a/b", "/a/b/c", "/x", "/y"];
        let probes = files.iter().map(|f| (*f, false)).chain(dirs.iter().map(|d| (*d, true)));
        for (path, is_dir) in probes {
            for bit in [ACCESS_READ, ACCESS_WRITE, ACCESS_EXEC] {
                for now in [0u64, 1500, 2500, 3500] {
                    prop_assert_eq!(
                        kernel_file(&entries, path, is_dir, bit, now),
                        model_file(&meaning, path, is_dir, bit, now),
                        "{}{} bit {} at {}\n{}\nleases {:?}",
                        path, if is_dir { "/" } else { "" }, bit, now, text, live
                    );
                }
            }
        }
    }
}
