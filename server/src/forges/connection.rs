//! A mirror's forge connection, checked and completed before it is kept.
//!
//! Who may set one: an administrator (the server sends the token secret's
//! value to the API URL, so whoever chooses the URL could read the token).
//! The token secret must be scoped to the repository (`viaduct secrets set
//! NAME --repo REPO`), so a connection cannot send another repository's
//! secret anywhere. The API URL is `https://`, or `http://` to this machine
//! only (a token in clear text over a network is a token given away).

use viaduct_proto::v1::ForgeConnection;

use super::kind::{GITHUB_API, Kind};
use crate::error::{Error, Result};

/// The default context prefix.
pub const DEFAULT_PREFIX: &str = "viaduct";

/// A connection's fields, checked, with their defaults filled from the
/// mirror's URL.
pub fn complete(conn: &ForgeConnection, mirror_url: &str) -> Result<ForgeConnection> {
    let kind = Kind::parse(&conn.kind).ok_or_else(|| {
        Error::invalid(format!(
            "forge kind `{}` is not one of github, gitlab, gitea, forgejo",
            conn.kind.escape_debug()
        ))
    })?;
    let host = remote_host(mirror_url);
    let api_url = match (conn.api_url.trim(), kind, host.as_deref()) {
        ("", Kind::GitHub, Some("github.com") | None) => GITHUB_API.to_string(),
        ("", _, Some(host)) => format!("https://{host}{}", kind.api_path()),
        ("", _, None) => {
            return Err(Error::invalid("set the forge's API URL: it cannot be told from the mirror's URL"));
        }
        (url, ..) => url.trim_end_matches('/').to_string(),
    };
    crate::outbound::check_destination(&api_url)
        .map_err(|why| Error::invalid(format!("forge API URL `{}`: {why}", api_url.escape_debug())))?;
    if api_url.contains('?') {
        return Err(Error::invalid("the forge API URL takes no query (the token is a secret of its own)"));
    }
    let project = match conn.project.trim() {
        "" => remote_path(mirror_url).ok_or_else(|| {
            Error::invalid(
                "set the forge's name of the repository (`owner/name`): it cannot be told from the mirror's URL",
            )
        })?,
        p => p.trim_matches('/').to_string(),
    };
    let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/');
    if project.is_empty()
        || project.len() > 255
        || !project.chars().all(fine)
        || project.split('/').any(|p| p.is_empty() || p == "..")
    {
        return Err(Error::invalid(format!(
            "`{}` is not a forge repository name (`owner/name`)",
            project.escape_debug()
        )));
    }
    let app = !conn.app_id.is_empty() || !conn.app_key_secret.is_empty() || conn.installation_id != 0;
    match (app, kind) {
        (true, Kind::GitHub) => {
            if !conn.token_secret.is_empty() {
                return Err(Error::invalid(
                    "a GitHub App authenticates with its key: set `app_key_secret` or `token_secret`, not both",
                ));
            }
            if conn.app_id.is_empty() || !conn.app_id.chars().all(|c| c.is_ascii_digit()) || conn.app_id.len() > 20 {
                return Err(Error::invalid(format!("GitHub App id `{}` is not a number", conn.app_id.escape_debug())));
            }
            if conn.app_key_secret.is_empty() {
                return Err(Error::invalid(
                    "set the secret that holds the GitHub App's private key (`app_key_secret`)",
                ));
            }
            crate::secrets::check_name(&conn.app_key_secret)?;
            if !conn.app_webhook_secret.is_empty() {
                crate::secrets::check_name(&conn.app_webhook_secret)?;
            }
        }
        (true, _) => return Err(Error::invalid("only GitHub has apps: use `token_secret`")),
        (false, _) if !conn.app_webhook_secret.is_empty() => {
            return Err(Error::invalid("`app_webhook_secret` is a GitHub App's: set `app_id` too"));
        }
        (false, _) if conn.token_secret.is_empty() => {
            return Err(Error::invalid("set the secret that holds the forge's access token (`token_secret`)"));
        }
        (false, _) => crate::secrets::check_name(&conn.token_secret)?,
    }
    let prefix = match conn.context_prefix.trim() {
        "" => DEFAULT_PREFIX.to_string(),
        p if p.len() <= 50 && p.chars().all(|c| !c.is_control()) => p.to_string(),
        _ => return Err(Error::invalid("the context prefix must be 1–50 printable characters")),
    };
    Ok(ForgeConnection {
        kind: kind.word().to_string(),
        api_url,
        project,
        token_secret: conn.token_secret.clone(),
        context_prefix: prefix,
        app_id: conn.app_id.clone(),
        app_key_secret: conn.app_key_secret.clone(),
        installation_id: conn.installation_id,
        check_logs: conn.check_logs,
        app_webhook_secret: conn.app_webhook_secret.clone(),
    })
}

/// The secret a connection authenticates with: the token's, or the app's key's.
pub fn credential_secret(conn: &ForgeConnection) -> &str {
    if conn.app_id.is_empty() { &conn.token_secret } else { &conn.app_key_secret }
}

/// An app's webhook secret must be the server's only, and admit this
/// repository (the app's other repositories may share it).
pub fn check_webhook_secret_scope(
    repo: &str,
    secret: &str,
    scope: Option<&viaduct_proto::v1::SecretScope>,
) -> Result<()> {
    let ok = scope.is_some_and(|s| s.server_only && s.repos.iter().any(|r| r == repo));
    if !ok {
        return Err(Error::FailedPrecondition(format!(
            "secret `{secret}` must exist, be for the server only and admit repository `{repo}` \
             (viaduct secrets set {secret} --repo {repo} --server-only)"
        )));
    }
    Ok(())
}

