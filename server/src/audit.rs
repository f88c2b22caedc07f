//! The audit log: every privileged action — who, what, on what, when, from
//! where, and how it ended.
//!
//! The API layer (`api::gate`) writes one entry per call of a method that
//! changes something (any method needing `trigger` or more, token and user
//! changes, runner registration), allowed or refused; git pushes are
//! written by the smart HTTP route. Entries are numbered in order and kept
//! up to [`MAX_ENTRIES`] (older ones are dropped as new ones arrive).
//! Reading needs the global `admin` role (`Audit.List`, `viaduct audit`).

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use viaduct_proto::v1::AuditEntry;

use crate::{
    convert,
    error::Result,
    store::{
        Store, T, WriteSet, decode, now_ms,
        records::{AuditRecord, SCHEMA_VERSION},
    },
};

/// Entries kept (about 200 bytes each).
pub const MAX_ENTRIES: u64 = 200_000;

/// What one entry says (the log adds the id and time).
#[derive(Debug, Clone, Default)]
pub struct Action {
    /// Who: a user, a service token's name, `runner <id>`, or
    /// `unauthenticated`.
    pub actor: String,
    /// The token's public id.
    pub token_id: String,
    /// The RPC or route.
    pub action: String,
    /// On what (a run, a repository, a secret's name…).
    pub target: String,
    /// The peer's address.
    pub peer: String,
    /// `ok` or the failure's code.
    pub outcome: String,
}

/// The `audit` tree.
pub struct AuditLog {
    store: Arc<Store>,
    next: AtomicU64,
}

impl AuditLog {
    /// The log in `store`, continuing its numbering.
    pub fn open(store: Arc<Store>) -> Result<Self> {
        let last = match store.tree(T::Audit).last()? {
            Some((k, _)) => k.as_slice().try_into().map(u64::from_be_bytes).unwrap_or(0),
            None => 0,
        };
        Ok(Self { store, next: AtomicU64::new(last + 1) })
    }

    /// Appends an entry (not waiting for disk: an entry can be lost only
    /// with the last ~half second before a crash, like the store's other
    /// non-durable writes).
    pub fn record(&self, a: Action) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let time_ms = now_ms();
        tracing::info!(
            target: "viaduct::audit",
            id, actor = %a.actor, action = %a.action, target = %a.target, peer = %a.peer, outcome = %a.outcome,
            "audit"
        );
        let entry = AuditEntry {
            id,
            time: convert::timestamp(time_ms),
            actor: a.actor,
            token_id: a.token_id,
            action: a.action,
            target: a.target,
            peer: a.peer,
            outcome: a.outcome,
        };
        let mut ws = WriteSet::default();
        ws.put(T::Audit, id.to_be_bytes(), &AuditRecord { schema: SCHEMA_VERSION, entry: Some(entry), time_ms });
        // Every thousandth entry trims the oldest beyond the limit.
        if id.is_multiple_of(1000) && id > MAX_ENTRIES {
            let tree = self.store.tree(T::Audit);
            for (k, _) in tree.range(..(id - MAX_ENTRIES).to_be_bytes()).flatten() {
                ws.delete(T::Audit, k);
            }
        }
        if let Err(e) = self.store.commit(&ws) {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }

    /// Entries, newest first: at most `limit` (1..=1000, default 100), older
    /// than `before` (0: from the newest), of `actor` (empty: anyone).
    pub fn list(&self, limit: u32, before: u64, actor: &str) -> Result<Vec<AuditEntry>> {
        let limit = match limit {
            0 => 100,
            n => n.min(1000),
        } as usize;
        let hi = if before == 0 { u64::MAX } else { before };
        let mut out = Vec::new();
        for kv in self.store.tree(T::Audit).range(..hi.to_be_bytes()).rev() {
            let (_, v) = kv?;
            let rec: AuditRecord = decode(T::Audit, &v)?;
            let Some(e) = rec.entry else { continue };
            if actor.is_empty() || e.actor == actor {
                out.push(e);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}
