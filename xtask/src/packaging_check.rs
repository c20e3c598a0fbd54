//! The packaging step of `cargo xtask test`: `systemd-analyze verify` on
//! the packaged unit alone and with the fleet drop-in
//! (`packaging/fleet/corral.service.d/`), with `ExecStart=` pointed at the
//! freshly built binary (verify needs it to exist), after proving on a
//! deliberately broken copy that the check can fail; the Kubernetes
//! DaemonSet parses and mounts the ConfigMap its comments tell operators to
//! create; and every flag the drop-in or the DaemonSet passes to `corral
//! daemon` is one the binary knows (a renamed flag would otherwise be found
//! only when a fleet restarts).

use std::{
    env, fs,
    path::Path,
    process::{self, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::util;

const UNIT_NAME: &str = "corral.service";
const DROP_IN: &str = "fleet/corral.service.d/10-fleet.conf";
const DAEMONSET: &str = "kubernetes/corral-daemonset.yaml";

pub fn check(ws: &Path, bin: &Path) -> Result<()> {
    let packaging = ws.join("packaging");
    let src = packaging.join(UNIT_NAME);
    let text = fs::read_to_string(&src).with_context(|| format!("reading {}", src.display()))?;
    let unit = rewrite_exec_start(&text, bin)?;
    let drop_in_src = packaging.join(DROP_IN);
    let drop_in_text = fs::read_to_string(&drop_in_src)
        .with_context(|| format!("reading {}", drop_in_src.display()))?;
    let drop_in = rewrite_exec_start(&drop_in_text, bin)?;
    let dir = env::temp_dir().join(format!("corral-unit-check-{}", process::id()));
    let result = (|| {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        if verify(&dir, &break_unit(&unit)?, None).is_ok() {
            bail!(
                "systemd-analyze verify accepted a deliberately broken unit: the check is not working"
            );
        }
        println!("(a deliberately broken copy was rejected, as it should be)");
        verify(&dir, &unit, None).with_context(|| format!("{} has errors", src.display()))?;
        verify(&dir, &unit, Some(&drop_in))
            .with_context(|| format!("{} has errors", drop_in_src.display()))?;
        daemon_knows_flags(bin, &exec_start_flags(&drop_in))
            .with_context(|| format!("{} passes flags", drop_in_src.display()))
    })();
    let _ = fs::remove_dir_all(&dir);
    result?;
    println!("{}: ok", src.display());
    println!("{}: ok", drop_in_src.display());
    let ds = packaging.join(DAEMONSET);
    check_daemonset(&ds, bin).with_context(|| format!("{}", ds.display()))?;
    println!("{}: ok (parsed; not run in a cluster)", ds.display());
    Ok(())
}

/// Parses the manifest (PyYAML, installed by `cargo xtask setup`: no YAML
/// crate worth its weight for one file) and checks what a typo would break.
fn check_daemonset(path: &Path, bin: &Path) -> Result<()> {
    let script =
        "import json,sys,yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let json = util::output(util::cmd("python3").args(["-c", script]).arg(path))
        .context("parsing the YAML (python3-yaml)")?;
    let docs: Vec<serde_json::Value> = serde_json::from_str(&json)?;
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .context("no DaemonSet in the manifest")?;
    let pod = &ds["spec"]["template"]["spec"];
    let selector = &ds["spec"]["selector"]["matchLabels"];
    if selector.is_null() || *selector != ds["spec"]["template"]["metadata"]["labels"] {
        bail!("the selector does not match the pod template's labels");
    }
    if pod["hostPID"] != true {
        bail!("hostPID must be true: the daemon reads other processes' /proc entries");
    }
    let c = &pod["containers"][0];
    if c["securityContext"]["privileged"] != true {
        bail!("the container must be privileged (bpf, cgroups, bpffs)");
    }
    let args: Vec<&str> = c["args"]
        .as_array()
        .context("container args")?
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    if args.first() != Some(&"daemon") {
        bail!("the container's args must start with `daemon`");
    }
    let flags: Vec<&str> = args
        .iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap_or(a))
        .collect();
    daemon_knows_flags(bin, &flags)?;
    let volumes = pod["volumes"].as_array().context("volumes")?;
    let policies = volumes
        .iter()
        .find(|v| !v["configMap"].is_null())
        .context("no ConfigMap volume for the policies")?;
    if policies["configMap"]["name"] != "corral-policies" {
        bail!("the ConfigMap volume must name corral-policies (what the comments create)");
    }
    for m in c["volumeMounts"].as_array().context("volumeMounts")? {
        if !volumes.iter().any(|v| v["name"] == m["name"]) {
            bail!("volumeMount {} has no volume", m["name"]);
        }
    }
    Ok(())
}

/// Writes `unit` as `<dir>/corral.service` (and `drop_in` beside it, where
/// systemd-analyze looks for drop-ins of a unit given by path) and verifies.
fn verify(dir: &Path, unit: &str, drop_in: Option<&str>) -> Result<()> {
    let path = dir.join(UNIT_NAME);
    fs::write(&path, unit).with_context(|| format!("writing {}", path.display()))?;
    let d = dir.join(format!("{UNIT_NAME}.d"));
    let _ = fs::remove_dir_all(&d);
    if let Some(text) = drop_in {
        fs::create_dir_all(&d)?;
        fs::write(d.join("10-fleet.conf"), text)?;
    }
    let mut c = util::cmd("systemd-analyze");
    c.args(["verify", "--man=no"]).arg(&path);
    let line = util::display(&c);
    let out = c.stdin(Stdio::null()).output().with_context(|| {
        format!("cannot run `{line}` (is systemd installed? `cargo xtask setup`)")
    })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let problems = problems(&text);
    if !out.status.success() || !problems.is_empty() {
        let shown = if problems.is_empty() {
            text.trim().to_owned()
        } else {
            problems.join("\n")
        };
        bail!("`{line}` ({}):\n{shown}", out.status);
    }
    Ok(())
}

/// Every flag appears in `corral daemon --help`.
fn daemon_knows_flags(bin: &Path, flags: &[&str]) -> Result<()> {
    let help = util::output(util::cmd(bin).args(["daemon", "--help"]))?;
    let unknown: Vec<&str> = flags
        .iter()
        .copied()
        .filter(|f| {
            !help
                .split_whitespace()
                .any(|w| w.trim_end_matches(',') == *f)
        })
        .collect();
    if !unknown.is_empty() {
        bail!("`corral daemon` does not know {}", unknown.join(", "));
    }
    Ok(())
}

/// The `--flag`s of the last non-empty `ExecStart=`.
fn exec_start_flags(unit: &str) -> Vec<&str> {
    let cmd = unit
        .lines()
        .filter_map(|l| l.strip_prefix("ExecStart="))
        .rfind(|c| !c.trim().is_empty())
        .unwrap_or("");
    cmd.split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| w.split('=').next().unwrap_or(w))
        .collect()
}

