//! Build caches: immutable entries by key, scoped to a repository (or a
//! pipeline, for runs without one) and a branch.
//!
//! The runner saves and restores entries on behalf of a job attempt it
//! holds; the server derives the scope and branch from that job, so a job
//! can neither read another repository's caches nor write to another
//! branch. A restore tries, in order: the exact key on each branch it may
//! read, then each prefix on each of them (newest entry first) — GitHub's
//! rule. A push reads its branch, then the default branch. A pull request
//! writes only under `pr/<number>` — never under a branch name, whatever
//! its head branch is called (a fork's branch named `main` is not `main`)
//! — and reads `pr/<number>`, then its base branch, then the default
//! branch: it starts warm without being able to poison anyone's cache.
//!
//! Retention ([`Caches::enforce`]): entries unused for the TTL expire; a
//! scope (repository) past its own quota loses its least recently used
//! entries; past the total limit, the least recently used entries of the
//! scope holding the most go first — so one repository filling the cache
//! evicts its own entries, not everyone else's. The blobs they named are
//! removed by the blob sweep.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use viaduct_proto::v1::{CacheEntry, CacheKind, CacheStats};

use crate::{
    blobs::Blob,
    convert::timestamp,
    error::{Error, Result},
    store::{
        Store, T, WriteSet,
        keys::JobKey,
        now_ms,
        records::{CacheRecord, JobRecord, RepoRecord, RunRecord, SCHEMA_VERSION},
    },
};

/// Where a job's cache entries live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// Repository name, or `pipeline:<name>`.
    pub scope: String,
    /// Where it saves: the job's branch (or other ref; empty when it has
    /// none), `pr/<number>` for pull requests.
    pub branch: String,
    /// Where it restores from, in order (starting with `branch`).
    pub reads: Vec<String>,
}

/// Retention settings.
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    /// Total stored bytes before least recently used entries are evicted.
    pub max_bytes: u64,
    /// Stored bytes of one scope (repository, or pipeline without one)
    /// before its own least recently used entries are evicted.
    pub max_scope_bytes: u64,
    /// Largest single entry.
    pub max_entry_bytes: u64,
    /// Entries unused this long expire.
    pub ttl: std::time::Duration,
}

/// What retention needs of an entry.
#[derive(Debug, Clone, Copy)]
struct Held<'a> {
    scope: &'a str,
    size: u64,
    last_used_ms: i64,
}

/// Which entries of `all` (least recently used first) retention removes:
/// those unused since `cutoff`; then, in each scope over its quota, its
/// least recently used until it fits; then, while the total is over the
/// limit, the least recently used entry of the scope holding the most.
fn evictions(all: &[Held<'_>], limits: &CacheLimits, cutoff: i64) -> Vec<usize> {
    use std::collections::{BTreeMap, VecDeque};
    let mut gone = vec![false; all.len()];
    let mut by_scope: BTreeMap<&str, (u64, VecDeque<usize>)> = BTreeMap::new();
    for (i, h) in all.iter().enumerate() {
        if h.last_used_ms < cutoff {
            gone[i] = true;
            continue;
        }
        let s = by_scope.entry(h.scope).or_default();
        s.0 += h.size;
        s.1.push_back(i);
    }
    for (held, queue) in by_scope.values_mut() {
        while *held > limits.max_scope_bytes {
            let Some(i) = queue.pop_front() else { break };
            gone[i] = true;
            *held -= all[i].size;
        }
    }
    let mut total: u64 = by_scope.values().map(|(held, _)| *held).sum();
    while total > limits.max_bytes {
        let Some((held, queue)) = by_scope.values_mut().filter(|(_, q)| !q.is_empty()).max_by_key(|(held, _)| *held)
        else {
            break;
        };
        let Some(i) = queue.pop_front() else { break };
        gone[i] = true;
        *held -= all[i].size;
        total -= all[i].size;
    }
    (0..all.len()).filter(|i| gone[*i]).collect()
}

/// The cache index over the `caches` tree.
pub struct Caches {
    store: Arc<Store>,
    limits: CacheLimits,
    hits: AtomicU64,
    partial_hits: AtomicU64,
    misses: AtomicU64,
    evicted: AtomicU64,
    /// Total stored bytes, kept up to date by saves and [`Caches::enforce`].
    bytes: AtomicU64,
}

/// A restore's result.
#[derive(Debug, Clone)]
pub struct Found {
    /// The entry.
    pub record: CacheRecord,
    /// Whether the exact key matched.
    pub exact: bool,
}

/// Largest `blob`-kind entry.
const MAX_BLOB_ENTRY: u64 = 16 * 1024 * 1024;

fn kind_byte(kind: CacheKind) -> Result<u8> {
    match kind {
        CacheKind::Tree => Ok(b't'),
        CacheKind::Blob => Ok(b'b'),
        CacheKind::Unspecified => Err(Error::invalid("cache kind must be tree or blob")),
    }
}

fn kind_name(kind: CacheKind) -> &'static str {
    match kind {
        CacheKind::Blob => "blob",
        _ => "tree",
    }
}

