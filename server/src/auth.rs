//! Credentials: API tokens, runner registration tokens and runner tokens.
//!
//! A token is 32 random bytes in hex behind a prefix that says what it is
//! (`vda_` admin, `vdr_` registration, `vdn_` runner), so secret scanners
//! and people can recognise one. Only its blake3 hash is stored; the token
//! itself is shown once (or written to a 0600 file on first start).

use std::{
    fs::OpenOptions,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use tonic::{Request, Status, metadata::MetadataMap};

use crate::{
    error::{Error, Result},
    store::{
        Store, T, WriteSet, now_ms,
        records::{RunnerRecord, SCHEMA_VERSION, TokenKind, TokenRecord},
    },
};

/// Who made a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// A holder of an admin API token.
    Admin,
    /// A registered runner.
    Runner(String),
}

impl Principal {
    /// Who this is, for records such as approvals.
    pub fn describe(&self) -> String {
        match self {
            Principal::Admin => "an admin token".to_string(),
            Principal::Runner(id) => format!("runner {id}"),
        }
    }
}

/// Refuses requests not made with an admin token (after
/// [`Auth::principal_interceptor`]).
pub fn require_admin<T>(req: &Request<T>) -> Result<()> {
    match req.extensions().get::<Principal>() {
        Some(Principal::Admin) => Ok(()),
        _ => Err(Error::PermissionDenied("this call needs an admin token".into())),
    }
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
    pub executors: Vec<String>,
}

/// Token checks and issuance over the `tokens` tree.
pub struct Auth {
    store: Arc<Store>,
    /// Runners must present a client certificate (mutual TLS).
    runner_certs: bool,
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

fn bearer(metadata: &MetadataMap) -> Option<&str> {
    let v = metadata.get("authorization")?.to_str().ok()?;
    let v = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))?;
    Some(v.trim())
}

impl Auth {
    /// Token handling over `store`.
    pub fn new(store: Arc<Store>) -> Self {
        Self { store, runner_certs: false }
    }

    /// Requires runners to present a client certificate the server's
    /// client CA signed (checked by TLS; see [`Auth::check_runner_cert`]).
    pub fn with_runner_certs(mut self, required: bool) -> Self {
        self.runner_certs = required;
        self
    }

    /// Refuses a runner request without a verified client certificate
    /// when mutual TLS is required.
    pub fn check_runner_cert<T>(&self, req: &Request<T>) -> Result<()> {
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

    fn issue(&self, prefix: &str, kind: TokenKind, runner_id: &str, reusable: bool, note: &str) -> Result<String> {
        let token = generate(prefix)?;
        let rec = TokenRecord {
            schema: SCHEMA_VERSION,
            kind: kind as i32,
            runner_id: runner_id.to_string(),
            reusable,
            created_ms: now_ms(),
            note: note.to_string(),
        };
        let mut ws = WriteSet::default();
        ws.put(T::Tokens, hash(&token), &rec);
        self.store.commit(&ws)?;
        Ok(token)
    }

    /// On start: makes sure `dir/admin-token` and `dir/runner-token` exist,
    /// creating fresh tokens (mode 0600) when a file is missing. Returns the
    /// two paths.
    pub async fn bootstrap(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        let admin = dir.join("admin-token");
        let runner = dir.join("runner-token");
        for (path, prefix, kind, note) in [
            (&admin, "vda_", TokenKind::Admin, "first-start admin token"),
            (&runner, "vdr_", TokenKind::Registration, "first-start runner registration token"),
        ] {
            let usable = std::fs::read_to_string(path)
                .ok()
                .map(|t| self.record(t.trim()).ok().flatten().is_some())
                .unwrap_or(false);
            if usable {
                continue;
            }
            let token = self.issue(prefix, kind, "", true, note)?;
            write_secret(path, &token)?;
        }
        self.store.wait_durable(self.store.ticket()).await;
        Ok((admin, runner))
    }

    /// The principal of an API request's bearer token.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Principal> {
        let token = bearer(metadata)
            .ok_or_else(|| Error::Unauthenticated("missing `authorization: Bearer <token>` header".into()))?;
        self.check(token)
    }

    /// The principal of a token.
    pub fn check(&self, token: &str) -> Result<Principal> {
        let rec = self.record(token)?.ok_or_else(|| Error::Unauthenticated("unknown or revoked token".into()))?;
        match rec.kind() {
            TokenKind::Admin => Ok(Principal::Admin),
            TokenKind::Runner => Ok(Principal::Runner(rec.runner_id)),
            TokenKind::Registration | TokenKind::Unspecified => {
                Err(Error::PermissionDenied("a registration token can only register runners".into()))
            }
        }
    }

    /// A tonic interceptor admitting admin tokens only.
    pub fn admin_interceptor(self: &Arc<Self>) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone + use<> {
        let auth = Arc::clone(self);
        move |mut req: Request<()>| match auth.authenticate(req.metadata())? {
            Principal::Admin => {
                req.extensions_mut().insert(Principal::Admin);
                Ok(req)
            }
            Principal::Runner(_) => {
                Err(Error::PermissionDenied("runner tokens cannot call the user API".into()).into())
            }
        }
    }

    /// A tonic interceptor admitting admin and runner tokens, for services
    /// both use (plugins); handlers read the [`Principal`] from the request
    /// extensions with [`require_admin`] where only admins may act.
    pub fn principal_interceptor(
        self: &Arc<Self>,
    ) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone + use<> {
        let auth = Arc::clone(self);
        move |mut req: Request<()>| {
            let principal = auth.authenticate(req.metadata())?;
            req.extensions_mut().insert(principal);
            Ok(req)
        }
    }

    /// The runner id of a Connect stream's runner token.
    pub fn runner(&self, metadata: &MetadataMap) -> Result<String> {
        match self.authenticate(metadata)? {
            Principal::Runner(id) => Ok(id),
            Principal::Admin => Err(Error::PermissionDenied("Connect needs a runner token (from Register)".into())),
        }
    }

    /// A new registration token.
    pub fn create_registration_token(&self, reusable: bool) -> Result<String> {
        self.issue("vdr_", TokenKind::Registration, "", reusable, "created through the API")
    }

    /// Registers a runner with a registration token: returns its id and
    /// its own token. A one-time registration token is consumed. What the
    /// runner asks for (labels, slots, executors, protection) is pinned in
    /// its record: its later Hellos can only ask for less.
    pub async fn register_runner(&self, registration_token: &str, r: Registration) -> Result<(String, String)> {
        let Registration { name, labels, hostname, protected, slots, executors } = r;
        let (name, hostname) = (name.as_str(), hostname.as_str());
        let rec = self
            .record(registration_token.trim())?
            .filter(|r| r.kind() == TokenKind::Registration)
            .ok_or_else(|| Error::Unauthenticated("unknown or used registration token".into()))?;
        // Globally unique (not a counter): runners of different servers may
        // share a machine and its container engine, whose objects carry the
        // runner id as a label.
        let runner_id = format!("runner-{}", &generate("")?[..10]);
        let token = generate("vdn_")?;
        let now = now_ms();
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
                max_slots: slots.max(1),
                allowed_executors: executors,
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
        if !rec.reusable {
            ws.delete(T::Tokens, hash(registration_token.trim()));
        }
        self.store.commit_durable(&ws).await?;
        Ok((runner_id, token))
    }

    /// Revokes every runner token of `runner_id`.
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
