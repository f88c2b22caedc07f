//! Branch and tag filters: a small glob matcher.
//!
//! Supported syntax: `*` matches any run of characters except `/`, `**`
//! matches anything (including `/`), `?` matches one character except `/`;
//! everything else is literal. Character classes (`[…]`), alternatives
//! (`{a,b}`) and negation (`!pat`) are rejected rather than silently treated
//! as literals. This is ~40 lines with linear-time matching, which is simpler
//! and lighter than pulling in `globset` (and its regex engine) for three
//! operators on short ref names.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Lit(char),
    One,
    Star,
    GlobStar,
}

/// A validated glob pattern for branch or tag names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    source: String,
    toks: Vec<Tok>,
}

impl Glob {
    /// Validates and compiles `pattern`.
    pub fn new(pattern: &str) -> Result<Glob, String> {
        if pattern.is_empty() {
            return Err("empty pattern".to_owned());
        }
        if pattern.starts_with('!') {
            return Err(format!("invalid pattern `{pattern}`: negated patterns (`!…`) are not supported"));
        }
        if let Some(c) = pattern.chars().find(|c| "[]{}".contains(*c)) {
            return Err(format!(
                "invalid pattern `{pattern}`: `{c}` is not supported (only `*`, `**` and `?` are special)"
            ));
        }
        let mut toks = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            toks.push(match c {
                '*' if chars.peek() == Some(&'*') => {
                    chars.next();
                    Tok::GlobStar
                }
                '*' => Tok::Star,
                '?' => Tok::One,
                c => Tok::Lit(c),
            });
        }
        Ok(Glob { source: pattern.to_owned(), toks })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `text` matches the whole pattern.
    pub fn is_match(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        // matched[j]: the tokens seen so far match text[..j].
        let mut matched = vec![false; text.len() + 1];
        matched[0] = true;
        for tok in &self.toks {
            let mut next = vec![false; text.len() + 1];
            for j in 0..=text.len() {
                next[j] = match tok {
                    Tok::Lit(c) => j > 0 && matched[j - 1] && text[j - 1] == *c,
                    Tok::One => j > 0 && matched[j - 1] && text[j - 1] != '/',
                    Tok::Star => matched[j] || (j > 0 && next[j - 1] && text[j - 1] != '/'),
                    Tok::GlobStar => matched[j] || (j > 0 && next[j - 1]),
                };
            }
            matched = next;
        }
        matched[text.len()]
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::Glob;

    fn m(p: &str, t: &str) -> bool {
        Glob::new(p).is_ok_and(|g| g.is_match(t))
    }

    #[test]
    fn matching() {
        assert!(m("main", "main"));
        assert!(!m("main", "main2"));
        assert!(m("release/*", "release/1.0"));
        assert!(!m("release/*", "release/1.0/hotfix"));
        assert!(m("release/**", "release/1.0/hotfix"));
        assert!(m("v*", "v1.2.3"));
        assert!(m("v?", "v1"));
        assert!(!m("v?", "v10"));
        assert!(!m("?", "/"));
        assert!(m("**", "a/b/c"));
        assert!(m("*-rc*", "1.0-rc1"));
        assert!(m("feature/*/x", "feature/abc/x"));
        assert!(!m("*", "a/b"));
        assert!(m("a**b", "a/x/b"));
    }

    #[test]
    fn rejects_unsupported_syntax() {
        for p in ["", "!main", "release/[0-9]", "{a,b}"] {
            assert!(Glob::new(p).is_err(), "{p}");
        }
        // Many stars must still match quickly.
        let g = Glob::new(&"*a".repeat(50)).unwrap();
        assert!(!g.is_match(&"a".repeat(49)));
    }
}
