//! The expression language used in `if:` conditions and `${{ … }}` segments.
//!
//! # Syntax
//! - Literals: `'single-quoted'` strings (`''` escapes a quote), numbers
//!   (`1`, `-2.5`, `1e3`), `true`, `false`, `null`.
//! - Context paths: `branch`, `tag`, `event`, `commit`, `repo`, `run_id`,
//!   `matrix.<axis>`, `env.<NAME>`, `inputs.<name>`,
//!   `steps.<id>.outputs.<name>`, `steps.<id>.outcome`,
//!   `needs.<job>.result`, `needs.<job>.outputs.<name>`. Index syntax
//!   `matrix['os']` is equivalent to `matrix.os`. Unknown roots and malformed
//!   paths are parse errors; unknown leaves evaluate to `null`.
//! - Operators, by increasing precedence: `||`, `&&`, `==` `!=`,
//!   `<` `<=` `>` `>=`, `!`; parentheses group.
//! - Functions: `success()`, `failure()`, `always()`, `cancelled()`,
//!   `contains(a, b)`, `startsWith(a, b)`, `endsWith(a, b)`,
//!   `format('{0}-{1}', a, b)`.
//!
//! # Semantics
//! - Truthiness as in GitHub Actions: `null`, `false`, `0`, `NaN` and `''`
//!   are false.
//! - `&&` / `||` short-circuit and yield one of their operands.
//! - `==` on two strings is **exact and case-sensitive** (unlike GitHub
//!   Actions); so are `contains`, `startsWith` and `endsWith`. Values of
//!   different types are compared as numbers (`'1' == 1` is true).
//! - A condition that calls none of the status functions behaves as
//!   `success() && (condition)`: when the status is not success it is false
//!   and the expression is not evaluated. An empty condition is `success()`.

mod eval;
mod lexer;
mod parser;
mod template;
mod value;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

pub use template::{Template, parse_template};
pub use value::Value;

use parser::Ast;

/// A syntax error in an expression, at a byte offset into the parsed source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    /// Byte offset into the source string given to the parse function.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

impl ExprError {
    pub(crate) fn new(offset: usize, message: impl Into<String>) -> Self {
        ExprError { offset, message: message.into() }
    }
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at offset {}: {}", self.offset, self.message)
    }
}

impl std::error::Error for ExprError {}

/// An error while evaluating (or, for the convenience functions, parsing) an
/// expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError {
    /// Byte offset into the source string where the failing part starts.
    pub offset: usize,
    /// What went wrong.
    pub message: String,
}

impl EvalError {
    pub(crate) fn new(offset: usize, message: impl Into<String>) -> Self {
        EvalError { offset, message: message.into() }
    }
}

impl From<ExprError> for EvalError {
    fn from(e: ExprError) -> Self {
        EvalError { offset: e.offset, message: e.message }
    }
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at offset {}: {}", self.offset, self.message)
    }
}

impl std::error::Error for EvalError {}

/// The outcome of what ran so far in a job (for steps) or of the needed jobs
/// (for jobs); read by `success()`, `failure()` and `cancelled()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Status {
    /// Nothing failed and the run was not cancelled.
    #[default]
    Success,
    /// Something failed.
    Failure,
    /// The run was cancelled.
    Cancelled,
}

/// Supplies context values and the current status to the evaluator.
pub trait ExprContext {
    /// Looks up a context path such as `["matrix", "os"]` or
    /// `["steps", "cache", "outputs", "hit"]`; `None` evaluates to `null`.
    fn lookup(&self, path: &[&str]) -> Option<Value>;
    /// The status of what ran so far.
    fn status(&self) -> Status;
}

/// A simple [`ExprContext`] backed by a map from dotted paths
/// (`"matrix.os"`, `"steps.cache.outputs.hit"`) to values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MapContext {
    /// Values by dotted path.
    pub values: BTreeMap<String, Value>,
    /// The status returned by [`ExprContext::status`].
    pub status: Status,
}

impl MapContext {
    /// An empty context with the given status.
    pub fn new(status: Status) -> Self {
        MapContext { values: BTreeMap::new(), status }
    }

    /// Builder-style insertion of a value at a dotted path.
    pub fn with(mut self, path: &str, value: impl Into<Value>) -> Self {
        self.values.insert(path.to_owned(), value.into());
        self
    }
}

impl ExprContext for MapContext {
    fn lookup(&self, path: &[&str]) -> Option<Value> {
        self.values.get(&path.join(".")).cloned()
    }

