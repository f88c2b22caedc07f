//! The dummy executor: no processes, for benchmarks of the scheduler and
//! protocol tests. It reads a step's script as lines of a tiny language:
//! `echo TEXT` writes TEXT and a newline, `sleep SECONDS` waits (stoppable),
//! `exit N` ends the step with code N, `true`/`false`; any other line is
//! written to the log as it is.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use viaduct_proto::v1::Status;

use super::{Backend, JobEnv, JobSetup, SetupError, StepLog, StepOutcome, StepSpec, StepStop};

/// See the module docs.
pub struct DummyBackend;

#[async_trait::async_trait]
impl Backend for DummyBackend {
    fn executors(&self) -> Vec<String> {
        vec!["host".into(), "container".into()]
    }

    async fn setup(&self, job: &JobSetup) -> Result<Box<dyn JobEnv>, SetupError> {
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

#[async_trait::async_trait]
impl JobEnv for DummyJob {
    fn workspace(&self) -> PathBuf {
        self.dir.clone()
    }

    fn programs(&self) -> std::sync::Arc<dyn super::programs::Programs> {
        super::programs::none()
    }

    async fn run_step(&mut self, step: &StepSpec, log: &mut StepLog, stop: &StepStop) -> StepOutcome {
        for line in step.script.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (cmd, arg) = line.split_once(' ').unwrap_or((line, ""));
            match cmd {
                "echo" => log.write(format!("{arg}\n").as_bytes()).await,
                "true" => {}
                "false" => return outcome(Status::Failure, Some(1), "exited with code 1"),
                "exit" => {
                    let code: i32 = arg.trim().parse().unwrap_or(1);
                    if code != 0 {
                        return outcome(Status::Failure, Some(code), &format!("exited with code {code}"));
                    }
                    break;
                }
                "sleep" => {
                    let secs: f64 = arg.trim().parse().unwrap_or(0.0);
                    let nap = tokio::time::sleep(Duration::from_secs_f64(secs.max(0.0)));
                    let deadline = async {
                        match stop.deadline {
                            Some(d) => tokio::time::sleep_until(d.into()).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        () = nap => {}
                        () = stop.cancel.cancelled() => return outcome(Status::Cancelled, None, "cancelled"),
                        () = deadline => return outcome(Status::TimedOut, None, "timed out"),
                    }
                }
                _ => log.write(format!("{line}\n").as_bytes()).await,
            }
        }
        outcome(Status::Success, Some(0), "")
    }

    async fn teardown(self: Box<Self>) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
