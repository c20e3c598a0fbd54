//! The CLI's side: `corral policy show` and `explain --syscall` read the
//! policy in force as `GET /v1/policy/NAME` serves it.

use super::{ALWAYS_ALLOWED, hot_set, resolve};

/// The `[syscalls]` lines of `corral policy show` (from the `syscalls`
/// object of `GET /v1/policy/NAME`).
pub fn print_show(s: &serde_json::Value) {
    let t = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_string();
    if s["confined"] != true {
        println!("  syscalls: NOT CONFINED (no [syscalls] section)");
        return;
    }
    let count = |k: &str| s[k].as_array().map_or(0, Vec::len);
    println!(
        "  syscalls: {} allowed ({} of them allowed in the seccomp filter itself at launch), {} \
         denied in the filter; the rest refused live",
        count("allowed"),
        count("in_kernel_allow_at_launch"),
        count("denied"),
    );
    for (verb, key) in [("allow", "allow"), ("deny", "deny")] {
        for e in s[key].as_array().into_iter().flatten() {
            println!(
                "    {verb:<5} {:<16} {:>3} syscalls  {}:{}:{}",
                t(&e["entry"]),
                e["syscalls"],
                t(&e["origin"]["file"]),
                e["origin"]["line"],
                e["origin"]["col"]
            );
        }
    }
    println!("    assigned = {}: {}", s["assigned"], t(&s["note"]));
}

/// `corral policy explain --syscall NAME`: how the policy in force (as
/// `GET /v1/policy/IDENTITY` serves it) decides one syscall, and which layer
/// applies the decision.
pub fn explain(policy: &serde_json::Value, name: &str) -> Result<serde_json::Value, String> {
    use serde_json::json;
    let nr = match resolve(name) {
        Ok(set) if !name.starts_with('@') => set.iter().next().unwrap_or(0),
        Ok(_) => return Err(format!("`{name}` is a group; explain one syscall")),
        Err(e) => return Err(e),
    };
    let s = &policy["syscalls"];
    let base = |decision: &str, by: Option<&serde_json::Value>, layer: &str| {
        json!({
            "identity": policy["name"],
            "mode": policy["mode"],
            "syscall": name,
            "nr": nr,
            "decision": decision,
            "by": by.map(|e| format!(
                "{} ({}:{}:{})",
                e["entry"].as_str().unwrap_or("?"),
                e["origin"]["file"].as_str().unwrap_or("?"),
                e["origin"]["line"],
                e["origin"]["col"]
            )),
            "layer": layer,
        })
    };
    if s["confined"] != true {
        return Ok(base(
            "allow",
            None,
            "no [syscalls] section: nothing is confined",
        ));
    }
    let covers = |e: &&serde_json::Value| {
        e["entry"]
            .as_str()
            .and_then(|t| resolve(t).ok())
            .is_some_and(|set| set.contains(nr))
    };
    let listed = |key: &str| {
        s[key]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(name)))
    };
    if ALWAYS_ALLOWED.contains(&name) {
        return Ok(base("allow", None, "always allowed (in the filter)"));
    }
    if let Some(e) = s["deny"].as_array().and_then(|d| d.iter().find(covers)) {
        return Ok(base(
            "deny",
            Some(e),
            "EPERM in the seccomp filter (enforce mode)",
        ));
    }
    if listed("allowed") {
        let e = s["allow"].as_array().and_then(|a| a.iter().find(covers));
        let hot = hot_set().contains(nr) && name != "socket" && !name.starts_with("exec");
        let layer = if hot {
            "allowed in the seccomp filter itself (hot; fixed at launch)"
        } else {
            "answered live by the launcher"
        };
        return Ok(base("allow", e, layer));
    }
    Ok(base(
        "deny",
        None,
        "no entry allows it: EPERM, answered live by the launcher",
    ))
}
