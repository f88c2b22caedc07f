//! A repository's environments (deployment targets), their deployment
//! history and the services deployments registered, as stored: what the
//! `Environments`, `Deployments` and `Services` APIs read and write outside
//! the engine. The engine's gates (`engine::deployments`) read the same
//! environment records when a job that deploys is ready.

use std::collections::HashMap;

use viaduct_proto::v1::{DeploymentState, EnvironmentRules};

use crate::{
    engine::deployments::{environment_key, environment_prefix, id_of_index_key, is_final},
    error::{Error, Result},
    store::{
        Store, T, WriteSet,
        records::{DeployedServiceRecord, DeploymentRecord, EnvironmentRecord, SCHEMA_VERSION, ServiceHealthRecord},
    },
};

/// Most variables of an environment.
pub const MAX_VARIABLES: usize = 100;
/// Most bytes of an environment's variables (names and values).
pub const MAX_VARIABLE_BYTES: usize = 64 * 1024;
/// Most environments of a repository.
pub const MAX_ENVIRONMENTS: usize = 100;

/// What `Environments.Put` asks for.
#[derive(Debug, Clone, Default)]
pub struct EnvironmentSpec {
    /// Protection rules.
    pub rules: EnvironmentRules,
    /// Variables given to deploying jobs.
    pub variables: HashMap<String, String>,
    /// Shown with it.
    pub url: String,
    /// Shown with it.
    pub description: String,
}

/// Why `name` cannot be an environment variable set by an environment.
fn variable_problem(name: &str) -> Option<&'static str> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Some("expected a variable name ([A-Za-z_][A-Za-z0-9_]*)")
    } else if name.to_ascii_uppercase().starts_with("VIADUCT") || name == "CI" {
        Some("`VIADUCT*` and `CI` are the server's")
    } else {
        None
    }
}

/// Creates or replaces environment `name` of `repo`.
pub async fn put(store: &Store, repo: &str, name: &str, spec: EnvironmentSpec, now: i64) -> Result<EnvironmentRecord> {
    if !store.tree(T::Repos).contains_key(repo)? {
        return Err(Error::not_found(format!("repository `{repo}` not found")));
    }
    if let Some(why) = viaduct_pipeline::plan::environment_name_problem(name) {
        return Err(Error::invalid(format!("environment `{}`: {why}", name.escape_debug())));
    }
    crate::trust::check_rules(&spec.rules)?;
    if spec.variables.len() > MAX_VARIABLES {
        return Err(Error::invalid(format!("{} variables; the limit is {MAX_VARIABLES}", spec.variables.len())));
    }
    let bytes: usize = spec.variables.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_VARIABLE_BYTES {
        return Err(Error::invalid(format!("variables of {bytes} bytes; the limit is {MAX_VARIABLE_BYTES}")));
    }
    for (k, v) in &spec.variables {
        if let Some(why) = variable_problem(k) {
            return Err(Error::invalid(format!("variable `{}`: {why}", k.escape_debug())));
        }
        if v.contains('\0') {
            return Err(Error::invalid(format!("variable `{k}`: a value cannot hold a NUL byte")));
        }
    }
    for (what, text) in [("url", &spec.url), ("description", &spec.description)] {
        if text.len() > 2048 || text.chars().any(char::is_control) {
            return Err(Error::invalid(format!("{what}: at most 2048 characters, no control characters")));
        }
    }
    let key = environment_key(repo, name);
    let old: Option<EnvironmentRecord> = store.get(T::Environments, &key)?;
    if old.is_none() && list(store, repo)?.len() >= MAX_ENVIRONMENTS {
        return Err(Error::invalid(format!("repository `{repo}` has {MAX_ENVIRONMENTS} environments, the limit")));
    }
    let rec = EnvironmentRecord {
        schema: SCHEMA_VERSION,
        rules: Some(spec.rules),
        variables: spec.variables,
        url: spec.url,
        description: spec.description,
        created_ms: old.as_ref().map_or(now, |o| o.created_ms),
        updated_ms: now,
    };
    let mut ws = WriteSet::default();
    ws.put(T::Environments, &key, &rec);
    store.commit_durable(&ws).await?;
    tracing::info!(repo, environment = name, "environment saved");
    Ok(rec)
}

/// One environment.
pub fn get(store: &Store, repo: &str, name: &str) -> Result<EnvironmentRecord> {
    store
        .get(T::Environments, environment_key(repo, name))?
        .ok_or_else(|| Error::not_found(format!("environment `{name}` of repository `{repo}` not found")))
}

