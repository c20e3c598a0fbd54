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
        let mut comment = format!("\n{INDENT}# suggested: {}", a.seen.summary());
        if let Some(note) = &a.note {
            comment.push_str(&format!("\n{INDENT}# ({note})"));
        }
        let mut v = Value::from(a.value.as_str());
        v.decor_mut().set_prefix(format!("{comment}\n{INDENT}"));
        arr.push_formatted(v);
        arr.set_trailing_comma(true);
        arr.set_trailing("\n");
    }
    Ok(doc.to_string())
}

fn has_newline(raw: &toml_edit::RawString) -> bool {
    raw.as_str().is_some_and(|s| s.contains('\n'))
}
