//! Corral's kernel programs: one object, loaded and pinned by the daemon.
//!
//! Every hook resolves the calling task's identity through
//! `identity::current()`; untagged tasks are never judged.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod events;
#[cfg(target_arch = "bpf")]
mod identity;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod net;

#[cfg(target_arch = "bpf")]
mod entry {
    use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

    use crate::net;

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