/// The lines of `systemd-analyze verify` output that are real problems with
/// our unit. Verify reports most mistakes (unknown keys, bad values) as
/// "..., ignoring." warnings with exit status 0, so any line about our unit
/// (or its drop-in, `corral.service.d/`) counts, except complaints about
/// paths under /etc, /var/lib/corral or /run/corral that do not exist yet:
/// `corral install` and systemd create them.
fn problems(output: &str) -> Vec<String> {
    output
        .lines()
        .filter(|l| l.contains(UNIT_NAME))
        .filter(|l| !missing_runtime_path(l))
        .map(str::to_owned)
        .collect()
}

fn missing_runtime_path(line: &str) -> bool {
    let missing = line.contains("No such file or directory") || line.contains("does not exist");
    let ours = ["/etc/", "/var/lib/corral", "/run/corral"]
        .iter()
        .any(|p| line.contains(p));
    missing && ours && !line.contains("is not executable")
}

/// Points each non-empty `ExecStart=` at `bin`, keeping any `-@:+!`
/// prefixes and the arguments (an empty one, a drop-in's reset, stays).
fn rewrite_exec_start(unit: &str, bin: &Path) -> Result<String> {
    let bin = bin.to_str().context("binary path is not UTF-8")?;
    let bin = if bin.contains(char::is_whitespace) {
        format!("\"{bin}\"")
    } else {
        bin.to_owned()
    };
    let mut found = false;
    let mut out = String::with_capacity(unit.len() + bin.len());
    for line in unit.lines() {
        match line.strip_prefix("ExecStart=") {
            Some(rest) if !rest.trim().is_empty() => {
                let cmd = rest.trim_start_matches(['-', '@', ':', '+', '!']);
                let prefix = &rest[..rest.len() - cmd.len()];
                let args = cmd.split_once(char::is_whitespace).map(|(_, a)| a);
                out.push_str(&format!("ExecStart={prefix}{bin}"));
                if let Some(a) = args {
                    out.push(' ');
                    out.push_str(a);
                }
                found = true;
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    if !found {
        bail!("no ExecStart= line in the unit");
    }
    Ok(out)
}

/// `unit` with an invalid `Type=` right after `[Service]`.
fn break_unit(unit: &str) -> Result<String> {
    if !unit.lines().any(|l| l.trim() == "[Service]") {
        bail!("no [Service] section in the unit");
    }
    Ok(unit.replacen("[Service]\n", "[Service]\nType=not-a-service-type\n", 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIT: &str = "[Unit]\nDescription=x\n\n[Service]\nType=notify\n\
                        ExecStart=/usr/local/bin/corral daemon --policy-dir /etc/corral/policies\n";

    #[test]
    fn exec_start_is_rewritten_with_args() {
        let out = rewrite_exec_start(UNIT, Path::new("/ws/target/release/corral")).unwrap();
        assert!(out.contains(
            "\nExecStart=/ws/target/release/corral daemon --policy-dir /etc/corral/policies\n"
        ));
        let prefixed = UNIT.replace("ExecStart=/", "ExecStart=-/");
        let out = rewrite_exec_start(&prefixed, Path::new("/b")).unwrap();
        assert!(out.contains("\nExecStart=-/b daemon"));
        assert!(rewrite_exec_start("[Service]\n", Path::new("/b")).is_err());
        let reset = "[Service]\nExecStart=\nExecStart=/x daemon --a=1 --b 2\n";
        let out = rewrite_exec_start(reset, Path::new("/b")).unwrap();
        assert_eq!(
            out,
            "[Service]\nExecStart=\nExecStart=/b daemon --a=1 --b 2\n"
        );
        assert_eq!(exec_start_flags(&out), vec!["--a", "--b"]);
    }

    #[test]
    fn warnings_about_our_unit_are_problems() {
        let out = "/tmp/x/corral.service:16: Failed to parse service type, ignoring: notifyy\n\
                   /lib/systemd/system/other.service:3: Unknown key 'X' in section [Unit]\n\
                   /tmp/x/corral.service.d/10-fleet.conf:3: Unknown key 'Y' in section [Service], ignoring.\n\
                   corral.service: Command /nonexistent/x is not executable: No such file or directory\n\
                   corral.service: /etc/corral/policies: No such file or directory\n";
        assert_eq!(
            problems(out),
            vec![
                "/tmp/x/corral.service:16: Failed to parse service type, ignoring: notifyy",
                "/tmp/x/corral.service.d/10-fleet.conf:3: Unknown key 'Y' in section [Service], ignoring.",
                "corral.service: Command /nonexistent/x is not executable: No such file or directory",
            ]
        );
        assert!(problems("").is_empty());
    }

    /// The real thing, where systemd-analyze exists: the broken copy fails,
    /// the packaged unit passes, alone and with the fleet drop-in.
    #[test]
    fn packaged_unit_verifies_and_broken_one_does_not() {
        if util::which("systemd-analyze").is_none() {
            eprintln!("systemd-analyze missing; skipped");
            return;
        }
        let ws = util::workspace_root();
        let read = |p: &str| fs::read_to_string(ws.join("packaging").join(p)).unwrap();
        // Any existing executable will do for ExecStart.
        let unit = rewrite_exec_start(&read(UNIT_NAME), Path::new("/bin/true")).unwrap();
        let drop_in = rewrite_exec_start(&read(DROP_IN), Path::new("/bin/true")).unwrap();
        let dir = env::temp_dir().join(format!("corral-unit-test-{}", process::id()));
        fs::create_dir_all(&dir).unwrap();
        let good = verify(&dir, &unit, None);
        let good_drop_in = verify(&dir, &unit, Some(&drop_in));
        let bad_drop_in = verify(&dir, &unit, Some(&format!("{drop_in}Bogus=1\n")));
        let bad = verify(&dir, &break_unit(&unit).unwrap(), None);
        let unknown_key = verify(
            &dir,
            &unit.replacen("[Service]\n", "[Service]\nBogus=1\n", 1),
            None,
        );
        let _ = fs::remove_dir_all(&dir);
        good.unwrap();
        good_drop_in.unwrap();
        assert!(bad_drop_in.is_err());
        assert!(bad.is_err());
        assert!(unknown_key.is_err());
    }
}
