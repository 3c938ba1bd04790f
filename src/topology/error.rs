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
