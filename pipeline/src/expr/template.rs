//! Strings with embedded `${{ expression }}` segments.

use std::ops::Range;

use super::{EvalError, Expr, ExprContext, ExprError};

/// A parsed string template: literal text interleaved with `${{ }}` expressions.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    src: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(Range<usize>),
    /// An expression; `range` covers the whole `${{ … }}` including delimiters.
    Expr {
        expr: Expr,
        range: Range<usize>,
    },
}

/// Parses every `${{ … }}` segment of `src`. Error offsets are byte offsets in `src`.
///
/// A `}}` inside a quoted string literal does not close the segment.
pub fn parse_template(src: &str) -> Result<Template, ExprError> {
    let mut parts = Vec::new();
    let mut pos = 0;
    while let Some(found) = src.get(pos..).and_then(|rest| rest.find("${{")) {
        let open = pos + found;
        if open > pos {
            parts.push(Part::Text(pos..open));
        }
        let inner_start = open + 3;
        let close = find_close(src, inner_start)
            .ok_or_else(|| ExprError::new(open, "unterminated `${{`: expected a closing `}}`"))?;
        let expr = Expr::parse_range(src, inner_start..close)?;
        parts.push(Part::Expr { expr, range: open..close + 2 });
        pos = close + 2;
    }
    if pos < src.len() {
        parts.push(Part::Text(pos..src.len()));
    }
    Ok(Template { src: src.to_owned(), parts })
}

/// Finds the `}}` closing a segment whose content starts at `from`, skipping
/// over single-quoted string literals.
fn find_close(src: &str, from: usize) -> Option<usize> {
    let mut in_string = false;
    let rest = src.get(from..)?;
    for (i, c) in rest.char_indices() {
        if c == '\'' {
            in_string = !in_string;
        } else if !in_string && rest[i..].starts_with("}}") {
            return Some(from + i);
        }
    }
    None
}

impl Template {
    /// The template text as written.
    pub fn source(&self) -> &str {
        &self.src
    }

    /// Whether the template contains at least one `${{ }}` segment.
    pub fn has_expressions(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Expr { .. }))
    }

    /// The embedded expressions, in order. Their offsets (in errors and
    /// [`super::Reference`]s) are relative to the whole template.
    pub fn expressions(&self) -> impl Iterator<Item = &Expr> {
        self.parts.iter().filter_map(|p| match p {
            Part::Expr { expr, .. } => Some(expr),
            Part::Text(_) => None,
        })
    }

    /// Evaluates every segment and concatenates the result.
    pub fn render(&self, ctx: &dyn ExprContext) -> Result<String, EvalError> {
        self.render_where(ctx, &|_| true)
    }

    /// Evaluates only the segments for which `resolve` returns true; the other
    /// segments are kept verbatim (`${{ … }}`) for a later pass.
    pub fn render_where(&self, ctx: &dyn ExprContext, resolve: &dyn Fn(&Expr) -> bool) -> Result<String, EvalError> {
        let mut out = String::with_capacity(self.src.len());
        for part in &self.parts {
            match part {
                Part::Text(r) => out.push_str(self.src.get(r.clone()).unwrap_or("")),
                Part::Expr { expr, .. } if resolve(expr) => {
                    out.push_str(&expr.eval(ctx)?.to_string());
                }
                Part::Expr { range, .. } => out.push_str(self.src.get(range.clone()).unwrap_or("")),
            }
            if out.len() > super::MAX_STRING_BYTES {
                let at = match part {
                    Part::Text(r) | Part::Expr { range: r, .. } => r.start,
                };
                return Err(EvalError::new(
                    at,
                    format!("the interpolated text is longer than {} bytes", super::MAX_STRING_BYTES),
                ));
            }
        }
        Ok(out)
    }
}
