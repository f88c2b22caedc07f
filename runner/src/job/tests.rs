//! The job runner in-process: the dummy executor does what each step's env
//! says (see [`crate::executor::dummy`]) and a recorder stands where the
//! outbox would. Each test is a job assignment and the reports it must
//! produce; none starts a process or opens a socket.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use viaduct_proto::{
    StatusWord,
    v1::{JobAssignment, JobRef, JobUpdate, RunAction, Status, StepPlan, StepUpdate, UsesAction, step_plan::Action},
};

use super::{JobStop, Services, run};
use crate::{
    executor::dummy::{DummyBackend, EXIT_CODE, OUTPUT, OUTPUTS, SETUP_FAIL, SLEEP, START_FAIL},
    files::Files,
    report::Reports,
    source::Sources,
};

/// One report, as the server would receive it.
#[derive(Debug, Clone, PartialEq)]
enum Report {
    Job(JobUpdate),
    Step(StepUpdate),
    Log(u32, Vec<u8>),
    Forget,
}

/// Stands where the outbox would: keeps every report in order.
#[derive(Default)]
struct Recorder(Mutex<Vec<Report>>);

#[async_trait::async_trait]
impl Reports for Recorder {
    fn job(&self, update: JobUpdate) {
        self.push(Report::Job(update));
    }
    fn step(&self, update: StepUpdate) {
        self.push(Report::Step(update));
    }
    async fn log(&self, _: &JobRef, step: u32, data: &[u8]) {
        if !data.is_empty() {
            self.push(Report::Log(step, data.to_vec()));
        }
    }
    fn forget(&self, _: &JobRef) {
        self.push(Report::Forget);
    }
}

impl Recorder {
    fn push(&self, r: Report) {
        self.0.lock().unwrap().push(r);
    }

    fn all(&self) -> Vec<Report> {
        self.0.lock().unwrap().clone()
    }

    /// Every state reported, in order: `job running`, `1 running`,
    /// `1 success`… (`job` for the job, the index for a step).
    fn states(&self) -> Vec<String> {
        let word = |s: i32| Status::try_from(s).map_or("?", |s| s.word());
        self.all()
            .iter()
            .filter_map(|r| match r {
                Report::Job(u) => Some(format!("job {}", word(u.status))),
                Report::Step(u) => Some(format!("{} {}", u.step_index, word(u.status))),
                _ => None,
            })
            .collect()
    }

    /// The last update of a step.
    fn step(&self, index: u32) -> StepUpdate {
        self.all()
            .into_iter()
            .rev()
            .find_map(|r| match r {
                Report::Step(u) if u.step_index == index => Some(u),
                _ => None,
            })
            .expect("the step was reported")
    }

    /// The last update of the job.
    fn job(&self) -> JobUpdate {
        self.all()
            .into_iter()
            .rev()
            .find_map(|r| match r {
                Report::Job(u) => Some(u),
                _ => None,
            })
            .expect("the job was reported")
    }

    /// A step's log.
    fn log(&self, index: u32) -> String {
        let bytes: Vec<u8> = self
            .all()
            .into_iter()
            .filter_map(|r| match r {
                Report::Log(i, data) if i == index => Some(data),
                _ => None,
            })
            .flatten()
            .collect();
        String::from_utf8(bytes).unwrap()
    }
}

/// A `run:` step with an env (the dummy executor's instructions).
fn step(name: &str, env: &[(&str, &str)]) -> StepPlan {
    StepPlan {
        name: name.into(),
        action: Some(Action::Run(RunAction { script: String::new() })),
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    }
}

/// A job of these steps (numbered from 1).
fn job(steps: Vec<StepPlan>) -> JobAssignment {
    let steps = steps.into_iter().zip(1..).map(|(s, index)| StepPlan { index, ..s }).collect();
    JobAssignment {
        job: Some(JobRef { job_id: "1.1".into(), attempt: 1, ..Default::default() }),
        run_id: "1".into(),
        job_name: "test".into(),
        steps,
        ..Default::default()
    }
}

