//! The error a plugin fails with.

use std::fmt;

use crate::Output;

/// Why a step failed: a message (one line is shown as the step's error),
/// the outputs set before the failure, which later steps still see, and an
/// optional markdown summary shown with the failed step (what was found
/// before the failure, e.g. a check's table).
///
/// Any [`std::error::Error`] converts into it (so `?` works on I/O, JSON and
/// parse errors); the message is the error followed by its sources, joined
/// with `: `. Add what was being done with [`ResultExt::context`]:
///
/// ```
/// use viaduct_plugin_sdk::prelude::*;
/// fn read(path: &str) -> Result<String> {
///     std::fs::read_to_string(path).with_context(|| format!("cannot read `{path}`"))
/// }
/// assert!(read("/nonexistent").unwrap_err().message().starts_with("cannot read `/nonexistent`: "));
/// ```
///
/// ```
/// use viaduct_plugin_sdk::Error;
/// let e = Error::msg("2 checks failed").output("failed", 2).summary("| check | result |\n|---|---|\n| fmt | failed |\n");
/// assert_eq!(e.summary_text().map(|s| s.lines().count()), Some(3));
/// ```
///
/// Like `anyhow::Error`, it deliberately does not implement
/// [`std::error::Error`] itself (that would conflict with the blanket
/// conversion).
#[derive(Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
    outputs: Vec<(String, String)>,
    summary: Option<String>,
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with this message, no outputs and no summary.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self { message: message.to_string(), outputs: Vec::new(), summary: None }
    }

    /// Adds (or replaces) an output that later steps see although this step
    /// failed.
    #[must_use]
    pub fn output(mut self, name: impl Into<String>, value: impl ToString) -> Self {
        crate::output::upsert(&mut self.outputs, name.into(), value.to_string());
        self
    }

    /// Adds every output of `output` (e.g. the ones collected before the
    /// failure), replacing outputs of the same name. Its summary is not
    /// taken: [`Output::fail`] turns outputs and summary into an error.
    #[must_use]
    pub fn with_outputs(mut self, output: &Output) -> Self {
        for (name, value) in output.outputs() {
            crate::output::upsert(&mut self.outputs, name.clone(), value.clone());
        }
        self
    }

    /// Sets the markdown shown with the failed step on the run page
    /// (replacing an earlier one), like [`Output::summary`] for a success.
    #[must_use]
    pub fn summary(mut self, markdown: impl Into<String>) -> Self {
        self.summary = Some(markdown.into());
        self
    }

    /// Prefixes the message with what was being done: `context: message`.
    /// Outputs and summary are kept.
    #[must_use]
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The outputs set on this error.
    pub fn outputs(&self) -> &[(String, String)] {
        &self.outputs
    }

    /// The summary, if any.
    pub fn summary_text(&self) -> Option<&str> {
        self.summary.as_deref()
    }

    pub(crate) fn into_parts(self) -> (String, Vec<(String, String)>, Option<String>) {
        (self.message, self.outputs, self.summary)
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(error: E) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(s) = source {
            let text = s.to_string();
            // Some errors repeat their source in their own message.
            if !message.ends_with(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = s.source();
        }
        Self::msg(message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("message", &self.message);
        if !self.outputs.is_empty() {
            d.field("outputs", &self.outputs);
        }
        if let Some(summary) = &self.summary {
            d.field("summary", summary);
        }
        d.finish()
    }
}

/// Adds context to errors: `result.context("cannot read Cargo.lock")?`.
///
/// Implemented for every `Result` whose error converts into [`Error`], and
/// for `Option` (where `None` becomes an error with just the context).
pub trait ResultExt<T> {
    /// Prefixes the error's message with `context`.
    fn context(self, context: impl fmt::Display) -> Result<T>;

    /// Like [`context`](ResultExt::context), computing the context only on
    /// error.
    fn with_context<C: fmt::Display>(self, context: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: Into<Error>> ResultExt<T> for std::result::Result<T, E> {
    fn context(self, context: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().context(context))
    }

    fn with_context<C: fmt::Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| e.into().context(context()))
    }
}

impl<T> ResultExt<T> for Option<T> {
    fn context(self, context: impl fmt::Display) -> Result<T> {
        self.ok_or_else(|| Error::msg(context))
    }

    fn with_context<C: fmt::Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.ok_or_else(|| Error::msg(context()))
    }
}

/// Returns early with an [`Error`] built like `format!`:
/// `bail!("unknown mode `{mode}`")`.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)+) => {
        return ::core::result::Result::Err($crate::Error::msg(::std::format!($($arg)+)))
    };
}

/// Returns early with an [`Error`] unless a condition holds:
/// `ensure!(keep > 0, "`keep` must be at least 1")`.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            $crate::bail!($($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_convert_with_context() {
        let e: Error = std::io::Error::new(std::io::ErrorKind::NotFound, "gone").into();
        assert_eq!(e.context("reading x").message(), "reading x: gone");
    }

    #[test]
    fn outputs_are_replaced_by_name() {
        let e = Error::msg("boom").output("a", 1).output("b", "x").output("a", 2);
        assert_eq!(e.outputs(), &[("a".to_string(), "2".to_string()), ("b".to_string(), "x".to_string())]);
    }

    #[test]
    fn summary_survives_context() {
        let e = Error::msg("boom").summary("first").summary("| a |");
        let e = e.context("step");
        assert_eq!((e.message(), e.summary_text()), ("step: boom", Some("| a |")));
        assert!(format!("{e:?}").contains(r#"summary: "| a |""#));
        assert_eq!(Error::msg("x").summary_text(), None);
    }

    #[test]
    fn option_context() {
        let r: Result<u8> = None.context("nothing here");
        assert_eq!(r.unwrap_err().message(), "nothing here");
    }

    fn bails(x: u32) -> Result<u32> {
        ensure!(x < 10, "`{x}` is too big");
        if x == 3 {
            bail!("three is {}", "right out");
        }
        Ok(x)
    }

    #[test]
    fn macros() {
        assert_eq!(bails(1).unwrap(), 1);
        assert_eq!(bails(3).unwrap_err().message(), "three is right out");
        assert_eq!(bails(11).unwrap_err().message(), "`11` is too big");
    }
}
