//! Evaluation of expression ASTs against an [`ExprContext`].

use super::parser::{Ast, BinOp, Func};
use super::{EvalError, ExprContext, Status, Value};

/// Evaluates `ast` in `ctx`.
pub(crate) fn eval(ast: &Ast, ctx: &dyn ExprContext) -> Result<Value, EvalError> {
    Ok(match ast {
        Ast::Lit(v) => v.clone(),
        Ast::Path { path, .. } => {
            let segs: Vec<&str> = path.iter().map(String::as_str).collect();
            ctx.lookup(&segs).unwrap_or(Value::Null)
        }
        Ast::Not(inner) => Value::Bool(!eval(inner, ctx)?.is_truthy()),
        Ast::Bin(BinOp::And, a, b) => {
            let left = eval(a, ctx)?;
            if left.is_truthy() { eval(b, ctx)? } else { left }
        }
        Ast::Bin(BinOp::Or, a, b) => {
            let left = eval(a, ctx)?;
            if left.is_truthy() { left } else { eval(b, ctx)? }
        }
        Ast::Bin(op, a, b) => {
            let (l, r) = (eval(a, ctx)?, eval(b, ctx)?);
            let ord = l.loose_cmp(&r);
            Value::Bool(match op {
                BinOp::Eq => l.loose_eq(&r),
                BinOp::Ne => !l.loose_eq(&r),
                BinOp::Lt => ord.is_some_and(|o| o.is_lt()),
                BinOp::Le => ord.is_some_and(|o| o.is_le()),
                BinOp::Gt => ord.is_some_and(|o| o.is_gt()),
                BinOp::Ge => ord.is_some_and(|o| o.is_ge()),
                BinOp::And | BinOp::Or => false,
            })
        }
        Ast::Call { func, args, offset } => call(*func, args, *offset, ctx)?,
    })
}

fn call(func: Func, args: &[Ast], offset: usize, ctx: &dyn ExprContext) -> Result<Value, EvalError> {
    let status = || ctx.status();
    let values = args.iter().map(|a| eval(a, ctx)).collect::<Result<Vec<_>, _>>()?;
    let text = |i: usize| values.get(i).map(ToString::to_string).unwrap_or_default();
    Ok(Value::Bool(match func {
        Func::Success => status() == Status::Success,
        Func::Failure => status() == Status::Failure,
        Func::Cancelled => status() == Status::Cancelled,
        Func::Always => true,
        Func::Contains => text(0).contains(&text(1)),
        Func::StartsWith => text(0).starts_with(&text(1)),
        Func::EndsWith => text(0).ends_with(&text(1)),
        Func::Format => {
            return format(&text(0), values.get(1..).unwrap_or(&[]))
                .map(Value::String)
                .map_err(|m| EvalError::new(offset, m));
        }
    }))
}

/// `format('{0}-{1}', a, b)`: `{N}` is replaced by argument N, `{{`/`}}` are
/// literal braces.
fn format(template: &str, args: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let mut index = String::new();
                let mut closed = false;
                for d in chars.by_ref() {
                    if d == '}' {
                        closed = true;
                        break;
                    }
                    index.push(d);
                }
                let arg = index.trim().parse::<usize>().ok().filter(|_| closed).and_then(|i| args.get(i));
                match arg {
                    Some(v) => out.push_str(&v.to_string()),
                    None => {
                        return Err(format!(
                            "format(): invalid placeholder `{{{index}{}` for {} argument(s); use {{0}}, {{1}}, … or {{{{ }}}} for literal braces",
                            if closed { "}" } else { "" },
                            args.len()
                        ));
                    }
                }
            }
            '}' => {
                return Err("format(): unmatched `}`; use `}}` for a literal brace".to_owned());
            }
            _ => out.push(c),
        }
        if out.len() > super::MAX_STRING_BYTES {
            return Err(format!("format(): the result is longer than {} bytes", super::MAX_STRING_BYTES));
        }
    }
    Ok(out)
}
