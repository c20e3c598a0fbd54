// Empty on purpose: agent-user build-depends on this crate so that cargo
// rebuilds the eBPF object when its sources change (aya-template pattern).
#![no_std]