/// The token secret must be the server's only (no job can read it) and
/// scoped to exactly this repository.
pub fn check_token_scope(repo: &str, secret: &str, scope: Option<&viaduct_proto::v1::SecretScope>) -> Result<()> {
    let how = format!("viaduct secrets set {secret} --repo {repo} --server-only");
    let Some(scope) = scope else {
        return Err(Error::FailedPrecondition(format!("secret `{secret}` is not set ({how})")));
    };
    if !scope.server_only || scope.repos.len() != 1 || scope.repos[0] != repo {
        return Err(Error::FailedPrecondition(format!(
            "secret `{secret}` must be for the server only and scoped to repository `{repo}` alone ({how}): \
             the server sends it to the forge, and no job may read it"
        )));
    }
    Ok(())
}

/// The host of a remote URL (`https://host/…`, `ssh://git@host/…`,
/// `git@host:…`).
fn remote_host(remote: &str) -> Option<String> {
    if let Ok(url) = url::Url::parse(remote) {
        return url.host_str().map(str::to_ascii_lowercase);
    }
    let (userhost, _) = remote.split_once(':')?;
    let host = userhost.rsplit('@').next()?;
    (!host.is_empty() && !host.contains('/')).then(|| host.to_ascii_lowercase())
}

/// The repository's path on its forge from a remote URL (`owner/name`).
fn remote_path(remote: &str) -> Option<String> {
    let path = match url::Url::parse(remote) {
        Ok(url) if url.scheme() != "file" => url.path().to_string(),
        Ok(_) => return None,
        Err(_) => remote.split_once(':')?.1.to_string(),
    };
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    (path.contains('/')).then(|| path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(kind: &str, api: &str) -> ForgeConnection {
        ForgeConnection { kind: kind.into(), api_url: api.into(), token_secret: "tok".into(), ..Default::default() }
    }

    #[test]
    fn defaults_come_from_the_mirror_url() {
        let c = complete(&conn("github", ""), "https://github.com/org/app.git").unwrap();
        assert_eq!(
            (c.api_url.as_str(), c.project.as_str(), c.context_prefix.as_str()),
            (GITHUB_API, "org/app", "viaduct")
        );
        let c = complete(&conn("gitlab", ""), "git@gitlab.example:group/sub/app.git").unwrap();
        assert_eq!((c.api_url.as_str(), c.project.as_str()), ("https://gitlab.example/api/v4", "group/sub/app"));
        let c = complete(&conn("forgejo", ""), "ssh://git@code.example:2222/o/app").unwrap();
        assert_eq!((c.kind.as_str(), c.api_url.as_str()), ("gitea", "https://code.example/api/v1"));
        let c = complete(&conn("github", "https://ghe.example/api/v3/"), "https://ghe.example/o/app").unwrap();
        assert_eq!(c.api_url, "https://ghe.example/api/v3");
        assert!(complete(&conn("gitlab", ""), "file:///srv/app.git").is_err(), "no host to guess the API from");
    }

    #[test]
    fn tokens_go_only_where_they_are_safe() {
        let mirror = "https://github.com/org/app";
        assert!(complete(&conn("github", "http://127.0.0.1:9999"), mirror).is_ok());
        assert!(complete(&conn("github", "http://[::1]:9999"), mirror).is_ok());
        for bad in [
            "http://forge.example",
            "ftp://forge.example",
            "https://user:pw@forge.example",
            "https://f.example/?x=1",
            "not a url",
        ] {
            assert!(complete(&conn("github", bad), mirror).is_err(), "{bad}");
        }
        assert!(complete(&ForgeConnection { project: "../etc".into(), ..conn("github", "") }, mirror).is_err());
        assert!(complete(&ForgeConnection { token_secret: String::new(), ..conn("github", "") }, mirror).is_err());
        assert!(complete(&conn("svn", ""), mirror).is_err());
        let app = ForgeConnection {
            token_secret: String::new(),
            app_id: "123".into(),
            app_key_secret: "KEY".into(),
            ..conn("github", "")
        };
        assert_eq!(credential_secret(&complete(&app, mirror).unwrap()), "KEY");
        assert!(
            complete(&ForgeConnection { token_secret: "tok".into(), ..app.clone() }, mirror).is_err(),
            "one way to sign in"
        );
        assert!(complete(&ForgeConnection { app_id: "12a".into(), ..app.clone() }, mirror).is_err());
        assert!(complete(&ForgeConnection { kind: "gitlab".into(), ..app }, mirror).is_err());
        let scoped =
            viaduct_proto::v1::SecretScope { repos: vec!["app".into()], server_only: true, ..Default::default() };
        assert!(check_token_scope("app", "tok", Some(&scoped)).is_ok());
        assert!(check_token_scope("other", "tok", Some(&scoped)).is_err(), "another repository's secret");
        let jobs_too = viaduct_proto::v1::SecretScope { server_only: false, ..scoped.clone() };
        assert!(check_token_scope("app", "tok", Some(&jobs_too)).is_err(), "a secret jobs may read");
        let two = viaduct_proto::v1::SecretScope { repos: vec!["app".into(), "other".into()], ..scoped };
        assert!(check_token_scope("app", "tok", Some(&two)).is_err(), "shared with another repository");
        assert!(check_token_scope("app", "tok", Some(&Default::default())).is_err(), "an unscoped secret");
        assert!(check_token_scope("app", "tok", None).is_err());
    }
}
