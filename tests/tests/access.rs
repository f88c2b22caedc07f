//! People, roles and tokens, through the real server: the whole role table
//! walked (every RPC and HTTP route, every role, allowed and denied),
//! scoped and expiring tokens, revocation ending open streams, rotation
//! of the first-start admin token, single- and N-use registration tokens,
//! rate limits, and the audit log.

use std::time::Duration;

use bytes::{Buf as _, BufMut as _};
use prost::Message as _;
use tonic::{
    Code, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};
use viaduct_tests::{
    Client, Server, eventually,
    forge::{create_hosted, git, work_tree},
    http, v1,
};

/// Request bytes in, response bytes out: calls any method by its path.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut v = vec![0; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

/// Calls `path` with one request message (any kind of method: the wire is
/// the same); the status the call ended with, `Ok` when the server
/// answered at all without an error before its first message.
async fn call(channel: &tonic::transport::Channel, token: Option<&str>, path: &str, body: Vec<u8>) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("channel ready");
    let mut req = tonic::Request::new(tokio_stream::once(body));
    if let Some(t) = token {
        req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(path).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), grpc.streaming(req, path.clone(), Raw)).await;
    match result {
        Err(_) => panic!("{path} did not answer within 10 s"),
        Ok(Err(status)) => status.code(),
        Ok(Ok(resp)) => {
            // Unary errors can also come as the first item of the body.
            let mut stream = resp.into_inner();
            match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
                Ok(Err(status)) => status.code(),
                _ => Code::Ok,
            }
        }
    }
}

/// Where a method's role applies, as the policy states it (a copy written
/// from `proto/viaduct/v1/access.proto` and docs/security.md, so the
/// server's own table is checked against it, not against itself).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Need {
    /// No token.
    Open,
    /// Any signed-in person.
    Signed,
    /// A role on every repository.
    Global(u8),
    /// A role on the repository the request names.
    Repo(u8),
    /// A role on some repository (lists: filtered by the handler).
    Somewhere(u8),
    /// Runner tokens.
    Runner,
    /// Runner tokens, or a role globally.
    RunnerOr(u8),
}

const READ: u8 = 1;
const TRIGGER: u8 = 2;
const PUSH: u8 = 3;
const MAINTAIN: u8 = 4;
const ADMIN: u8 = 5;

fn policy(path: &str) -> Need {
    use Need::*;
    let method = path.trim_start_matches("/viaduct.v1.");
    match method {
        "Runs/Submit" => Global(TRIGGER),
        "Runs/Trigger" | "Runs/Cancel" | "Runs/Retry" | "Runs/Approve" => Repo(TRIGGER),
        "Runs/Get" | "Runs/List" | "Runs/Watch" | "Logs/Follow" | "Logs/Get" => Repo(READ),
        "Artifacts/List" | "Artifacts/Download" | "Artifacts/Link" | "Repos/Get" => Repo(READ),
        "Repos/List" | "Caches/List" => Somewhere(READ),
        "Stats/Get" => Repo(READ),
        "Repos/Sync" | "Debug/Shell" => Repo(PUSH),
        "Repos/Update" | "Secrets/Set" | "Secrets/Delete" | "Caches/Delete" => Repo(MAINTAIN),
        "Secrets/List" => Somewhere(MAINTAIN),
        "Environments/Get" | "Environments/List" | "Deployments/List" | "Services/List" | "Services/Get" => Repo(READ),
        "Environments/Put" | "Environments/Delete" | "Services/Delete" => Repo(MAINTAIN),
        "Deployments/Promote" | "Deployments/Rollback" => Repo(TRIGGER),
        // By id: the deployment's repository decides, after the gate.
        "Deployments/Get" => Somewhere(READ),
        "Deployments/Approve" | "Deployments/Reject" => Somewhere(TRIGGER),
        "Repos/Create" | "Repos/Delete" => Global(ADMIN),
        "Pipelines/Validate" | "Pipelines/Get" | "Pipelines/List" | "Pipelines/Schema" => Global(READ),
        "Pipelines/Create" | "Pipelines/Update" | "Pipelines/Delete" => Global(MAINTAIN),
        "Runners/List" | "Runners/Get" | "Runners/Stats" | "Runners/Pending" | "Runners/Watch" | "Caches/Stats" => {
            Global(READ)
        }
        "Runners/Drain" | "Runners/Remove" | "Runners/Update" | "Runners/CreateRegistrationToken" => Global(ADMIN),
        "Plugins/Publish" => Global(ADMIN),
        "Plugins/List" | "Plugins/Get" | "Plugins/Fetch" => RunnerOr(READ),
        "Tokens/Create" | "Tokens/List" | "Tokens/Revoke" | "Tokens/Rotate" | "Tokens/Whoami" => Signed,
        "Users/Create" | "Users/Get" | "Users/List" | "Users/Update" | "Users/Delete" | "Audit/List" => Global(ADMIN),
        "Admin/Prune" | "Admin/Status" => Global(ADMIN),
        "RunnerAgent/Register" => Open,
        "RunnerAgent/Connect"
        | "RunnerAgent/FetchSource"
        | "RunnerAgent/RestoreCache"
        | "RunnerAgent/SaveCache"
        | "RunnerAgent/UploadArtifact"
        | "RunnerAgent/SaveSnapshot"
        | "RunnerAgent/RestoreSnapshot"
        | "RunnerAgent/FindReuse"
        | "RunnerAgent/FetchArtifacts"
        | "RunnerAgent/DebugSession" => Runner,
        other => panic!("{other}: a method the policy of this test does not know — add it here and to the docs"),
    }
}

