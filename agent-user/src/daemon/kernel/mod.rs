//! The kernel code that lives outside aya (see `README.md` here): what
//! aya 0.14 cannot load or say, done by hand against the raw `bpf(2)`
//! interface. Everything else goes through aya in `loader`.

pub mod asm;
pub mod btf;
pub mod lsm_probe;
pub mod sys;
pub mod unix_prog;
