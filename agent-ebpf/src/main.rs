//! Corral's kernel programs: one object, loaded and pinned by the daemon.
//!
//! Every hook resolves the calling task's identity through
//! `identity::current()`; untagged tasks are never judged.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod events;
#[cfg(target_arch = "bpf")]
mod fileobs;
#[cfg(target_arch = "bpf")]
mod identity;
#[cfg(target_arch = "bpf")]
mod lsm;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod net;
#[cfg(target_arch = "bpf")]
mod syscall;

#[cfg(target_arch = "bpf")]
mod entry {
    use aya_ebpf::{
        macros::{cgroup_sock, cgroup_sock_addr},
        programs::{SockAddrContext, SockContext},
    };

    use crate::net;

    #[cgroup_sock(sock_create)]
    pub fn corral_sock_create(ctx: SockContext) -> i32 {
        net::judge_create(&ctx)
    }

    #[cgroup_sock_addr(connect4)]
    pub fn corral_connect4(ctx: SockAddrContext) -> i32 {
        net::judge4(&ctx, net::Hook::Connect)
    }

    #[cgroup_sock_addr(connect6)]
    pub fn corral_connect6(ctx: SockAddrContext) -> i32 {
        net::judge6(&ctx, net::Hook::Connect)
    }

    #[cgroup_sock_addr(sendmsg4)]
    pub fn corral_sendmsg4(ctx: SockAddrContext) -> i32 {
        net::judge4(&ctx, net::Hook::Sendmsg)
    }

    #[cgroup_sock_addr(sendmsg6)]
    pub fn corral_sendmsg6(ctx: SockAddrContext) -> i32 {
        net::judge6(&ctx, net::Hook::Sendmsg)
    }

    #[cgroup_sock_addr(bind4)]
    pub fn corral_bind4(ctx: SockAddrContext) -> i32 {
        net::judge4(&ctx, net::Hook::Bind)
    }

    #[cgroup_sock_addr(bind6)]
    pub fn corral_bind6(ctx: SockAddrContext) -> i32 {
        net::judge6(&ctx, net::Hook::Bind)
    }
}

/// BPF LSM entry points (optional: see `lsm`). Names match
/// `agent_common::maps::LSM_PROGRAMS`.
#[cfg(target_arch = "bpf")]
mod lsm_entry {
    use aya_ebpf::{macros::lsm, programs::LsmContext};

    use crate::lsm::{files, protect, signals, view};

    #[lsm(hook = "file_open")]
    pub fn corral_file_open(ctx: LsmContext) -> i32 {
        files::file_open(&ctx)
    }

    #[lsm(hook = "path_link")]
    pub fn corral_path_link(ctx: LsmContext) -> i32 {
        files::path_link(&ctx)
    }

    #[lsm(hook = "path_rename")]
    pub fn corral_path_rename(ctx: LsmContext) -> i32 {
        files::path_rename(&ctx)
    }

    #[lsm(hook = "path_mknod")]
    pub fn corral_path_mknod(ctx: LsmContext) -> i32 {
        files::path_mknod(&ctx)
    }

    #[lsm(hook = "path_mkdir")]
    pub fn corral_path_mkdir(ctx: LsmContext) -> i32 {
        files::path_mkdir(&ctx)
    }

    #[lsm(hook = "path_symlink")]
    pub fn corral_path_symlink(ctx: LsmContext) -> i32 {
        files::path_symlink(&ctx)
    }

    #[lsm(hook = "path_unlink")]
    pub fn corral_path_unlink(ctx: LsmContext) -> i32 {
        files::path_unlink(&ctx)
    }

    #[lsm(hook = "path_rmdir")]
    pub fn corral_path_rmdir(ctx: LsmContext) -> i32 {
        files::path_rmdir(&ctx)
    }

    #[lsm(hook = "path_truncate")]
    pub fn corral_path_truncate(ctx: LsmContext) -> i32 {
        files::path_truncate(&ctx)
    }

    #[lsm(hook = "path_chmod")]
    pub fn corral_path_chmod(ctx: LsmContext) -> i32 {
        files::path_chmod(&ctx)
    }

    #[lsm(hook = "path_chown")]
    pub fn corral_path_chown(ctx: LsmContext) -> i32 {
        files::path_chown(&ctx)
    }

    #[lsm(hook = "sb_umount")]
    pub fn corral_sb_umount(ctx: LsmContext) -> i32 {
        protect::sb_umount(&ctx)
    }

    #[lsm(hook = "task_alloc")]
    pub fn corral_task_alloc(ctx: LsmContext) -> i32 {
        protect::task_alloc(&ctx)
    }

