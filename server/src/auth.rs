//! Credentials: people's and services' API tokens, runner registration
//! tokens and runner tokens — and who a request comes from.
//!
//! A token is 32 random bytes in hex behind a prefix that says what it is
//! (`vda_` admin, `vdt_` API, `vdr_` registration, `vdn_` runner), so
//! secret scanners and people can recognise one. Only its blake3 hash is
//! stored; the token itself is shown once (or written to a 0600 file on
//! first start). An API token has a name, grants (see `access`), an
//! optional expiry and owner — a user's token is cut down to what the user
//! has now, and a removed user's tokens stop working. Registration tokens
//! are good for a number of registrations (one by default) and expire.
//! Revoking a token (or removing its user) takes effect at once, also for
//! streams it holds open: [`Auth::revocations`] wakes them to check.

use std::{
    collections::HashMap,
    fs::OpenOptions,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use tonic::Request;
use viaduct_proto::v1::{Grant, Role, Token};

use crate::{
    access::Grants,
    error::{Error, Result},
    store::{
        Store, T, WriteSet, decode, now_ms,
        records::{RunnerRecord, SCHEMA_VERSION, TokenKind, TokenRecord},
    },
    users::Users,
};

/// Who made a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// A person's or a service's API token.
    Person(Caller),
    /// A registered runner.
    Runner(String),
}

/// A person's or service's token, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The user, or the service token's name.
    pub actor: String,
    /// The user it acts for (empty: a service token).
    pub owner: String,
    /// The token's public id.
    pub token_id: String,
    /// The token's hash.
    pub hash: [u8; 32],
    /// What it may do now.
    pub grants: Grants,
}

/// Token checks and issuance over the `tokens` tree.
pub struct Auth {
    store: Arc<Store>,
    /// People, whose grants bound their tokens'.
    users: Arc<Users>,
    /// Runners must present a client certificate (mutual TLS).
    runner_certs: bool,
    /// Last use of each token since the last write-back.
    used: Mutex<HashMap<[u8; 32], i64>>,
    /// Bumped at every revocation: open streams re-check their token.
    revoked: tokio::sync::watch::Sender<u64>,
    /// The first-start admin token's file (rewritten when it is rotated).
    admin_file: Mutex<Option<PathBuf>>,
    /// Registrations one at a time (a token's uses are counted down).
    registering: tokio::sync::Mutex<()>,
}

/// A new random token with `prefix`.
fn generate(prefix: &str) -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
    let mut s = String::with_capacity(prefix.len() + 64);
    s.push_str(prefix);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    Ok(s)
}

fn hash(token: &str) -> [u8; 32] {
    *blake3::hash(token.as_bytes()).as_bytes()
}

/// The public id of a token with `hash`.
fn public_id(hash: &[u8; 32]) -> String {
    format!("tok_{}", &hex::encode(hash)[..16])
}

/// The bearer token of HTTP headers (`Authorization: Bearer` or Basic with
/// the token as the password, as git sends it).
pub fn token_of_headers(headers: &http::HeaderMap) -> Option<String> {
    use base64::Engine as _;
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(t) = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")) {
        return Some(t.trim().to_string());
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(v.strip_prefix("Basic ")?.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(text.split_once(':')?.1.to_string())
}

/// What a new token is.
#[derive(Debug, Clone, Default)]
pub struct NewToken {
    /// Its name.
    pub name: String,
    /// The user it acts for (empty: a service token).
    pub owner: String,
    /// What it may do (API tokens).
    pub grants: Vec<Grant>,
    /// When it stops working (ms); 0: never.
    pub expires_ms: i64,
    /// Registration tokens: how many registrations.
    pub uses: u32,
    /// API or registration.
    pub kind: TokenKind,
    /// Registration tokens: the one job the runner may take (empty: any).
    pub job: String,
}

/// What a runner asks for when it registers.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    /// Shown to admins.
    pub name: String,
    /// Labels jobs select it by.
    pub labels: Vec<String>,
    /// Its machine.
    pub hostname: String,
    /// Takes only jobs of trusted runs.
    pub protected: bool,
    /// Jobs at once.
    pub slots: u32,
    /// Executors it offers.
    pub executors: Vec<viaduct_proto::v1::Executor>,
    /// Takes one job, then is removed.
    pub ephemeral: bool,
}

