//! cgroup sock_addr hooks: connect, UDP sendmsg and bind, IPv4 and IPv6;
//! and `sock_create`, which keeps every inet socket of a tagged task to the
//! kinds those hooks judge.

use agent_common::{
    event::{
        KIND_NET, NetEvent, REASON_DENY_RULE, REASON_NO_RULE, REASON_UNSUPPORTED, VERDICT_AUDIT,
        VERDICT_DENY,
    },
    identity::MODE_AUDIT,
    net::{
        ACTION_ALLOW, AF_INET, AF_INET6, CLASS_BIND_TCP, CLASS_BIND_UDP, CLASS_TCP, CLASS_UDP,
        IDENTITY_FLAG_NET_PING, IDENTITY_FLAG_NET_RAW, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_MPTCP,
        IPPROTO_TCP, IPPROTO_UDP, KEY_FIXED_BITS, MAX_PORT_RULES, Net4Key, Net6Key, NetRuleList,
        OP_BIND, OP_CONNECT, OP_CREATE, OP_SENDMSG, SOCK_DGRAM, SOCK_RAW, SOCK_STREAM,
    },
};
use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns,
    maps::lpm_trie::Key,
    programs::{SockAddrContext, SockContext},
};

use crate::{
    events::{self, COUNT_ALLOWED, COUNT_AUDITED, COUNT_DENIED},
    identity::{self, Subject},
    maps::{EVENTS, NET4_RULES, NET6_RULES},
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;

#[derive(Clone, Copy)]
pub enum Hook {
    Connect,
    Sendmsg,
    Bind,
    Create,
}

impl Hook {
    #[inline(always)]
    fn op(self) -> u32 {
        match self {
            Hook::Connect => OP_CONNECT,
            Hook::Sendmsg => OP_SENDMSG,
            Hook::Bind => OP_BIND,
            Hook::Create => OP_CREATE,
        }
    }
}

/// Rule class for a socket's protocol, 0 when no class covers it.
#[inline(always)]
fn class_of(hook: Hook, protocol: u32) -> u32 {
    let bind = matches!(hook, Hook::Bind);
    match protocol {
        IPPROTO_TCP | IPPROTO_MPTCP if bind => CLASS_BIND_TCP,
        IPPROTO_TCP | IPPROTO_MPTCP => CLASS_TCP,
        IPPROTO_UDP if bind => CLASS_BIND_UDP,
        IPPROTO_UDP => CLASS_UDP,
        _ => 0,
    }
}

/// First matching, unexpired port rule of a most-specific-first list.
/// Returns (action, rule_id); action 0 when nothing matched.
#[inline(always)]
fn scan(list: &NetRuleList, port: u16) -> (u32, u32) {
    let n = list.count as usize;
    let mut now: u64 = 0;
    let mut i = 0;
    while i < MAX_PORT_RULES {
        if i >= n {
            break;
        }
        let r = &list.rules[i];
        if port >= r.port_lo && port <= r.port_hi {
            if r.expires_ns == 0 {
                return (r.action, r.rule_id);
            }
            if now == 0 {
                // SAFETY: helper without pointer arguments.
                now = unsafe { bpf_ktime_get_boot_ns() };
            }
            if r.expires_ns > now {
                return (r.action, r.rule_id);
            }
        }
        i += 1;
    }
    (0, 0)
}

#[inline(always)]
fn lookup4(ruleset: u32, class: u32, addr: [u8; 4], port: u16) -> (u32, u32) {
    let key = Key::new(
        KEY_FIXED_BITS + 32,
        Net4Key {
            ruleset_be: ruleset.to_be(),
            class_be: class.to_be(),
            addr,
        },
    );
    match NET4_RULES.get(&key) {
        Some(list) => scan(list, port),
        None => (0, 0),
    }
}

#[inline(always)]
fn lookup6(ruleset: u32, class: u32, addr: [u8; 16], port: u16) -> (u32, u32) {
    let key = Key::new(
        KEY_FIXED_BITS + 128,
        Net6Key {
            ruleset_be: ruleset.to_be(),
            class_be: class.to_be(),
            addr,
        },
    );
    match NET6_RULES.get(&key) {
        Some(list) => scan(list, port),
        None => (0, 0),
    }
}

/// Binding port 0 asks the kernel for an ephemeral port: what UDP and some
/// TCP clients do before sending. `bind` rules govern fixed ports an agent
/// may serve on, so this is never judged.
#[inline(always)]
fn ephemeral_bind(hook: Hook, port: u16) -> bool {
    matches!(hook, Hook::Bind) && port == 0
}

struct Target {
    family: u32,
    sock_type: u32,
    protocol: u32,
    port: u16,
    addr: [u8; 16],
}

/// Turns a lookup result into the hook's return value, counting and
/// reporting every refusal (or would-be refusal in audit mode).
#[inline(always)]
fn verdict(s: &Subject, hook: Hook, class: u32, found: (u32, u32), t: &Target) -> i32 {
    let (action, rule_id) = found;
    if action == ACTION_ALLOW {
        events::count(s.identity, COUNT_ALLOWED);
        return ALLOW;
    }
    let reason = if class == 0 {
        REASON_UNSUPPORTED
    } else if action == 0 {
        REASON_NO_RULE
    } else {
        REASON_DENY_RULE
    };
    let audit = s.mode == MODE_AUDIT;
    let v = if audit { VERDICT_AUDIT } else { VERDICT_DENY };
    events::count(s.identity, if audit { COUNT_AUDITED } else { COUNT_DENIED });
    match EVENTS.reserve::<NetEvent>(0) {
        Some(mut slot) => {
            slot.write(NetEvent {
                hdr: events::header(KIND_NET, s, v, reason, rule_id),
                op: hook.op(),
                family: t.family,
                protocol: t.protocol,
                port: t.port as u32,
                addr: t.addr,
                sock_type: t.sock_type,
                _pad: 0,
            });
            slot.submit(0);
        }
        None => events::count_drop(),
    }
    if audit { ALLOW } else { DENY }
}

// The unspecified address (0.0.0.0, ::, ::ffff:0.0.0.0) as a connect or
// send destination means "this host": the kernel sends to the socket's bound
// address, else to loopback. Judged as written, a broad rule (`*`) would let
// it reach loopback services a narrower rule denies. So the programs judge
// it as loopback and rewrite the destination to that address: what was
// judged is what is reached, whatever the socket is bound to.

/// What an unspecified IPv4 destination is judged and rewritten as.
const LOOPBACK4: [u8; 4] = [127, 0, 0, 1];

/// Whether the hook's address is a destination (connect, sendmsg), not a
/// local address (bind).
#[inline(always)]
fn judges_destination(hook: Hook) -> bool {
    !matches!(hook, Hook::Bind)
}

pub fn judge4(ctx: &SockAddrContext, hook: Hook) -> i32 {
    let Some(s) = identity::current() else {
        return ALLOW;
    };
    let sa = ctx.sock_addr;
    // SAFETY: the context pointer is valid for the program's duration; the
    // fields are copied out before any write through it.
    let (protocol, sock_type, user_port, user_ip4) =
        unsafe { ((*sa).protocol, (*sa).type_, (*sa).user_port, (*sa).user_ip4) };
    let class = class_of(hook, protocol);
    let port = u16::from_be(user_port as u16);
    if ephemeral_bind(hook, port) {
        return ALLOW;
    }
    // user_ip4 holds the address in network order, so its in-memory bytes
    // are the address bytes.
    let mut a4 = user_ip4.to_ne_bytes();
    if judges_destination(hook) && a4 == [0, 0, 0, 0] {
        a4 = LOOPBACK4;
        // SAFETY: connect4 and sendmsg4 programs may write user_ip4.
        unsafe { (*sa).user_ip4 = u32::from_ne_bytes(a4) };
    }
    let found = if class == 0 {
        (0, 0)
    } else {
        lookup4(s.ruleset, class, a4, port)
    };
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&a4);
    let t = Target {
        family: AF_INET,
        sock_type,
        protocol,
        port,
        addr,
    };
    verdict(&s, hook, class, found, &t)
}

