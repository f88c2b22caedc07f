//! One way to start a run, whatever asks for it: a file or a job sent with
//! `Runs.Submit`, a stored pipeline (`Runs.Trigger`, its schedules), or a
//! repository's pipeline file at a commit (pushes, pull requests, manual
//! triggers, repository schedules). Each becomes a [`Launch`] — where the
//! file comes from ([`Origin`]), what started it (the [`Cause`]), what an
//! invalid file means ([`OnInvalid`]) — and [`start`] does what every path
//! must do alike: the size limit, parsing with `file:line:column` errors,
//! the invalid-file rule, the event filter, plugin resolution ([`resolve`])
//! and the create call (with the caller's writes riding along).

pub mod resolve;

pub use resolve::Cause;

use viaduct_pipeline::spec::Pipeline;
use viaduct_proto::v1::{InlineJob, SourcePlan};

use crate::{
    engine::{Engine, runs::NewRun},
    error::{Error, Result},
    plugins::PluginRegistry,
    store::{Store, WriteSet, keys::RunId},
};

/// The largest pipeline file, from any origin.
pub const MAX_PIPELINE_BYTES: usize = 1024 * 1024;

/// Where a run's definition comes from.
#[derive(Debug)]
pub enum Origin {
    /// A pipeline file: sent, stored, or read from a repository.
    File {
        /// Its name in errors (`pipeline.yml`, `.viaduct/pipeline.yml`).
        name: String,
        /// Its text.
        yaml: String,
    },
    /// A repository's pipeline file over [`MAX_PIPELINE_BYTES`], not read:
    /// its name and size.
    Oversized {
        /// Its name in errors.
        name: String,
        /// Its size in bytes.
        bytes: u64,
    },
    /// One job sent inline with `Runs.Submit`.
    Inline(InlineJob),
}

/// What an invalid file means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInvalid {
    /// The caller is told (`INVALID_ARGUMENT` with every diagnostic): an API
    /// request, a manual trigger.
    Refuse,
    /// A run is recorded as failed with the errors: an event nobody waits
    /// on (a push, a pull request, a schedule) must leave a trace.
    FailedRun,
}

/// A request to start a run.
pub struct Launch<'a> {
    /// The file or job.
    pub origin: Origin,
    /// What started it.
    pub cause: Cause,
    /// What an invalid file means.
    pub on_invalid: OnInvalid,
    /// The code its jobs check out (repository runs).
    pub checkout: Option<SourcePlan>,
    /// Whether the file's `on:` asks for this event (`None`: always).
    pub accepts: Option<&'a (dyn Fn(&Pipeline) -> bool + Sync)>,
}

impl<'a> Launch<'a> {
    /// A launch of `origin` by `cause` that refuses an invalid file.
    pub fn new(origin: Origin, cause: Cause) -> Self {
        Self { origin, cause, on_invalid: OnInvalid::Refuse, checkout: None, accepts: None }
    }
}

/// The run `launch` asks for: `None` when the file's `on:` does not ask
/// for the event.
pub fn plan(launch: Launch<'_>, plugins: &PluginRegistry) -> Result<Option<NewRun>> {
    let Launch { origin, cause, on_invalid, checkout, accepts } = launch;
    let (file, yaml) = match origin {
        Origin::Inline(job) => return resolve::from_inline(&job, &cause).map(Some),
        Origin::File { name, yaml } => (name, Ok(yaml)),
        Origin::Oversized { name, bytes } => (name, Err(bytes)),
    };
    let size = match &yaml {
        Ok(y) => y.len() as u64,
        Err(bytes) => *bytes,
    };
    if size > MAX_PIPELINE_BYTES as u64 {
        let why = format!("{file} is {size} bytes, over the limit of {MAX_PIPELINE_BYTES}");
        return match on_invalid {
            OnInvalid::Refuse => Err(Error::TooLarge(why)),
            // The text is not kept: it is what was too large.
            OnInvalid::FailedRun => Ok(Some(failed_run(&file, cause, String::new(), why))),
        };
    }
    let Ok(yaml) = yaml else { return Err(Error::Internal("an oversized file under the limit".into())) };
    let pipeline = match resolve::parse(&file, &yaml) {
        Ok(p) => p,
        Err(diags) => return invalid(on_invalid, &file, cause, yaml, diags),
    };
    if accepts.is_some_and(|accepts| !accepts(&pipeline)) {
        return Ok(None);
    }
    match resolve::from_pipeline(&pipeline, &yaml, &cause, plugins) {
        Ok(mut run) => {
            run.checkout = checkout;
            Ok(Some(run))
        }
        Err(Error::InvalidFile(diags)) => invalid(on_invalid, &file, cause, yaml, diags),
        Err(e) => Err(e),
    }
}

