//! The cgroup `connect_unix` / `sendmsg_unix` program, hand-assembled
//! (`sys` loads, pins and attaches it).
//!
//! The program mirrors agent-ebpf's sock_addr programs: it resolves the
//! caller's identity exactly like `identity::current()`, looks the address up
//! in `UNIX_RULES`, counts into `IDENTITY_STATS` and reports refusals into
//! `EVENTS` with the same `EventHeader`.
//!
//! Reading the address: a sock_addr program's context is really a
//! `struct bpf_sock_addr_kern *` (sk, uaddr, tmp_reg, t_ctx, uaddrlen); the
//! unix hooks expose neither the path nor its length through
//! `struct bpf_sock_addr`. The program hands the context register to
//! `bpf_probe_read_kernel` as a plain source address (allowed because the
//! daemon runs with CAP_PERFMON/root, so passing a pointer to an
//! `ARG_ANYTHING` argument is not a leak), copies the struct to the stack,
//! then reads `sun_path` from `uaddr`. Offsets come from the kernel's BTF.

use agent_common::{
    event::{KIND_UNIX, REASON_DENY_RULE, REASON_NO_RULE, VERDICT_AUDIT, VERDICT_DENY},
    identity::{CGROUP_MAX_DEPTH, MODE_AUDIT, MODE_ENFORCE},
    net::ACTION_ALLOW,
    unix::UNIX_PATH_LEN,
};

use super::asm::{Alu, Asm, AsmError, Insn, Jmp, Reg, Size};

// Helper ids (`enum bpf_func_id`, stable UAPI).
const MAP_LOOKUP_ELEM: i32 = 1;
const GET_CURRENT_PID_TGID: i32 = 14;
const GET_CURRENT_COMM: i32 = 16;
const GET_CURRENT_CGROUP_ID: i32 = 80;
const PROBE_READ_KERNEL: i32 = 113;
const PROBE_READ_KERNEL_STR: i32 = 115;
const GET_CURRENT_ANCESTOR_CGROUP_ID: i32 = 123;
const KTIME_GET_BOOT_NS: i32 = 125;
const RINGBUF_RESERVE: i32 = 131;
const RINGBUF_SUBMIT: i32 = 132;

/// `offsetof(struct sockaddr_un, sun_path)`.
const SUN_PATH: i32 = 2;
/// `sizeof(struct UnixEvent)` and the offsets the program writes.
const EVENT_SIZE: i32 = 184;
const EV_IDENTITY: i16 = 4;
const EV_TS: i16 = 8;
const EV_CGROUP: i16 = 16;
const EV_PID_TGID: i16 = 24;
const EV_COMM: i32 = 32;
const EV_VERDICT: i16 = 48;
const EV_MODE: i16 = 52;
const EV_REASON: i16 = 56;
const EV_RULE: i16 = 60;
const EV_OP: i16 = 64;
const EV_PATH_LEN: i16 = 68;
const EV_PATH: i16 = 72;
/// `IdentityStats` field offsets.
const ST_ALLOWED: i16 = 0;
const ST_DENIED: i16 = 8;
const ST_AUDITED: i16 = 16;

// Stack frame (offsets from r10).
const FP_CG: i16 = -8; // u64 cgroup id: CGROUP_IDENTITY key
const FP_ID: i16 = -16; // u32 identity: IDENTITIES / IDENTITY_STATS key
const FP_ZERO: i16 = -24; // u32 0: EVENT_DROPS key
const FP_RULE: i16 = -32; // u32 rule id
const FP_REASON: i16 = -28; // u32 reason
const FP_CTX: i16 = -72; // 40 bytes: copy of bpf_sock_addr_kern
const CTX_BUF: i32 = 40;
const FP_KEY: i16 = -192; // UnixKey (116 bytes) + 4 bytes of slack for the
const KEY_AREA: i16 = 120; // NUL probe_read_kernel_str writes after 108 bytes
const FP_KEY_LEN: i16 = FP_KEY + 4;
const FP_KEY_PATH: i16 = FP_KEY + 8;

/// Where `bpf_sock_addr_kern` keeps the address and its length.
#[derive(Clone, Copy, Debug)]
pub struct CtxLayout {
    pub uaddr: u32,
    pub uaddrlen: u32,
}

/// Fds of the maps the program references (valid during `load`).
#[derive(Clone, Copy, Debug)]
pub struct MapFds {
    pub cgroup_identity: i32,
    pub identities: i32,
    pub identity_stats: i32,
    pub events: i32,
    pub event_drops: i32,
    pub unix_rules: i32,
}

