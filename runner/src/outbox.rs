//! Reliable delivery of everything a runner reports.
//!
//! Jobs write log bytes and state updates here, whether or not the server is
//! reachable. The outbox keeps each step's log bytes from the last offset
//! the server acknowledged as durable, and every update until it is
//! acknowledged. While a stream is attached, new data goes out at once; when
//! a new stream attaches, everything unacknowledged is sent again from the
//! acknowledged offsets the server reported in its Welcome. The server
//! stores a chunk only if it continues the stored log, so the result has no
//! gap and no duplicate however often the link breaks.
//!
//! Memory is bounded: when [`MAX_BUFFERED`] bytes are unacknowledged,
//! [`Outbox`]'s [`Reports::log`] waits, which stops the step's reader and so, through the
//! pipe, the step's process — backpressure instead of loss.

use std::{collections::BTreeMap, sync::Mutex};

use tokio::sync::{Notify, mpsc::UnboundedSender};
use viaduct_proto::v1::{
    Ack, JobRef, JobUpdate, LogAck, LogData, RunnerMessage, Status, StepUpdate, runner_message::Msg,
};

use crate::report::Reports;

/// Unacknowledged log bytes beyond which writers wait.
pub const MAX_BUFFERED: usize = 64 * 1024 * 1024;
/// Largest chunk sent when resending.
const RESEND_CHUNK: usize = 256 * 1024;

type JobId = (String, u32);

#[derive(Default)]
struct StepBox {
    /// Offset the server acknowledged as durable.
    acked: u64,
    /// Bytes `[acked, acked + buf.len())`.
    buf: Vec<u8>,
}

#[derive(Default)]
struct JobBox {
    steps: BTreeMap<u32, StepBox>,
    /// Unacknowledged updates, in order: (step index or 0, status, message).
    updates: Vec<(u32, i32, RunnerMessage)>,
    /// The final JobUpdate has been queued.
    done: bool,
    /// The grant the attempt was assigned with.
    grant: String,
}

impl JobBox {
    fn settled(&self) -> bool {
        self.done && self.updates.is_empty() && self.steps.values().all(|s| s.buf.is_empty())
    }
}

#[derive(Default)]
struct Inner {
    link: Option<UnboundedSender<RunnerMessage>>,
    jobs: BTreeMap<JobId, JobBox>,
    buffered: usize,
}

impl Inner {
    fn send(&mut self, msg: RunnerMessage) {
        if let Some(link) = &self.link
            && link.send(msg).is_err()
        {
            self.link = None;
        }
    }
}

/// See the module docs.
#[derive(Default)]
pub struct Outbox {
    inner: Mutex<Inner>,
    space: Notify,
}

fn key(job: &JobRef) -> JobId {
    (job.job_id.clone(), job.attempt)
}

fn log_msg(job: &JobRef, step: u32, offset: u64, data: Vec<u8>) -> RunnerMessage {
    RunnerMessage { msg: Some(Msg::Log(LogData { job: Some(job.clone()), step_index: step, offset, data })) }
}

#[async_trait::async_trait]
impl Reports for Outbox {
    /// Appends log bytes of a step; waits while the outbox is full.
    async fn log(&self, job: &JobRef, step: u32, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        loop {
            let notified = self.space.notified();
            if self.lock().buffered < MAX_BUFFERED {
                break;
            }
            notified.await;
        }
        let mut inner = self.lock();
        inner.buffered += data.len();
        let sb = inner.jobs.entry(key(job)).or_default().steps.entry(step).or_default();
        let offset = sb.acked + sb.buf.len() as u64;
        sb.buf.extend_from_slice(data);
        inner.send(log_msg(job, step, offset, data.to_vec()));
    }

    /// Queues a step update.
    fn step(&self, u: StepUpdate) {
        let job = u.job.clone().unwrap_or_default();
        let (index, status) = (u.step_index, u.status);
        self.update(&job, index, status, RunnerMessage { msg: Some(Msg::Step(u)) });
    }

    /// Queues a job update; a final state marks the job done (forgotten once
    /// everything of it is acknowledged).
    fn job(&self, u: JobUpdate) {
        let job = u.job.clone().unwrap_or_default();
        let status = u.status;
        let last = Status::try_from(status).is_ok_and(|s| s != Status::Running);
        self.update(&job, 0, status, RunnerMessage { msg: Some(Msg::Job(u)) });
        if last && let Some(b) = self.lock().jobs.get_mut(&key(&job)) {
            b.done = true;
        }
    }

