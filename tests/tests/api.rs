//! The public API's contracts beyond the happy path: paging and filters,
//! stored pipelines, event cursors, runner registration, gRPC-web and plain
//! HTTP on the gRPC port.

use tokio_stream::StreamExt;
use viaduct_tests::{Server, finished, http, submit, v1, within, word};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_listed_newest_first_with_filters_and_pages() {
    let server = Server::start();
    let _runner = server.runner("linux", 2);
    let client = server.client().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let step = if i % 2 == 0 { "true" } else { "exit 1" };
        let id = submit(&client, &format!("name: p{}\njobs:\n  j:\n    steps:\n      - run: {step}\n", i % 2)).await;
        finished(&client, &id).await;
        ids.push(id);
    }
    let list = |statuses: Vec<v1::Status>, pipeline: &str, size: u32, token: String| {
        let req = v1::ListRunsRequest {
            statuses: statuses.into_iter().map(|s| s as i32).collect(),
            pipeline: pipeline.to_string(),
            page: Some(v1::PageRequest { page_size: size, page_token: token }),
            ..Default::default()
        };
        let mut runs = client.runs();
        async move { runs.list(req).await.unwrap().into_inner() }
    };
    // Pages of 2 over 5 runs: 2 + 2 + 1, newest first, no overlap.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(vec![], "", 2, token.clone()).await;
        seen.extend(page.runs.iter().map(|r| r.id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);
    // Filters.
    let failed = list(vec![v1::Status::Failure], "", 10, String::new()).await;
    assert_eq!(failed.runs.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), vec![ids[3].clone(), ids[1].clone()]);
    let both = list(vec![v1::Status::Failure, v1::Status::Success], "", 10, String::new()).await;
    assert_eq!(both.runs.len(), 5);
    let p0 = list(vec![], "p0", 10, String::new()).await;
    assert_eq!(p0.runs.len(), 3);
    assert!(p0.runs.iter().all(|r| r.pipeline == "p0" && !r.jobs.is_empty() && r.jobs[0].steps.is_empty()));
    let bad = client
        .runs()
        .list(v1::ListRunsRequest {
            page: Some(v1::PageRequest { page_size: 1, page_token: "zzz".into() }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_pipelines_can_be_created_validated_and_triggered() {
    let server = Server::start();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let yaml = "name: deploy\non:\n  manual:\n    inputs:\n      target: { required: true }\njobs:\n  go:\n    steps:\n      - run: echo deploying to ${{ inputs.target }}\n";
    let create = |name: &str, yaml: &str| {
        let req = v1::CreatePipelineRequest { name: name.into(), yaml: yaml.into(), ..Default::default() };
        let mut p = client.pipelines();
        async move { p.create(req).await }
    };
    let p = create("deploy", yaml).await.unwrap().into_inner();
    assert_eq!(p.jobs, vec!["go".to_string()]);
    assert_eq!(create("deploy", yaml).await.unwrap_err().code(), tonic::Code::AlreadyExists);
    assert_eq!(create("bad name!", yaml).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    let err = create("broken", "jobs:\n  x:\n    steps: 3\n").await.unwrap_err();
    assert!(err.message().contains("broken.yml:3:12"), "{}", err.message());

    let v = client
        .pipelines()
        .validate(v1::ValidateRequest { yaml: "jobs:\n  a:\n    stepz: []\n".into(), file_name: "x.yml".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(!v.valid);
    assert!(v.errors.iter().any(|d| d.file == "x.yml" && d.line == 3 && d.column == 5 && d.message.contains("stepz")));

    let listed = client.pipelines().list(v1::ListPipelinesRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.pipelines.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), vec!["deploy"]);

    // Trigger needs the required input…
    let trigger = |inputs: Vec<(&str, &str)>| {
        let req = v1::TriggerRequest {
            pipeline: "deploy".into(),
            inputs: inputs.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        let mut runs = client.runs();
        async move { runs.trigger(req).await }
    };
    let err = trigger(vec![]).await.unwrap_err();
    assert!(err.message().contains("missing required input `target`"), "{}", err.message());
    // …and interpolates it.
    let id = trigger(vec![("target", "staging")]).await.unwrap().into_inner().run_id;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success");
    assert_eq!(run.source.unwrap().event, "manual");
    assert_eq!(run.pipeline_ref, "deploy");
    assert_eq!(viaduct_tests::step_log(&client, &format!("{id}.1.1")).await, "deploying to staging\n");

    let schema = client.pipelines().schema(v1::SchemaRequest {}).await.unwrap().into_inner().json_schema;
    let schema: serde_json::Value = serde_json::from_str(&schema).unwrap();
    assert!(schema.to_string().contains("runs_on"));

    client.pipelines().delete(v1::GetPipelineRequest { name: "deploy".into() }).await.unwrap();
    let err = client.pipelines().get(v1::GetPipelineRequest { name: "deploy".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_after_a_cursor_without_missing_anything() {
    let server = Server::start();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let id = submit(&client, "jobs:\n  a:\n    steps:\n      - run: true\n      - run: true\n  b:\n    needs: a\n    steps:\n      - run: true\n").await;
    finished(&client, &id).await;
    let all = |after: u64| {
        let req = v1::WatchRequest { after_cursor: after, run_id: id.clone(), from_start: after == 0 };
        let mut runs = client.runs();
        async move {
            let mut s = runs.watch(req).await.unwrap().into_inner();
            let mut out = Vec::new();
            // The run is over: read until its final event has been seen.
            while let Some(ev) = within("events", s.next()).await {
                let ev = ev.unwrap();
                let last = matches!(&ev.change, Some(v1::run_event::Change::Run(r)) if word(r.status) == "success");
                out.push(ev);
                if last {
                    break;
                }
            }
            out
        }
    };
    let everything = all(0).await;
    let cursors: Vec<u64> = everything.iter().map(|e| e.cursor).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");
    // Every state change is there: 3 steps × (running, success) at least.
    let steps = everything.iter().filter(|e| matches!(e.change, Some(v1::run_event::Change::Step(_)))).count();
    assert!(steps >= 6, "{steps} step events");
    // Every intermediate state is there, in order, even for steps so fast
    // that their reports arrive together.
    let mut per_step: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
    for e in &everything {
        if let Some(v1::run_event::Change::Step(s)) = &e.change {
            per_step.entry(s.id.clone()).or_default().push(word(s.status));
        }
    }
    for (id, states) in &per_step {
        assert_eq!(states, &["pending", "running", "success"], "step {id}");
    }
    let mid = everything.len() / 2;
    let rest = all(everything[mid].cursor).await;
    assert_eq!(rest, everything[mid + 1..].to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_register_with_tokens_and_are_listed() {
    let server = Server::start();
    let client = server.client().await;
    let bad = client
        .agent()
        .register(v1::RegisterRequest { registration_token: "vdr_nope".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::Unauthenticated);
    // A one-time token works once.
    let once = client
        .runners()
        .create_registration_token(v1::CreateRegistrationTokenRequest { reusable: false, ..Default::default() })
        .await
        .unwrap();
    let once = once.into_inner().token;
    let reg = |t: &str| v1::RegisterRequest { registration_token: t.into(), name: "x".into(), ..Default::default() };
    client.agent().register(reg(&once)).await.unwrap();
    assert_eq!(client.agent().register(reg(&once)).await.unwrap_err().code(), tonic::Code::Unauthenticated);

    let _runner = server.runner("linux,gpu", 3);
    let id = submit(&client, "jobs:\n  j:\n    runs_on: [gpu]\n    steps:\n      - run: true\n").await;
    finished(&client, &id).await;
    let runners = client.runners().list(v1::ListRunnersRequest {}).await.unwrap().into_inner().runners;
    let live = runners.iter().find(|r| r.connected).expect("a connected runner");
    assert_eq!((live.labels.clone(), live.slots), (vec!["linux".to_string(), "gpu".to_string()], 3));
    assert_eq!(viaduct_sdk::proto::executor_words(&live.executors), ["host", "wasi"]);
    assert!(runners.iter().any(|r| !r.connected && r.name == "x"));
}

#[test]
fn grpc_web_and_plain_http_share_the_grpc_port() {
    let server = Server::start();
    let addr = server.addr();
    // gRPC-web (HTTP/1.1) health check: an empty request frame.
    let headers = [("content-type", "application/grpc-web+proto"), ("x-grpc-web", "1")];
    let (code, body) = http(addr, "POST", "/grpc.health.v1.Health/Check", &headers, &[0, 0, 0, 0, 0]);
    assert_eq!(code, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("grpc-status:0"), "{text}");
    assert_eq!(http(addr, "GET", "/healthz", &[], b""), (200, b"ok\n".to_vec()));
    // Metrics need a token that may read everything.
    assert_eq!(http(addr, "GET", "/metrics", &[], b"").0, 401);
    let bearer = format!("Bearer {}", server.admin_token());
    let (code, body) = http(addr, "GET", "/metrics", &[("authorization", &bearer)], b"");
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains("viaduct_queue_depth 0"));
    assert_eq!(http(addr, "GET", "/nope", &[], b"").0, 404);
}

/// `Runners.Watch` starts with the fleet as it is, then pushes one event
/// per change as it happens: a runner registering and connecting, being
/// drained and given jobs again, dropping its connection, being removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_watch_pushes_the_fleet_then_each_change() {
    use v1::RunnerEventKind as K;
    let server = Server::start();
    let client = server.client().await;
    let mut events = client.runners().watch(v1::WatchRunnersRequest {}).await.expect("watch").into_inner();
    // The next event but updates (its toolchains, its jobs…).
    let mut next = async || loop {
        let e = within("a runner event", events.next()).await.expect("open").expect("event");
        if e.kind() != K::Updated {
            return (e.kind(), e.runner.unwrap_or_default());
        }
    };
    assert_eq!(next().await.0, K::Synced, "no runner yet");
    let mut runner = server.runner("linux", 1);
    let (kind, r) = next().await;
    assert_eq!(kind, K::Registered);
    let id = r.id.clone();
    // Registered, then connected (also when the two are seen together).
    let (kind, r) = next().await;
    assert_eq!((kind, r.id.as_str(), r.state_word()), (K::Connected, id.as_str(), "online"));

    let drain = |drain: bool| {
        let mut runners = client.runners();
        let id = id.clone();
        async move { runners.drain(v1::DrainRunnerRequest { id, drain }).await.expect("drain") }
    };
    drain(true).await;
    let (kind, r) = next().await;
    assert_eq!((kind, r.state_word()), (K::Draining, "draining"));
    drain(false).await;
    assert_eq!(next().await.0, K::Undrained);

    runner.kill9();
    let (kind, r) = next().await;
    assert_eq!((kind, r.connected), (K::Disconnected, false));
    client.runners().remove(v1::GetRunnerRequest { id: id.clone() }).await.expect("remove");
    let (kind, r) = next().await;
    assert_eq!((kind, r.id), (K::Removed, id));

    // A new watch starts from the fleet as it is now: empty again.
    let mut again = client.runners().watch(v1::WatchRunnersRequest {}).await.expect("watch").into_inner();
    assert_eq!(within("the snapshot", again.next()).await.expect("open").expect("event").kind(), K::Synced);
}
