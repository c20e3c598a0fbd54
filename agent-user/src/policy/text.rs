//! Lexical path forms shared by the rule checkers (files, unix sockets):
//! only for suggesting a fix in an error message; rules themselves are
//! never rewritten (a policy says what it means or does not load).

/// `.`, `..` and empty components resolved; a trailing `/` (a directory
/// rule's "beneath") kept.
pub(crate) fn normalise(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let beneath = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
    match (parts.is_empty(), beneath) {
        (true, _) => "/".into(),
        (false, true) => format!("/{}/", parts.join("/")),
        (false, false) => format!("/{}", parts.join("/")),
    }
}

/// Like `normalise`, without a trailing `/` (socket paths name files).
pub(crate) fn normalise_file(path: &str) -> String {
    let n = normalise(path);
    match n.strip_suffix('/') {
        Some(s) if !s.is_empty() => s.to_owned(),
        _ => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(normalise("/a/b/.."), "/a/");
        assert_eq!(normalise("/a//b"), "/a/b");
        assert_eq!(normalise("/../"), "/");
        assert_eq!(normalise_file("/a/./b/"), "/a/b");
        assert_eq!(normalise_file("//"), "/");
    }
}
