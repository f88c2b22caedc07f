//! Run retention through the real server, runner and CLI: a dry run lists
//! what would go and removes nothing; a pass removes exactly the runs no
//! rule keeps, with their logs; a repository's and a stored pipeline's
//! policy override the server's, and only through the API (admins prune;
//! policies are bounded).

use viaduct_tests::{
    Server, eventually, finished,
    forge::{create_hosted, git, runs_of, work_tree},
    output, submit, v1, word,
};

fn pipeline(exit: u8) -> String {
    format!("name: p\njobs:\n  j:\n    steps:\n      - run: echo line-{exit}; exit {exit}\n")
}

/// `viaduct admin prune [--dry-run] --json`.
fn prune(server: &Server, dry_run: bool) -> serde_json::Value {
    let mut cmd = server.cli();
    cmd.args(["admin", "prune", "--json"]);
    if dry_run {
        cmd.arg("--dry-run");
    }
    let out = output(&mut cmd);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

fn ids(report: &serde_json::Value) -> Vec<String> {
    report["removed_run_ids"]
        .as_array()
        .map_or_else(Vec::new, |a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_what_no_rule_keeps_and_a_dry_run_nothing() {
    let server = Server::start_with(&[
        "--keep-runs-for",
        "1s",
        "--keep-runs-last",
        "1",
        "--keep-last-success",
        "true",
        "--retention-every",
        "0",
    ]);
    let client = server.client().await;
    let _runner = server.runner("linux", 1);

    // Oldest first: success, failure, success, failure. The newest is kept
    // as the last run of `p`, the third as its last success.
    let mut runs = Vec::new();
    for exit in [0, 1, 0, 1] {
        let id = submit(&client, &pipeline(exit)).await;
        finished(&client, &id).await;
        runs.push(id);
    }
    let doomed = vec![runs[0].clone(), runs[1].clone()];
    // Once a second has passed and their logs are packed, two would go.
    let dry = eventually("a dry run to name the two oldest runs", || async {
        let r = prune(&server, true);
        (ids(&r) == doomed).then_some(r)
    })
    .await;
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["kept_last"], 1);
    assert_eq!(dry["kept_last_success"], 1);
    for id in &runs {
        client.runs().get(v1::GetRunRequest { id: id.clone() }).await.expect("a dry run removes nothing");
    }

    let done = prune(&server, false);
    assert_eq!(ids(&done), doomed);
    assert!(done["records_removed"].as_u64().unwrap_or(0) >= 2 * 4, "runs, jobs, steps, logs: {done}");
    for id in &doomed {
        let e = client.runs().get(v1::GetRunRequest { id: id.clone() }).await.expect_err("removed");
        assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
        let log = v1::GetLogRequest { step_id: format!("{id}.1.1"), ..Default::default() };
        let e = client.logs().get(log).await.expect_err("its log went with it");
        assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    }
    for (id, exit) in [(&runs[2], 0), (&runs[3], 1)] {
        let log = viaduct_tests::step_log(&client, &format!("{id}.1.1")).await;
        assert!(log.contains(&format!("line-{exit}")), "kept runs keep their logs: {log}");
    }
    let listed = client.runs().list(v1::ListRunsRequest::default()).await.expect("list").into_inner().runs;
    assert_eq!(listed.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), vec![runs[3].clone(), runs[2].clone()]);
    assert_eq!(ids(&prune(&server, false)), Vec::<String>::new(), "nothing more to remove");

    // The admin status: the store per tree, the last pass, the backlog.
    let out = output(server.cli().args(["admin", "status", "--json"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON status");
    let runs = status["trees"].as_array().and_then(|t| t.iter().find(|t| t["name"] == "runs")).cloned();
    assert_eq!(runs.as_ref().map(|t| t["records"].clone()), Some(serde_json::json!(2)), "{status}");
    assert_eq!(status["store"], "sled");
    assert!(status["store_file_bytes"].as_u64() > Some(0), "{status}");
    assert_eq!((status["retention_backlog"].clone(), status["refusing_new_work"].clone()), (0.into(), false.into()));
    assert_eq!(status["last_prune"]["runs_removed"], 0, "the last pass removed nothing: {status}");
    let text = String::from_utf8(output(server.cli().args(["admin", "status"])).stdout).unwrap();
    assert!(text.contains("accepting new work") && text.contains("TREE"), "{text}");

    // A stored pipeline kept forever: its runs stay whatever the server says.
    let forever = v1::RetentionPolicy { keep_for_seconds: Some(0), ..Default::default() };
    let req = v1::CreatePipelineRequest { name: "kept".into(), yaml: pipeline(1), retention: Some(forever) };
    client.pipelines().create(req).await.expect("store a pipeline");
    let mut kept = Vec::new();
    for _ in 0..2 {
        let req = v1::TriggerRequest { pipeline: "kept".into(), ..Default::default() };
        let id = client.runs().trigger(req).await.expect("trigger").into_inner().run_id;
        assert_eq!(word(finished(&client, &id).await.status), "failure");
        kept.push(id);
    }

    // A repository's policy, set with the CLI.
    let repo = create_hosted(&client, "app").await;
    let out =
        output(server.cli().args(["repos", "retention", "app", "--keep-last", "0", "--keep-last-success", "false"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "keeps runs for the server's time, at least the last 0, not the last success of each branch"
    );
    let wt = work_tree(&format!("on:\n  push: {{ branches: [main] }}\n{}", pipeline(0)));
    git(wt.path(), &["push", "-q", &repo.path, "main"]);
    let pushed = eventually("the push's run", || async { runs_of(&client, "app").await.pop() }).await;
    finished(&client, &pushed.id).await;

    let report = eventually("the repository's run to go, and only it", || async {
        let r = prune(&server, false);
        (!ids(&r).is_empty()).then_some(r)
    })
    .await;
    assert_eq!(ids(&report), vec![pushed.id.clone()], "{report}");
    assert!(report["kept_forever"].as_u64() >= Some(2), "{report}");
    for id in &kept {
        client.runs().get(v1::GetRunRequest { id: id.clone() }).await.expect("kept forever");
    }

    // Policies are bounded, and set only through the API.
    let bad = v1::RetentionPolicy { keep_last: Some(2_000_000), ..Default::default() };
    let e = client
        .repos()
        .update(v1::UpdateRepoRequest { name: "app".into(), retention: Some(bad), ..Default::default() })
        .await
        .expect_err("too many");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let e = client.repos().update(v1::UpdateRepoRequest { name: "app".into(), ..Default::default() }).await;
    assert_eq!(e.expect_err("nothing to change").code(), tonic::Code::InvalidArgument);
    let shown = output(server.cli().args(["repos", "get", "app"]));
    assert!(String::from_utf8_lossy(&shown.stdout).contains("not the last success"), "{shown:?}");
}
