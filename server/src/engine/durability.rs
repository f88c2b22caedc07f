//! Which changes may wait for the next flush.
//!
//! Every transition is made durable before anyone is told of it (a runner's
//! acknowledgement, a watcher's event), and the store shares one fsync
//! among everything written before it. Most changes are flushed at once,
//! because someone waits for them: a submit's reply, a job starting or
//! ending, its first step starting (what a watcher waits for first). The
//! steps in between are different: a step that ended is followed by the
//! next one starting or by the job's end, and nobody waits on the moment
//! a later step started; they share whichever flush comes next, at most
//! [`crate::store::SOON`] later. So a job of many short steps costs a
//! flush per [`crate::store::SOON`], not one or two per step — fsyncs and
//! the store's I/O threads that would compete with the steps themselves
//! on a small machine. (The runner keeps every report until it is
//! acknowledged as durable: nothing is lost to a crash in between.)

use viaduct_proto::{
    StatusWord,
    v1::{Status, run_event::Change},
};

/// Whether `changes` (of one transition, or events a watcher is about to
/// see) may share the next flush: there are some, and all are steps that
/// ended or steps after the first that started.
pub fn can_wait<'a>(changes: impl IntoIterator<Item = &'a Change>) -> bool {
    let mut any = false;
    for c in changes {
        match c {
            Change::Step(s) if step_can_wait(s.index, s.status()) => any = true,
            _ => return false,
        }
    }
    any
}

/// Whether step `index` reaching `status` may wait for the next flush:
/// it ended, or it is a later step that started.
pub fn step_can_wait(index: u32, status: Status) -> bool {
    status.is_terminal() || (status == Status::Running && index > 1)
}

#[cfg(test)]
mod tests {
    use viaduct_proto::v1::{Job, Run, Step};

    use super::*;

    fn step(index: u32, status: Status) -> Change {
        Change::Step(Step { index, status: status as i32, ..Default::default() })
    }

    #[test]
    fn only_steps_between_the_first_start_and_the_job_end_wait() {
        assert!(can_wait(&[step(1, Status::Success), step(2, Status::Failure), step(3, Status::Skipped)]));
        assert!(can_wait(&[step(1, Status::Success), step(2, Status::Running)]), "a later step starting");
        assert!(!can_wait(&[]), "nothing to wait for");
        assert!(!can_wait(&[step(1, Status::Running)]), "the first step starting is flushed now");
        assert!(!can_wait(&[step(1, Status::Queued)]));
        assert!(!can_wait(&[step(1, Status::Success), Change::Job(Job::default())]));
        assert!(!can_wait(&[Change::Run(Run::default())]));
    }
}
