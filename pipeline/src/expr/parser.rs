//! Recursive-descent parser producing the expression AST, including
//! validation of function names/arity and of context path shapes.

use super::lexer::{Tok, Token, lex};
use super::{ExprError, Value};
use crate::diag::suggestion;

/// Maximum nesting depth of an expression tree.
const MAX_DEPTH: u32 = 100;

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

/// Built-in functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    Success,
    Failure,
    Always,
    Cancelled,
    Contains,
    StartsWith,
    EndsWith,
    Format,
}

/// Function table: name, function, minimum and maximum argument count.
const FUNCS: [(&str, Func, usize, usize); 8] = [
    ("success", Func::Success, 0, 0),
    ("failure", Func::Failure, 0, 0),
    ("always", Func::Always, 0, 0),
    ("cancelled", Func::Cancelled, 0, 0),
    ("contains", Func::Contains, 2, 2),
    ("startsWith", Func::StartsWith, 2, 2),
    ("endsWith", Func::EndsWith, 2, 2),
    ("format", Func::Format, 1, usize::MAX),
];

impl Func {
    /// Whether the function reads the job status.
    pub(crate) fn is_status(self) -> bool {
        matches!(self, Func::Success | Func::Failure | Func::Always | Func::Cancelled)
    }
}

/// Context roots whose value is a plain scalar (no properties).
pub(crate) const SCALAR_CONTEXTS: [&str; 6] = ["branch", "tag", "event", "commit", "repo", "run_id"];

/// All top-level context names.
pub(crate) const CONTEXTS: [&str; 11] =
    ["branch", "tag", "event", "commit", "repo", "run_id", "matrix", "env", "inputs", "steps", "needs"];

/// An expression AST node. Offsets are byte offsets into the parsed source.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ast {
    Lit(Value),
    Path { path: Vec<String>, offset: usize },
    Not(Box<Ast>),
    Bin(BinOp, Box<Ast>, Box<Ast>),
    Call { func: Func, args: Vec<Ast>, offset: usize },
}

impl Ast {
    fn depth(&self) -> u32 {
        match self {
            Ast::Lit(_) | Ast::Path { .. } => 1,
            Ast::Not(a) => a.depth() + 1,
            Ast::Bin(_, a, b) => a.depth().max(b.depth()) + 1,
            Ast::Call { args, .. } => args.iter().map(Ast::depth).max().unwrap_or(0) + 1,
        }
    }
}

struct Parser {
    tokens: Vec<Token>,
    i: usize,
}

/// Parses the expression in `src[range]`; all offsets are relative to `src`.
pub(crate) fn parse(src: &str, range: std::ops::Range<usize>) -> Result<Ast, ExprError> {
    let tokens = lex(src, range.clone())?;
    let mut p = Parser { tokens, i: 0 };
    if matches!(p.peek().tok, Tok::End) {
        return Err(ExprError::new(range.start, "empty expression"));
    }
    let ast = p.or(0)?;
    let t = p.peek();
    if t.tok != Tok::End {
        return Err(ExprError::new(
            t.start,
            format!(
                "unexpected {} after a complete expression (expected an operator such as `==`, `&&` or `||`)",
                t.tok.describe()
            ),
        ));
    }
    Ok(ast)
}

impl Parser {
    fn peek(&self) -> &Token {
        // The token list always ends with `Tok::End` and `i` never passes it.
        &self.tokens[self.i.min(self.tokens.len() - 1)]
    }

    fn bump(&mut self) -> Token {
        let t = self.peek().clone();
        if self.i + 1 < self.tokens.len() {
            self.i += 1;
        }
        t
    }

    fn eat(&mut self, p: &str) -> bool {
        if matches!(&self.peek().tok, Tok::Punct(q) if *q == p) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, p: &str, what: &str) -> Result<(), ExprError> {
        if self.eat(p) {
            return Ok(());
        }
        let t = self.peek();
        Err(ExprError::new(t.start, format!("expected `{p}` {what}, found {}", t.tok.describe())))
    }

    fn guard(&self, ast: Ast, offset: usize) -> Result<Ast, ExprError> {
        if ast.depth() > MAX_DEPTH {
            return Err(ExprError::new(
                offset,
                format!("expression is too deeply nested (more than {MAX_DEPTH} levels)"),
            ));
        }
        Ok(ast)
    }

    /// Parses a left-associative chain of `ops` over `next`.
    fn chain(
        &mut self,
        depth: u32,
        ops: &[(&str, BinOp)],
        next: fn(&mut Self, u32) -> Result<Ast, ExprError>,
    ) -> Result<Ast, ExprError> {
        let mut lhs = next(self, depth)?;
        loop {
            let t = self.peek().clone();
            let Some(&(_, op)) = ops.iter().find(|(p, _)| matches!(&t.tok, Tok::Punct(q) if q == p)) else {
                return Ok(lhs);
            };
            self.bump();
            let rhs = next(self, depth)?;
            lhs = self.guard(Ast::Bin(op, Box::new(lhs), Box::new(rhs)), t.start)?;
        }
    }

    fn or(&mut self, depth: u32) -> Result<Ast, ExprError> {
        self.chain(depth, &[("||", BinOp::Or)], Self::and)
    }

    fn and(&mut self, depth: u32) -> Result<Ast, ExprError> {
        self.chain(depth, &[("&&", BinOp::And)], Self::equality)
    }

    fn equality(&mut self, depth: u32) -> Result<Ast, ExprError> {
        self.chain(depth, &[("==", BinOp::Eq), ("!=", BinOp::Ne)], Self::comparison)
    }

