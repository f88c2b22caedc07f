//! `viaduct tokens|whoami|users|audit`: who may do what, and what they did.

use serde_json::json;
use viaduct_sdk::{
    Client,
    proto::v1::{
        CreateTokenRequest, GetUserRequest, Grant, ListAuditRequest, ListTokensRequest, ListUsersRequest,
        RevokeTokenRequest, Role, Token, User, WhoamiRequest,
    },
};

use super::{
    Failure,
    args::{TokensCommand, UsersCommand},
    terminal, view,
};

/// `read`, `maintain:app`…
pub fn grant_text(g: &Grant) -> String {
    let role = viaduct_sdk::proto::RoleWord::word(Role::try_from(g.role).unwrap_or(Role::Unspecified));
    if g.repo.is_empty() { role.to_string() } else { format!("{role}:{}", g.repo) }
}

fn grants_text(grants: &[Grant]) -> String {
    if grants.is_empty() { "-".into() } else { grants.iter().map(grant_text).collect::<Vec<_>>().join(",") }
}

fn token_json(t: &Token) -> serde_json::Value {
    json!({
        "id": t.id, "name": t.name, "owner": t.owner, "kind": t.kind,
        "grants": t.grants.iter().map(grant_text).collect::<Vec<_>>(),
        "created_at": view::local(t.created_at.as_ref()),
        "expires_at": t.expires_at.as_ref().map(|_| view::local(t.expires_at.as_ref())),
        "last_used_at": t.last_used_at.as_ref().map(|_| view::local(t.last_used_at.as_ref())),
        "uses_left": t.uses_left,
    })
}

/// `viaduct tokens …`.
pub async fn tokens(client: &Client, cmd: TokensCommand) -> Result<(), Failure> {
    match cmd {
        TokensCommand::Create { name, grants, expires_in, service, user, registration } => {
            let req = CreateTokenRequest {
                name,
                grants,
                expires_in_seconds: expires_in.map_or(0, |d| d.as_secs().max(1)),
                kind: if registration.is_some() { "registration".into() } else { "api".into() },
                uses: registration.unwrap_or(0),
                service,
                user: user.unwrap_or_default(),
            };
            let r = client.tokens().create(req).await?.into_inner();
            let t = r.token.unwrap_or_default();
            eprintln!(
                "token {} ({}), {}: shown once, keep it in a file (--token-file) or VIADUCT_TOKEN",
                t.id,
                terminal::plain(&t.name),
                grants_text(&t.grants)
            );
            println!("{}", r.secret);
            Ok(())
        }
        TokensCommand::List { json } => {
            let list = client.tokens().list(ListTokensRequest {}).await?.into_inner().tokens;
            if json {
                println!("{}", serde_json::Value::Array(list.iter().map(token_json).collect()));
                return Ok(());
            }
            let never = |t: Option<&prost_types::Timestamp>, none: &str| {
                if t.is_some() { view::local(t) } else { none.to_string() }
            };
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        terminal::plain(&t.name),
                        if t.owner.is_empty() { "-".into() } else { terminal::plain(&t.owner) },
                        t.kind.clone(),
                        grants_text(&t.grants),
                        never(t.expires_at.as_ref(), "never"),
                        never(t.last_used_at.as_ref(), "-"),
                    ]
                })
                .collect();
            print!("{}", view::table(&["ID", "NAME", "USER", "KIND", "GRANTS", "EXPIRES", "LAST USED"], &rows));
            Ok(())
        }
        TokensCommand::Revoke { id } => {
            client.tokens().revoke(RevokeTokenRequest { id: id.clone() }).await?;
            println!("token {id} revoked");
            Ok(())
        }
        TokensCommand::Rotate { id } => {
            let r = client.tokens().rotate(RevokeTokenRequest { id: id.clone() }).await?.into_inner();
            let new = r.token.map(|t| t.id).unwrap_or_default();
            eprintln!("token {id} replaced by {new}: the old secret no longer works");
            println!("{}", r.secret);
            Ok(())
        }
    }
}

/// `viaduct whoami`.
pub async fn whoami(client: &Client) -> Result<(), Failure> {
    let me = client.tokens().whoami(WhoamiRequest {}).await?.into_inner();
    println!("{} ({}): {}", terminal::plain(&me.name), me.token_id, grants_text(&me.grants));
    Ok(())
}

fn user_json(u: &User) -> serde_json::Value {
    json!({
        "name": u.name, "display_name": u.display_name, "source": u.source, "groups": u.groups,
        "grants": u.grants.iter().map(grant_text).collect::<Vec<_>>(),
    })
}

/// `viaduct users …`.
pub async fn users(client: &Client, cmd: UsersCommand) -> Result<(), Failure> {
    match cmd {
        UsersCommand::Create { name, grants, display_name } => {
            let u = User { name, grants, display_name: display_name.unwrap_or_default(), ..Default::default() };
            let u = client.users().create(u).await?.into_inner();
            println!("user {} created: {}", u.name, grants_text(&u.grants));
            Ok(())
        }
        UsersCommand::List { json } => {
            let list = client.users().list(ListUsersRequest {}).await?.into_inner().users;
            if json {
                println!("{}", serde_json::Value::Array(list.iter().map(user_json).collect()));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|u| {
                    vec![
                        terminal::plain(&u.name),
                        terminal::plain(&u.display_name),
                        u.source.clone(),
                        grants_text(&u.grants),
                        terminal::plain(&u.groups.join(",")),
                    ]
                })
                .collect();
            print!("{}", view::table(&["NAME", "DISPLAY NAME", "SOURCE", "GRANTS", "GROUPS"], &rows));
            Ok(())
        }
        UsersCommand::Grant { name, grants } => {
            let mut u = client.users().get(GetUserRequest { name: name.clone() }).await?.into_inner();
            u.grants = grants;
            let u = client.users().update(u).await?.into_inner();
            println!("user {}: {}", u.name, grants_text(&u.grants));
            Ok(())
        }
        UsersCommand::Delete { name } => {
            client.users().delete(GetUserRequest { name: name.clone() }).await?;
            println!("user {name} removed");
            Ok(())
        }
    }
}

/// `viaduct audit`.
pub async fn audit(client: &Client, limit: u32, before: u64, actor: Option<String>, json: bool) -> Result<(), Failure> {
    let req = ListAuditRequest { limit, before_id: before, actor: actor.unwrap_or_default() };
    let entries = client.audit().list(req).await?.into_inner().entries;
    for e in &entries {
        if json {
            let v = json!({
                "id": e.id, "time": view::local(e.time.as_ref()), "actor": e.actor, "token_id": e.token_id,
                "action": e.action, "target": e.target, "peer": e.peer, "outcome": e.outcome,
            });
            println!("{v}");
        } else {
            println!(
                "{:>6} {} {} {} {} from {}: {}",
                e.id,
                view::local(e.time.as_ref()),
                terminal::plain(&e.actor),
                e.action,
                terminal::plain(&e.target),
                e.peer,
                e.outcome
            );
        }
    }
    Ok(())
}
