//! Audit netlink datagrams as the Landlock-denial observer reads them
//! (`agent_user::daemon::llaudit`): the multicast group carries whatever
//! the kernel formats from untrusted names, so neither the message walk
//! nor the record reader may panic, and a file denial's access bits stay
//! within `ACCESS_ALL`.
#![no_main]

use agent_common::file::ACCESS_ALL;
use agent_user::daemon::llaudit::{netlink, record};
use libfuzzer_sys::fuzz_target;

const TYPES: [u16; 7] = [
    netlink::AUDIT_LANDLOCK_ACCESS,
    netlink::AUDIT_LANDLOCK_DOMAIN,
    netlink::AUDIT_SYSCALL,
    netlink::AUDIT_PATH,
    netlink::AUDIT_CWD,
    netlink::AUDIT_EOE,
    netlink::AUDIT_GET,
];

fn check(ty: u16, body: &[u8]) {
    if let Some((_, record::Record::Access { access, .. })) = record::parse(ty, body) {
        assert_eq!(access & !ACCESS_ALL, 0);
    }
}

fuzz_target!(|data: &[u8]| {
    for (ty, _, body) in netlink::messages(data) {
        check(ty, body);
    }
    if let Some((&sel, body)) = data.split_first() {
        check(TYPES[sel as usize % TYPES.len()], body);
    }
});
