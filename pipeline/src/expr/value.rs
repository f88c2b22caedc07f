//! Runtime values of the expression language and their coercions.

use std::fmt;

/// A value produced by evaluating an expression or looked up in a context.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Absent or null; also what unknown context paths evaluate to.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number (all numbers are `f64`).
    Number(f64),
    /// A string.
    String(String),
}

impl Value {
    /// Truthiness as in GitHub Actions: `null`, `false`, `0`, `NaN` and the
    /// empty string are false; everything else is true.
    pub fn is_truthy(&self) -> bool {
        match self {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => *n != 0.0 && !n.is_nan(),
            Value::String(s) => !s.is_empty(),
        }
    }

    /// Numeric coercion used when comparing values of different types:
    /// `null` → 0, booleans → 0/1, strings are parsed (empty → 0, invalid → NaN).
    pub fn to_number(&self) -> f64 {
        match self {
            Value::Null => 0.0,
            Value::Bool(b) => f64::from(u8::from(*b)),
            Value::Number(n) => *n,
            Value::String(s) => {
                let t = s.trim();
                if t.is_empty() { 0.0 } else { t.parse().unwrap_or(f64::NAN) }
            }
        }
    }

    /// Loose equality: same-typed values compare directly (strings exactly and
    /// case-sensitively); mixed types are compared as numbers.
    pub fn loose_eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::String(a), Value::String(b)) => a == b,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Null, Value::Null) => true,
            _ => self.to_number() == other.to_number(),
        }
    }

    /// Ordering for `<`, `<=`, `>`, `>=`: two strings compare lexicographically,
    /// anything else numerically. `None` when incomparable (NaN).
    pub fn loose_cmp(&self, other: &Value) -> Option<std::cmp::Ordering> {
        match (self, other) {
            (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
            _ => self.to_number().partial_cmp(&other.to_number()),
        }
    }
}

/// Formats the value as it is interpolated into strings: `null` → empty,
/// integral numbers without a fraction (`3`, not `3.0`).
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => Ok(()),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Number(n) if n.is_finite() && n.fract() == 0.0 && n.abs() < 1e15 => {
                write!(f, "{}", *n as i64)
            }
            Value::Number(n) => write!(f, "{n}"),
            Value::String(s) => f.write_str(s),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<f64> for Value {
    fn from(n: f64) -> Self {
        Value::Number(n)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}
