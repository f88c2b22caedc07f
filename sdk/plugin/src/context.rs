//! What a call knows: phase, `with:` values, env, run metadata, post state.

use std::{
    collections::BTreeMap,
    path::{Component, Path, PathBuf},
};

use serde::{Serialize, de::DeserializeOwned};

use crate::{Error, Result, log};

/// Which call of the plugin this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Phase {
    /// The step itself, where it stands in the job.
    #[default]
    Main,
    /// After the job's last step, because the main call returned a post
    /// state (see [`Output::post_state`](crate::Output::post_state)).
    Post,
}

/// Where the step runs: run, job and step metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Run id (ULID).
    pub run_id: String,
    /// Job id within the run.
    pub job_id: String,
    /// Job display name.
    pub job_name: String,
    /// 1-based step index in the job.
    pub step_index: u32,
    /// The step's `id:` (empty when it has none).
    pub step_id: String,
    /// Pipeline name.
    pub pipeline: String,
    /// Repository name (empty for runs without a source).
    pub repo: String,
    /// Branch (empty for tag runs).
    pub branch: String,
    /// Tag (empty for branch runs).
    pub tag: String,
    /// Commit SHA (empty for runs without a source).
    pub commit: String,
    /// What started the run: push, tag, pull_request, manual, schedule, api.
    pub event: String,
    /// The name of the runner machine.
    pub runner: String,
}

impl Meta {
    /// The first `len` characters of the commit SHA (empty without a source).
    pub fn short_commit(&self, len: usize) -> &str {
        let end = self.commit.char_indices().nth(len).map_or(self.commit.len(), |(i, _)| i);
        &self.commit[..end]
    }

    /// The branch, or else the tag (empty when neither).
    pub fn git_ref(&self) -> &str {
        if self.branch.is_empty() { &self.tag } else { &self.branch }
    }
}

/// Everything a call is given. Built by [`export!`](crate::export) from the
/// host's input (or by [`Context::builder`] in unit tests).
#[derive(Debug, Clone)]
pub struct Context {
    phase: Phase,
    with: BTreeMap<String, String>,
    env: BTreeMap<String, String>,
    meta: Meta,
    workspace: PathBuf,
    state: Option<String>,
}

impl Context {
    /// A context for unit tests of a plugin's `run` function.
    ///
    /// ```
    /// use viaduct_plugin_sdk::{Context, Phase};
    /// let ctx = Context::builder().with("name", "world").env("HOME", "/home/ci").build();
    /// assert_eq!(ctx.phase(), Phase::Main);
    /// assert_eq!(ctx.input::<String>("name").unwrap().as_deref(), Some("world"));
    /// ```
    pub fn builder() -> ContextBuilder {
        ContextBuilder::default()
    }

    /// Main or post.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether this is the post phase.
    pub fn is_post(&self) -> bool {
        self.phase == Phase::Post
    }

    /// Run, job and step metadata.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// A variable of the step's granted environment (the same as
    /// `std::env::var` inside the sandbox).
    pub fn env(&self, name: &str) -> Option<&str> {
        self.env.get(name).map(String::as_str)
    }