/// How many runners may register with the first-start registration token,
/// and for how long (a server restarted after either issues a new one).
const FIRST_REGISTRATIONS: u32 = 1000;
const FIRST_REGISTRATION_TTL_MS: i64 = 30 * 24 * 3600 * 1000;

impl Auth {
    /// Token handling over `store`; user tokens are bounded by `users`.
    pub fn new(store: Arc<Store>, users: Arc<Users>) -> Self {
        Self {
            store,
            users,
            runner_certs: false,
            used: Mutex::default(),
            revoked: tokio::sync::watch::Sender::new(0),
            admin_file: Mutex::default(),
            registering: tokio::sync::Mutex::const_new(()),
        }
    }

    /// Requires runners to present a client certificate the server's
    /// client CA signed (checked by TLS; see [`Auth::check_runner_cert`]).
    pub fn with_runner_certs(mut self, required: bool) -> Self {
        self.runner_certs = required;
        self
    }

    /// Refuses a runner request without a verified client certificate
    /// when mutual TLS is required.
    pub fn check_runner_cert<R>(&self, req: &Request<R>) -> Result<()> {
        if self.runner_certs && !crate::tls::has_client_cert(req) {
            return Err(Error::PermissionDenied(
                "this server requires runners to present a client certificate signed by its client CA (mutual TLS): \
                 start the runner with --client-cert and --client-key"
                    .into(),
            ));
        }
        Ok(())
    }

    fn record(&self, token: &str) -> Result<Option<TokenRecord>> {
        self.store.get(T::Tokens, hash(token))
    }

    /// Issues a token: returns it and what the API shows of it.
    pub async fn issue(&self, new: NewToken) -> Result<(String, Token)> {
        let prefix = match new.kind {
            TokenKind::Admin => "vda_",
            TokenKind::Registration => "vdr_",
            TokenKind::Runner => "vdn_",
            TokenKind::Session => "vds_",
            TokenKind::Api | TokenKind::Unspecified => "vdt_",
        };
        Grants::check(&new.grants)?;
        if new.name.is_empty() || new.name.len() > 100 || new.name.chars().any(char::is_control) {
            return Err(Error::invalid("a token needs a name (1–100 printable characters)"));
        }
        let token = generate(prefix)?;
        let h = hash(&token);
        let rec = TokenRecord {
            schema: SCHEMA_VERSION,
            kind: new.kind as i32,
            created_ms: now_ms(),
            name: new.name,
            owner: new.owner,
            grants: new.grants,
            expires_ms: new.expires_ms,
            uses_left: new.uses,
            job: new.job,
            id: public_id(&h),
            ..Default::default()
        };
        let mut ws = WriteSet::default();
        ws.put(T::Tokens, h, &rec);
        self.store.commit_durable(&ws).await?;
        tracing::info!(token = %rec.id, name = %rec.name, owner = %rec.owner, "token issued");
        Ok((token, to_proto(&h, &rec, 0)))
    }

    /// On start: makes sure `dir/admin-token` and `dir/runner-token` hold
    /// usable tokens, issuing fresh ones (files mode 0600) when a file is
    /// missing or its token was revoked, rotated, used up or expired.
    /// Returns the two paths.
    pub async fn bootstrap(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        let admin = dir.join("admin-token");
        let runner = dir.join("runner-token");
        *self.admin_file.lock().unwrap_or_else(|p| p.into_inner()) = Some(admin.clone());
        let now = now_ms();
        for (path, kind) in [(&admin, TokenKind::Admin), (&runner, TokenKind::Registration)] {
            let usable = std::fs::read_to_string(path)
                .ok()
                .and_then(|t| self.record(t.trim()).ok().flatten())
                .is_some_and(|r| r.expires_ms == 0 || r.expires_ms > now);
            if usable {
                continue;
            }
            let new = match kind {
                TokenKind::Admin => NewToken {
                    name: "first-start admin token".into(),
                    kind,
                    grants: Grants::global(Role::Admin).0,
                    ..Default::default()
                },
                _ => NewToken {
                    name: "first-start runner registration token".into(),
                    kind,
                    uses: FIRST_REGISTRATIONS,
                    expires_ms: now + FIRST_REGISTRATION_TTL_MS,
                    ..Default::default()
                },
            };
            let (token, _) = self.issue(new).await?;
            write_secret(path, &token)?;
        }
        Ok((admin, runner))
    }

