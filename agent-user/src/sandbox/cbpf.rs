//! Classic-BPF vocabulary of seccomp filters: opcodes, `struct seccomp_data`
//! offsets, audit arches and return actions. A leaf shared by the syscall
//! filter (`seccomp`) and the terminal-injection filter (`terminal`).

pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;

pub const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
pub const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
pub const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
pub const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
pub const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// `struct seccomp_data` offsets.
pub const OFF_NR: u32 = 0;
pub const OFF_ARCH: u32 = 4;
/// Low 32 bits of `args[1]` (little endian): ioctl's `unsigned int cmd`
/// (the kernel ignores the upper half of the register).
pub const OFF_ARG1_LO: u32 = 16 + 8;

pub const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
pub const RET_EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
pub const RET_NOTIFY: u32 = libc::SECCOMP_RET_USER_NOTIF;

pub fn ins(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}