/// Who calls.
#[derive(Debug, Clone)]
struct Who {
    label: &'static str,
    token: Option<String>,
    /// Role everywhere (0: none).
    global: u8,
    /// Role on `app` only.
    on_app: u8,
    runner: bool,
}

impl Who {
    fn person(&self) -> bool {
        self.token.is_some() && !self.runner && self.label != "bogus token"
    }

    fn allowed(&self, need: Need, target: &str) -> bool {
        match need {
            Need::Open => true,
            Need::Runner => self.runner,
            Need::RunnerOr(r) => self.runner || (self.person() && self.global >= r),
            Need::Signed => self.person(),
            Need::Global(r) => self.person() && self.global >= r,
            Need::Somewhere(r) => self.person() && (self.global >= r || self.on_app >= r),
            Need::Repo(r) => self.person() && (self.global >= r || (target == "app" && self.on_app >= r)),
        }
    }
}

/// The runs the requests name.
struct Fixture {
    run: std::collections::HashMap<&'static str, String>,
}

/// A request for `path` about repository `target` ("app" or "other").
fn request(path: &str, target: &str, f: &Fixture) -> Vec<u8> {
    let run = f.run[target].clone();
    let method = path.trim_start_matches("/viaduct.v1.");
    match method {
        "Runs/Trigger" => v1::TriggerRequest { repo: target.into(), ..Default::default() }.encode_to_vec(),
        "Runs/Get" => v1::GetRunRequest { id: run }.encode_to_vec(),
        "Runs/Cancel" => v1::CancelRunRequest { id: run, ..Default::default() }.encode_to_vec(),
        "Runs/Retry" => v1::RetryRunRequest { id: run, ..Default::default() }.encode_to_vec(),
        "Runs/Approve" => v1::ApproveRunRequest { id: run }.encode_to_vec(),
        "Runs/List" => v1::ListRunsRequest { repo: target.into(), ..Default::default() }.encode_to_vec(),
        "Runs/Watch" => v1::WatchRequest { run_id: run, from_start: true, ..Default::default() }.encode_to_vec(),
        "Logs/Follow" => v1::FollowRequest {
            scope: Some(v1::follow_request::Scope::RunId(run)),
            no_follow: true,
            ..Default::default()
        }
        .encode_to_vec(),
        "Logs/Get" => v1::GetLogRequest { step_id: format!("{run}.1.1"), ..Default::default() }.encode_to_vec(),
        "Artifacts/List" => v1::ListArtifactsRequest { run_id: run, ..Default::default() }.encode_to_vec(),
        "Artifacts/Download" | "Artifacts/Link" => {
            v1::DownloadArtifactRequest { run_id: run, name: "nothing".into(), ..Default::default() }.encode_to_vec()
        }
        "Repos/Get" => v1::GetRepoRequest { name: target.into() }.encode_to_vec(),
        "Repos/Sync" => v1::SyncRepoRequest { name: target.into(), ..Default::default() }.encode_to_vec(),
        // No snapshot: an allowed caller gets NOT_FOUND.
        "Debug/Shell" => v1::ShellInput {
            msg: Some(v1::shell_input::Msg::Open(v1::ShellOpen { job_id: format!("{run}.1"), ..Default::default() })),
        }
        .encode_to_vec(),
        "Admin/Prune" => v1::PruneRequest { dry_run: true }.encode_to_vec(),
        "Stats/Get" => v1::StatsRequest { repo: target.into(), ..Default::default() }.encode_to_vec(),
        "Repos/Update" => v1::UpdateRepoRequest { name: target.into(), ..Default::default() }.encode_to_vec(),
        "Secrets/Set" => v1::SetSecretRequest {
            name: format!("SET_{}", target.to_uppercase()),
            value: "value-1234".into(),
            scope: Some(v1::SecretScope { repos: vec![target.into()], ..Default::default() }),
        }
        .encode_to_vec(),
        "Secrets/Delete" => v1::DeleteSecretRequest { name: format!("KEEP_{}", target.to_uppercase()) }.encode_to_vec(),
        "Caches/Delete" => v1::DeleteCacheRequest { scope: target.into(), ..Default::default() }.encode_to_vec(),
        "Environments/Put" => {
            v1::PutEnvironmentRequest { repo: target.into(), name: "staging".into(), ..Default::default() }
                .encode_to_vec()
        }
        "Environments/Get" => v1::GetEnvironmentRequest { repo: target.into(), name: "staging".into() }.encode_to_vec(),
        // A name that does not exist: allowed callers get NOT_FOUND.
        "Environments/Delete" => {
            v1::GetEnvironmentRequest { repo: target.into(), name: "ghost".into() }.encode_to_vec()
        }
        "Environments/List" => v1::ListEnvironmentsRequest { repo: target.into() }.encode_to_vec(),
        "Deployments/List" => v1::ListDeploymentsRequest { repo: target.into(), ..Default::default() }.encode_to_vec(),
        "Deployments/Promote" => {
            v1::PromoteRequest { repo: target.into(), from: "staging".into(), to: "ghost".into() }.encode_to_vec()
        }
        "Deployments/Rollback" => {
            v1::RollbackRequest { repo: target.into(), environment: "ghost".into(), ..Default::default() }
                .encode_to_vec()
        }
        "Services/List" => v1::ListServicesRequest { repo: target.into(), ..Default::default() }.encode_to_vec(),
        "Services/Get" | "Services/Delete" => {
            v1::GetServiceRequest { repo: target.into(), environment: "staging".into(), name: "ghost".into() }
                .encode_to_vec()
        }
        // Repos/Delete names a repository that does not exist: allowed
        // callers get NOT_FOUND, and nothing is lost for the next caller.
        "Repos/Delete" => v1::GetRepoRequest { name: "ghost".into() }.encode_to_vec(),
        "RunnerAgent/Register" => {
            v1::RegisterRequest { registration_token: "vdr_nope".into(), ..Default::default() }.encode_to_vec()
        }
        // Everything else: an empty request (the handler refuses it as
        // invalid or not found — after the gate let it in).
        _ => Vec::new(),
    }
}

