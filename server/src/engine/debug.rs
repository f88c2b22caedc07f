//! Debug shells, as the engine sees them: what a runner needs to open one
//! on a job's snapshot, and which runner gets it.

use viaduct_proto::v1::{DebugAssignment, JobRef, ServerMessage, server_message::Msg};

use super::Engine;
use crate::{
    error::{Error, Result},
    store::{
        T,
        keys::StepKey,
        records::{JobRecord, RunRecord},
    },
    trust,
};

impl Engine {
    /// The record of `job` and of its run.
    fn job_and_run(&self, job: crate::store::keys::JobKey) -> Result<(JobRecord, RunRecord)> {
        let rec: JobRecord =
            self.store().get(T::Jobs, job.key())?.ok_or_else(|| Error::not_found(format!("job {job} not found")))?;
        let run: RunRecord = self
            .store()
            .get(T::Runs, job.run.key())?
            .ok_or_else(|| Error::not_found(format!("run {} not found", job.run)))?;
        Ok((rec, run))
    }

    /// The role a debug shell on job `job` needs: push on its repository
    /// (whoever could run code there by pushing it), and maintain when the
    /// job was given secrets or registry credentials — a snapshot holds no
    /// secret value, but could hold what a step derived from one.
    pub fn debug_role(&self, job: crate::store::keys::JobKey) -> Result<viaduct_proto::v1::Role> {
        let rec: JobRecord =
            self.store().get(T::Jobs, job.key())?.ok_or_else(|| Error::not_found(format!("job {job} not found")))?;
        let credentials = rec.image.as_ref().is_some_and(|i| !i.credentials.is_empty());
        Ok(if rec.secrets.is_empty() && !credentials {
            viaduct_proto::v1::Role::Push
        } else {
            viaduct_proto::v1::Role::Maintain
        })
    }

    /// Completes `shell` (session id, terminal, time limit already set)
    /// for the snapshot after step `at` — the job's image, environment
    /// (never a secret) and limits, and the image's registry credentials
    /// when its run may have them — and sends it to a runner that could run
    /// the job. Returns the runner's id.
    pub fn assign_debug(&self, at: StepKey, mut shell: DebugAssignment) -> Result<String> {
        let (job, run) = self.job_and_run(at.job)?;
        shell.job = Some(JobRef { job_id: at.job.to_string(), attempt: at.attempt, grant: String::new() });
        shell.after_step = at.index;
        shell.env = super::dispatch::job_env(at.job, &job, &run);
        shell.image = job.image.clone();
        shell.network.clone_from(&job.network);
        shell.cpus = job.cpus;
        shell.memory_bytes = job.memory_bytes;
        shell.registry_auth = self.registry_auth(&job, &run)?;
        self.send_to_fitting(at.job, &job, ServerMessage { msg: Some(Msg::Debug(shell)) })
    }

    /// The `user:password` of the job's image registry (its
    /// `image.credentials` secret), under the same trust rules as at
    /// dispatch; empty without one.
    fn registry_auth(&self, job: &JobRecord, run: &RunRecord) -> Result<String> {
        let Some(image) = job.image.as_ref().filter(|i| !i.credentials.is_empty()) else {
            return Ok(String::new());
        };
        let name = &image.credentials;
        let (value, scope) =
            self.sh.secrets.get(&self.sh.store, name)?.ok_or_else(|| {
                Error::precondition(format!("secret `{name}` is not set (viaduct secrets set {name})"))
            })?;
        let source = run.source.clone().unwrap_or_default();
        let facts = trust::RunFacts {
            source: &source,
            pipeline: &run.pipeline,
            trust: trust::effective(run.trust),
            environment: None,
        };
        match trust::credentials_refusal(name, &scope, &image.name, &facts) {
            Some(why) => Err(Error::PermissionDenied(why)),
            None => Ok(value),
        }
    }
}

impl Engine {
    /// The failed attempt of `job` whose live environment its runner holds
    /// (a run with `keep_on_failure`, within `--hold-failed-workspace`), as
    /// a step key of step 0; and that runner.
    pub fn live_debug_target(&self, job: crate::store::keys::JobKey) -> Result<(StepKey, String)> {
        let (rec, run) = self.job_and_run(job)?;
        if !run.keep_on_failure {
            return Err(Error::precondition(format!(
                "run {} keeps no failed workspace: submit or retry it with keep_on_failure (--keep-on-failure), or \
                 open the shell on a snapshot",
                job.run
            )));
        }
        use viaduct_proto::StatusWord as _;
        if !matches!(rec.status(), viaduct_proto::v1::Status::Failure | viaduct_proto::v1::Status::TimedOut) {
            return Err(Error::precondition(format!(
                "job {job} is {}: only a failed job's workspace is kept",
                rec.status().word()
            )));
        }
        let until = rec.finished_ms + super::ms(self.sh.cfg.hold_failed);
        if self.sh.now_ms() > until {
            return Err(Error::precondition(format!(
                "job {job}'s workspace was kept for {} s after it failed: it is gone",
                self.sh.cfg.hold_failed.as_secs()
            )));
        }
        Ok((job.step(rec.attempt, 0), rec.runner_id))
    }

    /// Sends `shell` (a live one: [`Engine::live_debug_target`]) to
    /// `runner`, with the job's environment.
    pub fn assign_live_debug(&self, at: StepKey, runner: &str, mut shell: DebugAssignment) -> Result<()> {
        let (job, run) = self.job_and_run(at.job)?;
        shell.live = true;
        shell.job = Some(JobRef { job_id: at.job.to_string(), attempt: at.attempt, grant: String::new() });
        shell.env = super::dispatch::job_env(at.job, &job, &run);
        shell.image = job.image.clone();
        let st = self.lock();
        let conn = st.runners.get(runner).ok_or_else(|| {
            Error::precondition(format!("runner {runner}, which holds job {}'s workspace, is not connected", at.job))
        })?;
        conn.tx
            .send(ServerMessage { msg: Some(Msg::Debug(shell)) })
            .map_err(|_| Error::precondition(format!("runner {runner} just went away")))
    }
}
