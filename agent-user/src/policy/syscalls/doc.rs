//! The groups section of `policies/README.md`, generated from the table.

use std::path::Path;

use super::{ALWAYS_ALLOWED, GROUPS, PSEUDO, SYSCALLS};

const DOC_BEGIN: &str = "<!-- BEGIN generated from agent-user/src/policy/syscalls/table.rs -->";
const DOC_END: &str = "<!-- END generated -->";

/// The groups section of `policies/README.md`, generated from the table
/// (kept in sync by the test below).
fn readme_section() -> String {
    let mut s = String::new();
    s.push_str(DOC_BEGIN);
    s.push_str("\n\n");
    s.push_str(
        "Names marked with `*` are *hot*: when the policy allows them at launch, the seccomp \
         filter allows them itself, without asking the supervisor (removing one from a policy \
         reaches processes started afterwards). Every other name is decided live. \
         Always allowed, whatever the policy says: ",
    );
    let always: Vec<String> = ALWAYS_ALLOWED.iter().map(|n| format!("`{n}`")).collect();
    s.push_str(&always.join(", "));
    s.push_str(".\n\n");
    for g in GROUPS {
        let members: Vec<String> = SYSCALLS
            .iter()
            .filter(|sc| sc.groups & g.bit != 0)
            .map(|sc| format!("`{}`{}", sc.name, if sc.hot { "*" } else { "" }))
            .collect();
        s.push_str(&format!(
            "#### `{}` ({} syscalls)\n\n{}\n\n{}\n\n",
            g.name,
            members.len(),
            g.summary,
            members.join(" ")
        ));
    }
    let ungrouped: Vec<String> = SYSCALLS
        .iter()
        .filter(|sc| sc.groups == 0)
        .map(|sc| format!("`{}`", sc.name))
        .collect();
    s.push_str(&format!(
        "#### In no group (allowed by name only)\n\n{}\n\n",
        ungrouped.join(" ")
    ));
    s.push_str("#### Socket families\n\n| Entry | Allows |\n|---|---|\n");
    for (_, name, what, _) in PSEUDO {
        s.push_str(&format!("| `{name}` | {what} |\n"));
    }
    s.push('\n');
    s.push_str(DOC_END);
    s
}

/// `policies/README.md` carries the generated group list; this keeps it
/// in sync (`CORRAL_BLESS=1` rewrites it).
#[test]
fn syscall_groups_doc_is_in_sync() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/README.md");
    let text = std::fs::read_to_string(&path).expect("policies/README.md");
    let want = readme_section();
    let (Some(b), Some(e)) = (text.find(DOC_BEGIN), text.find(DOC_END)) else {
        panic!("policies/README.md has no generated syscall section (markers missing)");
    };
    let have = &text[b..e + DOC_END.len()];
    if have != want {
        if std::env::var_os("CORRAL_BLESS").is_some() {
            let new = format!("{}{}{}", &text[..b], want, &text[e + DOC_END.len()..]);
            std::fs::write(&path, new).expect("write README");
        } else {
            panic!(
                "policies/README.md's syscall group section is out of date: run \
                 `CORRAL_BLESS=1 cargo test -p agent-user syscall_groups_doc`"
            );
        }
    }
}
