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
        let job: JobRecord = self
            .store()
            .get(T::Jobs, at.job.key())?
            .ok_or_else(|| Error::not_found(format!("job {} not found", at.job)))?;
        let run: RunRecord = self
            .store()
            .get(T::Runs, at.job.run.key())?
            .ok_or_else(|| Error::not_found(format!("run {} not found", at.job.run)))?;
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
        let facts = trust::RunFacts { source: &source, pipeline: &run.pipeline, trust: trust::effective(run.trust) };
        match trust::credentials_refusal(name, &scope, &image.name, &facts) {
            Some(why) => Err(Error::PermissionDenied(why)),
            None => Ok(value),
        }
    }
}