async fn user_token(admin: &Client, name: &str, grants: Vec<v1::Grant>) -> String {
    let user = v1::User { name: name.into(), grants, ..Default::default() };
    admin.users().create(user).await.unwrap();
    let req = v1::CreateTokenRequest { name: format!("{name}'s token"), user: name.into(), ..Default::default() };
    admin.tokens().create(req).await.unwrap().into_inner().secret
}

fn grant(role: u8, repo: &str) -> v1::Grant {
    v1::Grant { role: i32::from(role), repo: repo.into() }
}

/// Two hosted repositories, `app` and `other`, each with a run.
async fn two_repos(server: &Server, client: &Client) -> Fixture {
    let pipeline = "on:\n  push: { branches: [main] }\njobs:\n  j:\n    steps:\n      - run: echo hi\n";
    let mut run = std::collections::HashMap::new();
    for name in ["app", "other"] {
        let repo = create_hosted(client, name).await;
        let wt = work_tree(pipeline);
        git(wt.path(), &["push", "-q", &repo.path, "main"]);
        let id = eventually("a run of the push", || async {
            let req = v1::ListRunsRequest { repo: name.into(), ..Default::default() };
            client.runs().list(req).await.ok()?.into_inner().runs.first().map(|r| r.id.clone())
        })
        .await;
        run.insert(name, id);
    }
    let _ = server;
    Fixture { run }
}

