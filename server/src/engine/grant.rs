//! Grants: proof that a job attempt was given to a runner.
//!
//! An assignment is not fsynced before it is sent (it would add an fsync to
//! the submit→start path), so after a crash the server may have a job as
//! queued that a runner is still running. The runner resumes it by showing
//! the grant that came with the assignment — a MAC, under a key derived
//! from the server's secret key, over the job, the attempt and the runner
//! — so only the runner the attempt was given to can resume it; another
//! runner's token cannot claim queued jobs by listing them in its Hello.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::store::keys::JobKey;

/// The key derivation context for grants.
pub const CONTEXT: &str = "viaduct job grants v1";

fn mac(key: &[u8; 32], job: JobKey, attempt: u32, runner: &str) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("{job}\0{attempt}\0{runner}").as_bytes());
    mac
}

/// The grant of `attempt` of `job` for `runner` (hex).
pub fn issue(key: &[u8; 32], job: JobKey, attempt: u32, runner: &str) -> String {
    hex::encode(mac(key, job, attempt, runner).finalize().into_bytes())
}

/// Whether `grant` is the grant of `attempt` of `job` for `runner`
/// (compared in constant time).
pub fn verify(key: &[u8; 32], job: JobKey, attempt: u32, runner: &str, grant: &str) -> bool {
    let Ok(bytes) = hex::decode(grant) else { return false };
    mac(key, job, attempt, runner).verify_slice(&bytes).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::RunId;

    #[test]
    fn a_grant_is_for_one_attempt_of_one_job_on_one_runner() {
        let key = [7u8; 32];
        let job = JobKey::new(RunId(3), 1);
        let g = issue(&key, job, 2, "runner-a");
        assert!(verify(&key, job, 2, "runner-a", &g));
        assert!(!verify(&key, job, 2, "runner-b", &g));
        assert!(!verify(&key, job, 3, "runner-a", &g));
        assert!(!verify(&key, JobKey::new(RunId(3), 2), 2, "runner-a", &g));
        assert!(!verify(&[8u8; 32], job, 2, "runner-a", &g));
        assert!(!verify(&key, job, 2, "runner-a", "zz"));
    }
}