    /// The people of this server.
    pub fn users(&self) -> &Arc<Users> {
        &self.users
    }

    /// The principal of an API call: its bearer token, else the web UI's
    /// session cookie (sent by browsers only to this origin: `SameSite`).
    pub fn authenticate_call(&self, headers: &http::HeaderMap) -> Result<Principal> {
        if headers.contains_key(http::header::AUTHORIZATION) {
            return self.authenticate_http(headers);
        }
        match crate::sign_in::session_cookie(headers) {
            Some(token) => self.check(&token),
            None => Err(Error::Unauthenticated("missing `authorization: Bearer <token>` header".into())),
        }
    }

    /// Revokes `token` if it is a web session (signing out).
    pub async fn end_session(&self, token: &str) -> Result<()> {
        let h = hash(token);
        if self.store.get::<TokenRecord>(T::Tokens, h)?.is_some_and(|r| r.kind() == TokenKind::Session) {
            let mut ws = WriteSet::default();
            ws.delete(T::Tokens, h);
            self.store.commit_durable(&ws).await?;
            self.revoked();
        }
        Ok(())
    }

    /// The principal of a request: its bearer token (or Basic, with the
    /// token as the password, as git sends it).
    pub fn authenticate_http(&self, headers: &http::HeaderMap) -> Result<Principal> {
        let token = token_of_headers(headers)
            .ok_or_else(|| Error::Unauthenticated("missing `authorization: Bearer <token>` header".into()))?;
        self.check(&token)
    }

    /// The principal of a token.
    pub fn check(&self, token: &str) -> Result<Principal> {
        let h = hash(token);
        let rec: TokenRecord =
            self.store.get(T::Tokens, h)?.ok_or_else(|| Error::Unauthenticated("unknown or revoked token".into()))?;
        let now = now_ms();
        if rec.expires_ms != 0 && rec.expires_ms <= now {
            return Err(Error::Unauthenticated(format!("token `{}` has expired", rec.name)));
        }
        self.used.lock().unwrap_or_else(|p| p.into_inner()).insert(h, now);
        match rec.kind() {
            TokenKind::Runner => Ok(Principal::Runner(rec.runner_id)),
            TokenKind::Registration | TokenKind::Unspecified => {
                Err(Error::PermissionDenied("a registration token can only register runners".into()))
            }
            TokenKind::Admin | TokenKind::Api | TokenKind::Session => {
                let mut grants = if rec.kind() == TokenKind::Admin {
                    Grants::global(Role::Admin)
                } else {
                    Grants(rec.grants.clone())
                };
                if !rec.owner.is_empty() {
                    let user = self.users.record(&rec.owner)?.ok_or_else(|| {
                        Error::Unauthenticated(format!("the user of token `{}` no longer exists", rec.name))
                    })?;
                    grants = grants.within(&self.users.grants(&user));
                }
                let actor = if rec.owner.is_empty() { rec.name.clone() } else { rec.owner.clone() };
                let token_id = if rec.id.is_empty() { public_id(&h) } else { rec.id.clone() };
                Ok(Principal::Person(Caller { actor, owner: rec.owner, token_id, hash: h, grants }))
            }
        }
    }

    /// Whether the token with `hash` still works (an open stream asks after
    /// every revocation).
    pub fn still_valid(&self, hash: &[u8; 32]) -> bool {
        let Ok(Some(rec)) = self.store.get::<TokenRecord>(T::Tokens, hash) else { return false };
        if rec.expires_ms != 0 && rec.expires_ms <= now_ms() {
            return false;
        }
        rec.owner.is_empty() || matches!(self.users.record(&rec.owner), Ok(Some(_)))
    }

