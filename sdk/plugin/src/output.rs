//! What a successful call returns.

use serde::Serialize;

use crate::{Error, Result};

/// The result of a successful call: named outputs, an optional markdown
/// summary and (main phase only) an optional post-phase state.
///
/// ```
/// use viaduct_plugin_sdk::Output;
/// let out = Output::new().set("hit", true).set("key", "cargo-1234").summary("Restored **cargo-1234**");
/// assert_eq!(out.get("hit"), Some("true"));
/// ```
///
/// Later steps read outputs as `${{ steps.<id>.outputs.<name> }}`, so names
/// should be identifiers (`[A-Za-z_][A-Za-z0-9_-]*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    outputs: Vec<(String, String)>,
    summary: Option<String>,
    post_state: Option<String>,
}

impl Output {
    /// No outputs, no summary, no post phase.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets an output (replacing one of the same name); any `ToString` value
    /// (`true`, `3`, `"x"`).
    #[must_use]
    pub fn set(mut self, name: impl Into<String>, value: impl ToString) -> Self {
        self.insert(name, value);
        self
    }

    /// Sets an output in place (replacing one of the same name).
    pub fn insert(&mut self, name: impl Into<String>, value: impl ToString) {
        upsert(&mut self.outputs, name.into(), value.to_string());
    }

    /// The value of an output set so far.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.outputs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Every output, in the order first set.
    pub fn outputs(&self) -> &[(String, String)] {
        &self.outputs
    }

    /// Sets the markdown shown with the step on the run page.
    #[must_use]
    pub fn summary(mut self, markdown: impl Into<String>) -> Self {
        self.summary = Some(markdown.into());
        self
    }

    /// Sets the summary in place.
    pub fn set_summary(&mut self, markdown: impl Into<String>) {
        self.summary = Some(markdown.into());
    }

    /// The summary, if any.
    pub fn summary_text(&self) -> Option<&str> {
        self.summary.as_deref()
    }

    /// Main phase: asks to be called again in the post phase (after the
    /// job's last step) with this state as [`Context::state_raw`](crate::Context::state_raw).
    /// The manifest must declare `post = true`; ignored in the post phase.
    #[must_use]
    pub fn post_state(mut self, state: impl Into<String>) -> Self {
        self.post_state = Some(state.into());
        self
    }

    /// [`post_state`](Output::post_state) with a value serialized as JSON;
    /// read it back with [`Context::state`](crate::Context::state).
    pub fn post_state_json<T: Serialize + ?Sized>(self, state: &T) -> Result<Self> {
        let json =
            serde_json::to_string(state).map_err(|e| Error::msg(format!("cannot encode the post state: {e}")))?;
        Ok(self.post_state(json))
    }

    /// The post state, if any.
    pub fn post_state_text(&self) -> Option<&str> {
        self.post_state.as_deref()
    }

    /// Turns these outputs and summary into a failure with `message`: the
    /// outputs stay visible to later steps and the summary is shown with
    /// the failed step. A post state is dropped: `step-error` has none, so
    /// a failed call asks for no post phase.
    pub fn fail(self, message: impl std::fmt::Display) -> Error {
        let error = Error::msg(message).with_outputs(&self);
        match self.summary {
            Some(summary) => error.summary(summary),
            None => error,
        }
    }

    pub(crate) fn into_parts(self) -> (Vec<(String, String)>, Option<String>, Option<String>) {
        (self.outputs, self.summary, self.post_state)
    }
}

/// Sets `name` in a list of pairs, keeping the first position.
pub(crate) fn upsert(list: &mut Vec<(String, String)>, name: String, value: String) {
    match list.iter_mut().find(|(n, _)| *n == name) {
        Some(slot) => slot.1 = value,
        None => list.push((name, value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder() {
        let out = Output::new().set("a", 1).set("b", true).set("a", "x").summary("s");
        assert_eq!(out.outputs(), &[("a".into(), "x".into()), ("b".into(), "true".into())]);
        assert_eq!(out.summary_text(), Some("s"));
        let out = out.post_state_json(&serde_json::json!({"k": [1]})).unwrap();
        assert_eq!(out.post_state_text(), Some(r#"{"k":[1]}"#));
        let err = out.fail("boom");
        assert_eq!(err.message(), "boom");
        assert_eq!(err.outputs().len(), 2);
        assert_eq!(err.summary_text(), Some("s"));
        assert_eq!(Output::new().fail("x").summary_text(), None);
    }
}
