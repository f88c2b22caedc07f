//! Which changes may wait for the next flush.
//!
//! Every transition is made durable before anyone is told of it (a runner's
//! acknowledgement, a watcher's event), and the store shares one fsync
//! among everything written before it. Most changes are flushed at once,
//! because someone waits for them: a submit's reply, a job starting or
//! ending, a step starting (what a watcher sees first). A step that
//! *ended* is different: the next thing its job does is start the next
//! step or end, and that flush covers it; so a job of many short steps
//! costs one flush per step, not two. It waits at most
//! [`crate::store::SOON`] when nothing else comes.

use viaduct_proto::{StatusWord, v1::run_event::Change};

/// Whether `changes` (of one transition, or events a watcher is about to
/// see) may share the next flush: there are some, and all are steps that
/// ended.
pub fn can_wait<'a>(changes: impl IntoIterator<Item = &'a Change>) -> bool {
    let mut any = false;
    for c in changes {
        match c {
            Change::Step(s) if s.status().is_terminal() => any = true,
            _ => return false,
        }
    }
    any
}

#[cfg(test)]
mod tests {
    use viaduct_proto::v1::{Job, Run, Status, Step};

    use super::*;

    fn step(status: Status) -> Change {
        Change::Step(Step { status: status as i32, ..Default::default() })
    }

    #[test]
    fn only_ended_steps_wait() {
        assert!(can_wait(&[step(Status::Success), step(Status::Failure), step(Status::Skipped)]));
        assert!(!can_wait(&[]), "nothing to wait for");
        assert!(!can_wait(&[step(Status::Success), step(Status::Running)]), "a step starting is flushed now");
        assert!(!can_wait(&[step(Status::Success), Change::Job(Job::default())]));
        assert!(!can_wait(&[Change::Run(Run::default())]));
    }
}