    /// Ticks at every revocation.
    pub fn revocations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revoked.subscribe()
    }

    /// Tells open streams that tokens may have stopped working.
    pub fn revoked(&self) {
        self.revoked.send_modify(|n| *n += 1);
    }

    /// Every token (without secrets), with the last use known now.
    pub fn list(&self) -> Result<Vec<Token>> {
        let used = self.used.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut out = Vec::new();
        for kv in self.store.tree(T::Tokens).iter() {
            let (k, v) = kv?;
            let rec: TokenRecord = decode(T::Tokens, &v)?;
            let h: [u8; 32] = k.as_slice().try_into().unwrap_or([0; 32]);
            let last = used.get(&h).copied().unwrap_or(rec.last_used_ms);
            out.push(to_proto(&h, &rec, last));
        }
        Ok(out)
    }

    /// The hash and record of the token with public id `id`.
    fn find(&self, id: &str) -> Result<([u8; 32], TokenRecord)> {
        for kv in self.store.tree(T::Tokens).iter() {
            let (k, v) = kv?;
            let h: [u8; 32] = k.as_slice().try_into().unwrap_or([0; 32]);
            if public_id(&h) == id {
                return Ok((h, decode(T::Tokens, &v)?));
            }
        }
        Err(Error::not_found(format!("no token `{id}`")))
    }

    /// The owner (user, empty for service tokens) and kind of token `id`.
    pub fn owner_of(&self, id: &str) -> Result<(String, TokenKind)> {
        let (_, rec) = self.find(id)?;
        Ok((rec.owner.clone(), rec.kind()))
    }

    /// Revokes token `id` at once.
    pub async fn revoke(&self, id: &str) -> Result<()> {
        let (h, rec) = self.find(id)?;
        let mut ws = WriteSet::default();
        ws.delete(T::Tokens, h);
        self.store.commit_durable(&ws).await?;
        tracing::info!(token = id, name = %rec.name, "token revoked");
        self.revoked();
        Ok(())
    }

    /// A new secret for token `id`, the old one revoked; the first-start
    /// admin token's file is rewritten when it is the one rotated.
    pub async fn rotate(&self, id: &str) -> Result<(String, Token)> {
        let (old, rec) = self.find(id)?;
        if rec.kind() == TokenKind::Runner {
            return Err(Error::invalid("runner tokens are replaced by registering the runner again"));
        }
        let token = generate(match rec.kind() {
            TokenKind::Admin => "vda_",
            TokenKind::Registration => "vdr_",
            TokenKind::Session => "vds_",
            _ => "vdt_",
        })?;
        let h = hash(&token);
        let new = TokenRecord { id: public_id(&h), created_ms: now_ms(), last_used_ms: 0, ..rec };
        let mut ws = WriteSet::default();
        ws.delete(T::Tokens, old);
        ws.put(T::Tokens, h, &new);
        self.store.commit_durable(&ws).await?;
        let file = self.admin_file.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(file) = file
            && std::fs::read_to_string(&file).is_ok_and(|t| hash(t.trim()) == old)
        {
            write_secret(&file, &token)?;
        }
        tracing::info!(old = id, new = %new.id, name = %new.name, "token rotated");
        self.revoked();
        Ok((token, to_proto(&h, &new, 0)))
    }

    /// Writes the tokens' last use back every minute.
    pub fn spawn_last_use_writer(self: &Arc<Self>) {
        let auth = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(auth) = auth.upgrade() else { return };
                if let Err(e) = auth.write_back_last_use() {
                    tracing::warn!(error = %e, "cannot record the tokens' last use");
                }
            }
        });
    }

    /// Writes the last-use times seen since the last call back to the
    /// records (every minute, and on shutdown).
    pub fn write_back_last_use(&self) -> Result<()> {
        let used = std::mem::take(&mut *self.used.lock().unwrap_or_else(|p| p.into_inner()));
        let mut ws = WriteSet::default();
        for (h, at) in used {
            if let Some(mut rec) = self.store.get::<TokenRecord>(T::Tokens, h)? {
                rec.last_used_ms = at;
                ws.put(T::Tokens, h, &rec);
            }
        }
        self.store.commit(&ws)
    }

    /// Registers a runner with a registration token: returns its id and
    /// its own token. A one-time registration token is consumed. What the
    /// runner asks for (labels, slots, executors, protection) is pinned in
    /// its record: its later Hellos can only ask for less.
    pub async fn register_runner(&self, registration_token: &str, r: Registration) -> Result<(String, String)> {
        let Registration { name, labels, hostname, protected, slots, executors, ephemeral } = r;
        let (name, hostname) = (name.as_str(), hostname.as_str());
        let _one_at_a_time = self.registering.lock().await;
        let mut rec = self
            .record(registration_token.trim())?
            .filter(|r| r.kind() == TokenKind::Registration)
            .ok_or_else(|| Error::Unauthenticated("unknown or used-up registration token".into()))?;
        if rec.expires_ms != 0 && rec.expires_ms <= now_ms() {
            return Err(Error::Unauthenticated(format!("registration token `{}` has expired", rec.name)));
        }
        // Globally unique (not a counter): runners of different servers may
        // share a machine and its container engine, whose objects carry the
        // runner id as a label.
        let runner_id = format!("runner-{}", &generate("")?[..10]);
        let token = generate("vdn_")?;
        let now = now_ms();
        // A token bound to one job registers an ephemeral runner for it.
        let bound = !rec.job.is_empty();
        let mut ws = WriteSet::default();
        ws.put(
            T::Runners,
            runner_id.as_bytes(),
            &RunnerRecord {
                schema: SCHEMA_VERSION,
                name: if name.is_empty() { runner_id.clone() } else { name.to_string() },
                labels: labels.clone(),
                hostname: hostname.to_string(),
                registered_ms: now,
                last_seen_ms: now,
                protected,
                allowed_labels: labels,
                // An ephemeral runner's one job needs one slot.
                max_slots: if ephemeral || bound { 1 } else { slots.max(1) },
                ephemeral: ephemeral || bound,
                bound_job: rec.job.clone(),
                allowed_executors: executors.into_iter().map(|e| e as i32).collect(),
                ..Default::default()
            },
        );
        ws.put(
            T::Tokens,
            hash(&token),
            &TokenRecord {
                schema: SCHEMA_VERSION,
                kind: TokenKind::Runner as i32,
                runner_id: runner_id.clone(),
                created_ms: now,
                note: format!("runner {name}"),
                ..Default::default()
            },
        );
        // Counted down; the last use deletes it (tokens from before counts
        // were either reusable or single-use).
        let left = if rec.uses_left > 0 {
            rec.uses_left - 1
        } else if rec.reusable {
            1
        } else {
            0
        };
        if left == 0 {
            ws.delete(T::Tokens, hash(registration_token.trim()));
        } else if !rec.reusable || rec.uses_left > 0 {
            rec.uses_left = left;
            ws.put(T::Tokens, hash(registration_token.trim()), &rec);
        }
        self.store.commit_durable(&ws).await?;
        Ok((runner_id, token))
    }

    /// Revokes every runner token of `runner_id` (in `ws`).
    pub fn revoke_runner(&self, runner_id: &str, ws: &mut WriteSet) -> Result<()> {
        for kv in self.store.tree(T::Tokens).iter() {
            let (k, v) = kv?;
            let rec: TokenRecord = crate::store::decode(T::Tokens, &v)?;
            if rec.kind() == TokenKind::Runner && rec.runner_id == runner_id {
                ws.delete(T::Tokens, k);
            }
        }
        Ok(())
    }
}