async fn keep_secrets(admin: &Client) {
    for repo in ["app", "other"] {
        let req = v1::SetSecretRequest {
            name: format!("KEEP_{}", repo.to_uppercase()),
            value: "kept-value".into(),
            scope: Some(v1::SecretScope { repos: vec![repo.into()], ..Default::default() }),
        };
        admin.secrets().set(req).await.unwrap();
    }
}

/// The role table, walked: every method of every service (from the API's
/// own descriptors, so a new RPC cannot be missed) and every HTTP route,
/// called by each kind of principal — no token, a bogus token, a runner,
/// each role globally, each role on one repository, a service token and the
/// first-start admin token — about a repository it may act on and one it
/// may not. Allowed calls get past the gate (whatever the handler then
/// says of the request); denied ones get UNAUTHENTICATED/PERMISSION_DENIED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_is_allowed_exactly_what_the_table_says() {
    // No limit on failed authentications: this test fails hundreds on purpose.
    let server = Server::start_with(&["--auth-failures-per-minute", "0"]);
    let runner = server.runner("linux", 1);
    let admin = server.client().await;
    let fixture = two_repos(&server, &admin).await;
    let runner_token = eventually("the runner's token", || async {
        let text = std::fs::read_to_string(runner.work_dir().join("runner.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        Some(v["token"].as_str()?.to_string())
    })
    .await;
    let service = {
        let req = v1::CreateTokenRequest {
            name: "dashboard".into(),
            service: true,
            grants: vec![grant(READ, "")],
            ..Default::default()
        };
        admin.tokens().create(req).await.unwrap().into_inner().secret
    };
    let mut callers = vec![
        Who { label: "no token", token: None, global: 0, on_app: 0, runner: false },
        Who { label: "bogus token", token: Some("vdt_bogus".into()), global: 0, on_app: 0, runner: false },
        Who { label: "runner", token: Some(runner_token), global: 0, on_app: 0, runner: true },
        Who { label: "service token (read)", token: Some(service), global: READ, on_app: 0, runner: false },
        Who { label: "first-start admin", token: Some(server.admin_token()), global: ADMIN, on_app: 0, runner: false },
    ];
    let roles = [("read", READ), ("trigger", TRIGGER), ("push", PUSH), ("maintain", MAINTAIN), ("admin", ADMIN)];
    for (word, role) in roles {
        let label: &'static str = Box::leak(format!("{word} everywhere").into_boxed_str());
        let token = user_token(&admin, &format!("global-{word}"), vec![grant(role, "")]).await;
        callers.push(Who { label, token: Some(token), global: role, on_app: 0, runner: false });
        let label: &'static str = Box::leak(format!("{word} on app").into_boxed_str());
        let token = user_token(&admin, &format!("app-{word}"), vec![grant(role, "app")]).await;
        callers.push(Who { label, token: Some(token), global: 0, on_app: role, runner: false });
    }
    // A user with read everywhere whose token asks for maintain on app: a
    // token is never more than its user.
    let capped = {
        admin
            .users()
            .create(v1::User { name: "capped".into(), grants: vec![grant(READ, "")], ..Default::default() })
            .await
            .unwrap();
        let req = v1::CreateTokenRequest {
            name: "wants more".into(),
            user: "capped".into(),
            grants: vec![grant(MAINTAIN, "app")],
            ..Default::default()
        };
        admin.tokens().create(req).await.unwrap().into_inner().secret
    };
    callers.push(Who {
        label: "maintain:app token of a read user",
        token: Some(capped),
        global: 0,
        on_app: READ,
        runner: false,
    });

    let fds = prost_types::FileDescriptorSet::decode(v1::FILE_DESCRIPTOR_SET).unwrap();
    let mut methods = Vec::new();
    for file in &fds.file {
        for service in &file.service {
            for method in &service.method {
                methods.push(format!("/{}.{}/{}", file.package(), service.name(), method.name()));
            }
        }
    }
    assert!(methods.len() >= 50, "{methods:?}");
    let channel = tonic::transport::Endpoint::from_shared(server.url()).unwrap().connect().await.unwrap();
    let mut wrong = Vec::new();
    let mut checked = 0;
    for path in &methods {
        let need = policy(path);
        let targets: &[&str] = if matches!(need, Need::Repo(_)) { &["app", "other"] } else { &["app"] };
        for who in &callers {
            for target in targets {
                if path.ends_with("Secrets/Delete") {
                    keep_secrets(&admin).await;
                }
                let code = call(&channel, who.token.as_deref(), path, request(path, target, &fixture)).await;
                let expected = who.allowed(need, target);
                let denied = matches!(code, Code::Unauthenticated | Code::PermissionDenied);
                // Registration is open: every caller reaches the handler,
                // which refuses the unknown registration token.
                let got_in =
                    if path.ends_with("RunnerAgent/Register") { code == Code::Unauthenticated } else { !denied };
                if got_in != expected {
                    wrong.push(format!(
                        "{path} by {} about {target}: expected {}, got {code:?}",
                        who.label,
                        if expected { "allowed" } else { "denied" }
                    ));
                }
                checked += 1;
            }
        }
    }
    // HTTP routes, about `app` and (those that name a repository) `other`,
    // with the status an allowed caller gets: 200 — or, for the debug
    // shell's WebSocket asked without an upgrade, 400 from past the gate.
    let git = |repo: &str, service: &str| format!("/git/{repo}.git/info/refs?service=git-{service}");
    let shell = |repo: &str| format!("/debug/shell?job={}.1", fixture.run[repo]);
    let routes: Vec<(String, &str, Need, u16)> = vec![
        ("/metrics".into(), "", Need::Global(READ), 200),
        (git("app", "upload-pack"), "app", Need::Repo(READ), 200),
        (git("other", "upload-pack"), "other", Need::Repo(READ), 200),
        (git("app", "receive-pack"), "app", Need::Repo(PUSH), 200),
        (git("other", "receive-pack"), "other", Need::Repo(PUSH), 200),
        (shell("app"), "app", Need::Repo(PUSH), 400),
        (shell("other"), "other", Need::Repo(PUSH), 400),
    ];
    for (route, target, need, allowed) in &routes {
        for who in callers.iter().filter(|w| !w.runner) {
            let auth = who.token.as_ref().map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
            let status = http(server.addr(), "GET", route, &headers, b"").0;
            let expected = who.allowed(*need, target);
            if (status == *allowed) != expected {
                wrong.push(format!("GET {route} by {}: expected {expected}, got HTTP {status}", who.label));
            }
            checked += 1;
        }
    }
    assert!(wrong.is_empty(), "{} of {checked} checks disagree with the policy:\n{}", wrong.len(), wrong.join("\n"));
    eprintln!("{checked} (method or route, caller, repository) checks agree with the policy");
}

async fn client_with(server: &Server, token: &str) -> Client {
    Client::connect_with(&server.url(), Some(token.to_string()), &server.transport()).await.unwrap()
}

fn code_of<T: std::fmt::Debug>(r: Result<T, Status>) -> Code {
    r.map(|_| ()).err().map_or(Code::Ok, |s| s.code())
}

/// Tokens through the CLI: named, scoped to a repository and a role,
/// listed with their last use, revoked at once — also for a log stream and
/// a watch the token holds open — and expiring; a token never exceeds its
/// user, and a removed user's tokens stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_scoped_listed_revoked_at_once_and_expire() {
    let server = Server::start();
    let admin = server.client().await;
    let fixture = two_repos(&server, &admin).await;
    let ada = user_token(&admin, "ada", vec![grant(MAINTAIN, "app")]).await;
    // Ada makes herself a read-only token for app with the CLI.
    let out = viaduct_tests::output(server.cli().env("VIADUCT_TOKEN", &ada).args([
        "tokens",
        "create",
        "ci-reader",
        "--grant",
        "read:app",
    ]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reader = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(reader.starts_with("vdt_"), "{reader}");
    // More than she has is refused.
    let out = viaduct_tests::output(
        server.cli().env("VIADUCT_TOKEN", &ada).args(["tokens", "create", "greedy", "--grant", "admin"]),
    );
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("more than it has"));

    let r = client_with(&server, &reader).await;
    let me = r.tokens().whoami(v1::WhoamiRequest {}).await.unwrap().into_inner();
    assert_eq!((me.name.as_str(), me.grants.clone()), ("ada", vec![grant(READ, "app")]));
    let get = |id: &str| v1::GetRunRequest { id: id.to_string() };
    r.runs().get(get(&fixture.run["app"])).await.unwrap();
    assert_eq!(code_of(r.runs().get(get(&fixture.run["other"])).await), Code::PermissionDenied);
    let cancel = v1::CancelRunRequest { id: fixture.run["app"].clone(), ..Default::default() };
    assert_eq!(code_of(r.runs().cancel(cancel).await), Code::PermissionDenied);
    // Lists show only what the token may read.
    let runs = r.runs().list(v1::ListRunsRequest::default()).await.unwrap().into_inner().runs;
    assert!(!runs.is_empty() && runs.iter().all(|run| run.source.as_ref().unwrap().repo == "app"), "{runs:?}");
    let repos = r.repos().list(v1::ListReposRequest {}).await.unwrap().into_inner().repos;
    assert_eq!(repos.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["app"]);

    // Listed, with its last use.
    let out = viaduct_tests::output(server.cli().env("VIADUCT_TOKEN", &ada).args(["tokens", "list", "--json"]));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = list.as_array().unwrap().iter().find(|t| t["name"] == "ci-reader").expect("listed").clone();
    assert_eq!(entry["grants"], serde_json::json!(["read:app"]));
    assert!(entry["last_used_at"].is_string(), "{entry}");
    assert!(!list.to_string().contains(&reader), "a secret was listed");
    let id = entry["id"].as_str().unwrap().to_string();

    // Open streams: a log follower and a watcher of app's run.
    let mut follow = r
        .logs()
        .follow(v1::FollowRequest {
            scope: Some(v1::follow_request::Scope::RunId(fixture.run["app"].clone())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut watch = r
        .runs()
        .watch(v1::WatchRequest { run_id: fixture.run["app"].clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    // Revoked by its user, through the CLI.
    let out = viaduct_tests::output(server.cli().env("VIADUCT_TOKEN", &ada).args(["tokens", "revoke", &id]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let end_of_follow = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match follow.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return Code::Ok,
                Err(s) => return s.code(),
            }
        }
    })
    .await
    .expect("the follower's stream ended");
    assert_eq!(end_of_follow, Code::Unauthenticated);
    let end_of_watch = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return Code::Ok,
                Err(s) => return s.code(),
            }
        }
    })
    .await
    .expect("the watcher's stream ended");
    assert_eq!(end_of_watch, Code::Unauthenticated);
    assert_eq!(code_of(r.runs().get(get(&fixture.run["app"])).await), Code::Unauthenticated);

    // Expiry.
    let req = v1::CreateTokenRequest { name: "brief".into(), expires_in_seconds: 1, ..Default::default() };
    let brief = client_with(&server, &ada).await.tokens().create(req).await.unwrap().into_inner().secret;
    let b = client_with(&server, &brief).await;
    b.tokens().whoami(v1::WhoamiRequest {}).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = b.tokens().whoami(v1::WhoamiRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("expired"), "{err:?}");

    // Fewer grants for the user cut her tokens at once; removing her ends them.
    let a = client_with(&server, &ada).await;
    let secret = v1::SetSecretRequest {
        name: "APP_KEY".into(),
        value: "app-key-value".into(),
        scope: Some(v1::SecretScope { repos: vec!["app".into()], ..Default::default() }),
    };
    a.secrets().set(secret.clone()).await.unwrap();
    admin
        .users()
        .update(v1::User { name: "ada".into(), grants: vec![grant(READ, "app")], ..Default::default() })
        .await
        .unwrap();
    assert_eq!(code_of(a.secrets().set(secret).await), Code::PermissionDenied);
    admin.users().delete(v1::GetUserRequest { name: "ada".into() }).await.unwrap();
    assert_eq!(code_of(a.tokens().whoami(v1::WhoamiRequest {}).await), Code::Unauthenticated);
}

