//! `notify:` end to end: the real server and runner, notifications to a
//! webhook sink (signed webhooks, Slack and Matrix formats) and to a real
//! SMTP server (aiosmtpd), fixed/broken against the previous run, secrets'
//! scopes, retries, and a server killed while one waits.

use hmac::{Hmac, KeyInit, Mac};
use viaduct_tests::{Client, Server, finished, output, smtp::Smtp, v1, webhook_sink::WebhookSink, word};

const KEY: &str = "hmac-key-for-hooks";

/// Fails unless input `ok` is `yes`; notifies everyone of everything.
const PIPELINE: &str = r#"name: ci
on:
  manual:
    inputs:
      ok: { default: "no" }
notify:
  - webhook: { url: HOOK_URL, secret: HOOK_KEY }
    on: [success, failure, fixed, broken]
  - slack: SLACK_URL
    on: failure
  - matrix: MATRIX_URL
  - email: [dev@example.com, ops@example.com]
    on: [broken, fixed]
jobs:
  test:
    notify:
      - webhook: JOB_HOOK_URL
        on: [failure]
    steps:
      - run: test "${{ inputs.ok }}" = yes
"#;

async fn set(client: &Client, name: &str, value: &str, repos: Vec<String>) {
    // A server-only secret (a forge token) is never a notification's.
    let scope = v1::SecretScope { repos, server_only: name.starts_with("FORGE"), ..Default::default() };
    client
        .secrets()
        .set(v1::SetSecretRequest { name: name.into(), value: value.into(), scope: Some(scope) })
        .await
        .unwrap();
}

async fn run(client: &Client, ok: bool) -> v1::Run {
    run_file(client, PIPELINE, ok).await
}

async fn run_file(client: &Client, pipeline: &str, ok: bool) -> v1::Run {
    let req = v1::SubmitRequest {
        source: Some(v1::submit_request::Source::PipelineYaml(pipeline.into())),
        inputs: [("ok".to_string(), if ok { "yes" } else { "no" }.to_string())].into(),
        ..Default::default()
    };
    let id = client.runs().submit(req).await.unwrap().into_inner().run_id;
    finished(client, &id).await
}

