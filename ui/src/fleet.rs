//! Keeping the runners page current from `Runners.Watch`: the snapshot
//! (every runner, then `SYNCED`), then each event applied to the list —
//! a runner's new state replaces its old one, a removed runner goes —
//! kept connected first, then by name.

use viaduct_proto::v1::{Runner, RunnerEvent, RunnerEventKind as Kind};

/// The order the page lists runners in: connected first, then by name.
pub fn sort(runners: &mut [Runner]) {
    runners.sort_by(|a, b| (!a.connected, &a.name, &a.id).cmp(&(!b.connected, &b.name, &b.id)));
}

/// What one event does to the list.
pub fn apply(runners: &mut Vec<Runner>, ev: &RunnerEvent) {
    let Some(r) = &ev.runner else { return };
    match ev.kind() {
        Kind::Removed => runners.retain(|x| x.id != r.id),
        Kind::Unspecified | Kind::Synced => return,
        _ => match runners.iter_mut().find(|x| x.id == r.id) {
            Some(x) => *x = r.clone(),
            None => runners.push(r.clone()),
        },
    }
    sort(runners);
}

/// Gathers a snapshot: `Some(list)` once `SYNCED` arrives.
#[derive(Default)]
pub struct Snapshot {
    runners: Vec<Runner>,
}

impl Snapshot {
    /// Takes one event of the snapshot; the whole list at its end.
    pub fn take(&mut self, ev: &RunnerEvent) -> Option<Vec<Runner>> {
        if ev.kind() == Kind::Synced {
            let mut all = std::mem::take(&mut self.runners);
            sort(&mut all);
            return Some(all);
        }
        apply(&mut self.runners, ev);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: Kind, id: &str, connected: bool) -> RunnerEvent {
        let runner = Runner { id: id.into(), name: id.into(), connected, ..Runner::default() };
        RunnerEvent { kind: kind as i32, runner: Some(runner), time: None }
    }

    #[test]
    fn a_snapshot_then_events_keep_the_list() {
        let mut s = Snapshot::default();
        assert!(s.take(&ev(Kind::Snapshot, "b", false)).is_none());
        assert!(s.take(&ev(Kind::Snapshot, "c", true)).is_none());
        let synced = RunnerEvent { kind: Kind::Synced as i32, ..RunnerEvent::default() };
        let mut list = s.take(&synced).expect("synced");
        let ids = |l: &[Runner]| l.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&list), ["c", "b"], "connected first");
        apply(&mut list, &ev(Kind::Connected, "b", true));
        apply(&mut list, &ev(Kind::Registered, "a", false));
        assert_eq!(ids(&list), ["b", "c", "a"]);
        assert!(list[0].connected);
        apply(&mut list, &ev(Kind::Removed, "c", false));
        apply(&mut list, &synced);
        assert_eq!(ids(&list), ["b", "a"]);
    }
}
