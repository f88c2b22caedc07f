//! Job artifacts: files a job kept, by (run, job, name), pointing at blobs.
//!
//! Runners upload them on behalf of a job attempt they hold (checked by the
//! caller); a newer attempt's artifact of the same name replaces the older
//! one. Names are workspace-relative paths, checked here ([`check_name`])
//! whatever the runner already checked. Browsers download through signed,
//! expiring links on the HTTP port ([`Artifacts::sign`]); the signature
//! covers the run, job, name and expiry, with a key derived from the
//! server's secret key.

use std::sync::Arc;

use hmac::{KeyInit, Mac};
use viaduct_proto::v1::Artifact;

use crate::{
    blobs::Blob,
    convert::timestamp,
    error::{Error, Result},
    store::{
        Store, T, WriteSet,
        keys::{JobKey, RunId},
        now_ms,
        records::{ArtifactRecord, SCHEMA_VERSION},
    },
};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The artifact index over the `artifacts` tree.
pub struct Artifacts {
    store: Arc<Store>,
    /// Artifacts are deleted this long after upload.
    ttl: std::time::Duration,
    link_key: [u8; 32],
    quota: JobQuota,
    /// Held from a job's quota check to its record's write (uploads of one
    /// job run at once: the check and the record must see each other); not
    /// across the fsync.
    recording: tokio::sync::Mutex<()>,
}

/// What one job attempt may upload as artifacts.
#[derive(Debug, Clone, Copy)]
pub struct JobQuota {
    /// Files.
    pub files: usize,
    /// Bytes, all files together.
    pub bytes: u64,
}

/// Checks an artifact name: a relative path of normal components, at most
/// 1024 bytes, no `..`, `.`, empty components, backslashes or control
/// characters.
pub fn check_name(name: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::invalid(format!("`{}` is not a valid artifact name: {why}", name.escape_debug())));
    if name.is_empty() || name.len() > 1024 {
        return bad("it must be 1–1024 bytes");
    }
    if name.starts_with('/') {
        return bad("it must be relative");
    }
    if name.chars().any(|c| c.is_control() || c == '\\') {
        return bad("no control characters or backslashes");
    }
    if name.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return bad("no empty, `.` or `..` components");
    }
    Ok(())
}

/// Percent-encodes all but RFC 3986's unreserved characters (for one path
/// segment or a `filename*`).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn key(job: JobKey, name: &str) -> Vec<u8> {
    [&job.key()[..], name.as_bytes()].concat()
}

/// The error for an artifact that would take its job past its bytes.
pub fn over_quota(name: &str, job: JobKey) -> Error {
    Error::TooLarge(format!(
        "artifact `{name}`: job {job} would pass its limit of bytes of artifacts (--max-artifact-bytes-per-job)"
    ))
}

impl Artifacts {
    /// The index over `store`; links are signed with `link_key`.
    pub fn new(store: Arc<Store>, ttl: std::time::Duration, link_key: [u8; 32], quota: JobQuota) -> Self {
        Self { store, ttl, link_key, quota, recording: tokio::sync::Mutex::new(()) }
    }

    /// Files and bytes `attempt` of `job` has uploaded, leaving out `name`
    /// (which an upload of that name replaces).
    fn used(&self, job: JobKey, attempt: u32, name: &str) -> Result<(usize, u64)> {
        let (mut files, mut bytes) = (0usize, 0u64);
        for item in self.store.tree(T::Artifacts).scan_prefix(job.key()) {
            let (_, v) = item?;
            let rec: ArtifactRecord = crate::store::decode(T::Artifacts, &v)?;
            if let Some(a) = rec.artifact.filter(|a| a.attempt == attempt && a.name != name) {
                files += 1;
                bytes = bytes.saturating_add(a.size);
            }
        }
        Ok((files, bytes))
    }

    /// Bytes an upload of `name` by `attempt` of `job` may have: what the
    /// job's quota leaves; refused when its files are all used.
    pub fn room(&self, job: JobKey, attempt: u32, name: &str) -> Result<u64> {
        let (files, bytes) = self.used(job, attempt, name)?;
        self.check_quota(job, files, bytes, 0)?;
        Ok(self.quota.bytes - bytes)
    }

    fn check_quota(&self, job: JobKey, files: usize, bytes: u64, adding: u64) -> Result<()> {
        let q = self.quota;
        if files >= q.files {
            return Err(Error::TooLarge(format!(
                "job {job} has uploaded {files} artifacts, its limit (--max-artifacts-per-job)"
            )));
        }
        if bytes.saturating_add(adding) > q.bytes {
            return Err(Error::TooLarge(format!(
                "job {job} would pass its limit of {} bytes of artifacts (--max-artifact-bytes-per-job): {bytes} uploaded, {adding} more",
                q.bytes
            )));
        }
        Ok(())
    }