pub struct Params {
    /// `net::OP_CONNECT` or `net::OP_SENDMSG`, written into events.
    pub op: u32,
    pub ctx: CtxLayout,
    pub maps: MapFds,
}

/// `IDENTITY_STATS[identity].<field> += 1` (r7 = identity).
fn count(a: &mut Asm, m: &MapFds, field: i16) {
    let skip = a.label();
    a.store(Size::W, Reg::R10, FP_ID, Reg::R7);
    a.ld_map_fd(Reg::R1, m.identity_stats);
    a.frame_ptr(Reg::R2, FP_ID);
    a.call(MAP_LOOKUP_ELEM);
    a.jmp_imm(Jmp::Eq, Reg::R0, 0, skip);
    a.load(Size::DW, Reg::R1, Reg::R0, field);
    a.alu_imm(Alu::Add, Reg::R1, 1);
    a.store(Size::DW, Reg::R0, field, Reg::R1);
    a.bind(skip);
}

pub fn build(p: &Params) -> Result<Vec<Insn>, AsmError> {
    let m = &p.maps;
    let uaddr = i16::try_from(p.ctx.uaddr).expect("checked by caller") + FP_CTX;
    let uaddrlen = i16::try_from(p.ctx.uaddrlen).expect("checked by caller") + FP_CTX;
    let ctx_read = p.ctx.uaddrlen as i32 + 4;
    assert!(ctx_read <= CTX_BUF && p.ctx.uaddr + 8 <= p.ctx.uaddrlen);
    let mut a = Asm::new();
    let (untagged, walk, next, walked, state) =
        (a.label(), a.label(), a.label(), a.label(), a.label());
    let (abstract_, lookup, refuse, audit_count, report) =
        (a.label(), a.label(), a.label(), a.label(), a.label());
    let (fill, verdict, done) = (a.label(), a.label(), a.label());

    // r6 = ctx. Nobody is exempt by pid (see agent-ebpf `identity`).
    a.mov(Reg::R6, Reg::R1);

    // Identity: deepest tagged ancestor cgroup (r7 = identity, r8 = level).
    a.mov_imm(Reg::R7, 0);
    a.mov_imm(Reg::R8, 0);
    a.bind(walk);
    a.mov(Reg::R1, Reg::R8);
    a.call(GET_CURRENT_ANCESTOR_CGROUP_ID);
    a.jmp_imm(Jmp::Eq, Reg::R0, 0, walked);
    a.store(Size::DW, Reg::R10, FP_CG, Reg::R0);
    a.ld_map_fd(Reg::R1, m.cgroup_identity);
    a.frame_ptr(Reg::R2, FP_CG);
    a.call(MAP_LOOKUP_ELEM);
    a.jmp_imm(Jmp::Eq, Reg::R0, 0, next);
    a.load(Size::W, Reg::R7, Reg::R0, 0);
    a.bind(next);
    a.alu_imm(Alu::Add, Reg::R8, 1);
    a.jmp_imm(Jmp::Lt, Reg::R8, CGROUP_MAX_DEPTH, walk);
    a.bind(walked);
    a.jmp_imm(Jmp::Eq, Reg::R7, 0, untagged);

    // Mode and ruleset (r8, r9); tagged without state: enforce, ruleset 0.
    a.store(Size::W, Reg::R10, FP_ID, Reg::R7);
    a.ld_map_fd(Reg::R1, m.identities);
    a.frame_ptr(Reg::R2, FP_ID);
    a.call(MAP_LOOKUP_ELEM);
    a.mov_imm(Reg::R8, MODE_ENFORCE as i32);
    a.mov_imm(Reg::R9, 0);
    a.jmp_imm(Jmp::Eq, Reg::R0, 0, state);
    a.load(Size::W, Reg::R9, Reg::R0, 0); // IdentityState::ruleset
    a.load(Size::W, Reg::R8, Reg::R0, 4); // IdentityState::mode
    a.bind(state);

    // A zeroed key with the ruleset.
    for off in (0..KEY_AREA).step_by(8) {
        a.store_imm(Size::DW, Reg::R10, FP_KEY + off, 0);
    }
    a.store(Size::W, Reg::R10, FP_KEY, Reg::R9);

    // Copy bpf_sock_addr_kern from the context (see the module comment).
    // Anything unreadable leaves the path empty, which no rule matches.
    a.frame_ptr(Reg::R1, FP_CTX);
    a.mov_imm(Reg::R2, ctx_read);
    a.mov(Reg::R3, Reg::R6);
    a.call(PROBE_READ_KERNEL);
    a.jmp_imm(Jmp::Ne, Reg::R0, 0, lookup);
    a.load(Size::W, Reg::R9, Reg::R10, uaddrlen);
    a.load(Size::DW, Reg::R6, Reg::R10, uaddr);
    a.alu_imm(Alu::Add, Reg::R6, SUN_PATH); // r6 = &sun_path (a plain number)
    a.alu_imm(Alu::Sub, Reg::R9, SUN_PATH); // r9 = bytes of sun_path given
    a.jmp_imm(Jmp::Gt, Reg::R9, UNIX_PATH_LEN as i32, lookup);
    a.jmp_imm(Jmp::Eq, Reg::R9, 0, lookup);
    a.frame_ptr(Reg::R1, FP_KEY_PATH);
    a.mov_imm(Reg::R2, 1);
    a.mov(Reg::R3, Reg::R6);
    a.call(PROBE_READ_KERNEL);
    a.jmp_imm(Jmp::Ne, Reg::R0, 0, lookup);
    a.load(Size::B, Reg::R1, Reg::R10, FP_KEY_PATH);
    a.jmp_imm(Jmp::Eq, Reg::R1, 0, abstract_);
    // Pathname: the kernel uses sun_path up to its first NUL (or the given
    // length), so read it as a string of at most r9 bytes.
    a.frame_ptr(Reg::R1, FP_KEY_PATH);
    a.mov(Reg::R2, Reg::R9);
    a.alu_imm(Alu::Add, Reg::R2, 1);
    a.mov(Reg::R3, Reg::R6);
    a.call(PROBE_READ_KERNEL_STR);
    a.jmp_imm(Jmp::Sle, Reg::R0, 0, lookup);
    a.alu_imm(Alu::Sub, Reg::R0, 1);
    a.store(Size::W, Reg::R10, FP_KEY_LEN, Reg::R0);
    a.ja(lookup);
    // Abstract: every given byte counts, the leading NUL included.
    a.bind(abstract_);
    a.frame_ptr(Reg::R1, FP_KEY_PATH);
    a.mov(Reg::R2, Reg::R9);
    a.mov(Reg::R3, Reg::R6);
    a.call(PROBE_READ_KERNEL);
    a.jmp_imm(Jmp::Ne, Reg::R0, 0, lookup);
    a.store(Size::W, Reg::R10, FP_KEY_LEN, Reg::R9);

    // Decide. r9 = rule id, r1 = reason.
    a.bind(lookup);
    a.ld_map_fd(Reg::R1, m.unix_rules);
    a.frame_ptr(Reg::R2, FP_KEY);
    a.call(MAP_LOOKUP_ELEM);
    a.mov_imm(Reg::R9, 0);
    a.mov_imm(Reg::R1, REASON_NO_RULE as i32);
    a.jmp_imm(Jmp::Eq, Reg::R0, 0, refuse);
    a.load(Size::W, Reg::R9, Reg::R0, 0); // rule_id
    a.load(Size::W, Reg::R2, Reg::R0, 4); // action
    a.mov_imm(Reg::R1, REASON_DENY_RULE as i32);
    a.jmp_imm(Jmp::Ne, Reg::R2, ACTION_ALLOW as i32, refuse);
    count(&mut a, m, ST_ALLOWED);
    a.ja(untagged);

    a.bind(refuse);
    a.store(Size::W, Reg::R10, FP_RULE, Reg::R9);
    a.store(Size::W, Reg::R10, FP_REASON, Reg::R1);
    a.jmp_imm(Jmp::Eq, Reg::R8, MODE_AUDIT as i32, audit_count);
    count(&mut a, m, ST_DENIED);
    a.ja(report);
    a.bind(audit_count);
    count(&mut a, m, ST_AUDITED);

    a.bind(report);
    a.ld_map_fd(Reg::R1, m.events);
    a.mov_imm(Reg::R2, EVENT_SIZE);
    a.mov_imm(Reg::R3, 0);
    a.call(RINGBUF_RESERVE);
    a.jmp_imm(Jmp::Ne, Reg::R0, 0, fill);
    // Ring buffer full: count the lost event.
    a.store_imm(Size::W, Reg::R10, FP_ZERO, 0);
    a.ld_map_fd(Reg::R1, m.event_drops);
    a.frame_ptr(Reg::R2, FP_ZERO);
    a.call(MAP_LOOKUP_ELEM);
    a.jmp_imm(Jmp::Eq, Reg::R0, 0, verdict);
    a.load(Size::DW, Reg::R1, Reg::R0, 0);
    a.alu_imm(Alu::Add, Reg::R1, 1);
    a.store(Size::DW, Reg::R0, 0, Reg::R1);
    a.ja(verdict);

    // Fill every byte of the record (r6): reserved memory is not zeroed.
    a.bind(fill);
    a.mov(Reg::R6, Reg::R0);
    a.store_imm(Size::W, Reg::R6, 0, KIND_UNIX as i32);
    a.store(Size::W, Reg::R6, EV_IDENTITY, Reg::R7);
    a.call(KTIME_GET_BOOT_NS);
    a.store(Size::DW, Reg::R6, EV_TS, Reg::R0);
    a.call(GET_CURRENT_CGROUP_ID);
    a.store(Size::DW, Reg::R6, EV_CGROUP, Reg::R0);
    a.call(GET_CURRENT_PID_TGID); // pid in the low half, tgid in the high
    a.store(Size::DW, Reg::R6, EV_PID_TGID, Reg::R0);
    a.mov(Reg::R1, Reg::R6);
    a.alu_imm(Alu::Add, Reg::R1, EV_COMM);
    a.mov_imm(Reg::R2, agent_common::event::COMM_LEN as i32);
    a.call(GET_CURRENT_COMM);
    let enforce_verdict = a.label();
    a.mov_imm(Reg::R1, VERDICT_DENY as i32);
    a.jmp_imm(Jmp::Ne, Reg::R8, MODE_AUDIT as i32, enforce_verdict);
    a.mov_imm(Reg::R1, VERDICT_AUDIT as i32);
    a.bind(enforce_verdict);
    a.store(Size::W, Reg::R6, EV_VERDICT, Reg::R1);
    a.store(Size::W, Reg::R6, EV_MODE, Reg::R8);
    a.load(Size::W, Reg::R1, Reg::R10, FP_REASON);
    a.store(Size::W, Reg::R6, EV_REASON, Reg::R1);
    a.load(Size::W, Reg::R1, Reg::R10, FP_RULE);
    a.store(Size::W, Reg::R6, EV_RULE, Reg::R1);
    a.store_imm(Size::W, Reg::R6, EV_OP, p.op as i32);
    a.load(Size::W, Reg::R1, Reg::R10, FP_KEY_LEN);
    a.store(Size::W, Reg::R6, EV_PATH_LEN, Reg::R1);
    for i in 0..(UNIX_PATH_LEN as i16 / 8) {
        a.load(Size::DW, Reg::R1, Reg::R10, FP_KEY_PATH + 8 * i);
        a.store(Size::DW, Reg::R6, EV_PATH + 8 * i, Reg::R1);
    }
    let tail = UNIX_PATH_LEN as i16 / 8 * 8; // the last 4 path bytes, then _pad
    a.load(Size::W, Reg::R1, Reg::R10, FP_KEY_PATH + tail);
    a.store(Size::W, Reg::R6, EV_PATH + tail, Reg::R1);
    a.store_imm(Size::W, Reg::R6, EV_PATH + tail + 4, 0);
    a.mov(Reg::R1, Reg::R6);
    a.mov_imm(Reg::R2, 0);
    a.call(RINGBUF_SUBMIT);

    // Enforce: 0 (EPERM); audit: 1.
    a.bind(verdict);
    a.mov_imm(Reg::R0, 1);
    a.jmp_imm(Jmp::Eq, Reg::R8, MODE_AUDIT as i32, done);
    a.mov_imm(Reg::R0, 0);
    a.ja(done);

    a.bind(untagged);
    a.mov_imm(Reg::R0, 1);
    a.bind(done);
    a.exit();
    a.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_within_limits() {
        let p = Params {
            op: 1,
            ctx: CtxLayout {
                uaddr: 8,
                uaddrlen: 32,
            },
            maps: MapFds {
                cgroup_identity: 3,
                identities: 4,
                identity_stats: 5,
                events: 6,
                event_drops: 7,
                unix_rules: 8,
            },
        };
        let insns = build(&p).expect("assembles");
        assert!(insns.len() < 400, "{} instructions", insns.len());
        assert_eq!(insns.last().map(|i| i.code), Some(0x95), "ends with exit");
        // Key area, context copy and slots fit the 512-byte frame.
        assert!(-(FP_KEY as i32) <= 512);
        assert_eq!(FP_KEY + KEY_AREA, FP_CTX);
        assert_eq!(FP_CTX as i32 + CTX_BUF, FP_RULE as i32);
    }
}