/// A token as the API shows it.
fn to_proto(h: &[u8; 32], rec: &TokenRecord, last_used_ms: i64) -> Token {
    let kind = match rec.kind() {
        TokenKind::Registration => "registration",
        TokenKind::Runner => "runner",
        TokenKind::Session => "session",
        _ => "api",
    };
    let grants = if rec.kind() == TokenKind::Admin { Grants::global(Role::Admin).0 } else { rec.grants.clone() };
    Token {
        id: if rec.id.is_empty() { public_id(h) } else { rec.id.clone() },
        name: if rec.name.is_empty() { rec.note.clone() } else { rec.name.clone() },
        owner: rec.owner.clone(),
        grants,
        created_at: crate::convert::timestamp(rec.created_ms),
        expires_at: crate::convert::timestamp(rec.expires_ms),
        last_used_at: crate::convert::timestamp(last_used_ms),
        kind: kind.into(),
        uses_left: rec.uses_left,
    }
}

fn write_secret(path: &Path, token: &str) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::Internal(format!("cannot write {}: {e}", path.display())))?;
    // `mode` applies only when creating: also fix a pre-existing file.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| Error::Internal(format!("cannot chmod {}: {e}", path.display())))?;
    writeln!(f, "{token}")
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::Internal(format!("cannot write {}: {e}", path.display())))
}