    /// Forgets a job (its attempt was abandoned).
    fn forget(&self, job: &JobRef) {
        let mut inner = self.lock();
        if let Some(b) = inner.jobs.remove(&key(job)) {
            inner.buffered -= b.steps.values().map(|s| s.buf.len()).sum::<usize>();
        }
        drop(inner);
        self.space.notify_waiters();
    }
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, job: &JobRef, index: u32, status: i32, msg: RunnerMessage) {
        let mut inner = self.lock();
        inner.jobs.entry(key(job)).or_default().updates.push((index, status, msg.clone()));
        inner.send(msg);
    }

    /// Applies an acknowledgement from the server.
    pub fn ack(&self, ack: &Ack) {
        let mut inner = self.lock();
        let mut freed = 0;
        for l in &ack.logs {
            freed += advance(&mut inner, l);
        }
        for u in &ack.updates {
            let Some(job) = &u.job else { continue };
            if let Some(b) = inner.jobs.get_mut(&key(job))
                && let Some(i) = b.updates.iter().position(|(s, st, _)| *s == u.step_index && *st == u.status)
            {
                b.updates.remove(i);
            }
        }
        inner.buffered -= freed;
        inner.jobs.retain(|_, b| !b.settled());
        drop(inner);
        self.space.notify_waiters();
    }

    /// After a reconnect: the server's durable log lengths of a kept job.
    pub fn resume(&self, acks: &[LogAck]) {
        let mut inner = self.lock();
        let mut freed = 0;
        for l in acks {
            freed += advance(&mut inner, l);
        }
        inner.buffered -= freed;
        drop(inner);
        self.space.notify_waiters();
    }

    /// Attaches a new stream and sends everything unacknowledged on it:
    /// log bytes first, then updates, each in their original order.
    pub fn attach(&self, link: UnboundedSender<RunnerMessage>) {
        let mut inner = self.lock();
        let mut resend = Vec::new();
        for ((id, attempt), b) in &inner.jobs {
            let job = JobRef { job_id: id.clone(), attempt: *attempt, ..Default::default() };
            for (step, sb) in &b.steps {
                for (i, chunk) in sb.buf.chunks(RESEND_CHUNK).enumerate() {
                    let offset = sb.acked + (i * RESEND_CHUNK) as u64;
                    resend.push(log_msg(&job, *step, offset, chunk.to_vec()));
                }
            }
        }
        for b in inner.jobs.values() {
            resend.extend(b.updates.iter().map(|(_, _, m)| m.clone()));
        }
        inner.link = Some(link);
        for m in resend {
            inner.send(m);
        }
    }

    /// The stream broke: keep buffering.
    pub fn detach(&self) {
        self.lock().link = None;
    }

    /// Records the grant an assigned attempt came with (shown again when
    /// the runner resumes it after a reconnect).
    pub fn begin(&self, job: &JobRef) {
        self.lock().jobs.entry(key(job)).or_default().grant.clone_from(&job.grant);
    }

    /// Job attempts with anything running or unacknowledged, with their
    /// grants.
    pub fn active(&self) -> Vec<JobRef> {
        self.lock()
            .jobs
            .iter()
            .map(|((id, attempt), b)| JobRef { job_id: id.clone(), attempt: *attempt, grant: b.grant.clone() })
            .collect()
    }

    /// Bytes waiting for acknowledgement.
    pub fn buffered(&self) -> usize {
        self.lock().buffered
    }
}

/// Drops a step's bytes below an acknowledged offset; returns how many.
fn advance(inner: &mut Inner, l: &LogAck) -> usize {
    let Some(job) = &l.job else { return 0 };
    let Some(sb) = inner.jobs.get_mut(&key(job)).and_then(|b| b.steps.get_mut(&l.step_index)) else {
        return 0;
    };
    if l.offset <= sb.acked {
        if l.offset < sb.acked {
            tracing::warn!(job = %job.job_id, step = l.step_index, server = l.offset, acked = sb.acked,
                "server has less log than it acknowledged earlier; the missing bytes cannot be resent");
        }
        return 0;
    }
    let n = usize::try_from(l.offset - sb.acked).unwrap_or(usize::MAX).min(sb.buf.len());
    sb.buf.drain(..n);
    sb.acked += n as u64;
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn job() -> JobRef {
        JobRef { job_id: "1.1".into(), attempt: 1, ..Default::default() }
    }

    fn logs(rx: &mut mpsc::UnboundedReceiver<RunnerMessage>) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            if let Some(Msg::Log(l)) = m.msg {
                out.push((l.offset, l.data));
            }
        }
        out
    }

    #[tokio::test]
    async fn resends_exactly_the_unacknowledged_bytes() {
        let ob = Outbox::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        ob.attach(tx);
        ob.log(&job(), 1, b"hello ").await;
        ob.detach();
        ob.log(&job(), 1, b"world").await;
        assert_eq!(logs(&mut rx), vec![(0, b"hello ".to_vec())]);
        // The server kept 3 bytes durable before the break.
        ob.resume(&[LogAck { job: Some(job()), step_index: 1, offset: 3 }]);
        let (tx, mut rx) = mpsc::unbounded_channel();
        ob.attach(tx);
        assert_eq!(logs(&mut rx), vec![(3, b"lo world".to_vec())]);
        assert_eq!(ob.buffered(), 8);
    }

    #[tokio::test]
    async fn a_job_is_forgotten_once_everything_is_acknowledged() {
        let ob = Outbox::default();
        ob.log(&job(), 1, b"x").await;
        ob.job(JobUpdate { job: Some(job()), status: Status::Success as i32, ..Default::default() });
        assert_eq!(ob.active().len(), 1);
        ob.ack(&Ack {
            logs: vec![LogAck { job: Some(job()), step_index: 1, offset: 1 }],
            updates: vec![viaduct_proto::v1::UpdateAck {
                job: Some(job()),
                step_index: 0,
                status: Status::Success as i32,
            }],
        });
        assert!(ob.active().is_empty());
        assert_eq!(ob.buffered(), 0);
    }
}
