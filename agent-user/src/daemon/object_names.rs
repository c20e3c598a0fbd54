//! The eBPF object's map and program names are exactly agent-common's
//! constants. agent-ebpf's `#[map(name = ..)]` and program function names
//! cannot take the constants themselves, so this is where a rename on one
//! side only is caught: at unit-test time, not as a failed lookup at load.

use std::collections::BTreeSet;

use agent_common::maps;

use super::loader::OBJECT;

fn object() -> Option<aya_obj::Object> {
    if OBJECT.is_empty() {
        // Built without bpf-linker (a stub object): nothing to compare. CI
        // always builds the real one (`cargo xtask setup` installs it).
        eprintln!("SKIPPED: no eBPF object in this build (bpf-linker missing)");
        return None;
    }
    Some(aya_obj::Object::parse(OBJECT).expect("the embedded eBPF object parses"))
}

fn programs() -> BTreeSet<&'static str> {
    let mut p: BTreeSet<&str> = maps::SOCK_ADDR_PROGRAMS.into_iter().collect();
    p.insert(maps::PROG_SOCK_CREATE);
    let pairs = maps::LSM_PROGRAMS
        .iter()
        .chain(&maps::SYSCALL_PROGRAMS)
        .chain(&maps::FILEOBS_PROGRAMS)
        .chain(&maps::FILEOBS_TP_PROGRAMS);
    p.extend(pairs.map(|(name, _)| *name));
    p
}

#[test]
fn every_map_of_the_object_is_a_shared_constant_and_back() {
    let Some(obj) = object() else { return };
    // Globals (`.data`/`.rodata`/`.bss` sections) are maps to the loader.
    let found: BTreeSet<&str> = obj
        .maps
        .keys()
        .map(String::as_str)
        .filter(|n| !n.starts_with('.'))
        .collect();
    let expected: BTreeSet<&str> = maps::OBJECT_MAPS.into_iter().collect();
    assert_eq!(found, expected, "maps in the object vs agent_common::maps");
}

#[test]
fn every_program_of_the_object_is_a_shared_constant_and_back() {
    let Some(obj) = object() else { return };
    let found: BTreeSet<&str> = obj.programs.keys().map(String::as_str).collect();
    assert_eq!(
        found,
        programs(),
        "programs in the object vs agent_common::maps"
    );
}
