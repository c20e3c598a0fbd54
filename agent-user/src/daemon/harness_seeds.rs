//! The fuzz targets' seed corpus (`fuzz/corpus/<target>/`), made from the
//! example policies, records laid out as the kernel writes them, requests
//! the CLI and agents send, and tokens signed like the daemon's. The test
//! checks the checked-in files are current (regenerate with
//! `CORRAL_WRITE_SEEDS=1 cargo test -p agent-user fuzz_seeds`) and that
//! every seed takes the path it is meant to seed through the harness.

use std::{collections::BTreeMap, path::PathBuf};

use agent_common::{
    event::{
        EventHeader, KIND_FILE, KIND_FILE_OP, KIND_NET, KIND_PROTECT, KIND_SYSCALL, KIND_UNIX,
        NetEvent, UnixEvent,
    },
    file::{FileEvent, FileOpEvent, ProtectEvent},
    syscall::SyscallEvent,
};

use super::{
    harness::{Harness, compile_policy},
    lease::token::{Claims, HostKey},
};

type Seeds = BTreeMap<&'static str, Vec<(String, Vec<u8>)>>;

fn ws() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: T is a repr(C) integer-only wire type without padding bytes.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

fn zeroed<T: Copy>() -> T {
    // SAFETY: wire types are integer-only, valid as all zeroes.
    unsafe { std::mem::zeroed() }
}

fn header(kind: u32) -> EventHeader {
    let mut comm = [0u8; 16];
    comm[..7].copy_from_slice(b"python3");
    EventHeader {
        kind,
        identity: 1,
        ts_ns: 1_234_567_890,
        cgroup_id: 4242,
        pid: 27299,
        tgid: 27299,
        comm,
        verdict: 1,
        mode: 1,
        reason: 2,
        rule_id: 3,
    }
}

fn events() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let net = NetEvent {
        hdr: header(KIND_NET),
        op: 1,
        family: 2,
        protocol: 6,
        port: 443,
        addr: [10, 20, 9, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        sock_type: 1,
        _pad: 0,
    };
    out.push(("net".into(), bytes_of(&net)));
    let mut unix: UnixEvent = zeroed();
    unix.hdr = header(KIND_UNIX);
    unix.op = 1;
    unix.path_len = 16;
    unix.path[..16].copy_from_slice(b"/run/nscd/socket");
    out.push(("unix".into(), bytes_of(&unix)));
    let mut file: FileEvent = zeroed();
    file.hdr = header(KIND_FILE);
    file.access = 2;
    file.path_len = 11;
    file.path[..11].copy_from_slice(b"/etc/shadow");
    out.push(("file".into(), bytes_of(&file)));
    let mut op: FileOpEvent = zeroed();
    op.hdr = header(KIND_FILE_OP);
    op.op = 1;
    op.access = 2;
    op.path_len = 13;
    op.path[..13].copy_from_slice(b"/srv/kb/x.txt");
    out.push(("file_op".into(), bytes_of(&op)));
    let mut prot: ProtectEvent = zeroed();
    prot.hdr = header(KIND_PROTECT);
    prot.op = 1;
    prot.target_tgid = 1;
    out.push(("protect".into(), bytes_of(&prot)));
    let mut sys: SyscallEvent = zeroed();
    sys.hdr = header(KIND_SYSCALL);
    sys.nr = 83;
    sys.errno = 1;
    out.push(("syscall".into(), bytes_of(&sys)));
    out.push(("short".into(), bytes_of(&net)[..70].to_vec()));
    out
}

