//! Arbitrary bytes as kernel BTF, then the questions the daemon asks of it.
#![no_main]

use agent_user::daemon::kernel::btf::Btf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(b) = Btf::parse(data) else { return };
    for (st, member) in [
        ("file", "f_path"),
        ("qstr", "len"),
        ("s", "a"),
        ("s", "b"),
        ("task_struct", "seccomp"),
    ] {
        let _ = b.offset(st, member);
        let _ = b.member_is_pointer(st, member);
    }
    let _ = b.enumerator("e", "X");
    let _ = b.enumerator("bpf_func_id", "BPF_FUNC_d_path");
    let _ = b.lsm_func_id("bpf_lsm_file_open");
});