/// The first-start admin token rotates (its file is rewritten; the old one
/// stops at once); registration tokens are single-use or N-use and expire;
/// the runner registers from a token file, never a command line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_rotates_and_registration_tokens_are_counted() {
    let server = Server::start();
    let old = server.admin_token();
    let admin = server.client().await;
    let me = admin.tokens().whoami(v1::WhoamiRequest {}).await.unwrap().into_inner();
    let out = viaduct_tests::output(server.cli().args(["tokens", "rotate", &me.token_id]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let new = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_ne!(new, old);
    assert_eq!(server.admin_token(), new, "the admin-token file holds the new token");
    assert_eq!(code_of(admin.tokens().whoami(v1::WhoamiRequest {}).await), Code::Unauthenticated);
    let admin = client_with(&server, &new).await;
    admin.tokens().whoami(v1::WhoamiRequest {}).await.unwrap();

    let register = |token: &str| v1::RegisterRequest {
        registration_token: token.to_string(),
        name: "r".into(),
        ..Default::default()
    };
    // N uses.
    let req =
        v1::CreateTokenRequest { name: "fleet".into(), kind: "registration".into(), uses: 2, ..Default::default() };
    let fleet = admin.tokens().create(req).await.unwrap().into_inner();
    assert_eq!(fleet.token.as_ref().unwrap().uses_left, 2);
    assert!(fleet.token.as_ref().unwrap().expires_at.is_some(), "registration tokens expire by default");
    for _ in 0..2 {
        admin.agent().register(register(&fleet.secret)).await.unwrap();
    }
    assert_eq!(code_of(admin.agent().register(register(&fleet.secret)).await), Code::Unauthenticated);
    // Expired.
    let req = v1::CreateTokenRequest {
        name: "brief".into(),
        kind: "registration".into(),
        expires_in_seconds: 1,
        ..Default::default()
    };
    let brief = admin.tokens().create(req).await.unwrap().into_inner().secret;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = admin.agent().register(register(&brief)).await.unwrap_err();
    assert!(err.message().contains("expired"), "{err:?}");
    // A registration token is good for nothing else.
    let one = admin
        .runners()
        .create_registration_token(v1::CreateRegistrationTokenRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.info.unwrap().uses_left, 1);
    let as_api = client_with(&server, &one.token).await;
    assert_eq!(code_of(as_api.runs().list(v1::ListRunsRequest::default()).await), Code::PermissionDenied);
}

/// Guessing tokens: after the allowed failures a client is refused with
/// RESOURCE_EXHAUSTED and a retry delay — before its token is looked at,
/// so even a right guess does not get in — over gRPC and git alike; a
/// token's own call rate is limited when configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_and_busy_tokens_are_rate_limited() {
    let server = Server::start_with(&["--auth-failures-per-minute", "5", "--token-rate-limit", "2"]);
    let guess = client_with(&server, "vdt_guess").await;
    for _ in 0..5 {
        assert_eq!(code_of(guess.tokens().whoami(v1::WhoamiRequest {}).await), Code::Unauthenticated);
    }
    let err = guess.tokens().whoami(v1::WhoamiRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("too many failed authentications"), "{err:?}");
    let secs: u64 = err.metadata().get("retry-after").unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
    let details = tonic_types::StatusExt::get_error_details(&err);
    assert!(details.retry_info().is_some(), "{err:?}");
    // The right token from the same address waits too.
    let admin = server.client().await;
    assert_eq!(code_of(admin.tokens().whoami(v1::WhoamiRequest {}).await), Code::ResourceExhausted);
    let (status, _) = http(
        server.addr(),
        "GET",
        "/git/app.git/info/refs?service=git-upload-pack",
        &[("authorization", &format!("Bearer {}", server.admin_token()))],
        b"",
    );
    assert_eq!(status, 429);
    // After the delay, back in; a busy token then meets its own limit
    // (2 calls a second, bursts of 20).
    tokio::time::sleep(Duration::from_secs(secs + 1)).await;
    let mut codes = Vec::new();
    for _ in 0..40 {
        codes.push(code_of(admin.tokens().whoami(v1::WhoamiRequest {}).await));
    }
    assert_eq!(codes[0], Code::Ok);
    assert!(codes.contains(&Code::ResourceExhausted), "{codes:?}");
}