/// A repository's environments, by name.
pub fn list(store: &Store, repo: &str) -> Result<Vec<(String, EnvironmentRecord)>> {
    let mut prefix = repo.as_bytes().to_vec();
    prefix.push(0);
    let mut out = Vec::new();
    for item in store.tree(T::Environments).scan_prefix(&prefix) {
        let (k, v) = item?;
        let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        out.push((name, crate::store::decode(T::Environments, &v)?));
    }
    Ok(out)
}

/// A deployment record.
pub fn deployment(store: &Store, id: u64) -> Result<DeploymentRecord> {
    store.get(T::Deployments, id.to_be_bytes())?.ok_or_else(|| Error::not_found(format!("deployment {id} not found")))
}

/// Deployments of `repo` (of one environment, or all), newest first, at
/// most `limit` per environment walked.
pub fn deployments(store: &Store, repo: &str, env: Option<&str>, limit: usize) -> Result<Vec<(u64, DeploymentRecord)>> {
    let prefix = match env {
        Some(env) => environment_prefix(repo, env),
        None => {
            let mut p = repo.as_bytes().to_vec();
            p.push(0);
            p
        }
    };
    let mut ids = Vec::new();
    for item in store.tree(T::DeploymentIndex).scan_prefix(&prefix) {
        let (k, _) = item?;
        ids.push(id_of_index_key(&k));
    }
    // Ids grow with time across environments.
    ids.sort_unstable_by(|a, b| b.cmp(a));
    ids.truncate(limit);
    ids.into_iter().map(|id| Ok((id, deployment(store, id)?))).collect()
}

/// The unfinished deployments of an environment, oldest first.
pub fn open(store: &Store, repo: &str, env: &str) -> Result<Vec<(u64, DeploymentRecord)>> {
    let mut out = Vec::new();
    for item in store.tree(T::DeploymentIndex).scan_prefix(environment_prefix(repo, env)) {
        let (k, v) = item?;
        if v.is_empty() {
            continue;
        }
        let id = id_of_index_key(&k);
        let d = deployment(store, id)?;
        if !is_final(d.state) {
            out.push((id, d));
        }
    }
    Ok(out)
}

/// The newest successful deployments of an environment, newest first (at
/// most `n`).
pub fn successes(store: &Store, repo: &str, env: &str, n: usize) -> Result<Vec<(u64, DeploymentRecord)>> {
    let mut out = Vec::new();
    for item in store.tree(T::DeploymentIndex).scan_prefix(environment_prefix(repo, env)).rev() {
        let (k, _) = item?;
        let id = id_of_index_key(&k);
        let d = deployment(store, id)?;
        if d.state == DeploymentState::Success as i32 {
            out.push((id, d));
            if out.len() >= n {
                break;
            }
        }
    }
    Ok(out)
}

/// A registered service and what the prober knows of its health, with
/// its environment's name.
pub type ServiceEntry = (String, DeployedServiceRecord, Option<ServiceHealthRecord>);

/// The services of `repo` (of one environment, or all).
pub fn services(store: &Store, repo: &str, env: Option<&str>) -> Result<Vec<ServiceEntry>> {
    let prefix = match env {
        Some(env) => environment_prefix(repo, env),
        None => {
            let mut p = repo.as_bytes().to_vec();
            p.push(0);
            p
        }
    };
    let mut out = Vec::new();
    for item in store.tree(T::DeployedServices).scan_prefix(&prefix) {
        let (k, v) = item?;
        let env = k[repo.len() + 1..].split(|b| *b == 0).next().unwrap_or_default();
        let rec: DeployedServiceRecord = crate::store::decode(T::DeployedServices, &v)?;
        let health = store.get(T::ServiceHealth, &k)?;
        out.push((String::from_utf8_lossy(env).into_owned(), rec, health));
    }
    Ok(out)
}

/// The key of a deployed service.
pub fn service_key(repo: &str, env: &str, name: &str) -> Vec<u8> {
    let mut k = environment_prefix(repo, env);
    k.extend_from_slice(name.as_bytes());
    k
}

/// Forgets a service (its registration and health).
pub async fn delete_service(store: &Store, repo: &str, env: &str, name: &str) -> Result<()> {
    let key = service_key(repo, env, name);
    if !store.tree(T::DeployedServices).contains_key(&key)? {
        return Err(Error::not_found(format!("service `{name}` of `{env}` in `{repo}` not found")));
    }
    let mut ws = WriteSet::default();
    ws.delete(T::DeployedServices, &key);
    ws.delete(T::ServiceHealth, &key);
    store.commit_durable(&ws).await
}