    fn expires_ms(&self, created_ms: i64) -> i64 {
        created_ms.saturating_add(i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX))
    }

    fn public(&self, rec: ArtifactRecord) -> Artifact {
        let mut a = rec.artifact.unwrap_or_default();
        a.created_at = timestamp(rec.created_ms);
        a.expires_at = timestamp(self.expires_ms(rec.created_ms));
        a
    }

    /// Records `blob` as artifact `name` of attempt `attempt` of `job`.
    pub async fn record(
        &self,
        job: JobKey,
        job_name: &str,
        attempt: u32,
        name: &str,
        mode: u32,
        blob: &Blob,
    ) -> Result<Artifact> {
        check_name(name)?;
        // The quota check and the write under the lock; the fsync after it.
        let recording = self.recording.lock().await;
        let (files, bytes) = self.used(job, attempt, name)?;
        self.check_quota(job, files, bytes, blob.size)?;
        let k = key(job, name);
        if let Some(old) = self.store.get::<ArtifactRecord>(T::Artifacts, &k)?
            && old.artifact.as_ref().is_some_and(|a| a.attempt > attempt)
        {
            return Err(Error::precondition(format!("a later attempt of job {job} already uploaded `{name}`")));
        }
        let rec = ArtifactRecord {
            schema: SCHEMA_VERSION,
            artifact: Some(Artifact {
                run_id: job.run.to_string(),
                job_id: job.to_string(),
                job_name: job_name.to_string(),
                attempt,
                name: name.to_string(),
                size: blob.size,
                digest: blob.digest.clone(),
                mode: mode & 0o777,
                created_at: None,
                expires_at: None,
            }),
            created_ms: now_ms(),
        };
        let mut ws = WriteSet::default();
        ws.put(T::Artifacts, &k, &rec);
        self.store.commit(&ws)?;
        let ticket = self.store.ticket();
        drop(recording);
        self.store.wait_durable(ticket).await;
        Ok(self.public(rec))
    }

    /// The artifacts of `run` (of one job when given), by job then name.
    pub fn list(&self, run: RunId, job: Option<JobKey>) -> Result<Vec<Artifact>> {
        let prefix = match job {
            Some(j) => j.key().to_vec(),
            None => run.key().to_vec(),
        };
        let mut out = Vec::new();
        for item in self.store.tree(T::Artifacts).scan_prefix(prefix) {
            let (_, v) = item?;
            out.push(self.public(crate::store::decode(T::Artifacts, &v)?));
        }
        Ok(out)
    }

    /// One artifact: by job and name, or by name alone when exactly one job
    /// of the run has it.
    pub fn find(&self, run: RunId, job: Option<JobKey>, name: &str) -> Result<Artifact> {
        let matches: Vec<Artifact> = self.list(run, job)?.into_iter().filter(|a| a.name == name).collect();
        match matches.len() {
            1 => Ok(matches.into_iter().next().unwrap_or_default()),
            0 => Err(Error::not_found(format!("run {} has no artifact `{name}`", run.0))),
            _ => {
                let jobs: Vec<String> = matches.iter().map(|a| format!("{} ({})", a.job_id, a.job_name)).collect();
                Err(Error::invalid(format!("several jobs have `{name}`: name one of {}", jobs.join(", "))))
            }
        }
    }

    fn mac(&self, job_id: &str, name: &str, expires: i64) -> HmacSha256 {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.link_key).expect("HMAC takes any key length");
        mac.update(format!("{job_id}\0{name}\0{expires}").as_bytes());
        mac
    }

    /// A signature for downloading `name` of `job_id` until `expires`
    /// (unix seconds).
    pub fn sign(&self, job_id: &str, name: &str, expires: i64) -> String {
        hex::encode(self.mac(job_id, name, expires).finalize().into_bytes())
    }

    /// Whether `sig` is a valid, unexpired signature (constant time).
    pub fn verify(&self, job_id: &str, name: &str, expires: i64, sig: &str) -> bool {
        let Ok(sig) = hex::decode(sig) else { return false };
        expires * 1000 >= now_ms() && self.mac(job_id, name, expires).verify_slice(&sig).is_ok()
    }

    /// Deletes artifacts older than the TTL; returns how many.
    pub async fn expire(&self) -> Result<u64> {
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms().saturating_sub(ttl_ms);
        let mut ws = WriteSet::default();
        let mut n = 0;
        for item in self.store.tree(T::Artifacts).iter() {
            let (k, v) = item?;
            let rec: ArtifactRecord = crate::store::decode(T::Artifacts, &v)?;
            if rec.created_ms < cutoff {
                ws.delete(T::Artifacts, k);
                n += 1;
            }
        }
        if n > 0 {
            self.store.commit_durable(&ws).await?;
            tracing::info!(expired = n, "artifacts expired");
        }
        Ok(n)
    }

    /// Digests of every artifact (for the blob sweep).
    pub fn digests(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for item in self.store.tree(T::Artifacts).iter() {
            let (_, v) = item?;
            let rec: ArtifactRecord = crate::store::decode(T::Artifacts, &v)?;
            out.extend(rec.artifact.map(|a| a.digest));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["app", "target/release/app", "reports/junit.xml", "a b/c"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/etc/passwd", "../x", "a/../b", "a//b", "./a", "a/", "a\\b", "a\nb"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