    fn status(&self) -> Status {
        self.status
    }
}

/// A context path referenced by an expression, e.g. `["matrix", "os"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The path segments; the first is the context root.
    pub path: Vec<String>,
    /// Byte offset of the path in the parsed source.
    pub offset: usize,
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    ast: Ast,
}

impl Expr {
    fn parse_range(src: &str, range: Range<usize>) -> Result<Expr, ExprError> {
        if range.len() > MAX_EXPR_BYTES {
            return Err(ExprError::new(
                range.start,
                format!("expression too long ({} bytes; the limit is {MAX_EXPR_BYTES})", range.len()),
            ));
        }
        parser::parse(src, range).map(|ast| Expr { ast })
    }

    /// Evaluates the expression.
    pub fn eval(&self, ctx: &dyn ExprContext) -> Result<Value, EvalError> {
        eval::eval(&self.ast, ctx)
    }

    /// Evaluates the expression as a job/step condition: truthiness of the
    /// result, with an implicit `success() &&` when the expression calls none
    /// of `success()`, `failure()`, `always()`, `cancelled()`.
    pub fn eval_condition(&self, ctx: &dyn ExprContext) -> Result<bool, EvalError> {
        if !self.uses_status_function() && ctx.status() != Status::Success {
            return Ok(false);
        }
        Ok(self.eval(ctx)?.is_truthy())
    }

    /// Whether the expression calls `success()`, `failure()`, `always()` or
    /// `cancelled()`.
    pub fn uses_status_function(&self) -> bool {
        fn walk(ast: &Ast) -> bool {
            match ast {
                Ast::Lit(_) | Ast::Path { .. } => false,
                Ast::Not(a) => walk(a),
                Ast::Bin(_, a, b) => walk(a) || walk(b),
                Ast::Call { func, args, .. } => func.is_status() || args.iter().any(walk),
            }
        }
        walk(&self.ast)
    }

    /// All context paths the expression references, in source order.
    pub fn references(&self) -> Vec<Reference> {
        fn walk(ast: &Ast, out: &mut Vec<Reference>) {
            match ast {
                Ast::Lit(_) => {}
                Ast::Path { path, offset } => out.push(Reference { path: path.clone(), offset: *offset }),
                Ast::Not(a) => walk(a, out),
                Ast::Bin(_, a, b) => {
                    walk(a, out);
                    walk(b, out);
                }
                Ast::Call { args, .. } => args.iter().for_each(|a| walk(a, out)),
            }
        }
        let mut out = Vec::new();
        walk(&self.ast, &mut out);
        out
    }
}

/// Longest expression (the text between `${{` and `}}`, or an `if:`).
pub const MAX_EXPR_BYTES: usize = 16 * 1024;

/// Longest string an expression or a `${{ }}` template may produce
/// (`format()` results, interpolated values): evaluation fails past it.
pub const MAX_STRING_BYTES: usize = 256 * 1024;

/// Parses a standalone expression (no `${{ }}`).
pub fn parse_expr(src: &str) -> Result<Expr, ExprError> {
    Expr::parse_range(src, 0..src.len())
}

/// Parses a condition as written in `if:`: either a bare expression or one
/// wrapped in `${{ }}`. An empty condition parses as `success()`.
/// Error offsets are relative to `src`.
pub fn parse_condition(src: &str) -> Result<Expr, ExprError> {
    let trimmed = src.trim();
    if trimmed.is_empty() {
        return parse_expr("success()");
    }
    let lead = src.len() - src.trim_start().len();
    if let Some(inner) = trimmed.strip_prefix("${{").and_then(|s| s.strip_suffix("}}")) {
        let start = lead + 3;
        return Expr::parse_range(src, start..start + inner.len());
    }
    Expr::parse_range(src, 0..src.len())
}

/// Evaluates a condition (with or without `${{ }}`); see
/// [`Expr::eval_condition`] for the implicit `success()` rule.
pub fn eval_condition(src: &str, ctx: &dyn ExprContext) -> Result<bool, EvalError> {
    parse_condition(src)?.eval_condition(ctx)
}

/// Replaces every `${{ expression }}` in `template` by its value
/// (`null` → empty string).
pub fn interpolate(template: &str, ctx: &dyn ExprContext) -> Result<String, EvalError> {
    parse_template(template)?.render(ctx)
}

#[cfg(test)]
mod tests;
