//! OpenTelemetry traces over OTLP/gRPC, from the real server and runner to
//! a collector's trace service (the documented `TraceService/Export`
//! endpoint, served here): one trace per run — the server's `run` root
//! span and each job's `queued` span, the runner's `job` and `step` spans
//! under it — with the run, job and step ids as attributes. Off by
//! default: without `--otlp-endpoint` nothing is sent.

use std::collections::HashMap;

use viaduct_tests::{
    Runner, Server, eventually, finished,
    otlp::{Collector, ReceivedSpan as Span, attributes},
    submit, v1, word,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_one_trace_across_the_server_and_the_runner() {
    let collector = Collector::default();
    let url = collector.start().await;
    let server = Server::start_with(&["--otlp-endpoint", &url]);
    let client = server.client().await;
    let _runner = Runner::start(&server, "linux", 2, &["--otlp-endpoint", &url]);
    let id = submit(
        &client,
        "jobs:\n  build:\n    steps:\n      - run: echo built\n  test:\n    needs: [build]\n    steps:\n      \
         - run: echo one\n      - run: exit 3\n",
    )
    .await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "failure");

    // Everything arrives within a batch or two.
    let spans = eventually("the run's spans", || async {
        let spans = collector.spans();
        let count = |name: &str| spans.iter().filter(|(_, s)| s.name == name).count();
        (count("run") == 1 && count("queued") == 2 && count("job") == 2 && count("step") == 3).then_some(spans)
    })
    .await;
    let of = |name: &str| -> Vec<(&String, &Span, HashMap<String, String>)> {
        spans.iter().filter(|(_, s)| s.name == name).map(|(svc, s)| (svc, s, attributes(&s.attributes))).collect()
    };
    let (svc, root, attrs) = &of("run")[0];
    assert_eq!(svc.as_str(), "viaduct-server");
    assert!(root.parent_span_id.is_empty(), "the run is the trace's root");
    assert_eq!((attrs["run"].as_str(), attrs["status"].as_str()), (id.as_str(), "failure"));
    assert_eq!(root.status.as_ref().map(|s| s.code), Some(2), "an error status: {:?}", root.status);
    let trace = &root.trace_id;

    let mut queued: Vec<String> = of("queued")
        .into_iter()
        .map(|(svc, s, a)| {
            assert_eq!((svc.as_str(), &s.trace_id, &s.parent_span_id), ("viaduct-server", trace, &root.span_id));
            assert!(s.start_time_unix_nano <= s.end_time_unix_nano);
            a["job"].clone()
        })
        .collect();
    queued.sort();
    assert_eq!(queued, [format!("{id}.1"), format!("{id}.2")]);

    let jobs: HashMap<String, (&Span, HashMap<String, String>)> = of("job")
        .into_iter()
        .map(|(svc, s, a)| {
            assert_eq!((svc.as_str(), &s.trace_id, &s.parent_span_id), ("viaduct-runner", trace, &root.span_id));
            assert_eq!(a["run"], id);
            (a["name"].clone(), (s, a))
        })
        .collect();
    assert_eq!(jobs["build"].1["status"], "success");
    assert_eq!(jobs["test"].1["status"], "failure");
    for (_, s, a) in of("step") {
        let (parent, _) = jobs.values().find(|(j, _)| j.span_id == s.parent_span_id).expect("a step is under its job");
        assert_eq!(&s.trace_id, trace);
        assert_eq!(attributes(&parent.attributes)["job"], a["job"]);
    }
    // API calls are not exported (a stranger's refused call is no span).
    assert!(spans.iter().all(|(_, s)| ["run", "queued", "job", "step"].contains(&s.name.as_str())));

    // Retried: its next ending is another root of the same trace, and the
    // retried job's spans go under it.
    client.runs().retry(v1::RetryRunRequest { id: id.clone(), ..Default::default() }).await.expect("retry");
    assert_eq!(word(finished(&client, &id).await.status), "failure");
    let spans = eventually("the retried run's spans", || async {
        let spans = collector.spans();
        let count = |name: &str| spans.iter().filter(|(_, s)| s.name == name).count();
        (count("run") == 2 && count("job") == 3).then_some(spans)
    })
    .await;
    let second = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "run" && attributes(&s.attributes)["retried"] == "1")
        .expect("the second ending");
    assert_eq!((&second.trace_id, second.parent_span_id.is_empty()), (trace, true));
    assert_ne!(second.span_id, root.span_id);
    let retried_job = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "job" && attributes(&s.attributes)["attempt"] == "2")
        .expect("the retried job");
    assert_eq!((&retried_job.trace_id, &retried_job.parent_span_id), (trace, &second.span_id));
}

/// A collector URL that is not plain OTLP/gRPC is refused at start, not
/// left to fail span after span.
#[test]
fn an_endpoint_that_cannot_work_is_refused_at_start() {
    let out = viaduct_tests::output(
        std::process::Command::new(viaduct_tests::bin("viaduct-server"))
            .args(["--otlp-endpoint", "https://collector.invalid:4317", "--data-dir"])
            .arg(tempfile::tempdir().expect("dir").path()),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected http://HOST:PORT"), "{out:?}");
}

/// Without an endpoint the server and runner export nothing (and need no
/// collector): traces are off by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_are_off_without_an_endpoint() {
    let server = Server::start();
    let client = server.client().await;
    let _runner = server.runner("linux", 1);
    let id = submit(&client, "jobs:\n  j:\n    steps:\n      - run: true\n").await;
    assert_eq!(word(finished(&client, &id).await.status), "success");
    assert!(!std::fs::read_to_string(server.log_path()).expect("log").contains("exporting traces"));
}
