//! Event matching for the server: does a push / pull request / schedule /
//! manual start match the pipeline's `on:`?

use crate::glob::Glob;
use crate::spec::{CronSpec, Triggers};

fn any_match(globs: &[Glob], name: &str) -> bool {
    globs.iter().any(|g| g.is_match(name))
}

impl Triggers {
    /// Whether a push of `branch` (or of `tag`) starts the pipeline.
    ///
    /// With neither `branches` nor `tags` every push matches. With only
    /// `branches`, tag pushes do not match (and vice versa), as in GitHub
    /// Actions. A push with neither branch nor tag matches only an
    /// unfiltered `push`.
    pub fn matches_push(&self, branch: Option<&str>, tag: Option<&str>) -> bool {
        let Some(push) = &self.push else {
            return false;
        };
        match (&push.branches, &push.tags) {
            (None, None) => true,
            (branches, tags) => {
                let branch_ok = matches!((branches, branch), (Some(g), Some(b)) if any_match(g, b));
                let tag_ok = matches!((tags, tag), (Some(g), Some(t)) if any_match(g, t));
                branch_ok || tag_ok
            }
        }
    }

    /// Whether a pull request targeting `target_branch` starts the pipeline.
    pub fn matches_pull_request(&self, target_branch: &str) -> bool {
        self.pull_request.as_ref().is_some_and(|pr| pr.branches.as_ref().is_none_or(|g| any_match(g, target_branch)))
    }

    /// The cron schedules (UTC).
    pub fn schedules(&self) -> &[CronSpec] {
        &self.schedule
    }

    /// Whether the pipeline may be started manually (true when `on` is
    /// absent, or `on.manual` is present and not `false`). API starts are
    /// always allowed.
    pub fn allows_manual(&self) -> bool {
        self.manual.is_some()
    }
}
