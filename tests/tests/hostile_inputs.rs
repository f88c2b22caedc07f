//! Hostile inputs through the real server: files small as text but huge
//! once expanded or evaluated are refused quickly with a precise status
//! (`InvalidArgument`, a `file:line:column` violation), and the server goes
//! on serving.

use std::fmt::Write as _;

use tonic_types::StatusExt as _;
use viaduct_tests::{Server, finished, submit, v1, word};

async fn refused(client: &viaduct_sdk::Client, yaml: &str) -> tonic::Status {
    let req = v1::SubmitRequest {
        source: Some(v1::submit_request::Source::PipelineYaml(yaml.to_string())),
        file_name: "hostile.yml".into(),
        ..Default::default()
    };
    client.runs().submit(req).await.expect_err("refused")
}

/// The `file:line:column` of each violation.
fn places(status: &tonic::Status) -> Vec<String> {
    let details = status.get_details_bad_request().expect("BadRequest details");
    details.field_violations.iter().map(|v| v.field.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_that_explode_when_expanded_or_evaluated_are_refused_where_they_do() {
    let server = Server::start();
    let client = server.client().await;
    let _runner = server.runner("linux", 1);

    // Billion laughs: nine lines of aliases of aliases.
    let mut laughs = String::from("x0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..9 {
        let p = i - 1;
        let _ = writeln!(laughs, "x{i}: &x{i} [*x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}]");
    }
    laughs.push_str("jobs:\n  j:\n    steps:\n      - run: true\n");
    let s = refused(&client, &laughs).await;
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(s.message().contains("more than 100000 nodes with its aliases expanded"), "{}", s.message());
    assert_eq!(places(&s), ["hostile.yml:5:45"]);

    // A run of over 1000 jobs once its matrices are expanded.
    let mut wide = String::from("jobs:\n");
    for j in 0..5 {
        let _ = write!(wide, "  m{j}:\n    matrix: {{ a: [");
        for i in 0..250 {
            let _ = write!(wide, "{i}, ");
        }
        wide.push_str("] }\n    steps:\n      - run: true\n");
    }
    let s = refused(&client, &wide).await;
    assert!(s.message().contains("job `m4` takes the run past 1000 jobs"), "{}", s.message());
    assert_eq!(places(&s), ["hostile.yml:18:3"]);

    // format() doubling itself 40 times in a value planned on the server.
    let mut e = "'xxxxxxxxxxxxxxxx'".to_string();
    for _ in 0..40 {
        e = format!("format('{{0}}{{0}}', {e})");
    }
    let s = refused(&client, &format!("name: ${{{{ {e} }}}}\njobs:\n  j:\n    steps:\n      - run: true\n")).await;
    assert!(s.message().contains("longer than 262144 bytes"), "{}", s.message());
    assert_eq!(places(&s), ["hostile.yml:1:1"]);

    // A runner's registration with an oversized label or name: refused,
    // and the registration token not spent.
    let token = server.runner_token();
    let register = |labels: Vec<String>, name: String| v1::RegisterRequest {
        registration_token: token.clone(),
        name,
        labels,
        slots: 1,
        ..Default::default()
    };
    for (labels, name) in [
        (vec!["x".repeat(256)], "r".to_string()),
        (vec![String::new()], "r".to_string()),
        ((0..101).map(|i| format!("l{i}")).collect(), "r".to_string()),
        (vec!["linux".to_string()], "n".repeat(256)),
        // A runner may claim toolchain labels itself: none is given.
        (vec!["docker".to_string()], "r".to_string()),
    ] {
        let s = client.agent().register(register(labels, name)).await.expect_err("refused");
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    }
    client.agent().register(register(vec!["linux".into()], "fine".into())).await.expect("a bounded registration");

    // The server is still well.
    let id = submit(&client, "jobs:\n  j:\n    steps:\n      - run: true\n").await;
    assert_eq!(word(finished(&client, &id).await.status), "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_flooding_its_log_keeps_only_its_limit_and_goes_on() {
    let server = Server::start_with(&["--max-step-log", "64k"]);
    let client = server.client().await;
    let _runner = server.runner("linux", 1);
    let id = submit(
        &client,
        "jobs:\n  j:\n    steps:\n      - name: flood\n        run: head -c 3000000 /dev/zero | tr '\\0' x; echo; echo done\n      - name: after\n        run: echo after\n",
    )
    .await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success", "the step goes on past its log limit");
    let flood = &run.jobs[0].steps[0];
    assert_eq!(flood.message, "its log was cut at the limit of 65536 bytes");
    assert!(flood.log_size > 65_536 && flood.log_size < 65_536 + 1024, "{}", flood.log_size);
    let log = viaduct_tests::step_log(&client, &flood.id).await;
    assert!(log.ends_with("the rest of its output is not kept]\n"), "{}", &log[log.len() - 200..]);
    assert!(!log.contains("done"));
    assert_eq!(viaduct_tests::step_log(&client, &run.jobs[0].steps[1].id).await, "after\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_flooding_its_log_across_steps_keeps_only_its_limit_and_goes_on() {
    let server = Server::start_with(&["--max-step-log", "1m", "--max-job-log", "64k"]);
    let client = server.client().await;
    let _runner = server.runner("linux", 1);
    let flood = "run: head -c 40000 /dev/zero | tr '\\0' x; echo";
    let id = submit(
        &client,
        &format!("jobs:\n  j:\n    steps:\n      - {flood}\n      - {flood}\n      - {flood}\n      - run: 'true'\n"),
    )
    .await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success", "the steps go on past the job's log limit");
    let steps = &run.jobs[0].steps;
    assert_eq!(steps[0].log_size, 40_001);
    assert_eq!(steps[0].message, "");
    let marker =
        "[viaduct: this job's log reached its limit of 65536 bytes; the rest of this step's output is not kept]\n";
    let second = viaduct_tests::step_log(&client, &steps[1].id).await;
    assert_eq!(second.len(), 65_536 - 40_001 + marker.len() + 1, "{}", &second[second.len() - 200..]);
    assert!(second.ends_with(marker));
    assert_eq!(viaduct_tests::step_log(&client, &steps[2].id).await, format!("\n{marker}"));
    for s in &steps[1..3] {
        assert_eq!(s.message, "its log was cut at the job's limit of 65536 bytes");
    }
    assert_eq!(steps[3].log_size, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_uploading_too_many_or_too_large_artifacts_fails_and_keeps_the_rest() {
    let server = Server::start_with(&["--max-artifacts-per-job", "3", "--max-artifact-bytes-per-job", "1m"]);
    let client = server.client().await;
    let _runner = server.runner("linux", 1);
    let id = submit(
        &client,
        "jobs:\n  many:\n    artifacts: [out/]\n    steps:\n      - run: mkdir out && for i in 1 2 3 4 5; do echo $i > out/$i; done\n  \
         big:\n    artifacts: [a.bin, b.bin]\n    steps:\n      - run: head -c 600000 /dev/zero > a.bin && cp a.bin b.bin\n",
    )
    .await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "failure");
    let job = |name: &str| run.jobs.iter().find(|j| j.name == name).expect("job");
    let many = job("many");
    assert_eq!(word(many.status), "failure");
    assert!(
        many.message.starts_with("uploading artifacts failed:") && many.message.contains("--max-artifacts-per-job"),
        "{}",
        many.message
    );
    let big = job("big");
    assert_eq!(word(big.status), "failure");
    assert!(big.message.contains("--max-artifact-bytes-per-job"), "{}", big.message);
    let kept = |job: &str| {
        let client = client.clone();
        let (run, job) = (id.clone(), job.to_string());
        async move {
            let req = v1::ListArtifactsRequest { run_id: run, job_id: job };
            client.artifacts().list(req).await.expect("list").into_inner().artifacts.len()
        }
    };
    assert_eq!(kept(&many.id).await, 3, "the files before the limit stay");
    assert_eq!(kept(&big.id).await, 1);
}
