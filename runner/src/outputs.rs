//! The `$VIADUCT_OUTPUT` file format, by which a step sets outputs that
//! later steps read as `${{ steps.<id>.outputs.<name> }}`.
//!
//! One output per line, `name=value`; a multi-line value uses a heredoc:
//! ```text
//! version=1.2.3
//! notes<<EOF
//! first line
//! second line
//! EOF
//! ```
//! (the same convention as GitHub Actions' `$GITHUB_OUTPUT`).

use std::collections::BTreeMap;

/// Most bytes of outputs one step may set.
pub const MAX_OUTPUTS_BYTES: usize = 1024 * 1024;

/// Parses the file; an error names the offending line.
pub fn parse(text: &str) -> Result<BTreeMap<String, String>, String> {
    if text.len() > MAX_OUTPUTS_BYTES {
        return Err(format!("outputs are larger than {MAX_OUTPUTS_BYTES} bytes"));
    }
    let mut out = BTreeMap::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        if line.trim().is_empty() {
            continue;
        }
        let (name, value) = if let Some((name, delim)) = line.split_once("<<") {
            let mut value = Vec::new();
            loop {
                match lines.next() {
                    Some((_, l)) if l == delim => break,
                    Some((_, l)) => value.push(l),
                    None => return Err(format!("line {}: `{delim}` that ends `{name}` never comes", n + 1)),
                }
            }
            (name, value.join("\n"))
        } else if let Some((name, value)) = line.split_once('=') {
            (name, value.to_string())
        } else {
            return Err(format!("line {}: expected `name=value` or `name<<DELIMITER`", n + 1));
        };
        let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err(format!("line {}: `{name}` is not a valid output name", n + 1));
        }
        out.insert(name.to_string(), value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_heredocs() {
        let o = parse("a=1\n\nb=x=y\nnotes<<EOF\none\ntwo\nEOF\n").unwrap();
        assert_eq!(o["a"], "1");
        assert_eq!(o["b"], "x=y");
        assert_eq!(o["notes"], "one\ntwo");
    }

    #[test]
    fn rejects_malformed_lines() {
        assert!(parse("just text").unwrap_err().contains("line 1"));
        assert!(parse("x<<END\nnever").unwrap_err().contains("never comes"));
        assert!(parse("bad name=1").unwrap_err().contains("not a valid output name"));
    }
}