/// `scope \0 branch \0 kind key`.
fn key(scope: &str, branch: &str, kind: u8, k: &str) -> Vec<u8> {
    [scope.as_bytes(), b"\0", branch.as_bytes(), b"\0", &[kind], k.as_bytes()].concat()
}

/// The store key of an entry.
fn entry_key(e: &CacheEntry) -> Vec<u8> {
    let kind = if e.kind == "blob" { b'b' } else { b't' };
    key(&e.scope, &e.branch, kind, &e.key)
}

/// Checks a cache key: 1–512 bytes, no control characters.
pub fn check_key(k: &str) -> Result<()> {
    if k.is_empty() || k.len() > 512 || k.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "`{}` is not a cache key (1–512 bytes, no control characters)",
            k.escape_debug()
        )));
    }
    Ok(())
}

impl Caches {
    /// The index over `store`.
    pub fn new(store: Arc<Store>, limits: CacheLimits) -> Self {
        let caches = Self {
            store,
            limits,
            hits: AtomicU64::new(0),
            partial_hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        };
        let total =
            caches.list("", "").map_or(0, |all| all.iter().filter_map(|r| r.entry.as_ref()).map(|e| e.size).sum());
        caches.bytes.store(total, Ordering::Relaxed);
        caches
    }

    /// Whether the stored total is past the size limit.
    pub fn over_limit(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) > self.limits.max_bytes
    }

    /// The limits in force.
    pub fn limits(&self) -> CacheLimits {
        self.limits
    }

    /// The largest entry of `kind` an upload may bring: a `blob` entry (one
    /// file a plugin keeps) at most 16 MiB, a `tree` the configured maximum.
    pub fn entry_limit(&self, kind: CacheKind) -> u64 {
        if kind == CacheKind::Blob {
            MAX_BLOB_ENTRY.min(self.limits.max_entry_bytes)
        } else {
            self.limits.max_entry_bytes
        }
    }

    /// The scope of the caches of job `key` (its record is `job`).
    pub fn scope_of(&self, key: JobKey, job: &JobRecord) -> Result<Scope> {
        let run: Option<RunRecord> = self.store.get(T::Runs, key.run.key())?;
        let run_source = run.and_then(|r| r.source).unwrap_or_default();
        match job.source.as_ref().filter(|s| !s.repo.is_empty()) {
            Some(src) => {
                let repo: Option<RepoRecord> = self.store.get(T::Repos, src.repo.as_bytes())?;
                let default_branch = repo.map(|r| r.default_branch).filter(|b| !b.is_empty());
                let default_branch = default_branch.unwrap_or_else(|| "main".into());
                let (branch, mut reads) = if run_source.pull_request > 0 {
                    let own = format!("pr/{}", run_source.pull_request);
                    (own.clone(), vec![own, run_source.base_branch.clone()])
                } else {
                    let branch = src.r#ref.strip_prefix("refs/heads/").unwrap_or(&src.r#ref).to_string();
                    (branch.clone(), vec![branch])
                };
                reads.push(default_branch);
                reads.dedup();
                reads.retain(|b| !b.is_empty());
                Ok(Scope { scope: src.repo.clone(), branch, reads })
            }
            None => {
                let branch = job.context.as_ref().map(|c| c.branch.clone()).unwrap_or_default();
                Ok(Scope { scope: format!("pipeline:{}", job.pipeline), reads: vec![branch.clone()], branch })
            }
        }
    }

    /// Finds the entry a restore of `k` (then `prefixes`) gets, and marks
    /// it used. `None` is a miss. Counts hits and misses.
    pub fn lookup(&self, scope: &Scope, kind: CacheKind, k: &str, prefixes: &[String]) -> Result<Option<Found>> {
        check_key(k)?;
        let kb = kind_byte(kind)?;
        let branches = &scope.reads;
        let tree = self.store.tree(T::Caches);
        let mut found = None;
        for b in branches {
            if let Some(v) = tree.get(key(&scope.scope, b, kb, k))? {
                found = Some((crate::store::decode::<CacheRecord>(T::Caches, &v)?, true));
                break;
            }
        }
        'prefixes: for p in prefixes.iter().filter(|p| !p.is_empty()) {
            if found.is_some() {
                break;
            }
            for b in branches {
                let mut newest: Option<CacheRecord> = None;
                for item in tree.scan_prefix(key(&scope.scope, b, kb, p)) {
                    let (_, v) = item?;
                    let rec: CacheRecord = crate::store::decode(T::Caches, &v)?;
                    if newest.as_ref().is_none_or(|n| rec.created_ms > n.created_ms) {
                        newest = Some(rec);
                    }
                }
                if let Some(rec) = newest {
                    found = Some((rec, false));
                    break 'prefixes;
                }
            }
        }
        let Some((mut record, exact)) = found else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        };
        if exact { &self.hits } else { &self.partial_hits }.fetch_add(1, Ordering::Relaxed);
        // Mark it used (best effort: no fsync wait; LRU order is a hint).
        record.last_used_ms = now_ms();
        let entry = record.entry.get_or_insert_default();
        entry.last_used_at = timestamp(record.last_used_ms);
        let mut ws = WriteSet::default();
        ws.put(T::Caches, entry_key(entry), &record);
        self.store.commit(&ws)?;
        Ok(Some(Found { record, exact }))
    }

    /// Records `blob` as the entry `k` of the job's branch, unless one
    /// exists (then `false`: entries are immutable).
    pub async fn save(&self, scope: &Scope, kind: CacheKind, k: &str, blob: &Blob, run_id: &str) -> Result<bool> {
        check_key(k)?;
        let kb = kind_byte(kind)?;
        let sk = key(&scope.scope, &scope.branch, kb, k);
        let now = now_ms();
        let record = CacheRecord {
            schema: SCHEMA_VERSION,
            entry: Some(CacheEntry {
                scope: scope.scope.clone(),
                branch: scope.branch.clone(),
                key: k.to_string(),
                size: blob.size,
                kind: kind_name(kind).into(),
                created_at: timestamp(now),
                last_used_at: timestamp(now),
                run_id: run_id.to_string(),
            }),
            digest: blob.digest.clone(),
            last_used_ms: now,
            created_ms: now,
        };
        let stored = self.store.insert_if_absent(T::Caches, &sk, &prost::Message::encode_to_vec(&record))?;
        if stored {
            self.store.wait_durable(self.store.ticket()).await;
            self.bytes.fetch_add(blob.size, Ordering::Relaxed);
        }
        Ok(stored)
    }

    /// Every entry (of `scope`, with keys starting with `key_prefix`).
    pub fn list(&self, scope: &str, key_prefix: &str) -> Result<Vec<CacheRecord>> {
        let prefix = if scope.is_empty() { Vec::new() } else { [scope.as_bytes(), b"\0"].concat() };
        let mut out = Vec::new();
        for item in self.store.tree(T::Caches).scan_prefix(prefix) {
            let (_, v) = item?;
            let rec: CacheRecord = crate::store::decode(T::Caches, &v)?;
            if rec.entry.as_ref().is_some_and(|e| e.key.starts_with(key_prefix)) {
                out.push(rec);
            }
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.last_used_ms));
        Ok(out)
    }

    /// Deletes the entries of `scope` (on `branch`, or every branch when
    /// empty) whose key starts with `key_prefix`.
    pub async fn delete(&self, scope: &str, branch: &str, key_prefix: &str) -> Result<u32> {
        if scope.is_empty() {
            return Err(Error::invalid("which scope (repository or pipeline:NAME)?"));
        }
        let mut ws = WriteSet::default();
        let mut n = 0;
        for rec in self.list(scope, key_prefix)? {
            let Some(e) = rec.entry.as_ref() else { continue };
            if !branch.is_empty() && e.branch != branch {
                continue;
            }
            ws.delete(T::Caches, entry_key(e));
            n += 1;
        }
        self.store.commit_durable(&ws).await?;
        Ok(n)
    }

    /// Whether `scope` holds more than its quota.
    pub fn scope_over_limit(&self, scope: &str) -> Result<bool> {
        let held: u64 = self.list(scope, "")?.iter().filter_map(|r| r.entry.as_ref()).map(|e| e.size).sum();
        Ok(held > self.limits.max_scope_bytes)
    }

    /// Applies retention (see the module docs). Returns how many entries
    /// were removed.
    pub async fn enforce(&self) -> Result<u64> {
        let mut all = self.list("", "")?;
        // Oldest use first.
        all.reverse();
        let ttl_ms = i64::try_from(self.limits.ttl.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms().saturating_sub(ttl_ms);
        let held: Vec<Held<'_>> = all
            .iter()
            .map(|r| {
                let e = r.entry.as_ref();
                Held {
                    scope: e.map_or("", |e| e.scope.as_str()),
                    size: e.map_or(0, |e| e.size),
                    last_used_ms: r.last_used_ms,
                }
            })
            .collect();
        let doomed = evictions(&held, &self.limits, cutoff);
        let mut total: u64 = held.iter().map(|h| h.size).sum();
        let mut ws = WriteSet::default();
        let mut removed = 0;
        for i in doomed {
            let Some(e) = all[i].entry.as_ref() else { continue };
            ws.delete(T::Caches, entry_key(e));
            total = total.saturating_sub(e.size);
            removed += 1;
        }
        self.bytes.store(total, Ordering::Relaxed);
        if removed > 0 {
            self.store.commit_durable(&ws).await?;
            self.evicted.fetch_add(removed, Ordering::Relaxed);
            tracing::info!(removed, remaining_bytes = total, "cache entries expired or evicted");
        }
        Ok(removed)
    }

    /// Digests of every entry (for the blob sweep).
    pub fn digests(&self) -> Result<Vec<String>> {
        Ok(self.list("", "")?.into_iter().map(|r| r.digest).collect())
    }

    /// Restores that hit (exactly or by prefix) of all restores since the
    /// server started, 0–1.
    pub fn hit_rate(&self) -> f64 {
        let hits = self.hits.load(Ordering::Relaxed) + self.partial_hits.load(Ordering::Relaxed);
        let all = hits + self.misses.load(Ordering::Relaxed);
        if all == 0 { 0.0 } else { hits as f64 / all as f64 }
    }

    /// Totals and counters.
    pub fn stats(&self) -> Result<CacheStats> {
        let all = self.list("", "")?;
        Ok(CacheStats {
            entries: all.len() as u64,
            bytes: all.iter().filter_map(|r| r.entry.as_ref()).map(|e| e.size).sum(),
            max_bytes: self.limits.max_bytes,
            hits: self.hits.load(Ordering::Relaxed),
            partial_hits: self.partial_hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_bytes: u64, max_scope_bytes: u64) -> CacheLimits {
        CacheLimits { max_bytes, max_scope_bytes, max_entry_bytes: u64::MAX, ttl: std::time::Duration::ZERO }
    }

    fn held(scope: &str, size: u64, last_used_ms: i64) -> Held<'_> {
        Held { scope, size, last_used_ms }
    }

    #[test]
    fn a_repository_filling_the_cache_evicts_its_own_entries_first() {
        // Least recently used first: `app`'s two old entries, then `noisy`
        // saving a lot, then `app` once more.
        let all = [
            held("app", 10, 1),
            held("app", 10, 2),
            held("noisy", 40, 3),
            held("noisy", 40, 4),
            held("noisy", 40, 5),
            held("app", 10, 6),
        ];
        // Within the quota and the total: nothing goes.
        assert!(evictions(&all, &limits(1000, 1000), 0).is_empty());
        // `noisy` over its quota of 80: its oldest goes, nobody else's.
        assert_eq!(evictions(&all, &limits(1000, 80), 0), vec![2]);
        // Over the total of 100 (150 held): the scope holding the most pays.
        assert_eq!(evictions(&all, &limits(100, 1000), 0), vec![2, 3]);
        // Unused since the cutoff: gone whatever the sizes.
        assert_eq!(evictions(&all, &limits(1000, 1000), 3), vec![0, 1]);
    }
}
