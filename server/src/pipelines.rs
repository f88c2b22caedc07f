//! Stored pipelines: pipeline files kept by the server under a name, run
//! with `Runs.Trigger` or on their `on: schedule`. The API's Pipelines
//! service and the scheduler both read them here.

use crate::{
    error::{Error, Result},
    launch::MAX_PIPELINE_BYTES,
    launch::resolve,
    plugins::PluginRegistry,
    store::{
        Store, T, WriteSet, decode, now_ms,
        records::{PipelineRecord, SCHEMA_VERSION},
    },
};

/// Refuses a name that is not 1–100 of `A–Z a–z 0–9 - _ .`.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!("invalid pipeline name `{name}`: use 1–100 of A–Z a–z 0–9 - _ .")))
    }
}

/// The stored pipeline `name`.
pub fn load(store: &Store, name: &str) -> Result<PipelineRecord> {
    store.get(T::Pipelines, name.as_bytes())?.ok_or_else(|| Error::not_found(format!("pipeline `{name}` not found")))
}

/// Whether `save` makes a new pipeline or replaces one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Save {
    /// It must not exist yet.
    Create,
    /// It must exist.
    Replace,
}

/// Stores `yaml` as pipeline `name` once it is a valid file (within the
/// size limit, its plugins published), durably, with its retention policy
/// (replacing: the fields set change, `None` keeps the policy it had).
pub async fn save(
    store: &Store,
    plugins: &PluginRegistry,
    name: &str,
    yaml: String,
    retention: Option<viaduct_proto::v1::RetentionPolicy>,
    how: Save,
) -> Result<PipelineRecord> {
    check_name(name)?;
    if yaml.len() > MAX_PIPELINE_BYTES {
        return Err(Error::TooLarge(format!("pipeline file is over {MAX_PIPELINE_BYTES} bytes")));
    }
    if let Some(policy) = &retention {
        crate::retention::check(policy)?;
    }
    let jobs = resolve::check(&format!("{name}.yml"), &yaml, plugins)?;
    let existing: Option<PipelineRecord> = store.get(T::Pipelines, name.as_bytes())?;
    let now = now_ms();
    let rec = match (existing, how) {
        (Some(_), Save::Create) => {
            return Err(Error::AlreadyExists(format!("pipeline `{name}` already exists; use Update")));
        }
        (None, Save::Replace) => return Err(Error::not_found(format!("pipeline `{name}` not found; use Create"))),
        (Some(old), Save::Replace) => {
            let retention = match retention {
                Some(change) => crate::retention::merged(old.retention, change),
                None => old.retention,
            };
            PipelineRecord { yaml, updated_ms: now, jobs, retention, ..old }
        }
        (None, Save::Create) => {
            PipelineRecord { schema: SCHEMA_VERSION, yaml, created_ms: now, updated_ms: now, jobs, retention }
        }
    };
    let mut ws = WriteSet::default();
    ws.put(T::Pipelines, name.as_bytes(), &rec);
    store.commit_durable(&ws).await?;
    Ok(rec)
}

/// A page of stored pipelines: (name, record) in name order, and the name
/// to continue after when there are more.
pub type Page = (Vec<(String, PipelineRecord)>, Option<String>);

/// Up to `limit` pipelines after `after` (exclusive; empty: from the
/// first), by name.
pub fn list(store: &Store, after: &str, limit: usize) -> Result<Page> {
    let mut out: Vec<(String, PipelineRecord)> = Vec::new();
    for kv in store.tree(T::Pipelines).range(after.as_bytes()..) {
        let (k, v) = kv?;
        if k == after.as_bytes() {
            continue;
        }
        if out.len() == limit {
            return Ok((out.clone(), out.last().map(|(n, _)| n.clone())));
        }
        out.push((String::from_utf8_lossy(&k).into_owned(), decode(T::Pipelines, &v)?));
    }
    Ok((out, None))
}

/// Deletes the stored pipeline `name`, durably.
pub async fn delete(store: &Store, name: &str) -> Result<()> {
    load(store, name)?;
    let mut ws = WriteSet::default();
    ws.delete(T::Pipelines, name.as_bytes());
    store.commit_durable(&ws).await
}
