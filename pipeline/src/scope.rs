//! Which context references are valid where: checks `matrix.X`, `steps.X`
//! and `needs.X` against the job being decoded.

use crate::diag::suggestion;

/// Where an expression appears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    /// Pipeline-level fields (`name`, `env`, `concurrency`).
    Pipeline,
    /// Job-level fields (`name`, `runs_on`, `image`, `env`, `if`, …).
    Job,
    /// Step fields (`run`, `env`, `with`, `if`, …).
    Step,
}

/// What is in scope for expression references.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scope<'s> {
    pub(crate) level: Level,
    pub(crate) job: &'s str,
    /// Matrix keys (axes plus include-added keys); `None` without a matrix.
    pub(crate) matrix: Option<&'s [String]>,
    /// Job keys listed in `needs`.
    pub(crate) needs: &'s [String],
    /// Step ids defined before the current step.
    pub(crate) steps_before: &'s [String],
    /// All step ids of the job.
    pub(crate) steps_all: &'s [String],
}

impl<'s> Scope<'s> {
    /// The scope of pipeline-level fields.
    pub(crate) fn pipeline() -> Scope<'static> {
        Scope { level: Level::Pipeline, job: "", matrix: None, needs: &[], steps_before: &[], steps_all: &[] }
    }

    /// Checks one reference path (already shape-checked by the expression
    /// parser); returns the error message if it is not valid here.
    pub(crate) fn check(&self, path: &[String]) -> Result<(), String> {
        let (Some(root), Some(name)) = (path.first(), path.get(1)) else {
            return Ok(());
        };
        let job = self.job;
        match root.as_str() {
            "matrix" => match self.matrix {
                None if self.level == Level::Pipeline => {
                    Err("the `matrix` context is only available inside jobs".to_owned())
                }
                None => Err(format!("`matrix.{name}` is used but job `{job}` has no matrix")),
                Some(keys) if !keys.contains(name) => Err(format!(
                    "`matrix.{name}` is not an axis of job `{job}`{} (axes: {})",
                    suggestion(name, keys.iter().map(String::as_str)),
                    keys.join(", ")
                )),
                Some(_) => Ok(()),
            },
            "steps" if self.level != Level::Step => {
                Err("the `steps` context is only available inside steps".to_owned())
            }
            "steps" if self.steps_before.contains(name) => Ok(()),
            "steps" if self.steps_all.contains(name) => {
                Err(format!("step `{name}` runs after this step; `steps.{name}` can only refer to earlier steps"))
            }
            "steps" => Err(format!(
                "unknown step id `{name}` in job `{job}`{}",
                suggestion(name, self.steps_before.iter().map(String::as_str))
            )),
            "needs" if self.level == Level::Pipeline => {
                Err("the `needs` context is only available inside jobs".to_owned())
            }
            "needs" if !self.needs.contains(name) => {
                Err(format!("job `{job}` does not list `{name}` in `needs`; add it to `needs` to use `needs.{name}`"))
            }
            _ => Ok(()),
        }
    }
}
