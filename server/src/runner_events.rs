//! The fleet's changes as `Runners.Watch` events: what changed between two
//! readings of the runners, one event per change of each runner, in a
//! fixed order (registered or connected first, removed last). Readings are
//! compared without `last_seen`: a heartbeat alone is not a change.

use std::collections::BTreeMap;

use viaduct_proto::v1::{Runner, RunnerEventKind as Kind};

/// The runners by id, as last sent.
#[derive(Default)]
pub struct Fleet {
    runners: BTreeMap<String, Runner>,
}

/// `r` without what changes with every heartbeat.
fn settled(r: &Runner) -> Runner {
    Runner { last_seen: None, ..r.clone() }
}

impl Fleet {
    /// A fleet of `runners` (the snapshot a watch starts with).
    pub fn new(runners: Vec<Runner>) -> Self {
        Self { runners: runners.into_iter().map(|r| (r.id.clone(), r)).collect() }
    }

    /// Every runner, by id.
    pub fn runners(&self) -> impl Iterator<Item = &Runner> {
        self.runners.values()
    }

    /// Moves to `now`, returning the events that lead there.
    pub fn update(&mut self, now: Vec<Runner>) -> Vec<(Kind, Runner)> {
        let mut events = Vec::new();
        let mut gone = std::mem::take(&mut self.runners);
        for r in now {
            match gone.remove(&r.id) {
                None => {
                    events.push((Kind::Registered, r.clone()));
                    if r.connected {
                        events.push((Kind::Connected, r.clone()));
                    }
                    if r.draining {
                        events.push((Kind::Draining, r.clone()));
                    }
                    if !r.paused.is_empty() {
                        events.push((Kind::Paused, r.clone()));
                    }
                }
                Some(old) => events.extend(changes(&old, &r).into_iter().map(|k| (k, r.clone()))),
            }
            self.runners.insert(r.id.clone(), r);
        }
        events.extend(gone.into_keys().map(|id| (Kind::Removed, Runner { id, ..Runner::default() })));
        events
    }
}

/// What changed from `old` to `new` (the same runner).
fn changes(old: &Runner, new: &Runner) -> Vec<Kind> {
    let mut kinds = Vec::new();
    let flip = |was: bool, is: bool, on: Kind, off: Kind| match (was, is) {
        (false, true) => Some(on),
        (true, false) => Some(off),
        _ => None,
    };
    kinds.extend(flip(old.connected, new.connected, Kind::Connected, Kind::Disconnected));
    kinds.extend(flip(old.draining, new.draining, Kind::Draining, Kind::Undrained));
    kinds.extend(flip(!old.paused.is_empty(), !new.paused.is_empty(), Kind::Paused, Kind::Resumed));
    let rest = |r: &Runner| Runner { connected: false, draining: false, paused: String::new(), ..settled(r) };
    // A new reason to pause is a change too.
    if rest(old) != rest(new) || (kinds.is_empty() && old.paused != new.paused) {
        kinds.push(Kind::Updated);
    }
    kinds
}

#[cfg(test)]
mod tests {
    use prost_types::Timestamp;

    use super::*;

    fn runner(id: &str) -> Runner {
        Runner { id: id.into(), slots: 1, ..Runner::default() }
    }

    fn kinds(events: &[(Kind, Runner)]) -> Vec<(Kind, &str)> {
        events.iter().map(|(k, r)| (*k, r.id.as_str())).collect()
    }

    #[test]
    fn each_change_of_each_runner_is_one_event_and_heartbeats_are_none() {
        let mut fleet = Fleet::new(vec![runner("a"), Runner { connected: true, ..runner("b") }]);
        let beat = |r: Runner| Runner { last_seen: Some(Timestamp { seconds: 9, nanos: 0 }), ..r };
        assert!(fleet.update(vec![beat(runner("a")), Runner { connected: true, ..beat(runner("b")) }]).is_empty());
        let now = vec![
            Runner { connected: true, draining: true, ..runner("a") },
            Runner { connected: true, paused: "short of disk".into(), jobs: vec!["j".into()], ..runner("b") },
            Runner { connected: true, ..runner("c") },
        ];
        assert_eq!(
            kinds(&fleet.update(now)),
            [
                (Kind::Connected, "a"),
                (Kind::Draining, "a"),
                (Kind::Paused, "b"),
                (Kind::Updated, "b"),
                (Kind::Registered, "c"),
                (Kind::Connected, "c"),
            ]
        );
        let now = vec![Runner { connected: true, paused: "still short".into(), ..runner("b") }];
        assert_eq!(kinds(&fleet.update(now)), [(Kind::Updated, "b"), (Kind::Removed, "a"), (Kind::Removed, "c")]);
        assert_eq!(fleet.runners().count(), 1);
    }
}
