//! Identities of runs, jobs and steps: their sled key encodings and their
//! public string forms.
//!
//! A run is a `u64` (public "42"); its jobs are numbered from 1 in plan order
//! ("42.1"); a job's steps are numbered from 1 ("42.1.3"). Steps and logs are
//! stored per job *attempt*, so the sled key of a step includes the attempt
//! while its public id names the job's current attempt.
//!
//! All integers are big-endian so that sled's byte order is numeric order:
//! the jobs of a run, the attempts of a job and the log chunks of a step are
//! each one contiguous, ordered key range.

use std::fmt;

use crate::error::Error;

/// A run's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(pub u64);

/// A job: (run, 1-based job index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobKey {
    /// The run it belongs to.
    pub run: RunId,
    /// 1-based position in the plan.
    pub index: u32,
}

/// One step of one attempt of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StepKey {
    /// The job.
    pub job: JobKey,
    /// 1-based attempt.
    pub attempt: u32,
    /// 1-based position in the job.
    pub index: u32,
}

impl RunId {
    /// Sled key: 8 bytes.
    pub fn key(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    /// Decodes [`RunId::key`].
    pub fn from_key(k: &[u8]) -> Option<Self> {
        Some(Self(u64::from_be_bytes(k.get(..8)?.try_into().ok()?)))
    }

    /// Parses the public id ("42").
    pub fn parse(s: &str) -> Result<Self, Error> {
        s.trim()
            .parse()
            .map(Self)
            .map_err(|_| Error::invalid(format!("`{s}` is not a run id (expected a number such as 42)")))
    }
}

impl JobKey {
    /// Builds the key of job `index` of `run`.
    pub fn new(run: RunId, index: u32) -> Self {
        Self { run, index }
    }

    /// Sled key: 12 bytes (run, index).
    pub fn key(self) -> [u8; 12] {
        let mut k = [0u8; 12];
        k[..8].copy_from_slice(&self.run.key());
        k[8..].copy_from_slice(&self.index.to_be_bytes());
        k
    }

    /// Decodes [`JobKey::key`].
    pub fn from_key(k: &[u8]) -> Option<Self> {
        Some(Self { run: RunId::from_key(k)?, index: u32::from_be_bytes(k.get(8..12)?.try_into().ok()?) })
    }

    /// Parses the public id ("42.1").
    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = || Error::invalid(format!("`{s}` is not a job id (expected run.job, such as 42.1)"));
        let (run, job) = s.trim().split_once('.').ok_or_else(bad)?;
        Ok(Self {
            run: RunId(run.parse().map_err(|_| bad())?),
            index: job.parse().ok().filter(|i| *i > 0).ok_or_else(bad)?,
        })
    }

    /// The key of step `index` of `attempt` of this job.
    pub fn step(self, attempt: u32, index: u32) -> StepKey {
        StepKey { job: self, attempt, index }
    }
}

impl StepKey {
    /// Sled key: 20 bytes (run, job, attempt, index).
    pub fn key(self) -> [u8; 20] {
        let mut k = [0u8; 20];
        k[..12].copy_from_slice(&self.job.key());
        k[12..16].copy_from_slice(&self.attempt.to_be_bytes());
        k[16..].copy_from_slice(&self.index.to_be_bytes());
        k
    }

    /// Prefix of all steps of one attempt of a job.
    pub fn attempt_prefix(job: JobKey, attempt: u32) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..12].copy_from_slice(&job.key());
        k[12..].copy_from_slice(&attempt.to_be_bytes());
        k
    }

    /// Decodes [`StepKey::key`].
    pub fn from_key(k: &[u8]) -> Option<Self> {
        Some(Self {
            job: JobKey::from_key(k)?,
            attempt: u32::from_be_bytes(k.get(12..16)?.try_into().ok()?),
            index: u32::from_be_bytes(k.get(16..20)?.try_into().ok()?),
        })
    }

    /// Parses the public id ("42.1.3") into (job, step index); the attempt is
    /// chosen by the caller.
    pub fn parse_public(s: &str) -> Result<(JobKey, u32), Error> {
        let bad = || Error::invalid(format!("`{s}` is not a step id (expected run.job.step, such as 42.1.3)"));
        let (job, step) = s.trim().rsplit_once('.').ok_or_else(bad)?;
        let job = JobKey::parse(job).map_err(|_| bad())?;
        let index = step.parse().ok().filter(|i| *i > 0).ok_or_else(bad)?;
        Ok((job, index))
    }

    /// Key of the log chunk of this step starting at byte `offset`.
    pub fn log_key(self, offset: u64) -> [u8; 28] {
        let mut k = [0u8; 28];
        k[..20].copy_from_slice(&self.key());
        k[20..].copy_from_slice(&offset.to_be_bytes());
        k
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for JobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.run, self.index)
    }
}

/// The public step id ("42.1.3"): the attempt is not part of it.
impl fmt::Display for StepKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.job, self.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort_numerically() {
        let a = JobKey::new(RunId(2), 9).step(1, 10);
        assert_eq!(StepKey::from_key(&a.key()), Some(a));
        let b = JobKey::new(RunId(10), 1).step(1, 1);
        assert!(a.key() < b.key(), "run 2 sorts before run 10");
        assert!(a.log_key(255) < a.log_key(256));
    }

    #[test]
    fn public_ids_parse() {
        assert_eq!(JobKey::parse("42.3").unwrap(), JobKey::new(RunId(42), 3));
        assert_eq!(StepKey::parse_public("42.3.7").unwrap(), (JobKey::new(RunId(42), 3), 7));
        assert!(JobKey::parse("42").is_err());
        assert!(JobKey::parse("42.0").is_err());
        assert!(StepKey::parse_public("x.1.2").is_err());
        assert!(RunId::parse("-1").is_err());
        assert_eq!(JobKey::new(RunId(42), 3).step(2, 7).to_string(), "42.3.7");
    }
}
