//! Policy errors: every one names a file, a line and a column, because a
//! policy author fixes them in an editor.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in one policy file. Lines and columns are 1-based; columns
/// count characters, as editors do, not bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[error("{}:{line}:{col}: {message}", file.display())]
pub struct PolicyError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl PolicyError {
    /// An error with no better position than the file itself (unreadable
    /// file, directory problems): reported at 1:1 so the format stays uniform.
    pub fn whole_file(file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            line: 1,
            col: 1,
            message: message.into(),
        }
    }
}

/// Every problem found in a policy directory, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl PolicyErrors {
    pub fn single(e: PolicyError) -> Self {
        Self(vec![e])
    }
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

impl From<PolicyError> for PolicyErrors {
    fn from(e: PolicyError) -> Self {
        Self::single(e)
    }
}

/// Turns byte offsets of one file's text into line:col positions.
///
/// Line starts are indexed once so that a file with many rules does not cost
/// a scan from the top per rule.
pub(crate) struct Source<'a> {
    pub file: &'a Path,
    pub text: &'a str,
    line_starts: Vec<usize>,
    /// In ASCII text a column is a byte distance; counting characters per
    /// position would be quadratic for a long line of rules.
    ascii: bool,
}

impl<'a> Source<'a> {
    pub fn new(file: &'a Path, text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            file,
            text,
            line_starts,
            ascii: text.is_ascii(),
        }
    }

    /// 1-based (line, column) of a byte offset; offsets past the end or
    /// inside a multi-byte character are clamped rather than trusted.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts[line - 1];
        let col = if self.ascii {
            offset - start
        } else {
            self.text
                .get(start..offset)
                .map_or(offset - start, |s| s.chars().count())
        };
        (line, col + 1)
    }

    pub fn error_at(&self, offset: usize, message: impl Into<String>) -> PolicyError {
        let (line, col) = self.line_col(offset);
        PolicyError {
            file: self.file.to_path_buf(),
            line,
            col,
            message: message.into(),
        }
    }

    /// Where a string value starts (its first character, past the quote).
    pub fn origin(&self, s: &toml::Spanned<String>) -> super::Origin {
        let (line, col) = self.line_col(self.offset_in_string(&s.span(), s.get_ref(), 0));
        super::Origin {
            file: self.file.to_path_buf(),
            line,
            col,
        }
    }

    /// Byte offset in the file of byte `inner` of a string value whose toml
    /// span (quotes included) is `span`.
    ///
    /// Exact only when the value is written without escapes on one line;
    /// otherwise the offset of the value's first character is the best we
    /// can honestly point at.
    pub fn offset_in_string(&self, span: &Range<usize>, value: &str, inner: usize) -> usize {
        let quoted = span.end.saturating_sub(span.start) >= 2
            && self.text.get(span.start + 1..span.end - 1) == Some(value);
        if quoted {
            span.start + 1 + inner.min(value.len())
        } else {
            span.start
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one_and_in_characters() {
        let text = "ab\n\u{e9}x = 1\n\nlast";
        let s = Source::new(Path::new("f.toml"), text);
        assert_eq!(s.line_col(0), (1, 1));
        assert_eq!(s.line_col(2), (1, 3));
        assert_eq!(s.line_col(3), (2, 1));
        // 'x' follows a two-byte character: byte 5, column 2.
        assert_eq!(s.line_col(5), (2, 2));
        assert_eq!(s.line_col(text.len()), (4, 5));
        assert_eq!(s.line_col(text.len() + 10), (4, 5));
    }

    #[test]
    fn errors_display_one_per_line() {
        let e = |line| PolicyError {
            file: PathBuf::from("p/a.toml"),
            line,
            col: 3,
            message: "bad".into(),
        };
        let all = PolicyErrors(vec![e(1), e(2)]);
        assert_eq!(all.to_string(), "p/a.toml:1:3: bad\np/a.toml:2:3: bad");
    }
}