/// Plans `launch` and creates its run, committing `extra` with it (or on
/// its own when no run is asked for). Returns the run, if any.
pub async fn start(
    engine: &Engine,
    store: &Store,
    plugins: &PluginRegistry,
    launch: Launch<'_>,
    extra: WriteSet,
) -> Result<Option<RunId>> {
    match plan(launch, plugins)? {
        Some(run) => engine.create_run_with(run, extra).await.map(Some),
        None => {
            store.commit_durable(&extra).await?;
            Ok(None)
        }
    }
}

fn invalid(
    on_invalid: OnInvalid,
    file: &str,
    cause: Cause,
    yaml: String,
    diags: Vec<viaduct_proto::v1::Diagnostic>,
) -> Result<Option<NewRun>> {
    match on_invalid {
        OnInvalid::Refuse => Err(Error::InvalidFile(diags)),
        OnInvalid::FailedRun => {
            tracing::info!(file, commit = %cause.source.commit, "invalid pipeline file: recording a failed run");
            Ok(Some(failed_run(file, cause, yaml, crate::error::render(&diags))))
        }
    }
}

/// A run that failed before any job: its file is invalid; its error
/// carries every diagnostic.
fn failed_run(file: &str, cause: Cause, yaml: String, error: String) -> NewRun {
    let name = if cause.source.repo.is_empty() { cause.pipeline_ref.clone() } else { cause.source.repo.clone() };
    NewRun {
        pipeline: name,
        priority: 5,
        source: cause.source,
        yaml,
        error: Some(format!("invalid {file}:\n{error}")),
        reports_status: cause.reports_status,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use viaduct_proto::v1::RunSource;

    use super::*;
    use crate::{blobs::BlobStore, store::Store};

    fn plugins() -> (tempfile::TempDir, PluginRegistry) {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Arc::new(BlobStore::local(dir.path()).unwrap());
        (dir, PluginRegistry::new(Arc::new(Store::memory()), blobs))
    }

    fn pushed() -> Cause {
        let source = RunSource { event: "push".into(), repo: "app".into(), commit: "abc".into(), ..Default::default() };
        Cause { source, ..Default::default() }
    }

    fn launch(yaml: String, on_invalid: OnInvalid) -> Launch<'static> {
        Launch { on_invalid, ..Launch::new(Origin::File { name: ".viaduct/pipeline.yml".into(), yaml }, pushed()) }
    }

    #[test]
    fn every_origin_has_the_same_size_limit_and_invalid_file_rule() {
        let (_d, plugins) = plugins();
        let huge = format!("jobs:\n  j:\n    steps:\n      - run: echo {}\n", "x".repeat(MAX_PIPELINE_BYTES));
        assert!(matches!(plan(launch(huge.clone(), OnInvalid::Refuse), &plugins), Err(Error::TooLarge(_))));
        let failed = plan(launch(huge, OnInvalid::FailedRun), &plugins).unwrap().expect("a failed run");
        assert!(failed.error.as_deref().is_some_and(|e| e.contains("over the limit")), "{:?}", failed.error);
        assert!(failed.yaml.is_empty(), "the oversized text is not kept");
        assert!(failed.jobs.is_empty());

        let bad = "jobs:\n  j:\n    stpes: []\n".to_string();
        match plan(launch(bad.clone(), OnInvalid::Refuse), &plugins) {
            Err(Error::InvalidFile(d)) => assert!(d.iter().any(|d| (d.line, d.column) == (3, 5)), "{d:?}"),
            other => panic!("expected the file's errors, got {other:?}"),
        }
        let failed = plan(launch(bad, OnInvalid::FailedRun), &plugins).unwrap().expect("a failed run");
        let error = failed.error.unwrap_or_default();
        assert!(error.contains(".viaduct/pipeline.yml:3:5") && error.contains("steps"), "{error}");
        assert_eq!((failed.pipeline.as_str(), failed.source.commit.as_str()), ("app", "abc"));
    }

    #[test]
    fn the_event_filter_decides_before_planning() {
        let (_d, plugins) = plugins();
        let yaml = "jobs:\n  j:\n    steps:\n      - run: 'true'\n".to_string();
        let no = |_: &Pipeline| false;
        let l = Launch { accepts: Some(&no), ..launch(yaml.clone(), OnInvalid::FailedRun) };
        assert!(plan(l, &plugins).unwrap().is_none());
        let run = plan(launch(yaml, OnInvalid::Refuse), &plugins).unwrap().expect("a run");
        assert_eq!(run.jobs.len(), 1);
    }
}