    /// The whole granted environment.
    pub fn env_vars(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// The workspace as the plugin sees it (`/workspace`). It is also the
    /// current directory, so relative paths are workspace-relative.
    pub fn workspace(&self) -> &Path {
        &self.workspace
    }

    /// The `with:` values as the host sent them: key → JSON text.
    pub fn with_raw(&self) -> &BTreeMap<String, String> {
        &self.with
    }

    /// Decodes every `with:` value into `T` (a `serde::Deserialize` struct
    /// whose fields are the inputs). Errors name the offending input:
    /// ``invalid `with.keep`: invalid type: string "x", expected u32``.
    ///
    /// Use `#[serde(default)]` for optional inputs and
    /// `#[serde(deny_unknown_fields)]` to reject unknown ones (the server
    /// already rejects keys the manifest does not declare). The helpers in
    /// [`de`](crate::de) accept values that went through `${{ }}`
    /// interpolation, which always yields strings (`"true"`, `"5"`).
    pub fn with<T: DeserializeOwned>(&self) -> Result<T> {
        let mut map = serde_json::Map::new();
        for (key, json) in &self.with {
            let value = serde_json::from_str(json)
                .map_err(|e| Error::msg(format!("input `{key}` is not valid JSON ({e}): {json}")))?;
            map.insert(key.clone(), value);
        }
        decode(serde_json::Value::Object(map), "with")
    }

    /// Decodes one `with:` value; `Ok(None)` when the step does not set it.
    pub fn input<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let Some(json) = self.with.get(key) else { return Ok(None) };
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| Error::msg(format!("input `{key}` is not valid JSON ({e}): {json}")))?;
        decode(value, &format!("with.{key}")).map(Some)
    }

    /// In the post phase: the post state the main call returned, as sent.
    pub fn state_raw(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// In the post phase: the post state decoded from JSON (the counterpart
    /// of [`Output::post_state_json`](crate::Output::post_state_json)).
    pub fn state<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        let Some(text) = &self.state else { return Ok(None) };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::msg(format!("the post state is not valid JSON: {e}")))?;
        decode(value, "state").map(Some)
    }

    /// Maps a path taken from the environment (e.g. `$CARGO_HOME`) into the
    /// workspace: relative paths are taken as workspace-relative, absolute
    /// ones are recognised under `/workspace` or under the runner's own path
    /// of the workspace (`$VIADUCT_WORKSPACE`, when granted). `None` when the
    /// path is outside the workspace (the plugin cannot see it). The result
    /// is normalised and empty for the workspace itself.
    pub fn workspace_relative(&self, path: &str) -> Option<PathBuf> {
        let path = Path::new(path);
        let rest = if path.is_relative() {
            path
        } else if let Ok(rest) = path.strip_prefix(&self.workspace) {
            rest
        } else {
            let host = self.env("VIADUCT_WORKSPACE").filter(|w| !w.is_empty())?;
            path.strip_prefix(host).ok()?
        };
        normalize(rest)
    }

    /// Logs at debug level.
    pub fn debug(&self, message: impl AsRef<str>) {
        log::debug(message);
    }

    /// Logs at info level.
    pub fn info(&self, message: impl AsRef<str>) {
        log::info(message);
    }

    /// Logs a warning.
    pub fn warn(&self, message: impl AsRef<str>) {
        log::warn(message);
    }

    /// Logs an error (the step goes on unless the plugin returns an error).
    pub fn error(&self, message: impl AsRef<str>) {
        log::error(message);
    }
}

/// A relative path without `.`, and with `..` resolved; `None` if it climbs
/// above its start.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Deserializes `value`, naming the failing path under `root` in errors.
fn decode<T: DeserializeOwned>(value: serde_json::Value, root: &str) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let at_root = path == ".";
        if root == "with" {
            // A missing input is reported at the root, an unknown one at its own key.
            if let (true, Some(field)) = (at_root, inner.strip_prefix("missing field ")) {
                return Error::msg(format!("missing required input {field}"));
            }
            let top_level = !path.contains(['.', '[']);
            if let (true, Some(rest)) = (top_level, inner.strip_prefix("unknown field ")) {
                return Error::msg(format!("unknown input {rest}"));
            }
        }
        if at_root {
            Error::msg(format!("invalid `{root}`: {inner}"))
        } else {
            Error::msg(format!("invalid `{root}.{path}`: {inner}"))
        }
    })
}

/// Builds a [`Context`] for unit tests (see [`Context::builder`]).
#[derive(Debug, Clone, Default)]
pub struct ContextBuilder {
    phase: Phase,
    with: BTreeMap<String, String>,
    env: BTreeMap<String, String>,
    meta: Meta,
    workspace: Option<PathBuf>,
    state: Option<String>,
}

impl ContextBuilder {
    /// Sets the phase (default main).
    #[must_use]
    pub fn phase(mut self, phase: Phase) -> Self {
        self.phase = phase;
        self
    }

    /// Sets a `with:` value, serialized to JSON as the host would send it.
    ///
    /// # Panics
    ///
    /// If `value` cannot be serialized (a map with non-string keys).
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: impl Serialize) -> Self {
        let json = serde_json::to_string(&value).expect("a `with:` value serializable as JSON");
        self.with.insert(key.into(), json);
        self
    }

    /// Sets a `with:` value as raw JSON text.
    #[must_use]
    pub fn with_json(mut self, key: impl Into<String>, json: impl Into<String>) -> Self {
        self.with.insert(key.into(), json.into());
        self
    }

    /// Sets a variable of the granted environment.
    #[must_use]
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }

    /// Sets the run metadata.
    #[must_use]
    pub fn meta(mut self, meta: Meta) -> Self {
        self.meta = meta;
        self
    }

    /// Sets the workspace path (default `/workspace`).
    #[must_use]
    pub fn workspace(mut self, path: impl Into<PathBuf>) -> Self {
        self.workspace = Some(path.into());
        self
    }

    /// Sets the post state (and nothing else: set the phase too).
    #[must_use]
    pub fn state(mut self, state: impl Into<String>) -> Self {
        self.state = Some(state.into());
        self
    }

    /// The context.
    pub fn build(self) -> Context {
        Context {
            phase: self.phase,
            with: self.with,
            env: self.env,
            meta: self.meta,
            workspace: self.workspace.unwrap_or_else(|| PathBuf::from(crate::WORKSPACE)),
            state: self.state,
        }
    }
}

