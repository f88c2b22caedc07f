//! People: the `users` tree.
//!
//! A user is local (made by an admin with `Users.Create`) or comes from
//! single sign-on (made or refreshed at each login, their groups
//! recorded). What a user may do is their own grants plus the grants the
//! server's group mapping (`--oidc-group-role GROUP=ROLE[:REPO]`) gives
//! their groups — computed at every check, so a changed mapping or a
//! removed user takes effect at once, for their tokens too.

use std::sync::Arc;

use viaduct_proto::v1::{Grant, User};

use crate::{
    access::{Grants, parse_role},
    convert,
    error::{Error, Result},
    store::{
        Store, T, WriteSet, decode, now_ms,
        records::{SCHEMA_VERSION, UserRecord},
    },
};

/// Where a user comes from.
pub const LOCAL: &str = "local";
/// From single sign-on.
pub const OIDC: &str = "oidc";

/// Group → grant, from the server's configuration.
#[derive(Debug, Clone, Default)]
pub struct GroupRoles(pub Vec<(String, Grant)>);

impl GroupRoles {
    /// Parses `GROUP=ROLE` or `GROUP=ROLE:REPO`.
    pub fn parse_one(text: &str) -> Result<(String, Grant)> {
        let (group, rest) = text
            .split_once('=')
            .ok_or_else(|| Error::invalid(format!("`{text}`: expected GROUP=ROLE or GROUP=ROLE:REPO")))?;
        let (role, repo) = rest.split_once(':').unwrap_or((rest, ""));
        let grant = Grant { role: parse_role(role)? as i32, repo: repo.to_string() };
        Grants::check(std::slice::from_ref(&grant))?;
        if group.is_empty() {
            return Err(Error::invalid(format!("`{text}`: the group is empty")));
        }
        Ok((group.to_string(), grant))
    }

    /// The grants of `groups`.
    pub fn grants_of(&self, groups: &[String]) -> Vec<Grant> {
        self.0.iter().filter(|(g, _)| groups.contains(g)).map(|(_, grant)| grant.clone()).collect()
    }
}

/// The `users` tree.
pub struct Users {
    store: Arc<Store>,
    groups: GroupRoles,
}

/// Checks a login name.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!("`{}` is not a user name (letters, digits, . - _ @)", name.escape_debug())))
    }
}

impl Users {
    /// Users in `store`, with the group mapping of single sign-on.
    pub fn new(store: Arc<Store>, groups: GroupRoles) -> Self {
        Self { store, groups }
    }

    /// A user's record.
    pub fn record(&self, name: &str) -> Result<Option<UserRecord>> {
        self.store.get(T::Users, name.as_bytes())
    }

    /// What `user` may do now: their grants and their groups'.
    pub fn grants(&self, user: &UserRecord) -> Grants {
        let mut all = user.grants.clone();
        all.extend(self.groups.grants_of(&user.groups));
        Grants(all)
    }

    /// A user as the API shows it.
    pub fn to_proto(&self, name: &str, r: &UserRecord) -> User {
        User {
            name: name.to_string(),
            display_name: r.display_name.clone(),
            grants: r.grants.clone(),
            source: r.source.clone(),
            created_at: convert::timestamp(r.created_ms),
            groups: r.groups.clone(),
        }
    }

    /// Creates a local user.
    pub async fn create(&self, u: &User) -> Result<UserRecord> {
        check_name(&u.name)?;
        Grants::check(&u.grants)?;
        if self.record(&u.name)?.is_some() {
            return Err(Error::AlreadyExists(format!("user `{}` exists", u.name)));
        }
        let rec = UserRecord {
            schema: SCHEMA_VERSION,
            display_name: bounded(&u.display_name)?,
            grants: u.grants.clone(),
            source: LOCAL.into(),
            created_ms: now_ms(),
            groups: Vec::new(),
        };
        self.put(&u.name, &rec).await?;
        Ok(rec)
    }

    /// Replaces a user's grants and display name.
    pub async fn update(&self, u: &User) -> Result<UserRecord> {
        Grants::check(&u.grants)?;
        let mut rec = self.record(&u.name)?.ok_or_else(|| Error::not_found(format!("no user `{}`", u.name)))?;
        rec.grants = u.grants.clone();
        if !u.display_name.is_empty() {
            rec.display_name = bounded(&u.display_name)?;
        }
        self.put(&u.name, &rec).await?;
        Ok(rec)
    }

    /// Makes or refreshes a user from a single sign-on login.
    /// A local user of the same name is never taken over.
    pub async fn sign_in(&self, name: &str, display_name: &str, groups: Vec<String>) -> Result<UserRecord> {
        check_name(name)?;
        let existing = self.record(name)?;
        if existing.as_ref().is_some_and(|r| r.source != OIDC) {
            return Err(Error::PermissionDenied(format!(
                "`{name}` is a local user: single sign-on cannot sign in as them"
            )));
        }
        let mut rec = existing.unwrap_or_else(|| UserRecord {
            schema: SCHEMA_VERSION,
            source: OIDC.into(),
            created_ms: now_ms(),
            ..Default::default()
        });
        rec.display_name = display_name.chars().filter(|c| !c.is_control()).take(200).collect();
        rec.groups = groups.into_iter().take(200).map(|g| g.chars().take(200).collect()).collect();
        self.put(name, &rec).await?;
        Ok(rec)
    }

    /// Removes a user (their tokens stop working: the caller wakes open
    /// streams).
    pub async fn delete(&self, name: &str) -> Result<()> {
        if self.record(name)?.is_none() {
            return Err(Error::not_found(format!("no user `{name}`")));
        }
        let mut ws = WriteSet::default();
        ws.delete(T::Users, name.as_bytes());
        self.store.commit_durable(&ws).await
    }

    /// Every user.
    pub fn list(&self) -> Result<Vec<(String, UserRecord)>> {
        let mut out = Vec::new();
        for kv in self.store.tree(T::Users).iter() {
            let (k, v) = kv?;
            out.push((String::from_utf8_lossy(&k).into_owned(), decode(T::Users, &v)?));
        }
        Ok(out)
    }

    async fn put(&self, name: &str, rec: &UserRecord) -> Result<()> {
        let mut ws = WriteSet::default();
        ws.put(T::Users, name.as_bytes(), rec);
        self.store.commit_durable(&ws).await
    }
}

fn bounded(display: &str) -> Result<String> {
    if display.len() > 200 || display.chars().any(char::is_control) {
        return Err(Error::invalid("a display name has at most 200 printable characters"));
    }
    Ok(display.to_string())
}
