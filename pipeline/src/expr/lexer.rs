//! Tokenizer for the expression language.

use super::ExprError;

/// A token kind.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// Identifier or keyword (`true`, `false`, `null`).
    Ident(String),
    /// Single-quoted string literal (unescaped).
    Str(String),
    /// Number literal.
    Num(f64),
    /// Operator or punctuation.
    Punct(&'static str),
    /// End of input.
    End,
}

/// A token with its byte range in the source.
#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub(crate) tok: Tok,
    pub(crate) start: usize,
}

impl Tok {
    /// How the token reads in error messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Str(s) => format!("string '{s}'"),
            Tok::Num(n) => format!("number {n}"),
            Tok::Punct(p) => format!("`{p}`"),
            Tok::End => "end of expression".to_owned(),
        }
    }
}

const PUNCTS: [&str; 15] = ["==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "(", ")", "[", "]", ",", "."];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Tokenizes `src[range]`; offsets in tokens and errors are relative to `src`.
pub(crate) fn lex(src: &str, range: std::ops::Range<usize>) -> Result<Vec<Token>, ExprError> {
    let text = src.get(range.clone()).unwrap_or("");
    let base = range.start;
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        let start = base + i;
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if c == '\'' {
            chars.next();
            let mut value = String::new();
            let mut closed = false;
            while let Some((_, ch)) = chars.next() {
                if ch == '\'' {
                    if chars.peek().is_some_and(|&(_, n)| n == '\'') {
                        chars.next();
                        value.push('\'');
                    } else {
                        closed = true;
                        break;
                    }
                } else {
                    value.push(ch);
                }
            }
            if !closed {
                return Err(ExprError::new(start, "unterminated string: expected a closing `'`"));
            }
            tokens.push(Token { tok: Tok::Str(value), start });
            continue;
        }
        let rest = &text[i..];
        let negative_number = c == '-' && rest[1..].starts_with(|d: char| d.is_ascii_digit());
        if c.is_ascii_digit() || negative_number {
            let len = number_len(rest);
            let literal = &rest[..len];
            let n: f64 = literal.parse().map_err(|_| ExprError::new(start, format!("invalid number `{literal}`")))?;
            tokens.push(Token { tok: Tok::Num(n), start });
            advance(&mut chars, i + len);
            continue;
        }
        if is_ident_start(c) {
            let len = rest.char_indices().find(|&(_, ch)| !is_ident_char(ch)).map_or(rest.len(), |(j, _)| j);
            tokens.push(Token { tok: Tok::Ident(rest[..len].to_owned()), start });
            advance(&mut chars, i + len);
            continue;
        }
        if let Some(p) = PUNCTS.iter().find(|p| rest.starts_with(**p)) {
            tokens.push(Token { tok: Tok::Punct(p), start });
            advance(&mut chars, i + p.len());
            continue;
        }
        let hint = match c {
            '=' => "; use `==` to compare",
            '&' => "; use `&&` for logical and",
            '|' => "; use `||` for logical or",
            '"' => "; strings use single quotes: 'text'",
            _ => "",
        };
        return Err(ExprError::new(start, format!("unexpected character `{c}`{hint}")));
    }
    let end = base + text.len();
    tokens.push(Token { tok: Tok::End, start: end });
    Ok(tokens)
}

/// Length of the number literal at the start of `s` (`-?digits(.digits)?(e[+-]?digits)?`).
fn number_len(s: &str) -> usize {
    let b = s.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
    };
    digits(&mut i);
    if b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
        i += 1;
        digits(&mut i);
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        if b.get(j).is_some_and(u8::is_ascii_digit) {
            i = j;
            digits(&mut i);
        }
    }
    i
}

fn advance(chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>, to: usize) {
    while chars.peek().is_some_and(|&(j, _)| j < to) {
        chars.next();
    }
}