/// Every privileged action is in the audit log — who, what, on what, from
/// where, and how it ended, refusals included — readable by admins only,
/// through the API and `viaduct audit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_actions_are_in_the_audit_log() {
    let server = Server::start();
    let admin = server.client().await;
    let repo = create_hosted(&admin, "app").await;
    let reader = user_token(&admin, "rita", vec![grant(READ, "")]).await;
    let rita = client_with(&server, &reader).await;
    let secret = v1::SetSecretRequest { name: "DEPLOY".into(), value: "deploy-key-1".into(), scope: None };
    admin.secrets().set(secret.clone()).await.unwrap();
    assert_eq!(code_of(rita.secrets().set(secret).await), Code::PermissionDenied);
    assert_eq!(code_of(rita.audit().list(v1::ListAuditRequest::default()).await), Code::PermissionDenied);
    // A git push over HTTP, by a pusher.
    let pusher = user_token(&admin, "pat", vec![grant(PUSH, "app")]).await;
    let wt = work_tree("jobs:\n  j:\n    steps:\n      - run: true\n");
    let url = repo.clone_url.replace("http://", &format!("http://pat:{pusher}@"));
    git(wt.path(), &["push", "-q", &url, "main"]);

    let out = viaduct_tests::output(server.cli().args(["audit", "--json", "--limit", "100"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let entries: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let find = |actor: &str, action: &str| {
        entries
            .iter()
            .find(|e| e["actor"] == actor && e["action"] == action)
            .unwrap_or_else(|| panic!("no {action} by {actor} in {entries:#?}"))
            .clone()
    };
    let set = find("first-start admin token", "viaduct.v1.Secrets/Set");
    assert_eq!((set["target"].as_str(), set["outcome"].as_str()), (Some("secret `DEPLOY`"), Some("ok")));
    assert!(set["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{set}");
    let refused = find("rita", "viaduct.v1.Secrets/Set");
    assert_eq!(refused["outcome"], "permission denied");
    let push = find("pat", "git push");
    assert_eq!((push["target"].as_str(), push["outcome"].as_str()), (Some("repository `app`"), Some("ok")));
    find("first-start admin token", "viaduct.v1.Users/Create");
    find("first-start admin token", "viaduct.v1.Tokens/Create");
    // Newest first, and paged.
    let ids: Vec<u64> = entries.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    let page = admin
        .audit()
        .list(v1::ListAuditRequest { limit: 2, before_id: ids[0], ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), ids[1..3].to_vec());
    // A reader sees no webhook secret; no secret value is in the log.
    let seen = rita.repos().get(v1::GetRepoRequest { name: "app".into() }).await.unwrap().into_inner();
    assert!(seen.webhook_secret.is_empty());
    assert!(!format!("{entries:?}").contains("deploy-key-1"));
}