impl From<crate::bindings::StepInput> for Context {
    fn from(input: crate::bindings::StepInput) -> Self {
        use crate::bindings::viaduct::plugin::types::Phase as WitPhase;
        let m = input.meta;
        Context {
            phase: match input.phase {
                WitPhase::Main => Phase::Main,
                WitPhase::Post => Phase::Post,
            },
            with: input.with.into_iter().collect(),
            env: input.env.into_iter().collect(),
            meta: Meta {
                run_id: m.run_id,
                job_id: m.job_id,
                job_name: m.job_name,
                step_index: m.step_index,
                step_id: m.step_id,
                pipeline: m.pipeline,
                repo: m.repo,
                branch: m.branch,
                tag: m.tag,
                commit: m.commit,
                event: m.event,
                runner: m.runner,
            },
            workspace: PathBuf::from(if input.workspace.is_empty() { crate::WORKSPACE } else { &input.workspace }),
            state: input.state,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct With {
        name: String,
        #[serde(default)]
        keep: u32,
        #[serde(default)]
        tags: Vec<String>,
    }

    #[test]
    fn with_decodes_and_names_bad_keys() {
        let ctx = Context::builder().with("name", "x").with("keep", 3).with("tags", ["a", "b"]).build();
        let w: With = ctx.with().unwrap();
        assert_eq!((w.name.as_str(), w.keep, w.tags.len()), ("x", 3, 2));

        let ctx = Context::builder().with("name", "x").with("keep", "many").build();
        let e = ctx.with::<With>().unwrap_err();
        assert!(e.message().starts_with("invalid `with.keep`: invalid type: string \"many\""), "{e}");

        let ctx = Context::builder().with("name", "x").with("tags", [1]).build();
        assert!(ctx.with::<With>().unwrap_err().message().starts_with("invalid `with.tags[0]`: "));

        let e = Context::builder().build().with::<With>().unwrap_err();
        assert_eq!(e.message(), "missing required input `name`");

        let e = Context::builder().with("name", "x").with("nmae", "y").build().with::<With>().unwrap_err();
        assert!(e.message().starts_with("unknown input `nmae`, expected one of"), "{e}");

        let e = Context::builder().with_json("name", "{oops").build().with::<With>().unwrap_err();
        assert!(e.message().starts_with("input `name` is not valid JSON"), "{e}");
    }

    #[test]
    fn single_input_and_state() {
        let ctx = Context::builder().phase(Phase::Post).with("n", 5).state(r#"{"key":"k"}"#).build();
        assert_eq!(ctx.input::<u8>("n").unwrap(), Some(5));
        assert_eq!(ctx.input::<u8>("missing").unwrap(), None);
        assert!(ctx.input::<String>("n").unwrap_err().message().starts_with("invalid `with.n`"));
        let state: serde_json::Value = ctx.state().unwrap().unwrap();
        assert_eq!(state["key"], "k");
        assert!(ctx.is_post());
    }

    #[test]
    fn workspace_relative_paths() {
        let ctx = Context::builder().env("VIADUCT_WORKSPACE", "/srv/runner/work/ab12").build();
        let rel = |p: &str| ctx.workspace_relative(p).map(|p| p.to_string_lossy().into_owned());
        assert_eq!(rel(".cargo").as_deref(), Some(".cargo"));
        assert_eq!(rel("./a/../b/").as_deref(), Some("b"));
        assert_eq!(rel("/workspace/.cargo").as_deref(), Some(".cargo"));
        assert_eq!(rel("/srv/runner/work/ab12/.go/pkg/mod").as_deref(), Some(".go/pkg/mod"));
        assert_eq!(rel("/workspace").as_deref(), Some(""));
        assert_eq!(rel("/home/ci/.cargo"), None);
        assert_eq!(rel("../outside"), None);
        assert_eq!(rel("/srv/runner/work/ab12/../x"), None);
    }

    #[test]
    fn meta_helpers() {
        let m = Meta { commit: "0123456789abcdef".into(), tag: "v1".into(), ..Meta::default() };
        assert_eq!(m.short_commit(12), "0123456789ab");
        assert_eq!(m.git_ref(), "v1");
        assert_eq!(Meta::default().short_commit(12), "");
    }
}
