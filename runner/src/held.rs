//! Environments of failed jobs kept for a debug shell: a job assigned with
//! `hold_failed_ms` that fails is not torn down; its environment — the
//! workspace, the processes a step left, its container — stays here until
//! that time passes (then it is torn down like any job's), and a live debug
//! shell (`DebugAssignment.live`) opens in it.
//!
//! A held environment keeps its slot user and cgroup: a job the runner
//! takes meanwhile gets another user (`executor::isolation::SlotUsers`
//! grows), so it cannot reach the held workspace. A runner that stops tears
//! every held environment down; one that is killed leaves their
//! directories to `clean_stale` at its next start.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use crate::executor::JobEnv;

/// A job attempt: (job id, attempt).
type Key = (String, u32);

struct Slot {
    /// `None` while a debug shell has it.
    env: Option<Box<dyn JobEnv>>,
    until: Instant,
}

/// The held environments.
#[derive(Default)]
pub struct Held {
    slots: Mutex<HashMap<Key, Slot>>,
    /// Most held at once (the runner's slots; 0: none — a runner whose host
    /// jobs run as its own user, where a later job could read them).
    max: usize,
}

impl Held {
    /// At most `max` held at once (0: none is ever held).
    pub fn new(max: usize) -> Self {
        Self { slots: Mutex::default(), max }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Slot>> {
        self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps `env` of attempt `attempt` of `job` for `time`, then tears it
    /// down.
    pub async fn hold(self: &Arc<Self>, job: &str, attempt: u32, env: Box<dyn JobEnv>, time: Duration) {
        if self.max == 0 {
            tracing::info!(job, attempt, "not held: this runner's host jobs share its user");
            env.teardown().await;
            return;
        }
        let key = (job.to_string(), attempt);
        let until = Instant::now() + time;
        // Past the limit the oldest goes (its time is the nearest).
        let evicted = {
            let mut slots = self.lock();
            let oldest = (slots.len() >= self.max)
                .then(|| {
                    slots.iter().filter(|(_, s)| s.env.is_some()).min_by_key(|(_, s)| s.until).map(|(k, _)| k.clone())
                })
                .flatten();
            slots.insert(key.clone(), Slot { env: Some(env), until });
            oldest.and_then(|k| slots.remove(&k)).and_then(|s| s.env)
        };
        if let Some(env) = evicted {
            env.teardown().await;
        }
        tracing::info!(job, attempt, secs = time.as_secs(), "the failed job's environment is held for a debug shell");
        let held = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep_until(until).await;
            held.expire(&key).await;
        });
    }

    /// Tears down `key`'s environment once its time has passed (a shell
    /// that has it gives it back, and it goes then).
    async fn expire(&self, key: &Key) {
        let env = {
            let mut slots = self.lock();
            match slots.get_mut(key) {
                Some(s) if s.until <= Instant::now() => {
                    let env = s.env.take();
                    if env.is_some() {
                        slots.remove(key);
                    }
                    env
                }
                _ => None,
            }
        };
        if let Some(env) = env {
            tracing::info!(job = %key.0, attempt = key.1, "the held environment is torn down");
            env.teardown().await;
        }
    }

    /// The environment of attempt `attempt` of `job`, for a shell: `None`
    /// when it is not held (any more), or a shell has it.
    pub fn take(&self, job: &str, attempt: u32) -> Option<Box<dyn JobEnv>> {
        self.lock().get_mut(&(job.to_string(), attempt)).and_then(|s| s.env.take())
    }

    /// A shell is done with `env`: held again, or torn down when its time
    /// passed meanwhile.
    pub async fn give_back(&self, job: &str, attempt: u32, env: Box<dyn JobEnv>) {
        let key = (job.to_string(), attempt);
        let expired = {
            let mut slots = self.lock();
            match slots.get_mut(&key) {
                Some(s) if s.until > Instant::now() => {
                    s.env = Some(env);
                    None
                }
                _ => {
                    slots.remove(&key);
                    Some(env)
                }
            }
        };
        if let Some(env) = expired {
            env.teardown().await;
        }
    }

    /// Tears every held environment down (the runner stops).
    pub async fn release_all(&self) {
        let envs: Vec<Box<dyn JobEnv>> = self.lock().drain().filter_map(|(_, s)| s.env).collect();
        for env in envs {
            env.teardown().await;
        }
    }
}
