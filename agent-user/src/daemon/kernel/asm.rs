//! A tiny typed eBPF assembler: just the instructions the unix programs use,
//! with labels resolved at the end so jumps cannot be miscounted by hand.

use std::collections::HashMap;

/// `struct bpf_insn`: opcode, dst (low nibble) and src (high nibble)
/// registers, signed offset, signed immediate.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}
const _: () = assert!(size_of::<Insn>() == 8);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[allow(dead_code, reason = "the whole register file, whether used or not")]
pub enum Reg {
    R0 = 0,
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R8,
    R9,
    /// Read-only frame pointer.
    R10,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    B,
    W,
    DW,
}

impl Size {
    fn bits(self) -> u8 {
        match self {
            Size::W => 0x00,
            Size::B => 0x10,
            Size::DW => 0x18,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alu {
    Add = 0x00,
    Sub = 0x10,
    #[cfg(test)]
    Rsh = 0x70,
    Mov = 0xb0,
}

/// Conditional jumps (64-bit compares); `Gt`/`Lt` unsigned, `Sle` signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jmp {
    Eq = 0x10,
    Gt = 0x20,
    Ne = 0x50,
    Lt = 0xa0,
    Sle = 0xd0,
}

// Instruction classes, modes and sources (uapi/linux/bpf_common.h).
const LD: u8 = 0x00;
const LDX: u8 = 0x01;
const ST: u8 = 0x02;
const STX: u8 = 0x03;
const JMP: u8 = 0x05;
const ALU64: u8 = 0x07;
const IMM: u8 = 0x00;
const MEM: u8 = 0x60;
const K: u8 = 0x00;
const X: u8 = 0x08;
const JA: u8 = 0x00;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;
/// `ld_imm64` source: the immediate is a map fd.
const PSEUDO_MAP_FD: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Label(usize);

#[derive(Debug, thiserror::Error)]
pub enum AsmError {
    #[error("label {0} used but never bound")]
    Unbound(usize),
    #[error("jump at {at} to label {label} is out of range")]
    Range { at: usize, label: usize },
}

#[derive(Default)]
pub struct Asm {
    insns: Vec<Insn>,
    bound: HashMap<Label, usize>,
    next_label: usize,
    /// (instruction index, target) of every jump.
    fixups: Vec<(usize, Label)>,
}

fn regs(dst: Reg, src: Reg) -> u8 {
    (dst as u8) | ((src as u8) << 4)
}

impl Asm {
    pub fn new() -> Asm {
        Asm::default()
    }

    fn raw(&mut self, code: u8, dst: Reg, src: Reg, off: i16, imm: i32) {
        self.insns.push(Insn {
            code,
            regs: regs(dst, src),
            off,
            imm,
        });
    }

    pub fn label(&mut self) -> Label {
        self.next_label += 1;
        Label(self.next_label)
    }

    /// The next instruction is `l`.
    pub fn bind(&mut self, l: Label) {
        let prev = self.bound.insert(l, self.insns.len());
        debug_assert!(prev.is_none(), "label bound twice");
    }

    pub fn alu_imm(&mut self, op: Alu, dst: Reg, imm: i32) {
        self.raw(ALU64 | op as u8 | K, dst, Reg::R0, 0, imm);
    }

    pub fn alu_reg(&mut self, op: Alu, dst: Reg, src: Reg) {
        self.raw(ALU64 | op as u8 | X, dst, src, 0, 0);
    }

    pub fn mov_imm(&mut self, dst: Reg, imm: i32) {
        self.alu_imm(Alu::Mov, dst, imm);
    }

    pub fn mov(&mut self, dst: Reg, src: Reg) {
        self.alu_reg(Alu::Mov, dst, src);
    }

    /// `dst = r10 + off`: a pointer into the stack frame.
    pub fn frame_ptr(&mut self, dst: Reg, off: i16) {
        self.mov(dst, Reg::R10);
        self.alu_imm(Alu::Add, dst, off.into());
    }

    /// `dst = *(size *)(src + off)`
    pub fn load(&mut self, size: Size, dst: Reg, src: Reg, off: i16) {
        self.raw(LDX | MEM | size.bits(), dst, src, off, 0);
    }

    /// `*(size *)(dst + off) = src`
    pub fn store(&mut self, size: Size, dst: Reg, off: i16, src: Reg) {
        self.raw(STX | MEM | size.bits(), dst, src, off, 0);
    }

    /// `*(size *)(dst + off) = imm`
    pub fn store_imm(&mut self, size: Size, dst: Reg, off: i16, imm: i32) {
        self.raw(ST | MEM | size.bits(), dst, Reg::R0, off, imm);
    }

    /// `dst = map` (two instruction slots; the kernel swaps the fd for the map).
    pub fn ld_map_fd(&mut self, dst: Reg, fd: i32) {
        self.insns.push(Insn {
            code: LD | IMM | Size::DW.bits(),
            regs: (dst as u8) | (PSEUDO_MAP_FD << 4),
            off: 0,
            imm: fd,
        });
        self.insns.push(Insn {
            code: 0,
            regs: 0,
            off: 0,
            imm: 0,
        });
    }

    pub fn jmp_imm(&mut self, op: Jmp, dst: Reg, imm: i32, to: Label) {
        self.fixups.push((self.insns.len(), to));
        self.raw(JMP | op as u8 | K, dst, Reg::R0, 0, imm);
    }

    pub fn ja(&mut self, to: Label) {
        self.fixups.push((self.insns.len(), to));
        self.raw(JMP | JA, Reg::R0, Reg::R0, 0, 0);
    }

    /// Calls helper `id` (`enum bpf_func_id`).
    pub fn call(&mut self, id: i32) {
        self.raw(JMP | CALL, Reg::R0, Reg::R0, 0, id);
    }

    pub fn exit(&mut self) {
        self.raw(JMP | EXIT, Reg::R0, Reg::R0, 0, 0);
    }

    /// Resolves jump offsets (relative to the next instruction).
    pub fn finish(mut self) -> Result<Vec<Insn>, AsmError> {
        for (at, label) in std::mem::take(&mut self.fixups) {
            let target = *self.bound.get(&label).ok_or(AsmError::Unbound(label.0))?;
            let off = target as i64 - at as i64 - 1;
            self.insns[at].off =
                i16::try_from(off).map_err(|_| AsmError::Range { at, label: label.0 })?;
        }
        Ok(self.insns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(insns: &[Insn]) -> Vec<u8> {
        insns
            .iter()
            .flat_map(|i| {
                let mut b = vec![i.code, i.regs];
                b.extend_from_slice(&i.off.to_le_bytes());
                b.extend_from_slice(&i.imm.to_le_bytes());
                b
            })
            .collect()
    }

    #[test]
    fn encodes_like_the_kernel_macros() {
        let mut a = Asm::new();
        a.mov_imm(Reg::R0, 1); // BPF_MOV64_IMM(R0, 1)
        a.mov(Reg::R6, Reg::R1); // BPF_MOV64_REG(R6, R1)
        a.load(Size::W, Reg::R7, Reg::R0, 4); // BPF_LDX_MEM(W, R7, R0, 4)
        a.store(Size::DW, Reg::R10, -8, Reg::R0); // BPF_STX_MEM(DW, R10, R0, -8)
        a.store_imm(Size::W, Reg::R10, -16, 7); // BPF_ST_MEM(W, R10, -16, 7)
        a.alu_imm(Alu::Rsh, Reg::R0, 32);
        a.call(14);
        a.exit();
        let got = bytes(&a.finish().expect("asm"));
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            0xb7, 0x00, 0, 0, 1, 0, 0, 0,
            0xbf, 0x16, 0, 0, 0, 0, 0, 0,
            0x61, 0x07, 4, 0, 0, 0, 0, 0,
            0x7b, 0x0a, 0xf8, 0xff, 0, 0, 0, 0,
            0x62, 0x0a, 0xf0, 0xff, 7, 0, 0, 0,
            0x77, 0x00, 0, 0, 32, 0, 0, 0,
            0x85, 0x00, 0, 0, 14, 0, 0, 0,
            0x95, 0x00, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn map_fd_takes_two_slots() {
        let mut a = Asm::new();
        a.ld_map_fd(Reg::R1, 9);
        let got = bytes(&a.finish().expect("asm"));
        assert_eq!(&got[..8], &[0x18, 0x11, 0, 0, 9, 0, 0, 0]);
        assert_eq!(&got[8..], &[0u8; 8]);
    }

    #[test]
    fn labels_resolve_forward_and_backward() {
        let mut a = Asm::new();
        let top = a.label();
        let end = a.label();
        a.bind(top);
        a.mov_imm(Reg::R0, 0); // 0
        a.jmp_imm(Jmp::Eq, Reg::R0, 0, end); // 1 -> 4: off 2
        a.ld_map_fd(Reg::R1, 3); // 2, 3
        a.bind(end);
        a.jmp_imm(Jmp::Gt, Reg::R1, 108, top); // 4 -> 0: off -5
        a.exit();
        let insns = a.finish().expect("asm");
        assert_eq!(insns[1].off, 2);
        assert_eq!(insns[1].code, 0x15);
        assert_eq!(insns[4].off, -5);
        assert_eq!(
            (insns[4].code, insns[4].regs, insns[4].imm),
            (0x25, 0x01, 108)
        );
    }

    #[test]
    fn unbound_label_is_an_error() {
        let mut a = Asm::new();
        let l = a.label();
        a.ja(l);
        assert!(matches!(a.finish(), Err(AsmError::Unbound(_))));
    }
}