    fn comparison(&mut self, depth: u32) -> Result<Ast, ExprError> {
        self.chain(depth, &[("<=", BinOp::Le), (">=", BinOp::Ge), ("<", BinOp::Lt), (">", BinOp::Gt)], Self::unary)
    }

    fn unary(&mut self, depth: u32) -> Result<Ast, ExprError> {
        let start = self.peek().start;
        if depth > MAX_DEPTH {
            return Err(ExprError::new(
                start,
                format!("expression is too deeply nested (more than {MAX_DEPTH} levels)"),
            ));
        }
        if self.eat("!") {
            let inner = self.unary(depth + 1)?;
            return self.guard(Ast::Not(Box::new(inner)), start);
        }
        self.primary(depth)
    }

    fn primary(&mut self, depth: u32) -> Result<Ast, ExprError> {
        let t = self.bump();
        match t.tok {
            Tok::Str(s) => Ok(Ast::Lit(Value::String(s))),
            Tok::Num(n) => Ok(Ast::Lit(Value::Number(n))),
            Tok::Punct("(") => {
                let inner = self.or(depth + 1)?;
                self.expect(")", "to close `(`")?;
                Ok(inner)
            }
            Tok::Ident(name) => match name.as_str() {
                "true" => Ok(Ast::Lit(Value::Bool(true))),
                "false" => Ok(Ast::Lit(Value::Bool(false))),
                "null" => Ok(Ast::Lit(Value::Null)),
                _ if self.eat("(") => self.call(&name, t.start, depth),
                _ => self.path(name, t.start),
            },
            Tok::End => Err(ExprError::new(t.start, "unexpected end of expression: expected a value")),
            other => Err(ExprError::new(
                t.start,
                format!(
                    "unexpected {}: expected a value (a 'string', number, true/false/null, a context such as `branch`, or a function call)",
                    other.describe()
                ),
            )),
        }
    }

    fn call(&mut self, name: &str, offset: usize, depth: u32) -> Result<Ast, ExprError> {
        let Some(&(_, func, min, max)) = FUNCS.iter().find(|(n, ..)| *n == name) else {
            let names = FUNCS.iter().map(|(n, ..)| *n);
            return Err(ExprError::new(
                offset,
                format!(
                    "unknown function `{name}`{} (available: {})",
                    suggestion(name, names.clone()),
                    names.collect::<Vec<_>>().join(", ")
                ),
            ));
        };
        let mut args = Vec::new();
        if !self.eat(")") {
            loop {
                args.push(self.or(depth + 1)?);
                if self.eat(")") {
                    break;
                }
                self.expect(",", "or `)` in the argument list")?;
            }
        }
        if args.len() < min || args.len() > max {
            let expected = match (min, max) {
                (a, b) if a == b => format!("{a}"),
                (a, usize::MAX) => format!("at least {a}"),
                (a, b) => format!("{a} to {b}"),
            };
            let plural = if min == 1 { "" } else { "s" };
            return Err(ExprError::new(
                offset,
                format!("`{name}()` takes {expected} argument{plural}, found {}", args.len()),
            ));
        }
        self.guard(Ast::Call { func, args, offset }, offset)
    }

    fn path(&mut self, root: String, offset: usize) -> Result<Ast, ExprError> {
        let mut path = vec![root];
        loop {
            if self.eat(".") {
                let t = self.bump();
                match t.tok {
                    Tok::Ident(s) => path.push(s),
                    other => {
                        return Err(ExprError::new(
                            t.start,
                            format!("expected a property name after `.`, found {}", other.describe()),
                        ));
                    }
                }
            } else if self.eat("[") {
                let t = self.bump();
                match t.tok {
                    Tok::Str(s) => path.push(s),
                    other => {
                        return Err(ExprError::new(
                            t.start,
                            format!(
                                "expected a quoted property name such as ['name'] inside `[ ]`, found {}",
                                other.describe()
                            ),
                        ));
                    }
                }
                self.expect("]", "to close `[`")?;
            } else {
                break;
            }
        }
        check_path(&path, offset)?;
        Ok(Ast::Path { path, offset })
    }
}

/// Checks that a context path has a known root and the right shape.
fn check_path(path: &[String], offset: usize) -> Result<(), ExprError> {
    let segs: Vec<&str> = path.iter().map(String::as_str).collect();
    let err = |msg: String| Err(ExprError::new(offset, msg));
    match segs.as_slice() {
        [root, rest @ ..] if SCALAR_CONTEXTS.contains(root) => {
            if rest.is_empty() {
                Ok(())
            } else {
                err(format!("`{root}` is a plain value and has no properties"))
            }
        }
        [root @ ("matrix" | "env" | "inputs"), rest @ ..] => {
            if rest.len() == 1 {
                Ok(())
            } else {
                err(format!("expected `{root}.<name>`, found `{}`", segs.join(".")))
            }
        }
        ["steps", _, "outcome"] | ["steps", _, "outputs", _] => Ok(()),
        ["steps", ..] => {
            err(format!("expected `steps.<id>.outputs.<name>` or `steps.<id>.outcome`, found `{}`", segs.join(".")))
        }
        ["needs", _, "result"] | ["needs", _, "outputs", _] => Ok(()),
        ["needs", ..] => {
            err(format!("expected `needs.<job>.result` or `needs.<job>.outputs.<name>`, found `{}`", segs.join(".")))
        }
        [root, ..] => err(format!(
            "unknown context `{root}`{} (expected one of: {})",
            suggestion(root, CONTEXTS),
            CONTEXTS.join(", ")
        )),
        [] => err("empty context path".to_owned()),
    }
}
