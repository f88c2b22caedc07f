//! Diagnostics: positioned, human-readable error messages.

use std::fmt;

/// A 1-based position (line and column, in characters) in a pipeline file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    /// 1-based line number.
    pub line: u32,
    /// 1-based column number, counted in characters.
    pub column: u32,
}

impl Pos {
    /// The first character of a file.
    pub const START: Pos = Pos { line: 1, column: 1 };

    /// Creates a position from a 1-based line and column.
    pub fn new(line: u32, column: u32) -> Self {
        Pos { line, column }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One error found in a pipeline file, pointing at the offending node.
///
/// Displays as `{file}:{line}:{column}: {message}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Diagnostic {
    /// The file name the diagnostic refers to (as given to [`crate::parse`]).
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column, counted in characters.
    pub column: u32,
    /// What is wrong and what was expected.
    pub message: String,
}

impl Diagnostic {
    /// Creates a diagnostic at `pos` in `file`.
    pub fn new(file: &str, pos: Pos, message: impl Into<String>) -> Self {
        Diagnostic { file: file.to_owned(), line: pos.line, column: pos.column, message: message.into() }
    }

    /// The position this diagnostic points at.
    pub fn pos(&self) -> Pos {
        Pos::new(self.line, self.column)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)
    }
}

impl std::error::Error for Diagnostic {}

/// Sorts diagnostics by position (then message) and removes exact duplicates.
pub(crate) fn sort_diagnostics(diags: &mut Vec<Diagnostic>) {
    diags.sort_by(|a, b| (a.line, a.column, &a.message, &a.file).cmp(&(b.line, b.column, &b.message, &b.file)));
    diags.dedup();
}

/// Returns the candidate closest to `word` if it is close enough to be a
/// plausible typo (normalized Damerau-Levenshtein similarity ≥ 0.7, or an edit
/// distance of at most 2 that leaves part of the word intact).
pub(crate) fn did_you_mean<'c, I>(word: &str, candidates: I) -> Option<&'c str>
where
    I: IntoIterator<Item = &'c str>,
{
    let mut best: Option<(&'c str, f64)> = None;
    for cand in candidates {
        if cand == word {
            continue;
        }
        let distance = strsim::damerau_levenshtein(word, cand);
        let similarity = strsim::normalized_damerau_levenshtein(word, cand);
        let close = similarity >= 0.7 || (distance <= 2 && distance < word.chars().count().min(cand.chars().count()));
        if close && best.is_none_or(|(_, s)| similarity > s) {
            best = Some((cand, similarity));
        }
    }
    best.map(|(c, _)| c)
}

/// Formats `"; did you mean `x`?"` when a close candidate exists, else `""`.
pub fn suggestion<'c, I>(word: &str, candidates: I) -> String
where
    I: IntoIterator<Item = &'c str>,
{
    did_you_mean(word, candidates).map(|c| format!("; did you mean `{c}`?")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_format() {
        let d = Diagnostic::new("p.yml", Pos::new(3, 7), "boom");
        assert_eq!(d.to_string(), "p.yml:3:7: boom");
    }

    #[test]
    fn suggestions_only_when_close() {
        assert_eq!(did_you_mean("stpes", ["name", "steps"]), Some("steps"));
        assert_eq!(did_you_mean("biuld", ["build", "test"]), Some("build"));
        assert_eq!(did_you_mean("zzzzzz", ["steps", "name"]), None);
        assert_eq!(suggestion("x", ["steps"]), "");
    }
}