fn http(method: &str, path: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nhost: corral\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn api() -> Vec<(String, Vec<u8>)> {
    let control = [
        ("GET", "/v1/status", ""),
        ("GET", "/v1/identities", ""),
        ("GET", "/v1/identities/support-agent", ""),
        (
            "GET",
            "/v1/policy/support-agent?sections=files,syscalls",
            "",
        ),
        ("GET", "/v1/events?identity=support-agent&kind=net", ""),
        (
            "POST",
            "/v1/policy/explain",
            r#"{"identity":"support-agent","open":"/srv/kb/a.md","access":"read,write"}"#,
        ),
        (
            "POST",
            "/v1/policy/explain",
            r#"{"identity":"support-agent","connect":"10.20.9.4:443"}"#,
        ),
        ("POST", "/v1/policy/diff", "{}"),
        ("POST", "/v1/policy/apply", ""),
        ("POST", "/v1/assign", r#"{"identity":"ops-agent","pid":1}"#),
        (
            "POST",
            "/v1/leases",
            r#"{"identity":"billing-agent","scopes":["invoices:read"],"ttl":"10m"}"#,
        ),
        (
            "POST",
            "/v1/leases",
            r#"{"identity":"billing-agent","scopes":["refunds:issue"],"ttl":600,"wait":"1m"}"#,
        ),
        ("GET", "/v1/leases?all=1", ""),
        ("GET", "/v1/leases/pubkey", ""),
        (
            "POST",
            "/v1/leases/revoke",
            r#"{"identity":"billing-agent","reason":"x"}"#,
        ),
        ("POST", "/v1/thaw/billing-agent", ""),
    ];
    let lease = [
        ("GET", "/v1/whoami", ""),
        (
            "POST",
            "/v1/leases",
            r#"{"scopes":["refunds:issue"],"ttl":"5m","wait":"10m"}"#,
        ),
        ("GET", "/v1/leases/jwks", ""),
        ("POST", "/v1/leases/l-1/renew", r#"{"ttl":"5m"}"#),
        ("GET", "/v1/leases/l-1/wait?timeout=30s", ""),
        ("POST", "/v1/leases/l-1/approve", ""),
    ];
    let mut out = Vec::new();
    for (i, (m, p, b)) in control.iter().enumerate() {
        out.push((
            format!("control-{i:02}"),
            [&[0u8][..], &http(m, p, b)].concat(),
        ));
    }
    for (i, (m, p, b)) in lease.iter().enumerate() {
        out.push((
            format!("lease-{i:02}"),
            [&[1u8][..], &http(m, p, b)].concat(),
        ));
    }
    let pipelined = [
        http("GET", "/v1/status", ""),
        http("POST", "/v1/leases", "{}"),
    ]
    .concat();
    out.push((
        "control-pipelined".into(),
        [&[0u8][..], &pipelined].concat(),
    ));
    out
}

/// Tokens signed with the fuzz key (`fuzz_targets/lease_token.rs`).
fn tokens() -> Vec<(String, Vec<u8>)> {
    let key = HostKey::from_seed([7; 32]);
    let claims = Claims {
        iss: "corral@host".into(),
        sub: "billing-agent".into(),
        jti: "l-1".into(),
        iat: 1_799_999_000,
        nbf: 1_799_999_000,
        exp: 1_800_000_600,
        host: "host".into(),
        identity: "billing-agent".into(),
        cgroup_id: 4242,
        scopes: vec!["refunds:issue".into()],
    };
    let token = key.sign(&claims);
    vec![
        ("verify".into(), [&[0u8][..], token.as_bytes()].concat()),
        ("signature".into(), [&[1u8][..], token.as_bytes()].concat()),
        (
            "pem".into(),
            [&[2u8][..], key.public().to_pem().as_bytes()].concat(),
        ),
        (
            "jwk".into(),
            [&[2u8][..], key.public().to_jwk().to_string().as_bytes()].concat(),
        ),
    ]
}

fn seeds() -> Seeds {
    let mut s = Seeds::new();
    let mut policies: Vec<(String, Vec<u8>)> = std::fs::read_dir(ws().join("policies"))
        .expect("policies/")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| {
            let name = p.file_stem().expect("stem").to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("policy"))
        })
        .collect();
    policies.sort();
    s.insert("policy", policies);
    s.insert("event_decode", events());
    s.insert("api", api());
    s.insert("lease_token", tokens());
    s.insert(
        "btf",
        vec![("blob".into(), super::kernel::btf::tests::blob())],
    );
    s
}

#[test]
fn fuzz_seeds_are_current_and_take_their_paths() {
    let write = std::env::var_os("CORRAL_WRITE_SEEDS").is_some_and(|v| v == "1");
    for (target, files) in seeds() {
        let dir = ws().join("fuzz/corpus").join(target);
        for (name, bytes) in files {
            let path = dir.join(&name);
            if write {
                std::fs::create_dir_all(&dir).expect("corpus dir");
                std::fs::write(&path, &bytes).expect("seed");
            }
            let on_disk = std::fs::read(&path).unwrap_or_default();
            assert!(
                on_disk == bytes,
                "{} is stale: CORRAL_WRITE_SEEDS=1 cargo test -p agent-user fuzz_seeds",
                path.display()
            );
        }
    }
    for (name, text) in &seeds()["policy"] {
        let text = std::str::from_utf8(text).expect("utf-8");
        let n = compile_policy(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(n > 0, "{name} compiles to no entries");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    let h = Harness::new(&ws().join("policies"), rt).expect("harness");
    for (name, rec) in events() {
        let got = h.event(&rec);
        assert_eq!(got.is_some(), name != "short", "{name}: {got:?}");
    }
    let answer = h.control(&http("GET", "/v1/identities/support-agent", ""));
    assert!(
        answer.starts_with(b"HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let answer = h.lease("billing-agent", &http("GET", "/v1/whoami", ""));
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 200 ") && text.contains("billing-agent"),
        "{text}"
    );
    // A streaming route ends on the paused clock.
    let answer = h.control(&http("GET", "/v1/events", ""));
    assert!(String::from_utf8_lossy(&answer).contains("\"hello\""));
    // A misspelt kind is an error, not a stream that never shows anything.
    let answer = h.control(&http("GET", "/v1/events?kind=protekt", ""));
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 400 ") && text.contains("protect"),
        "{text}"
    );
    // The advisor with the caller's (no) events: nothing to add.
    let body = r#"{"identity":"support-agent","events":[]}"#;
    let answer = h.control(&http("POST", "/v1/policy/suggest", body));
    let text = String::from_utf8_lossy(&answer);
    let v: serde_json::Value = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or_default();
    assert!(
        text.starts_with("HTTP/1.1 200 ")
            && v["changed"] == false
            && v["replay"]["operations"] == 0,
        "{text}"
    );
    let key = HostKey::from_seed([7; 32]);
    let token = &tokens()[0].1[1..];
    let claims = key
        .public()
        .verify(std::str::from_utf8(token).expect("token"), 1_800_000_000)
        .expect("seed token verifies");
    assert_eq!(claims.sub, "billing-agent");
}