pub fn judge6(ctx: &SockAddrContext, hook: Hook) -> i32 {
    let Some(s) = identity::current() else {
        return ALLOW;
    };
    let sa = ctx.sock_addr;
    // SAFETY: the context pointer is valid for the program's duration; the
    // fields are copied out before any write through it.
    let (protocol, sock_type, user_port, mut w) = unsafe {
        (
            (*sa).protocol,
            (*sa).type_,
            (*sa).user_port,
            [
                (*sa).user_ip6[0],
                (*sa).user_ip6[1],
                (*sa).user_ip6[2],
                (*sa).user_ip6[3],
            ],
        )
    };
    let class = class_of(hook, protocol);
    let port = u16::from_be(user_port as u16);
    if ephemeral_bind(hook, port) {
        return ALLOW;
    }
    let ffff = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
    if judges_destination(hook)
        && w[0] == 0
        && w[1] == 0
        && w[3] == 0
        && (w[2] == 0 || w[2] == ffff)
    {
        // :: becomes ::1, ::ffff:0.0.0.0 becomes ::ffff:127.0.0.1.
        w[3] = if w[2] == 0 {
            u32::from_ne_bytes([0, 0, 0, 1])
        } else {
            u32::from_ne_bytes(LOOPBACK4)
        };
        // SAFETY: connect6 and sendmsg6 programs may write user_ip6.
        unsafe { (*sa).user_ip6[3] = w[3] };
    }
    let mut addr = [0u8; 16];
    addr[0..4].copy_from_slice(&w[0].to_ne_bytes());
    addr[4..8].copy_from_slice(&w[1].to_ne_bytes());
    addr[8..12].copy_from_slice(&w[2].to_ne_bytes());
    addr[12..16].copy_from_slice(&w[3].to_ne_bytes());
    // ::ffff:a.b.c.d reaches an IPv4 peer, so the IPv4 rules judge it.
    let mapped = w[0] == 0 && w[1] == 0 && w[2].to_ne_bytes() == [0, 0, 0xff, 0xff];
    let found = if class == 0 {
        (0, 0)
    } else if mapped {
        lookup4(s.ruleset, class, w[3].to_ne_bytes(), port)
    } else {
        lookup6(s.ruleset, class, addr, port)
    };
    let t = Target {
        family: AF_INET6,
        sock_type,
        protocol,
        port,
        addr,
    };
    verdict(&s, hook, class, found, &t)
}

