//! Socket families no cgroup program sees. The cgroup socket programs run
//! for IPv4/IPv6 sockets (and unix ones, by path); every other family
//! either sends where no program looks (AF_PACKET frames, AF_VSOCK to the
//! hypervisor) or makes the kernel send IP traffic for the caller from a
//! kernel thread (AF_RXRPC's UDP, AF_RDS over TCP). Where BPF LSM runs,
//! `socket_create` keeps a tagged process to the families Corral judges,
//! plus AF_PACKET/AF_VSOCK when `[network] sockets` names them.

use agent_common::{
    event::{KIND_NET, NetEvent, REASON_UNSUPPORTED, VERDICT_AUDIT, VERDICT_DENY},
    identity::MODE_AUDIT,
    net::{IDENTITY_FLAG_NET_PACKET, IDENTITY_FLAG_NET_VSOCK, OP_CREATE},
};
use aya_ebpf::programs::LsmContext;

use super::EPERM;
use crate::{
    events::{self, COUNT_AUDITED, COUNT_DENIED},
    identity,
    maps::EVENTS,
};

const AF_UNIX: u32 = 1;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
/// Judged by `[syscalls]` (`socket:netlink`); route is what getifaddrs and
/// resolvers need.
const AF_NETLINK: u32 = 16;
const AF_PACKET: u32 = 17;
const AF_VSOCK: u32 = 40;

/// `lsm/socket_create(family, type, protocol, kern)`: runs before the
/// kernel looks the family up (so before a module is loaded for it), after
/// `AF_INET` + `SOCK_PACKET` became AF_PACKET.
pub fn socket_create(ctx: &LsmContext) -> i32 {
    let kern: u64 = ctx.arg(3);
    if kern as u32 != 0 {
        return 0;
    }
    let family = ctx.arg::<u64>(0) as u32;
    if matches!(family, AF_UNIX | AF_INET | AF_INET6 | AF_NETLINK) {
        return 0;
    }
    let Some(s) = identity::current() else {
        return 0;
    };
    let named = match family {
        AF_PACKET => s.flags & IDENTITY_FLAG_NET_PACKET != 0,
        AF_VSOCK => s.flags & IDENTITY_FLAG_NET_VSOCK != 0,
        _ => false,
    };
    if named {
        return 0;
    }
    let audit = s.mode == MODE_AUDIT;
    events::count(s.identity, if audit { COUNT_AUDITED } else { COUNT_DENIED });
    match EVENTS.reserve::<NetEvent>(0) {
        Some(mut slot) => {
            let v = if audit { VERDICT_AUDIT } else { VERDICT_DENY };
            slot.write(NetEvent {
                hdr: events::header(KIND_NET, &s, v, REASON_UNSUPPORTED, 0),
                op: OP_CREATE,
                family,
                protocol: ctx.arg::<u64>(2) as u32,
                port: 0,
                addr: [0; 16],
                sock_type: ctx.arg::<u64>(1) as u32,
                _pad: 0,
            });
            slot.submit(0);
        }
        None => events::count_drop(),
    }
    if audit { 0 } else { -EPERM }
}
