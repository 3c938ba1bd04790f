//! [`TopologyError`].

/// What is wrong with a topology file.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The file could not be read.
    #[error("cannot read topology file {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed or a field has the wrong type or name.
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        /// File name (or `<demo>`).
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser said.
        message: String,
    },
    /// The TOML is well formed but says something impossible.
    #[error("{file}:{line}: field `{field}`: {message}")]
    Invalid {
        /// File name.
        file: String,
        /// 1-based line.
        line: usize,
        /// The field at fault.
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
}

/// 1-based line and column of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// 1-based line of setting `field` (a dotted path such as `health.threshold`: its last part is
/// looked for) in the table that starts at byte `anchor`: the first `key =` (or `key.`) after
/// the anchor and before the next table header; the anchor's line when it is not written (a
/// default that conflicts with another setting).
pub(crate) fn key_line(text: &str, anchor: usize, field: &str) -> usize {
    let anchor = anchor.min(text.len());
    let key = field.rsplit('.').next().unwrap_or(field);
    let mut at = anchor;
    for (n, line) in text[anchor..].split_inclusive('\n').enumerate() {
        if n > 0 && line.trim_start().starts_with('[') {
            break;
        }
        let mut from = 0;
        while let Some(i) = line[from..].find(key) {
            let start = from + i;
            let before = line[..start].chars().next_back();
            let after = line[start + key.len()..].trim_start();
            if before.is_none_or(|c| matches!(c, ' ' | '\t' | '{' | ',' | '.'))
                && (after.starts_with('=') || after.starts_with('.'))
            {
                return line_col(text, at).0;
            }
            from = start + key.len();
        }
        at += line.len();
    }
    line_col(text, anchor).0
}
