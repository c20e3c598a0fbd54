//! Every file in `policies/` loads, and every one of its `[network]` rules
//! reaches the kernel maps: the entries are counted from the TOML itself
//! (a rule the loader dropped would otherwise never be looked for), and
//! read back from the pinned LPM tries, not from the daemon's own report (a
//! TOML allowlist that never reached the kernel is the bug this guards
//! against).

use std::net::IpAddr;

use agent_common::{
    maps,
    net::{KEY_FIXED_BITS, Net4Key, Net6Key, NetRuleList},
};
use aya::maps::{LpmTrie, MapData, lpm_trie::Key};
use corral_tests::*;

fn class(rule: &serde_json::Value) -> u32 {
    use agent_common::net::*;
    match (rule["direction"].as_str(), rule["proto"].as_str()) {
        (Some("connect"), Some("tcp")) => CLASS_TCP,
        (Some("connect"), Some("udp")) => CLASS_UDP,
        (Some("bind"), Some("tcp")) => CLASS_BIND_TCP,
        (Some("bind"), Some("udp")) => CLASS_BIND_UDP,
        other => panic!("unexpected rule kind {other:?}"),
    }
}

/// Each file's identity and its `[network]` entries as written, read with
/// a TOML parser of the test's own (not the daemon's loader).
fn toml_network_entries(files: &[(String, String)]) -> Vec<(String, Vec<String>)> {
    files
        .iter()
        .map(|(file, text)| {
            let v: toml::Value = text.parse().unwrap_or_else(|e| panic!("{file}: {e}"));
            let name = v["identity"]["name"].as_str().expect("identity.name");
            let net = v.get("network");
            let entries = ["allow", "deny"]
                .iter()
                .filter_map(|k| net.and_then(|n| n.get(k)).and_then(toml::Value::as_array))
                .flatten()
                .map(|e| e.as_str().expect("a rule is a string").to_owned())
                .collect();
            (name.to_owned(), entries)
        })
        .collect()
}

fn has_rule(list: &NetRuleList, id: u32) -> bool {
    list.rules[..list.count as usize]
        .iter()
        .any(|r| r.rule_id == id)
}

type V4 = LpmTrie<MapData, Net4Key, NetRuleList>;
type V6 = LpmTrie<MapData, Net6Key, NetRuleList>;

/// A rule's own network address looked up exactly as the kernel would for
/// a destination inside it.
fn lookup(
    v4: &V4,
    v6: &V6,
    ruleset: u32,
    rule: &serde_json::Value,
) -> Result<NetRuleList, aya::maps::MapError> {
    let (addr, _len) = rule["net"]
        .as_str()
        .expect("net")
        .split_once('/')
        .expect("cidr");
    let addr: IpAddr = addr.parse().expect("ip");
    let cls = class(rule);
    match addr {
        IpAddr::V4(a) => v4.get(
            &Key::new(
                KEY_FIXED_BITS + 32,
                Net4Key {
                    ruleset_be: ruleset.to_be(),
                    class_be: cls.to_be(),
                    addr: a.octets(),
                },
            ),
            0,
        ),
        IpAddr::V6(a) => v6.get(
            &Key::new(
                KEY_FIXED_BITS + 128,
                Net6Key {
                    ruleset_be: ruleset.to_be(),
                    class_be: cls.to_be(),
                    addr: a.octets(),
                },
            ),
            0,
        ),
    }
}

#[test]
fn bundled_policies_reach_the_kernel_maps() {
    if !is_root() {
        return;
    }
    let files = bundled_policies();
    assert!(files.len() >= 3, "expected the bundled example policies");
    let d = Daemon::start(&policy_refs(&files));

    let mdir = d.dirs.pin_dir.join("maps");
    let v4: LpmTrie<MapData, Net4Key, NetRuleList> = LpmTrie::try_from(aya::maps::Map::LpmTrie(
        MapData::from_pin(mdir.join(maps::NET4_RULES)).expect("pin"),
    ))
    .expect("v4 trie");
    let v6: LpmTrie<MapData, Net6Key, NetRuleList> = LpmTrie::try_from(aya::maps::Map::LpmTrie(
        MapData::from_pin(mdir.join(maps::NET6_RULES)).expect("pin"),
    ))
    .expect("v6 trie");

    let written = toml_network_entries(&files);
    let in_toml: usize = written.iter().map(|(_, e)| e.len()).sum();
    assert!(
        in_toml >= 10,
        "the bundled policies have {in_toml} network rules"
    );
    let mut checked = 0;
    for (name, entries) in &written {
        let shown = d.cli_json(&["policy", "show", name, "--json"]);
        let compiled: Vec<&str> = shown["network"]
            .as_array()
            .expect("rules")
            .iter()
            .filter_map(|r| r["text"].as_str())
            .collect();
        for e in entries {
            assert!(
                compiled.iter().any(|t| t.contains(e.as_str())),
                "{name}: `{e}` is in the TOML but in no compiled rule: {compiled:?}"
            );
        }
        let ruleset = shown["kernel_entries"]["ruleset"]
            .as_u64()
            .expect("ruleset") as u32;
        assert!(ruleset > 0, "{name} has no ruleset");
        for rule in shown["network"].as_array().expect("rules") {
            let id = rule["id"].as_u64().expect("id") as u32;
            let list = lookup(&v4, &v6, ruleset, rule);
            let list =
                list.unwrap_or_else(|e| panic!("{name}: rule {rule} not in the kernel: {e}"));
            // A longer prefix may shadow the rule's own entry, but then the
            // pushed-down list still carries it (unless a narrower rule makes
            // it unreachable for that address, which the bundled files avoid).
            assert!(
                has_rule(&list, id),
                "{name}: rule #{id} ({}, {}) missing from kernel list {list:?}",
                rule["text"],
                rule["net"]
            );
            checked += 1;
        }
    }
    assert!(
        checked >= in_toml,
        "{checked} kernel entries checked for {in_toml} rules in the TOML"
    );
}