fn services(reports: Arc<Recorder>) -> Services {
    // Never called: these jobs have no source, artifacts or caches.
    let client =
        viaduct_sdk::Client::lazy_with("http://127.0.0.1:9", None, &viaduct_sdk::Transport::default()).unwrap();
    Services {
        reports,
        backend: Arc::new(DummyBackend),
        sources: Arc::new(Sources::new(client.clone(), String::new(), false, std::env::temp_dir())),
        files: Arc::new(Files::new(client)),
        plugins: None,
        runner_name: "test".into(),
        env: Arc::default(),
        held: Arc::default(),
    }
}

/// Runs a job to its end; its reports.
async fn run_job(a: JobAssignment) -> Arc<Recorder> {
    let reports = Arc::new(Recorder::default());
    run(a, services(Arc::clone(&reports)), JobStop::default()).await;
    reports
}

/// Starts a job, waits until step `index` runs, then stops it with `stop`.
async fn stopped_at(a: JobAssignment, index: u32, stop: impl FnOnce(&JobStop)) -> Arc<Recorder> {
    let reports = Arc::new(Recorder::default());
    let handle = JobStop::default();
    let job = tokio::spawn(run(a, services(Arc::clone(&reports)), handle.clone()));
    let running = format!("{index} running");
    while !reports.states().contains(&running) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop(&handle);
    job.await.unwrap();
    reports
}

#[tokio::test]
async fn steps_run_in_order_and_their_output_is_logged() {
    let r = run_job(job(vec![step("a", &[(OUTPUT, "one")]), step("b", &[(OUTPUT, "two")])])).await;
    assert_eq!(r.states(), ["job running", "1 running", "1 success", "2 running", "2 success", "job success"]);
    assert_eq!((r.log(1).as_str(), r.log(2).as_str()), ("one\n", "two\n"));
    assert_eq!(r.step(1).exit_code, Some(0));
    // A step's log is complete before its final state.
    let all = r.all();
    let last_log = all.iter().rposition(|x| matches!(x, Report::Log(1, _))).unwrap();
    let done = all
        .iter()
        .position(|x| matches!(x, Report::Step(u) if u.step_index == 1 && u.status == Status::Success as i32))
        .unwrap();
    assert!(last_log < done);
}

/// A step's output past its log limit is cut with a marker line; the step
/// goes on and succeeds, says so, and the next step logs in full.
#[tokio::test]
async fn a_log_past_its_limit_is_cut_with_a_marker_and_the_step_goes_on() {
    let a = JobAssignment {
        max_step_log_bytes: 10,
        ..job(vec![step("loud", &[(OUTPUT, "0123456789abcdef")]), step("next", &[(OUTPUT, "short")])])
    };
    let r = run_job(a).await;
    assert_eq!(r.states(), ["job running", "1 running", "1 success", "2 running", "2 success", "job success"]);
    let log = r.log(1);
    assert!(log.starts_with("0123456789\n[viaduct: this step's log reached its limit of 10 bytes"), "{log}");
    assert!(!log.contains("abcdef"), "{log}");
    assert_eq!(r.step(1).message, "its log was cut at the limit of 10 bytes");
    assert_eq!(r.log(2), "short\n");
}

/// The job's limit counts all its steps: the step that crosses it and
/// every later one that writes get the job's marker; the steps go on.
#[tokio::test]
async fn a_job_past_its_log_limit_cuts_every_later_step() {
    let a = JobAssignment {
        max_step_log_bytes: 100,
        max_job_log_bytes: 15,
        ..job(vec![
            step("one", &[(OUTPUT, "0123456789")]),
            step("two", &[(OUTPUT, "abcdefgh")]),
            step("three", &[(OUTPUT, "more")]),
            step("quiet", &[]),
        ])
    };
    let r = run_job(a).await;
    assert_eq!(r.job().status, Status::Success as i32, "the steps go on");
    assert_eq!(r.log(1), "0123456789\n");
    let marker =
        "\n[viaduct: this job's log reached its limit of 15 bytes; the rest of this step's output is not kept]\n";
    assert_eq!(r.log(2), format!("abcd{marker}"));
    assert_eq!(r.log(3), marker);
    assert_eq!(r.log(4), "");
    assert_eq!(r.step(1).message, "");
    for i in [2, 3] {
        assert_eq!(r.step(i).message, "its log was cut at the job's limit of 15 bytes");
    }
}

