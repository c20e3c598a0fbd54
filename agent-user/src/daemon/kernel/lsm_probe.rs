//! Whether this kernel runs BPF LSM programs at all, asked without aya and
//! without a daemon (`corral doctor`): the smallest program that can say so.

use std::fs;

use super::btf::Btf;

/// Whether this kernel runs BPF LSM programs, without a daemon (`corral
/// doctor`): loads a no-op `lsm/file_open` program, attaches it, and lets
/// both go at once.
pub fn kernel_probe() -> Result<(), String> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    let lsms = fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    let btf = Btf::from_sys_fs().map_err(|e| format!("kernel BTF: {e}"))?;
    let id = btf
        .lsm_func_id("bpf_lsm_file_open")
        .ok_or("no bpf_lsm_file_open in the kernel's BTF (built without CONFIG_BPF_LSM)")?;
    // r0 = 0; exit
    let insns: [u8; 16] = [0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let license = b"GPL\0";
    let mut attr = [0u8; 128];
    let put32 =
        |a: &mut [u8; 128], off: usize, v: u32| a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    let put64 =
        |a: &mut [u8; 128], off: usize, v: u64| a[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    put32(&mut attr, 0, 29); // BPF_PROG_TYPE_LSM
    put32(&mut attr, 4, 2);
    put64(&mut attr, 8, insns.as_ptr() as u64);
    put64(&mut attr, 16, license.as_ptr() as u64);
    put32(&mut attr, 68, 27); // BPF_LSM_MAC
    put32(&mut attr, 108, id);
    // SAFETY: attr and what it points at outlive the call; 5 = BPF_PROG_LOAD.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 5, attr.as_ptr(), attr.len()) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(
            if e.raw_os_error() == Some(libc::EPERM) && lsms.split(',').any(|l| l.trim() == "bpf") {
                format!(
                    "BPF_PROG_LOAD: {e}: bpf is in the active LSM list ({}) but this kernel refuses BPF LSM programs (no BPF trampolines, e.g. a PVM guest)",
                    lsms.trim()
                )
            } else {
                format!("BPF_PROG_LOAD: {e}")
            },
        );
    }
    // SAFETY: a fresh fd we own.
    let prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut open = [0u8; 128];
    put32(&mut open, 8, std::os::fd::AsRawFd::as_raw_fd(&prog) as u32);
    // SAFETY: as above; 17 = BPF_RAW_TRACEPOINT_OPEN (attaches an LSM program).
    let link = unsafe { libc::syscall(libc::SYS_bpf, 17, open.as_ptr(), open.len()) };
    if link < 0 {
        return Err(format!("attaching: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd we own; dropping it detaches the no-op program.
    drop(unsafe { OwnedFd::from_raw_fd(link as i32) });
    if !lsms.split(',').any(|l| l.trim() == "bpf") {
        return Err(format!(
            "programs load, but bpf is not in the active LSM list ({}): boot with lsm=...,bpf",
            lsms.trim()
        ));
    }
    Ok(())
}
