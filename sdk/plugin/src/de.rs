//! Lenient decoders for `with:` values, for `#[serde(deserialize_with = …)]`.
//!
//! A `with:` value keeps its YAML type (`save: false` arrives as JSON
//! `false`) unless it went through `${{ }}` interpolation, which always
//! produces a string (`save: ${{ inputs.save }}` arrives as `"false"`).
//! These functions accept both:
//!
//! ```
//! use serde::Deserialize;
//! use viaduct_plugin_sdk::de;
//!
//! #[derive(Deserialize)]
//! struct With {
//!     #[serde(default, deserialize_with = "de::list")]
//!     paths: Vec<String>,
//!     #[serde(default = "yes", deserialize_with = "de::bool")]
//!     save: bool,
//!     #[serde(default, deserialize_with = "de::opt_number")]
//!     keep: Option<u32>,
//! }
//! fn yes() -> bool { true }
//!
//! let w: With = serde_json::from_str(r#"{"paths": "a\nb", "save": "false", "keep": "3"}"#).unwrap();
//! assert_eq!((w.paths, w.save, w.keep), (vec!["a".to_string(), "b".to_string()], false, Some(3)));
//! ```

use std::{fmt::Display, str::FromStr};

use serde::{
    Deserialize, Deserializer,
    de::{DeserializeOwned, Error as _},
};
use serde_json::Value;

fn bool_of<E: serde::de::Error>(v: &Value) -> Result<bool, E> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" | "" => Ok(false),
            _ => Err(E::custom(format!("expected a boolean, found \"{s}\""))),
        },
        other => Err(E::custom(format!("expected a boolean, found {other}"))),
    }
}

/// A boolean, or a string `true`/`false` (also `yes`/`no`, `on`/`off`,
/// `1`/`0`; an empty string is `false`).
pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    bool_of(&Value::deserialize(d)?)
}

/// Like [`bool()`], with `null` as `None`.
pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        v => bool_of(&v).map(Some),
    }
}

fn number_of<T, E>(v: Value) -> Result<T, E>
where
    T: DeserializeOwned + FromStr,
    T::Err: Display,
    E: serde::de::Error,
{
    match v {
        Value::Number(_) => serde_json::from_value(v).map_err(E::custom),
        Value::String(s) => s.trim().parse().map_err(|e| E::custom(format!("expected a number, found \"{s}\" ({e})"))),
        other => Err(E::custom(format!("expected a number, found {other}"))),
    }
}

/// A number, or a string holding one (`"5"`).
pub fn number<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned + FromStr,
    T::Err: Display,
{
    number_of(Value::deserialize(d)?)
}

/// Like [`number`], with `null` as `None`.
pub fn opt_number<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned + FromStr,
    T::Err: Display,
{
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        v => number_of(v).map(Some),
    }
}

fn string_of<E: serde::de::Error>(v: Value) -> Result<String, E> {
    match v {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(E::custom(format!("expected a string, found {other}"))),
    }
}

/// A string; numbers and booleans are taken as their text (`3` → `"3"`).
pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    string_of(Value::deserialize(d)?)
}

/// Like [`string`], with `null` as `None`.
pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        v => string_of(v).map(Some),
    }
}

/// A list of strings, or one string holding one item per line (blank lines
/// ignored, items trimmed) — the form a `${{ }}` expression or a YAML block
/// scalar gives. Scalars in a list are taken as their text; `null` is the
/// empty list.
pub fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(s.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect()),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| string_of::<D::Error>(v).map_err(|e| D::Error::custom(format!("item {i}: {e}"))))
            .collect(),
        other => Err(D::Error::custom(format!("expected a list of strings, found {other}"))),
    }
}

/// Like [`list`], with a missing/`null` value as `None` (to tell "not set"
/// from "set to an empty list").
pub fn opt_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        v => list(v).map(Some).map_err(D::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Default)]
    #[serde(default)]
    struct W {
        #[serde(deserialize_with = "super::bool")]
        b: bool,
        #[serde(deserialize_with = "super::opt_bool")]
        ob: Option<bool>,
        #[serde(deserialize_with = "super::number")]
        n: u32,
        #[serde(deserialize_with = "super::opt_number")]
        on: Option<i64>,
        #[serde(deserialize_with = "super::string")]
        s: String,
        #[serde(deserialize_with = "super::list")]
        l: Vec<String>,
        #[serde(deserialize_with = "super::opt_list")]
        ol: Option<Vec<String>>,
    }

    fn w(json: &str) -> Result<W, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn accepts_native_and_string_forms() {
        let a = w(r#"{"b": true, "ob": "no", "n": 3, "on": "-4", "s": 5, "l": ["x", 1, true], "ol": []}"#).unwrap();
        assert!(a.b);
        assert_eq!(a.ob, Some(false));
        assert_eq!((a.n, a.on), (3, Some(-4)));
        assert_eq!(a.s, "5");
        assert_eq!(a.l, ["x", "1", "true"]);
        assert_eq!(a.ol, Some(vec![]));
        let b = w(r#"{"b": "TRUE", "n": " 7 ", "l": "  one\n\n two  \n", "ol": null}"#).unwrap();
        assert!(b.b);
        assert_eq!(b.n, 7);
        assert_eq!(b.l, ["one", "two"]);
        assert_eq!(b.ol, None);
        assert_eq!(w("{}").unwrap().ol, None);
    }

    #[test]
    fn rejects_garbage() {
        assert!(w(r#"{"b": "maybe"}"#).unwrap_err().to_string().contains("expected a boolean"));
        assert!(w(r#"{"n": "x"}"#).unwrap_err().to_string().contains("expected a number"));
        assert!(w(r#"{"n": -1}"#).is_err());
        assert!(w(r#"{"l": {"a": 1}}"#).unwrap_err().to_string().contains("expected a list"));
        assert!(w(r#"{"l": [[1]]}"#).unwrap_err().to_string().contains("item 0"));
    }
}
