//! The dummy executor: no processes. For benchmarks of the scheduler, and
//! for tests of the job runner and the protocol, which set what each step
//! does through its env (the idea of Woodpecker's dummy backend):
//!
//! | variable | effect |
//! |---|---|
//! | `VIADUCT_DUMMY_SETUP_FAIL` (job env) | preparing the job fails with this message |
//! | `VIADUCT_DUMMY_START_FAIL` | the step cannot start: it fails with this message and no exit code |
//! | `VIADUCT_DUMMY_OUTPUT` | written to the step's log, with a newline |
//! | `VIADUCT_DUMMY_SLEEP` | the step takes this long (`250ms`, `2s`…; stopped by a cancel or deadline) |
//! | `VIADUCT_DUMMY_OUTPUTS` | the step's outputs, in the `$VIADUCT_OUTPUT` format |
//! | `VIADUCT_DUMMY_EXIT_CODE` | the step exits with this code |
//!
//! Before those, the step's script runs as lines of a tiny language:
//! `echo TEXT` writes TEXT and a newline, `sleep SECONDS` waits (stoppable),
//! `exit N` ends the step with code N, `true`/`false`; any other line is
//! written to the log as it is.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use viaduct_proto::v1::{Executor, Status};

use super::{Backend, JobEnv, JobSetup, SetupError, StepLog, StepOutcome, StepSpec, StepStop};

/// Job env: preparing the job fails with this message.
pub const SETUP_FAIL: &str = "VIADUCT_DUMMY_SETUP_FAIL";
/// Step env: the step cannot start; it fails with this message.
pub const START_FAIL: &str = "VIADUCT_DUMMY_START_FAIL";
/// Step env: written to the step's log.
pub const OUTPUT: &str = "VIADUCT_DUMMY_OUTPUT";
/// Step env: how long the step takes.
pub const SLEEP: &str = "VIADUCT_DUMMY_SLEEP";
/// Step env: the step's outputs (`name=value` lines).
pub const OUTPUTS: &str = "VIADUCT_DUMMY_OUTPUTS";
/// Step env: the step's exit code.
pub const EXIT_CODE: &str = "VIADUCT_DUMMY_EXIT_CODE";

/// See the module docs.
pub struct DummyBackend;

#[async_trait::async_trait]
impl Backend for DummyBackend {
    fn executors(&self) -> Vec<Executor> {
        vec![Executor::Host, Executor::Container]
    }

    async fn setup(&self, job: &JobSetup) -> Result<Box<dyn JobEnv>, SetupError> {
        if let Some(why) = job.env.get(SETUP_FAIL) {
            return Err(SetupError(why.clone()));
        }
        let name = format!("viaduct-dummy-{}-{}-a{}", std::process::id(), job.job.job_id, job.job.attempt);
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).map_err(|e| SetupError(format!("cannot create {}: {e}", dir.display())))?;
        Ok(Box::new(DummyJob { dir }))
    }
}

struct DummyJob {
    dir: PathBuf,
}

fn outcome(status: Status, code: Option<i32>, message: &str) -> StepOutcome {
    StepOutcome { status, exit_code: code, message: message.into(), outputs: BTreeMap::new() }
}

fn exited(code: i32) -> StepOutcome {
    match code {
        0 => outcome(Status::Success, Some(0), ""),
        c => outcome(Status::Failure, Some(c), &format!("exited with code {c}")),
    }
}

/// Waits `nap`, unless the step is stopped first (then how it ended).
async fn nap(nap: Duration, stop: &StepStop) -> Option<StepOutcome> {
    let deadline = async {
        match stop.deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = tokio::time::sleep(nap) => None,
        () = stop.cancel.cancelled() => Some(outcome(Status::Cancelled, None, "cancelled")),
        () = deadline => Some(outcome(Status::TimedOut, None, "timed out")),
    }
}

/// Runs the script's lines: `Some` when they end the step.
async fn script(step: &StepSpec, log: &mut StepLog, stop: &StepStop) -> Option<StepOutcome> {
    for line in step.script.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (cmd, arg) = line.split_once(' ').unwrap_or((line, ""));
        match cmd {
            "echo" => log.write(format!("{arg}\n").as_bytes()).await,
            "true" => {}
            "false" => return Some(exited(1)),
            "exit" => return Some(exited(arg.trim().parse().unwrap_or(1))),
            "sleep" => {
                let secs: f64 = arg.trim().parse().unwrap_or(0.0);
                if let Some(stopped) = nap(Duration::from_secs_f64(secs.max(0.0)), stop).await {
                    return Some(stopped);
                }
            }
            _ => log.write(format!("{line}\n").as_bytes()).await,
        }
    }
    None
}

/// Does what the step's env says, after it started (see the module docs).
async fn from_env(env: &BTreeMap<String, String>, log: &mut StepLog, stop: &StepStop) -> StepOutcome {
    if let Some(text) = env.get(OUTPUT) {
        log.write(format!("{text}\n").as_bytes()).await;
    }
    if let Some(text) = env.get(SLEEP) {
        match viaduct_pipeline::duration::parse_duration(text) {
            Ok(d) => {
                if let Some(stopped) = nap(d, stop).await {
                    return stopped;
                }
            }
            Err(e) => return StepOutcome::error(format!("{SLEEP}: {e}")),
        }
    }
    let outputs = match env.get(OUTPUTS).map(|t| crate::outputs::parse(t)).transpose() {
        Ok(o) => o.unwrap_or_default(),
        Err(e) => return StepOutcome::error(format!("{OUTPUTS}: {e}")),
    };
    let code = match env.get(EXIT_CODE).map(|c| c.trim().parse::<i32>()).transpose() {
        Ok(c) => c.unwrap_or(0),
        Err(e) => return StepOutcome::error(format!("{EXIT_CODE}: {e}")),
    };
    StepOutcome { outputs, ..exited(code) }
}

#[async_trait::async_trait]
impl JobEnv for DummyJob {
    fn workspace(&self) -> PathBuf {
        self.dir.clone()
    }

    fn programs(&self) -> std::sync::Arc<dyn super::programs::Programs> {
        super::programs::none()
    }

    async fn run_step(&mut self, step: &StepSpec, log: &mut StepLog, stop: &StepStop) -> StepOutcome {
        if let Some(why) = step.env.get(START_FAIL) {
            return StepOutcome::error(why.clone());
        }
        if let Some(ended) = script(step, log, stop).await {
            return ended;
        }
        from_env(&step.env, log, stop).await
    }

    async fn teardown(self: Box<Self>) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
