//! Additions written into the operator's own TOML: comments, order and
//! formatting of what is there are kept; each new entry is preceded by a
//! comment with its evidence.

use toml_edit::{Array, DocumentMut, Item, Table, Value};

use super::Addition;

const INDENT: &str = "    ";

pub fn render(text: &str, additions: &[Addition]) -> Result<String, String> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| format!("the policy file is not TOML any more: {e}"))?;
    for a in additions {
        let table = doc
            .entry(a.section)
            .or_insert_with(|| Item::Table(Table::new()))
            .as_table_mut()
            .ok_or_else(|| {
                format!(
                    "[{}] is not a table here; add `{}` by hand",
                    a.section, a.value
                )
            })?;
        let arr = table
            .entry(a.key)
            .or_insert_with(|| Item::Value(Value::Array(Array::new())))
            .as_array_mut()
            .ok_or_else(|| {
                format!(
                    "`{}.{}` is not an array here; add `{}` by hand",
                    a.section, a.key, a.value
                )
            })?;
        // A one-line array becomes one entry per line, so each new entry
        // can carry its comment.
        if arr
            .iter()
            .all(|v| !v.decor().prefix().is_some_and(has_newline))
        {
            for v in arr.iter_mut() {
                v.decor_mut().set_prefix(format!("\n{INDENT}"));
            }
        }
        // Evidence is the agent's own text (a process names itself): a
        // newline in it must not become a line of policy.
        let mut comment = format!("\n{INDENT}# suggested: {}", inert(&a.seen.summary()));
        if let Some(note) = &a.note {
            comment.push_str(&format!("\n{INDENT}# ({})", inert(note)));
        }
        let mut v = Value::from(a.value.as_str());
        v.decor_mut().set_prefix(format!("{comment}\n{INDENT}"));
        arr.push_formatted(v);
        arr.set_trailing_comma(true);
        arr.set_trailing("\n");
    }
    let out = doc.to_string();
    verify(text, &out, additions)?;
    Ok(out)
}

/// Control characters as escapes, so a comment stays one line.
pub fn inert(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let e: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            e
        })
        .collect()
}

/// The proposal is the original plus the additions and nothing else:
/// take the additions out again and the documents must be equal.
fn verify(original: &str, proposal: &str, additions: &[Addition]) -> Result<(), String> {
    let parse = |t: &str| t.parse::<toml::Table>().map_err(|e| e.to_string());
    let before = parse(original)?;
    let mut after = parse(proposal).map_err(|e| format!("the proposal is not TOML: {e}"))?;
    for a in additions {
        let arr = after
            .get_mut(a.section)
            .and_then(|t| t.get_mut(a.key))
            .and_then(toml::Value::as_array_mut);
        let removed = arr.and_then(|arr| {
            let at = arr.iter().rposition(|v| v.as_str() == Some(&a.value))?;
            Some(arr.remove(at))
        });
        if removed.is_none() {
            return Err(format!("the proposal lost `{}`", a.value));
        }
    }
    // Sections and keys the additions created are empty again.
    for a in additions {
        let empty_arr = |t: &toml::Table| {
            t.get(a.key)
                .and_then(toml::Value::as_array)
                .is_some_and(Vec::is_empty)
        };
        let had_key = before
            .get(a.section)
            .and_then(toml::Value::as_table)
            .is_some_and(|t| t.contains_key(a.key));
        if let Some(toml::Value::Table(t)) = after.get_mut(a.section)
            && !had_key
            && empty_arr(t)
        {
            t.remove(a.key);
        }
        if !before.contains_key(a.section)
            && after
                .get(a.section)
                .and_then(toml::Value::as_table)
                .is_some_and(toml::Table::is_empty)
        {
            after.remove(a.section);
        }
    }
    if before != after {
        return Err("the proposal changes more than its additions (refused)".into());
    }
    Ok(())
}

fn has_newline(raw: &toml_edit::RawString) -> bool {
    raw.as_str().is_some_and(|s| s.contains('\n'))
}