/// Whether an inet socket of this kind may exist in an identity: the kinds
/// the sock_addr hooks judge (TCP, MPTCP as TCP, UDP), plus ping and raw
/// sockets where the policy names them. Everything else (SCTP, UDP-Lite,
/// L2TP/IP, SMC, a protocol a module adds later) would send where no
/// program looks, so default deny refuses the socket itself.
#[inline(always)]
fn creatable(s: &Subject, sock_type: u32, protocol: u32) -> bool {
    match sock_type {
        SOCK_STREAM => protocol == IPPROTO_TCP || protocol == IPPROTO_MPTCP,
        SOCK_DGRAM if protocol == IPPROTO_UDP => true,
        SOCK_DGRAM if protocol == IPPROTO_ICMP || protocol == IPPROTO_ICMPV6 => {
            s.flags & IDENTITY_FLAG_NET_PING != 0
        }
        SOCK_RAW => s.flags & IDENTITY_FLAG_NET_RAW != 0,
        _ => false,
    }
}

/// `cgroup/sock_create`: runs in `inet_create`/`inet6_create` after the
/// kernel resolved protocol 0 to the protocol it will use, so what is judged
/// is what would be created. Other families never reach it.
pub fn judge_create(ctx: &SockContext) -> i32 {
    let Some(s) = identity::current() else {
        return ALLOW;
    };
    let sk = ctx.sock;
    // SAFETY: the context pointer is valid for the program's duration.
    let (family, sock_type, protocol) = unsafe { ((*sk).family, (*sk).type_, (*sk).protocol) };
    if creatable(&s, sock_type, protocol) {
        return ALLOW;
    }
    let t = Target {
        family,
        sock_type,
        protocol,
        port: 0,
        addr: [0; 16],
    };
    verdict(&s, Hook::Create, 0, (0, 0), &t)
}