#[tokio::test]
async fn a_failed_step_skips_the_default_steps_after_it_but_not_the_always_ones() {
    let always = StepPlan { condition: "always()".into(), ..step("report", &[(OUTPUT, "ran")]) };
    let r = run_job(job(vec![step("a", &[]), step("b", &[(EXIT_CODE, "3")]), step("c", &[]), always])).await;
    assert_eq!(
        r.states(),
        [
            "job running",
            "1 running",
            "1 success",
            "2 running",
            "2 failure",
            "3 skipped",
            "4 running",
            "4 success",
            "job failure"
        ]
    );
    assert_eq!(r.step(2).exit_code, Some(3));
    assert_eq!(r.job().message, "step 2 (`b`) exited with code 3");
    assert_eq!(r.log(4), "ran\n");
}

#[tokio::test]
async fn continue_on_error_keeps_the_job_going() {
    let flaky = StepPlan { continue_on_error: true, ..step("flaky", &[(EXIT_CODE, "1")]) };
    let r = run_job(job(vec![flaky, step("b", &[])])).await;
    assert_eq!(r.step(1).status, Status::Failure as i32);
    assert_eq!(r.step(2).status, Status::Success as i32);
    assert_eq!(r.job().status, Status::Success as i32);
}

#[tokio::test]
async fn a_job_that_cannot_be_prepared_skips_every_step_and_says_why() {
    let mut a = job(vec![step("a", &[]), step("b", &[])]);
    a.env.insert(SETUP_FAIL.into(), "no space left on device".into());
    let r = run_job(a).await;
    assert_eq!(r.states(), ["job running", "1 skipped", "2 skipped", "job failure"]);
    assert_eq!(r.job().message, "could not prepare the job: no space left on device");
}

#[tokio::test]
async fn a_step_that_cannot_start_fails_with_its_reason_and_no_exit_code() {
    let r = run_job(job(vec![step("a", &[(START_FAIL, "image has no shell")])])).await;
    let a = r.step(1);
    assert_eq!((a.status, a.exit_code, a.message.as_str()), (Status::Failure as i32, None, "image has no shell"));
    assert_eq!(r.job().message, "step 1 (`a`) image has no shell");
}

#[tokio::test]
async fn outputs_of_a_step_reach_later_steps_through_expressions() {
    let producer = StepPlan { id: "version".into(), ..step("a", &[(OUTPUTS, "value=1.2.3\n")]) };
    let consumer = step("b", &[(OUTPUT, "releasing ${{ steps.version.outputs.value }}")]);
    let r = run_job(job(vec![producer, consumer])).await;
    assert_eq!(r.step(1).outputs, HashMap::from([("value".to_string(), "1.2.3".to_string())]));
    assert_eq!(r.log(2), "releasing 1.2.3\n");
}

#[tokio::test]
async fn an_if_that_cannot_be_evaluated_fails_its_step() {
    let bad = StepPlan { condition: "steps.(".into(), ..step("a", &[]) };
    let r = run_job(job(vec![bad, step("b", &[])])).await;
    assert_eq!(r.states(), ["job running", "1 failure", "2 skipped", "job failure"]);
    assert!(r.step(1).message.starts_with("cannot evaluate `if: steps.(`"), "{}", r.step(1).message);
}

#[tokio::test]
async fn a_step_over_its_timeout_is_stopped_and_the_job_ends_timed_out() {
    let slow = StepPlan { timeout_ms: 30, ..step("slow", &[(SLEEP, "30s")]) };
    let r = run_job(job(vec![slow, step("b", &[])])).await;
    assert_eq!(r.states(), ["job running", "1 running", "1 timed_out", "2 skipped", "job timed_out"]);
    assert_eq!(r.job().message, "step 1 (`slow`) timed out");
}