fn signature(body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn schema() -> jsonschema::Validator {
    let text = include_str!("../../docs/notification.schema.json");
    jsonschema::validator_for(&serde_json::from_str(text).unwrap()).expect("a valid schema")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_fixes_and_breaks_reach_webhooks_slack_matrix_and_email() {
    let sink = WebhookSink::start();
    let Some(smtp) = Smtp::start() else { return };
    let server = Server::start_with(&[
        "--smtp-url",
        &smtp.url(),
        "--smtp-from",
        "Viaduct <ci@example.com>",
        "--smtp-allowed-domains",
        "example.com",
    ]);
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    for (name, path) in
        [("HOOK_URL", "/hook"), ("SLACK_URL", "/slack"), ("MATRIX_URL", "/matrix"), ("JOB_HOOK_URL", "/job")]
    {
        set(&client, name, &format!("{}{path}", sink.url()), vec![]).await;
    }
    set(&client, "HOOK_KEY", KEY, vec![]).await;

    // Failure (nothing before it), then fixed, then broken.
    let first = run(&client, false).await;
    assert_eq!(word(first.status), "failure");
    sink.wait_for("the first failure's notifications", "/matrix", |r| (r.len() == 1).then_some(())).await;
    let second = run(&client, true).await;
    assert_eq!(word(second.status), "success");
    let third = run(&client, false).await;
    sink.wait_for("three webhook notifications", "/hook", |r| (r.len() == 3).then_some(())).await;
    sink.wait_for("two job notifications", "/job", |r| (r.len() == 2).then_some(())).await;
    sink.wait_for("the third's matrix message", "/matrix", |r| (r.len() == 3).then_some(())).await;

    let hooks = sink.received_on("/hook");
    let events: Vec<String> = hooks.iter().map(|h| h.json()["event"].as_str().unwrap().to_string()).collect();
    assert_eq!(events, ["failure", "fixed", "broken"]);
    let schema = schema();
    for (h, run) in hooks.iter().zip([&first, &second, &third]) {
        let payload = h.json();
        assert!(
            schema.is_valid(&payload),
            "{payload:#}: {:?}",
            schema.iter_errors(&payload).map(|e| e.to_string()).collect::<Vec<_>>()
        );
        assert_eq!(h.header("x-viaduct-signature-256"), Some(signature(&h.body).as_str()), "signed with the key");
        assert_eq!(h.header("x-viaduct-event"), payload["event"].as_str());
        assert_eq!(h.header("x-viaduct-delivery"), payload["delivery"].as_str());
        assert_eq!(payload["run"]["id"], run.id.as_str());
        assert_eq!(payload["run"]["url"], format!("{}/runs/{}", server.url(), run.id));
        assert_eq!(payload["jobs"][0]["name"], "test");
    }
    // Job-level: failures only, unsigned.
    let jobs = sink.received_on("/job");
    for j in &jobs {
        let payload = j.json();
        assert!(schema.is_valid(&payload), "{payload:#}");
        assert_eq!(
            (payload["kind"].as_str(), payload["job"]["name"].as_str(), payload["event"].as_str()),
            (Some("job"), Some("test"), Some("failure"))
        );
        assert!(j.header("x-viaduct-signature-256").is_none());
    }
    // Slack: failures only (the third is a failure too); mrkdwn with a link.
    let slack = sink.received_on("/slack");
    assert_eq!(slack.len(), 2, "{slack:?}");
    let text = slack[1].json()["text"].as_str().unwrap().to_string();
    // Slack asks for failures only: the third is one (its broken is for those who ask).
    assert!(text.contains(&format!("<{}/runs/{}|ci failed", server.url(), third.id)), "{text}");
    // Matrix: the default (failure, fixed): failure, fixed, failure.
    let matrix: Vec<String> =
        sink.received_on("/matrix").iter().map(|m| m.json()["html"].as_str().unwrap().to_string()).collect();
    assert!(matrix[1].contains("ci is fixed") && matrix[2].contains("ci failed"), "{matrix:?}");

    // Email: broken and fixed only, to both addresses.
    let mails = viaduct_tests::eventually("two emails", || {
        let m = smtp.messages();
        async move { (m.len() >= 2).then_some(m) }
    })
    .await;
    assert_eq!(mails.len(), 2);
    let subjects: Vec<String> = mails.iter().map(|m| m.header("subject").unwrap()).collect();
    assert!(subjects[0].contains("ci is fixed") && subjects[1].contains("ci is broken"), "{subjects:?}");
    assert!(
        mails[0].header("to").unwrap().contains("ops@example.com")
            && mails[0].header("from").unwrap().contains("ci@example.com")
    );
    assert!(mails[1].raw.contains(&format!("{}/runs/{}", server.url(), third.id)));
    assert!(server.metric("viaduct_notifications_total{result=\"sent\"}") >= 10);
    // No URL or key in the server's log.
    assert!(!server.log().contains(KEY) && !server.log().contains(&format!("{}/hook", sink.url())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_waits_out_failures_and_a_server_kill_and_a_secret_out_of_scope_sends_nothing() {
    let sink = WebhookSink::start();
    let mut server = Server::start();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    set(&client, "HOOK_URL", &format!("{}/hook", sink.url()), vec![]).await;
    set(&client, "HOOK_KEY", KEY, vec![]).await;
    set(&client, "SLACK_URL", &format!("{}/slack", sink.url()), vec!["another-repository".into()]).await;
    // A forge token: never a notification's, even in scope.
    set(&client, "FORGE_TOKEN", &format!("{}/matrix", sink.url()), vec![]).await;
    let pipeline = PIPELINE.replace("matrix: MATRIX_URL", "matrix: FORGE_TOKEN");
    set(&client, "JOB_HOOK_URL", &format!("{}/job", sink.url()), vec![]).await;

    // Refused twice, then taken.
    sink.refuse_next(&[503, 502]);
    let first = run_file(&client, &pipeline, false).await;
    let hook = sink.wait_for("the webhook despite two refusals", "/hook", |r| r.first().cloned()).await;
    assert_eq!(hook.json()["run"]["id"], first.id.as_str());
    // SLACK_URL is scoped to another repository: this run may not use it.
    assert!(sink.received_on("/slack").is_empty());
    assert!(server.log().contains("notification left out"), "the log says why");
    assert!(sink.received_on("/matrix").is_empty(), "a server-only secret is never a notification's");
    assert!(server.log().contains("secret `FORGE_TOKEN` is refused: it is for the server only"));

    // The sink down when the run ends; the server killed; the notification
    // still comes, once, after the restart.
    sink.set_down(true);
    let second = run_file(&client, &pipeline, true).await;
    server.kill9();
    sink.set_down(false);
    server.restart();
    let fixed = sink
        .wait_for("the fixed notification after the restart", "/hook", |r| {
            r.iter().find(|h| h.json()["run"]["id"] == second.id.as_str()).cloned()
        })
        .await;
    assert_eq!(fixed.json()["event"], "fixed");
    let deliveries: Vec<String> =
        sink.received_on("/hook").iter().map(|h| h.header("x-viaduct-delivery").unwrap().to_string()).collect();
    let mut unique = deliveries.clone();
    unique.dedup();
    assert_eq!(unique.len(), deliveries.len(), "each delivered once: {deliveries:?}");
    let shown = output(server.cli().args(["secrets", "list"]));
    assert!(String::from_utf8_lossy(&shown.stdout).contains("server only"));
}
