//! BPF LSM programs: `[files]` rules and Corral's self-protection.
//!
//! They load only on kernels running BPF LSM (`lsm=...,bpf` and trampoline
//! support); the daemon loads them as optional and reports when it cannot.
//! Untagged tasks and the daemon are never judged (`identity::current`).

pub mod files;
pub mod kernel;
pub mod protect;
pub mod signals;
pub mod sockets;
pub mod view;

/// The errno every refusal returns (negated, as LSM hooks do).
pub const EPERM: i32 = 1;
