//! Secrets: set through the CLI, encrypted at rest, given only to jobs that
//! list them, masked in logs.

use std::io::Write;
use std::process::Stdio;

use viaduct_tests::{Server, finished, output, step_log, submit, v1, word};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_only_the_jobs_that_list_them_and_never_the_logs() {
    let server = Server::start();
    let _runner = server.runner("linux", 2);
    let client = server.client().await;
    // From stdin, so the value is not in any command line.
    let mut child = server
        .cli()
        .args(["secrets", "set", "DEPLOY_TOKEN"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hunter2-s3cret\n").unwrap();
    assert!(child.wait().unwrap().success());
    let listed = output(server.cli().args(["secrets", "list"]));
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("DEPLOY_TOKEN") && !listed.contains("hunter2"), "{listed}");

    let id = submit(
        &client,
        r#"
jobs:
  with:
    secrets: [DEPLOY_TOKEN]
    steps:
      - run: |
          [ "${DEPLOY_TOKEN#hunter2-}" = "s3cret" ] && echo "the value is there"
          echo "token=$DEPLOY_TOKEN"
          printf 'split: hunter2-'; printf 's3cret\n'
  without:
    steps:
      - run: echo "token=[$DEPLOY_TOKEN]"
"#,
    )
    .await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success", "{run:#?}");
    let log = step_log(&client, &format!("{id}.1.1")).await;
    assert_eq!(log, "the value is there\ntoken=***\nsplit: ***\n");
    assert_eq!(step_log(&client, &format!("{id}.2.1")).await, "token=[]\n");

    // A job that lists a secret that does not exist fails, saying which.
    let id = submit(&client, "jobs:\n  j:\n    secrets: [NOPE]\n    steps:\n      - run: true\n").await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.jobs[0].status), "failure");
    assert!(run.jobs[0].message.contains("secret `NOPE` is not set"), "{}", run.jobs[0].message);

    // Encrypted at rest: the value appears nowhere in the data directory.
    for entry in walk(&server.data_dir()) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(!bytes.windows(14).any(|w| w == b"hunter2-s3cret"), "{} holds the secret in clear", entry.display());
    }
    // Bad names are refused; deletes work.
    let err = client
        .secrets()
        .set(v1::SetSecretRequest { name: "1BAD".into(), value: "xxxx".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(output(server.cli().args(["secrets", "delete", "DEPLOY_TOKEN"])).status.success());
    assert!(client.secrets().list(v1::ListSecretsRequest {}).await.unwrap().into_inner().secrets.is_empty());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}
