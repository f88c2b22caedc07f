//! Where a local run's reports go: the terminal, in the style of `viaduct
//! submit --follow` — a `── job › step` line on stderr as a step starts and
//! `── job › step: status, exit N` as it ends, its output (masked by the
//! job runner) on stdout, each line prefixed with `[job]` when jobs run at
//! once. Jobs' final states are kept for the summary.

use std::{
    collections::HashMap,
    io::Write,
    sync::Mutex,
    time::{Duration, Instant},
};

use viaduct_proto::{
    StatusWord,
    v1::{JobRef, JobUpdate, Status, StepUpdate},
};

use crate::report::Reports;

/// How a job ended.
#[derive(Debug, Clone)]
pub struct Ended {
    /// Its status.
    pub status: Status,
    /// Why (a failed step, a skip reason…).
    pub message: String,
    /// How long it ran.
    pub took: Duration,
}

#[derive(Default)]
struct State {
    /// Job id → display name.
    names: HashMap<String, String>,
    /// (job id, step index) → step name.
    steps: HashMap<(String, u32), String>,
    started: HashMap<String, Instant>,
    ended: HashMap<String, Ended>,
    /// Unfinished last line of each job's output (prefixed mode).
    partial: HashMap<String, Vec<u8>>,
}

/// The terminal reporter.
pub struct Terminal {
    /// Prefix each output line with its job (jobs run at once).
    prefixed: bool,
    state: Mutex<State>,
}

impl Terminal {
    /// A reporter; `prefixed` when several jobs may print at once.
    pub fn new(prefixed: bool) -> Self {
        Self { prefixed, state: Mutex::default() }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Names a job and its steps before it runs.
    pub fn register(&self, job_id: &str, name: &str, steps: impl IntoIterator<Item = (u32, String)>) {
        let mut st = self.state();
        st.names.insert(job_id.to_string(), name.to_string());
        for (i, s) in steps {
            st.steps.insert((job_id.to_string(), i), s);
        }
    }

    /// Records a job that ended without running (skipped, a missing
    /// secret…) and says so.
    pub fn ended_early(&self, job_id: &str, status: Status, message: &str) {
        let name = self.state().names.get(job_id).cloned().unwrap_or_else(|| job_id.to_string());
        line(&format!("── {name}: {}{}", status.word(), suffix(message)));
        let ended = Ended { status, message: message.to_string(), took: Duration::ZERO };
        self.state().ended.insert(job_id.to_string(), ended);
    }

    /// A note about a job (its artifacts).
    pub fn note(&self, job_id: &str, note: &str) {
        let name = self.state().names.get(job_id).cloned().unwrap_or_else(|| job_id.to_string());
        line(&format!("── {name}: {note}"));
    }

    /// How a job ended, once it has.
    pub fn ended(&self, job_id: &str) -> Option<Ended> {
        self.state().ended.get(job_id).cloned()
    }

    fn flush_partial(&self, st: &mut State, job_id: &str) {
        if let Some(rest) = st.partial.remove(job_id).filter(|r| !r.is_empty()) {
            let name = st.names.get(job_id).cloned().unwrap_or_default();
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(format!("[{name}] ").as_bytes());
            let _ = out.write_all(&rest);
            let _ = out.write_all(b"\n");
            let _ = out.flush();
        }
    }
}

fn suffix(message: &str) -> String {
    if message.is_empty() { String::new() } else { format!(" ({message})") }
}

/// A line on stderr, after what stdout holds.
fn line(text: &str) {
    let _ = std::io::stdout().flush();
    eprintln!("{text}");
}

#[async_trait::async_trait]
impl Reports for Terminal {
    fn job(&self, update: JobUpdate) {
        let job_id = update.job.as_ref().map(|j| j.job_id.clone()).unwrap_or_default();
        let status = update.status();
        let mut st = self.state();
        if status == Status::Running {
            st.started.insert(job_id, Instant::now());
            return;
        }
        self.flush_partial(&mut st, &job_id);
        let took = st.started.get(&job_id).map(Instant::elapsed).unwrap_or_default();
        let name = st.names.get(&job_id).cloned().unwrap_or_else(|| job_id.clone());
        st.ended.insert(job_id, Ended { status, message: update.message.clone(), took });
        drop(st);
        line(&format!("── {name}: {}{}", status.word(), suffix(&update.message)));
    }

    fn step(&self, update: StepUpdate) {
        let job_id = update.job.as_ref().map(|j| j.job_id.clone()).unwrap_or_default();
        let mut st = self.state();
        let job = st.names.get(&job_id).cloned().unwrap_or_else(|| job_id.clone());
        let step = st.steps.get(&(job_id.clone(), update.step_index)).cloned().unwrap_or_default();
        let status = update.status();
        if status == Status::Running {
            drop(st);
            line(&format!("── {job} › {step}"));
            return;
        }
        self.flush_partial(&mut st, &job_id);
        drop(st);
        let code = update.exit_code.map(|c| format!(", exit {c}")).unwrap_or_default();
        line(&format!("── {job} › {step}: {}{code}{}", status.word(), suffix(&update.message)));
    }

    async fn log(&self, job: &JobRef, _step: u32, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut st = self.state();
        if !self.prefixed {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(data);
            let _ = out.flush();
            return;
        }
        let name = st.names.get(&job.job_id).cloned().unwrap_or_default();
        let partial = st.partial.entry(job.job_id.clone()).or_default();
        partial.extend_from_slice(data);
        let Some(last) = partial.iter().rposition(|b| *b == b'\n') else { return };
        let rest = partial.split_off(last + 1);
        let full = std::mem::replace(partial, rest);
        let mut out = std::io::stdout().lock();
        for l in full.split_inclusive(|b| *b == b'\n') {
            let _ = out.write_all(format!("[{name}] ").as_bytes());
            let _ = out.write_all(l);
        }
        let _ = out.flush();
    }

    fn forget(&self, _job: &JobRef) {}
}
