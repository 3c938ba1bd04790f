//! [`TopologyError`].

/// A TOML file (a topology, `vmq serve`'s configuration) that does not parse, or a field of
/// the wrong type or name: where, and what the parser said.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct TomlError {
    /// File name (or `<demo>`).
    pub file: String,
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What the parser said.
    pub message: String,
}

/// Parses TOML `text` read from `file` into a `T`, with the place of any error.
pub fn from_toml<T: serde::de::DeserializeOwned>(text: &str, file: &str) -> Result<T, TomlError> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map_or((0, 0), |s| line_col(text, s.start));
        TomlError {
            file: file.to_string(),
            line,
            column,
            message: e.message().trim().to_string(),
        }
    })
}

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
    #[error(transparent)]
    Syntax(#[from] TomlError),
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