/// Each file's identity and its `[files]` entries as written: (list, path).
fn toml_file_entries(files: &[(String, String)]) -> Vec<(String, Vec<(String, String)>)> {
    files
        .iter()
        .map(|(file, text)| {
            let v: toml::Value = text.parse().unwrap_or_else(|e| panic!("{file}: {e}"));
            let name = v["identity"]["name"].as_str().expect("identity.name");
            let f = v.get("files");
            let entries = ["read", "write", "exec", "deny"]
                .iter()
                .flat_map(|k| {
                    f.and_then(|f| f.get(k))
                        .and_then(toml::Value::as_array)
                        .into_iter()
                        .flatten()
                        .map(move |p| (k.to_string(), p.as_str().expect("a path").to_owned()))
                })
                .collect();
            (name.to_owned(), entries)
        })
        .collect()
}

/// Every `[files]` path of the bundled policies reaches `FILE_RULES` as an
/// entry of its own length, deciding its access as written: the file half
/// of the golden test, where BPF LSM enforces files (the guest).
#[test]
fn bundled_file_rules_reach_the_kernel_map() {
    use agent_common::{
        file::{
            ACCESS_IDX_EXEC, ACCESS_IDX_READ, ACCESS_IDX_WRITE, FILE_KEY_FIXED_BITS,
            FILE_KEY_PATH_LEN, FileKey, FileRuleValue,
        },
        net::{ACTION_ALLOW, ACTION_DENY},
    };
    if !is_root() {
        return;
    }
    let files = bundled_policies();
    let d = Daemon::start(&policy_refs(&files));
    if !d.bpf_lsm_or_skip() {
        return;
    }
    let trie: LpmTrie<MapData, FileKey, FileRuleValue> =
        LpmTrie::try_from(aya::maps::Map::LpmTrie(
            MapData::from_pin(d.dirs.pin_dir.join("maps").join(maps::FILE_RULES)).expect("pin"),
        ))
        .expect("file trie");
    let written = toml_file_entries(&files);
    let in_toml: usize = written.iter().map(|(_, e)| e.len()).sum();
    assert!(
        in_toml >= 20,
        "the bundled policies have {in_toml} file rules"
    );
    for (name, entries) in &written {
        let shown = d.cli_json(&["policy", "show", name, "--json"]);
        let ruleset = shown["kernel_entries"]["ruleset"]
            .as_u64()
            .expect("ruleset") as u32;
        for (list, path) in entries {
            let mut key = FileKey {
                ruleset_be: ruleset.to_be(),
                path: [0; FILE_KEY_PATH_LEN],
            };
            key.path[..path.len()].copy_from_slice(path.as_bytes());
            let v = trie
                .get(
                    &Key::new(FILE_KEY_FIXED_BITS + 8 * path.len() as u32, key),
                    0,
                )
                .unwrap_or_else(|e| panic!("{name}: {list} `{path}` not in FILE_RULES: {e}"));
            assert_eq!(
                v.len as usize,
                path.len(),
                "{name}: {list} `{path}` has no entry of its own"
            );
            // A directory rule decides beneath it; a file rule, itself.
            let slots = if path.ends_with('/') {
                v.beneath
            } else {
                v.exact
            };
            let (idx, want): (&[usize], u32) = match list.as_str() {
                "read" => (&[ACCESS_IDX_READ], ACTION_ALLOW),
                "write" => (&[ACCESS_IDX_WRITE], ACTION_ALLOW),
                "exec" => (&[ACCESS_IDX_EXEC], ACTION_ALLOW),
                _ => (
                    &[ACCESS_IDX_READ, ACCESS_IDX_WRITE, ACCESS_IDX_EXEC],
                    ACTION_DENY,
                ),
            };
            for &i in idx {
                assert_eq!(
                    slots[i].action, want,
                    "{name}: {list} `{path}` slot {i} decides {:?}",
                    slots[i]
                );
            }
        }
    }
}