#[tokio::test]
async fn the_job_deadline_stops_the_running_step_and_skips_even_always_steps() {
    let always = StepPlan { condition: "always()".into(), ..step("report", &[]) };
    let mut a = job(vec![step("slow", &[(SLEEP, "30s")]), always]);
    a.timeout_ms = 30;
    let r = run_job(a).await;
    assert_eq!(r.states(), ["job running", "1 running", "1 timed_out", "2 skipped", "job timed_out"]);
    assert_eq!(r.job().message, "the job timed out after 30ms");
}

#[tokio::test]
async fn a_cancel_stops_the_running_step_and_runs_only_always_steps() {
    let always = StepPlan { condition: "always()".into(), ..step("clean up", &[(OUTPUT, "cleaned")]) };
    let a = job(vec![step("slow", &[(SLEEP, "30s")]), step("b", &[]), always]);
    let r = stopped_at(a, 1, |s| s.cancel.cancel()).await;
    assert_eq!(
        r.states(),
        ["job running", "1 running", "1 cancelled", "2 skipped", "3 running", "3 success", "job cancelled"]
    );
    assert_eq!(r.log(3), "cleaned\n");
}

#[tokio::test]
async fn an_abandoned_job_reports_nothing_more_and_is_forgotten() {
    let a = job(vec![step("slow", &[(SLEEP, "30s")]), step("b", &[])]);
    let r = stopped_at(a, 1, |s| s.abandon.cancel()).await;
    assert_eq!(r.states(), ["job running", "1 running"]);
    assert_eq!(r.all().last(), Some(&Report::Forget));
}

#[tokio::test]
async fn secrets_are_masked_in_logs_outputs_and_messages() {
    let mut a = job(vec![
        step("a", &[(OUTPUT, "token=s3cr3t-value"), (OUTPUTS, "t=s3cr3t-value")]),
        step("b", &[(START_FAIL, "login with s3cr3t-value refused")]),
    ]);
    a.secrets.insert("DEPLOY_TOKEN".into(), "s3cr3t-value".into());
    let r = run_job(a).await;
    assert_eq!(r.log(1), "token=***\n");
    assert_eq!(r.step(1).outputs["t"], "***");
    assert_eq!(r.step(2).message, "login with *** refused");
    let everything = format!("{:?}", r.all());
    assert!(!everything.contains("s3cr3t"), "a secret reached a report: {everything}");
}

#[tokio::test]
async fn a_plugin_step_on_a_runner_without_a_plugin_host_fails_with_the_reason() {
    let uses = StepPlan {
        name: "cache".into(),
        action: Some(Action::Uses(UsesAction { plugin: "cache".into(), phase: "main".into(), ..Default::default() })),
        ..Default::default()
    };
    let r = run_job(job(vec![uses])).await;
    assert_eq!(r.step(1).status, Status::Failure as i32);
    assert!(r.step(1).message.contains("cannot run plugin steps"), "{}", r.step(1).message);
}

/// A plugin's scratch space goes after its step, whatever the outcome;
/// a link named like it is removed, its target kept.
#[test]
fn plugin_scratch_space_is_removed_and_links_are_not_followed() {
    let ws = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("keep.txt"), "kept").unwrap();
    std::fs::create_dir(ws.path().join(".viaduct-scratch-ssh-ab")).unwrap();
    std::fs::write(ws.path().join(".viaduct-scratch-ssh-ab/key"), "secret").unwrap();
    std::os::unix::fs::symlink(outside.path(), ws.path().join(".viaduct-scratch-link")).unwrap();
    std::fs::write(ws.path().join("app.txt"), "mine").unwrap();
    super::remove_scratch(ws.path());
    let left: Vec<String> =
        std::fs::read_dir(ws.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left, ["app.txt"]);
    assert_eq!(std::fs::read_to_string(outside.path().join("keep.txt")).unwrap(), "kept");
}
