//! `viaduct.v1.Tokens`: people's and services' API tokens.
//!
//! Anyone signed in manages their own tokens; admins everyone's. A new
//! token's grants must be within the caller's (and a user's token is cut
//! down to what the user has at each use).

use std::sync::Arc;

use tonic::{Request, Response, Status};
use viaduct_proto::v1::{
    CreateTokenRequest, CreateTokenResponse, Identity, ListTokensRequest, ListTokensResponse, RevokeTokenRequest,
    RevokeTokenResponse, Token, WhoamiRequest, tokens_server::Tokens,
};

use crate::{
    access::{self, Access, Grants},
    auth::{Auth, NewToken},
    error::{Error, Result},
    store::{now_ms, records::TokenKind},
};

/// Longest life of a registration token.
const MAX_REGISTRATION_TTL_S: u64 = 365 * 24 * 3600;
/// Default life of a registration token.
const REGISTRATION_TTL_S: u64 = 24 * 3600;

/// The Tokens service.
pub struct TokensApi {
    auth: Arc<Auth>,
}

impl TokensApi {
    /// The service over `auth`.
    pub fn new(auth: Arc<Auth>) -> Self {
        Self { auth }
    }

    /// Refuses unless `access` may manage token `id`: its own, one of its
    /// user's, or any for an admin.
    fn check_mine(&self, access: &Access, id: &str) -> Result<()> {
        if access.is_admin() || id == access.token_id {
            return Ok(());
        }
        let (owner, _) = self.auth.owner_of(id)?;
        if !owner.is_empty() && owner == access.owner {
            return Ok(());
        }
        Err(Error::PermissionDenied(format!("{} may manage only their own tokens", access.actor)))
    }
}

/// A registration token's settings from a request: `(uses, expires_ms)`.
pub fn registration(uses: u32, reusable: bool, expires_in_seconds: u64) -> Result<(u32, i64)> {
    let uses = match (uses, reusable) {
        (0, false) => 1,
        (0, true) => 100,
        (n, _) => n,
    };
    let ttl = if expires_in_seconds == 0 { REGISTRATION_TTL_S } else { expires_in_seconds };
    if ttl > MAX_REGISTRATION_TTL_S {
        return Err(Error::invalid("a registration token lives at most 365 days"));
    }
    Ok((uses, now_ms() + (ttl * 1000) as i64))
}

/// The token request as a [`NewToken`], checked against the caller.
fn new_token(access: &Access, r: CreateTokenRequest) -> Result<NewToken> {
    let kind = match r.kind.as_str() {
        "" | "api" => TokenKind::Api,
        "registration" => TokenKind::Registration,
        other => return Err(Error::invalid(format!("`{other}` is not a token kind (api, registration)"))),
    };
    if kind == TokenKind::Registration {
        access.require_role(viaduct_proto::v1::Role::Admin, "")?;
        let (uses, expires_ms) = registration(r.uses, false, r.expires_in_seconds)?;
        return Ok(NewToken { name: r.name, kind, uses, expires_ms, ..Default::default() });
    }
    let owner = if r.service {
        access.require_role(viaduct_proto::v1::Role::Admin, "")?;
        if !r.user.is_empty() {
            return Err(Error::invalid("a service token acts for no user: set `service` or `user`, not both"));
        }
        String::new()
    } else if !r.user.is_empty() {
        if r.user != access.owner {
            access.require_role(viaduct_proto::v1::Role::Admin, "")?;
        }
        r.user.clone()
    } else if access.owner.is_empty() {
        return Err(Error::invalid(format!(
            "{} is a service token, which acts for no user: create a service token (`service`) or one for a `user`",
            access.actor
        )));
    } else {
        access.owner.clone()
    };
    Grants::check(&r.grants)?;
    let grants = if r.grants.is_empty() { access.grants.0.clone() } else { r.grants };
    if !access.grants.covers(&Grants(grants.clone())) {
        return Err(Error::PermissionDenied(format!("{} cannot give a token more than it has", access.actor)));
    }
    let expires_ms = if r.expires_in_seconds == 0 {
        0
    } else {
        let s = i64::try_from(r.expires_in_seconds).ok().filter(|s| *s <= 100 * 365 * 24 * 3600);
        now_ms() + s.ok_or_else(|| Error::invalid("expires_in_seconds is too large"))? * 1000
    };
    Ok(NewToken { name: r.name, owner, grants, expires_ms, uses: 0, kind, job: String::new() })
}

#[tonic::async_trait]
impl Tokens for TokensApi {
    async fn create(&self, req: Request<CreateTokenRequest>) -> Result<Response<CreateTokenResponse>, Status> {
        let access = access::of(&req)?.clone();
        let r = req.into_inner();
        access.target(format!("token `{}`", r.name));
        let new = new_token(&access, r)?;
        if !new.owner.is_empty() && self.auth.users().record(&new.owner)?.is_none() {
            return Err(Error::not_found(format!("no user `{}`", new.owner)).into());
        }
        let (secret, token) = self.auth.issue(new).await?;
        access.target(token.id.clone());
        Ok(Response::new(CreateTokenResponse { token: Some(token), secret }))
    }

    async fn list(&self, req: Request<ListTokensRequest>) -> Result<Response<ListTokensResponse>, Status> {
        let access = access::of(&req)?;
        let mine = |t: &Token| t.id == access.token_id || (!access.owner.is_empty() && t.owner == access.owner);
        let tokens = self.auth.list()?.into_iter().filter(|t| access.is_admin() || mine(t)).collect();
        Ok(Response::new(ListTokensResponse { tokens }))
    }

    async fn revoke(&self, req: Request<RevokeTokenRequest>) -> Result<Response<RevokeTokenResponse>, Status> {
        let access = access::of(&req)?.clone();
        let id = req.into_inner().id;
        access.target(id.clone());
        self.check_mine(&access, &id)?;
        self.auth.revoke(&id).await?;
        Ok(Response::new(RevokeTokenResponse {}))
    }

    async fn rotate(&self, req: Request<RevokeTokenRequest>) -> Result<Response<CreateTokenResponse>, Status> {
        let access = access::of(&req)?.clone();
        let id = req.into_inner().id;
        access.target(id.clone());
        self.check_mine(&access, &id)?;
        let (secret, token) = self.auth.rotate(&id).await?;
        Ok(Response::new(CreateTokenResponse { token: Some(token), secret }))
    }

    async fn whoami(&self, req: Request<WhoamiRequest>) -> Result<Response<Identity>, Status> {
        let access = access::of(&req)?;
        Ok(Response::new(Identity {
            name: access.actor.clone(),
            grants: access.grants.0.clone(),
            token_id: access.token_id.clone(),
        }))
    }
}