    #[lsm(hook = "sb_mount")]
    pub fn corral_sb_mount(ctx: LsmContext) -> i32 {
        protect::sb_mount(&ctx)
    }

    #[lsm(hook = "move_mount")]
    pub fn corral_move_mount(ctx: LsmContext) -> i32 {
        protect::move_mount(&ctx)
    }

    #[lsm(hook = "bpf")]
    pub fn corral_lsm_bpf(ctx: LsmContext) -> i32 {
        protect::bpf(&ctx)
    }

    #[lsm(hook = "socket_create")]
    pub fn corral_socket_create(ctx: LsmContext) -> i32 {
        crate::lsm::sockets::socket_create(&ctx)
    }

    #[lsm(hook = "task_kill")]
    pub fn corral_task_kill(ctx: LsmContext) -> i32 {
        protect::task_kill(&ctx)
    }

    #[lsm(hook = "ptrace_access_check")]
    pub fn corral_ptrace_access_check(ctx: LsmContext) -> i32 {
        protect::ptrace_access_check(&ctx)
    }

    #[lsm(hook = "file_send_sigiotask")]
    pub fn corral_file_send_sigiotask(ctx: LsmContext) -> i32 {
        signals::file_send_sigiotask(&ctx)
    }

    #[lsm(hook = "file_fcntl")]
    pub fn corral_file_fcntl(ctx: LsmContext) -> i32 {
        signals::file_fcntl(&ctx)
    }

    #[lsm(hook = "file_ioctl")]
    pub fn corral_file_ioctl(ctx: LsmContext) -> i32 {
        signals::file_ioctl(&ctx)
    }

    #[lsm(hook = "sb_pivotroot")]
    pub fn corral_sb_pivotroot(ctx: LsmContext) -> i32 {
        view::sb_pivotroot(&ctx)
    }

    #[lsm(hook = "userns_create")]
    pub fn corral_userns_create(ctx: LsmContext) -> i32 {
        view::userns_create(&ctx)
    }
}

/// The Landlock-denial observer (see `fileobs`): attached only where BPF
/// LSM does not enforce `[files]`. Names match `maps::PROG_FILEOBS_*` and
/// `maps::FILEOBS_TP_PROGRAMS`. Preferred: one tracepoint per observed
/// syscall (`syscalls:sys_{enter,exit}_*`), so other syscalls never run a
/// program; fallback: tp_btf `sys_enter`/`sys_exit` for all syscalls.
#[cfg(target_arch = "bpf")]
mod fileobs_entry {
    use aya_ebpf::{
        macros::{btf_tracepoint, tracepoint},
        programs::{BtfTracePointContext, TracePointContext},
    };

    use crate::fileobs::{self, nr};

    #[btf_tracepoint(function = "sys_enter")]
    pub fn corral_fileobs_enter(ctx: BtfTracePointContext) -> i32 {
        fileobs::enter_btf(&ctx)
    }

    #[btf_tracepoint(function = "sys_exit")]
    pub fn corral_fileobs_exit(ctx: BtfTracePointContext) -> i32 {
        fileobs::exit_btf(&ctx)
    }

    macro_rules! per_syscall {
        ($($enter:ident $exit:ident = $nr:expr;)*) => {$(
            #[tracepoint]
            pub fn $enter(ctx: TracePointContext) -> u32 {
                fileobs::enter_tp(&ctx, $nr) as u32
            }

            #[tracepoint]
            pub fn $exit(ctx: TracePointContext) -> u32 {
                fileobs::exit_tp(&ctx) as u32
            }
        )*};
    }

    per_syscall! {
        corral_fo_enter_open corral_fo_exit_open = nr::OPEN;
        corral_fo_enter_openat corral_fo_exit_openat = nr::OPENAT;
        corral_fo_enter_openat2 corral_fo_exit_openat2 = nr::OPENAT2;
        corral_fo_enter_creat corral_fo_exit_creat = nr::CREAT;
        corral_fo_enter_execve corral_fo_exit_execve = nr::EXECVE;
        corral_fo_enter_execveat corral_fo_exit_execveat = nr::EXECVEAT;
    }
}

/// The syscall observers (see `syscall`): attached system-wide while some
/// identity has a `[syscalls]` section. Names match `maps::PROG_SYS_*`.
#[cfg(target_arch = "bpf")]
mod syscall_entry {
    use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

    use crate::syscall;

    #[btf_tracepoint(function = "sys_enter")]
    pub fn corral_sys_enter(ctx: BtfTracePointContext) -> i32 {
        syscall::on_enter(&ctx)
    }

    #[btf_tracepoint(function = "sys_exit")]
    pub fn corral_sys_exit(ctx: BtfTracePointContext) -> i32 {
        syscall::on_exit(&ctx)
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this never runs.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
