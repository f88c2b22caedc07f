//! Planning: matrix expansion, naming, needs indices, interpolation rules,
//! and trigger matching.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use viaduct_pipeline::parse;
use viaduct_pipeline::plan::{Plan, PlanContext, StepAction, plan};
use viaduct_pipeline::spec::{Network, Pipeline, PullPolicy};

fn pipeline(yaml: &str) -> Pipeline {
    parse("p.yml", yaml).unwrap_or_else(|d| panic!("{d:#?}"))
}

fn push_main() -> PlanContext {
    PlanContext {
        event: "push".into(),
        branch: Some("main".into()),
        commit: Some("abc123".into()),
        repo: Some("acme/app".into()),
        ..PlanContext::default()
    }
}

fn plan_of(yaml: &str, ctx: &PlanContext) -> Plan {
    plan(&pipeline(yaml), ctx).unwrap_or_else(|d| panic!("{d:#?}"))
}

fn script(p: &Plan, job: usize, step: usize) -> &str {
    match &p.jobs[job].steps[step].action {
        StepAction::Run { script } => script,
        StepAction::Uses { .. } => panic!("not a run step"),
    }
}

#[test]
fn full_example() {
    let p = plan_of(include_str!("fixtures/full.yml"), &push_main());
    assert_eq!(p.name, "ci");
    assert_eq!(p.priority, 5);
    let c = p.concurrency.as_ref().unwrap();
    assert_eq!((c.group.as_str(), c.cancel_in_progress), ("ci-main", true));

    let names: Vec<&str> = p.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(
        names,
        ["build", "unit tests (stable, linux)", "unit tests (nightly, linux)"]
            .iter()
            .copied()
            .chain(["deploy"])
            .collect::<Vec<_>>()
    );
    let needs: Vec<&[usize]> = p.jobs.iter().map(|j| j.needs.as_slice()).collect();
    assert_eq!(needs, [&[][..], &[0], &[0], &[1, 2]]);

    let test = &p.jobs[1];
    assert_eq!(test.key, "test");
    assert_eq!(test.matrix_group.as_deref(), Some("test"));
    assert_eq!(test.matrix, BTreeMap::from([("os".into(), "linux".into()), ("toolchain".into(), "stable".into())]));
    assert_eq!(test.priority, 7);
    assert_eq!(test.retries, 1);
    assert_eq!(test.timeout, Some(Duration::from_secs(1800)));
    assert!(test.fail_fast);
    assert_eq!(test.network, Network::Bridge);
    assert_eq!(test.resources.memory, Some(2 << 30));
    assert_eq!(test.resources.cpus, Some(2.0));
    let image = test.image.as_ref().unwrap();
    assert_eq!(
        (image.name.as_str(), image.pull, image.user.as_deref()),
        ("rust:1-linux", PullPolicy::Always, Some("1000"))
    );
    assert_eq!(test.services[0].name, "db");
    assert_eq!(test.services[0].image.name, "postgres:16");
    assert_eq!(test.env["TOOLCHAIN"], "stable");
    assert_eq!(test.env["CARGO_TERM_COLOR"], "always", "pipeline env is merged in");
    assert_eq!(test.secrets, ["CRATES_TOKEN"]);
    assert_eq!(test.condition.as_deref(), Some("${{ branch == 'main' }}"));
    assert_eq!(test.artifacts, ["target/release/app", "reports/*.xml"]);

    // Steps: only matrix values are substituted.
    assert_eq!(test.steps[0].name, "cache@1");
    assert_eq!(test.steps[0].id.as_deref(), Some("cache"));
    match &test.steps[0].action {
        StepAction::Uses { plugin, version, with, allow_network } => {
            assert_eq!((plugin.as_str(), version.as_str(), *allow_network), ("cache", "1", false));
            assert_eq!(with["key"], json!("stable-${{ branch }}"));
            assert_eq!(with["paths"], json!(["target"]));
        }
        StepAction::Run { .. } => panic!("expected a plugin step"),
    }
    assert_eq!(test.steps[1].name, "test");
    assert_eq!(script(&p, 1, 1), "rustup default stable\ncargo test --locked\n");
    assert_eq!(script(&p, 2, 1), "rustup default nightly\ncargo test --locked\n");
    assert_eq!(test.steps[1].timeout, Some(Duration::from_secs(600)));
    assert_eq!(test.steps[1].condition.as_deref(), Some("always()"));
    assert_eq!(test.steps[1].working_directory.as_deref(), Some("sub/dir"));
    assert_eq!(test.steps[2].name, "nix-check@1");
    assert!(matches!(&test.steps[2].action, StepAction::Uses { allow_network: true, .. }));

    let deploy = &p.jobs[3];
    assert_eq!(deploy.matrix_group, None);
    assert!(deploy.matrix.is_empty());
    assert_eq!(script(&p, 3, 0), "./deploy.sh ${{ inputs.target }} ${{ run_id }}");
    assert_eq!(deploy.steps[0].name, "./deploy.sh ${{ inputs.target }} ${{ run_id }}");
}

#[test]
fn matrix_naming() {
    let yaml = "\
jobs:
  a:
    matrix: { os: [linux, mac], v: [1] , include: [{ os: mac, extra: x }] }
    steps:
      - run: echo ${{ matrix.os }}
  b:
    name: build on ${{ matrix.os }}
    matrix: { os: [linux] }
    steps: [{ run: x }]
";
    let p = plan_of(yaml, &push_main());
    let names: Vec<&str> = p.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["a (linux, 1)", "a (mac, 1, x)", "build on linux"]);
    assert_eq!(script(&p, 1, 0), "echo mac");
}

#[test]
fn plan_time_interpolation_rules() {
    let yaml = "\
name: ${{ event }} of ${{ branch }}
env: { WHERE: \"${{ repo }}@${{ commit }}\", LATER: \"${{ run_id }}\" }
on: { manual: { inputs: { target: { default: staging } } } }
jobs:
  a:
    matrix: { os: [linux] }
    runs_on: [\"${{ matrix.os }}\", \"${{ inputs.target }}\"]
    env: { MIXED: \"${{ run_id }}-${{ branch }}-${{ matrix.os }}\", ST: \"${{ success() }}\" }
    steps:
      - run: echo ${{ branch }} ${{ matrix.os }} ${{ format('{0}', matrix.os) }} ${{ matrix.os == branch }}
        env: { B: \"${{ matrix.os }}/${{ inputs.target }}\" }
        working_directory: \"${{ matrix.os }}\"
        name: \"step ${{ matrix.os }}\"
";
    let p = plan_of(yaml, &push_main());
    assert_eq!(p.name, "push of main");
    assert_eq!(p.env["WHERE"], "acme/app@abc123");
    assert_eq!(p.env["LATER"], "${{ run_id }}");
    let a = &p.jobs[0];
    assert_eq!(a.runs_on, ["linux", "staging"]);
    assert_eq!(a.env["MIXED"], "${{ run_id }}-main-linux");
    assert_eq!(a.env["ST"], "${{ success() }}");
    assert_eq!(script(&p, 0, 0), "echo ${{ branch }} linux linux ${{ matrix.os == branch }}");
    assert_eq!(a.steps[0].env["B"], "linux/${{ inputs.target }}");
    assert_eq!(a.steps[0].working_directory.as_deref(), Some("linux"));
    assert_eq!(a.steps[0].name, "step linux");
}

#[test]
fn inputs_defaults_and_required() {
    let yaml = "\
on:
  manual:
    inputs:
      target: { default: staging }
      version: { required: true }
jobs:
  a:
    name: deploy ${{ inputs.target }} ${{ inputs.version }}
    steps: [{ run: x }]
";
    let p = pipeline(yaml);
    let manual = PlanContext { event: "manual".into(), ..PlanContext::default() };
    let errs = plan(&p, &manual).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].to_string(), "p.yml:5:7: missing required input `version`");
    let with_input = PlanContext { inputs: BTreeMap::from([("version".into(), "1.2".into())]), ..manual };
    assert_eq!(plan(&p, &with_input).unwrap().jobs[0].name, "deploy staging 1.2");
    // Pushes do not require inputs.
    assert_eq!(plan(&p, &push_main()).unwrap().jobs[0].name, "deploy staging ");
}

#[test]
fn injected_expressions_are_rejected() {
    let p = pipeline("jobs:\n  a:\n    name: ${{ branch }}\n    steps: [{ run: x }]\n");
    let ctx = PlanContext { branch: Some("${{env.TOKEN}}".into()), ..push_main() };
    let errs = plan(&p, &ctx).unwrap_err();
    assert_eq!(errs[0].message, "the value of `branch` contains `${{`, which is not allowed");
}

#[test]
fn default_step_names() {
    let long = "x".repeat(100);
    let yaml = format!(
        "jobs:\n  a:\n    steps:\n      - run: |\n\n          echo first\n          echo second\n      - run: {long}\n      - uses: cache\n"
    );
    let p = plan_of(&yaml, &push_main());
    let names: Vec<&str> = p.jobs[0].steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names[0], "echo first");
    assert_eq!(names[1].chars().count(), 60);
    assert!(names[1].ends_with('…'));
    assert_eq!(names[2], "cache");
}

#[test]
fn needs_expand_to_all_matrix_instances() {
    let yaml = "\
jobs:
  deploy:
    needs: [test, lint]
    steps: [{ run: x }]
  test:
    matrix: { v: [1, 2, 3] }
    steps: [{ run: x }]
  lint:
    needs: test
    steps: [{ run: x }]
";
    let p = plan_of(yaml, &push_main());
    let keys: Vec<&str> = p.jobs.iter().map(|j| j.key.as_str()).collect();
    assert_eq!(keys, ["deploy", "test", "test", "test", "lint"]);
    assert_eq!(p.jobs[0].needs, [1, 2, 3, 4]);
    assert_eq!(p.jobs[4].needs, [1, 2, 3]);
    assert_eq!(p.jobs[1].name, "test (1)");
}

#[test]
fn job_defaults() {
    let p = plan_of("priority: 3\njobs:\n  a:\n    steps: [{ run: x }]\n", &push_main());
    let a = &p.jobs[0];
    assert_eq!(a.name, "a");
    assert_eq!(a.priority, 3);
    assert!(a.fail_fast);
    assert_eq!(a.retries, 0);
    assert_eq!(a.condition, None);
    assert_eq!(a.image, None);
    assert_eq!(p.concurrency, None);
    assert_eq!(p.name, "pipeline");
}

#[test]
fn trigger_matching() {
    let p = pipeline(
        "on:\n  push: { branches: [main, 'release/*'] }\n  pull_request: { branches: ['**'] }\njobs:\n  a:\n    steps: [{ run: x }]\n",
    );
    let t = &p.triggers;
    assert!(t.matches_push(Some("main"), None));
    assert!(t.matches_push(Some("release/1.0"), None));
    assert!(!t.matches_push(Some("release/1.0/x"), None));
    assert!(!t.matches_push(None, Some("v1")), "branches only: tags do not match");
    assert!(t.matches_pull_request("feature/x"));
    assert!(!t.allows_manual());
    assert!(t.schedules().is_empty());

    let tags = pipeline("on:\n  push: { tags: ['v*'] }\njobs:\n  a:\n    steps: [{ run: x }]\n");
    assert!(tags.triggers.matches_push(None, Some("v1.2")));
    assert!(!tags.triggers.matches_push(Some("main"), None));
    assert!(!tags.triggers.matches_pull_request("main"));

    let all = pipeline("on:\n  push:\n  manual: true\n  schedule: '0 3 * * *'\njobs:\n  a:\n    steps: [{ run: x }]\n");
    assert!(all.triggers.matches_push(Some("anything"), None));
    assert!(all.triggers.matches_push(None, Some("v1")));
    assert!(all.triggers.allows_manual());
    assert_eq!(all.triggers.schedules()[0].schedule.as_str(), "0 3 * * *");

    let none = pipeline("jobs:\n  a:\n    steps: [{ run: x }]\n");
    assert!(none.triggers.allows_manual(), "absent `on` = manual/API only");
    assert!(!none.triggers.matches_push(Some("main"), None));

    let off = pipeline("on: { manual: false }\njobs:\n  a:\n    steps: [{ run: x }]\n");
    assert!(!off.triggers.allows_manual());
}

#[test]
fn environments_are_interpolated_and_checked() {
    let yaml = "jobs:\n  build:\n    steps: [{run: x}]\n  deploy:\n    needs: [build]\n    artifacts_from: build\n    \
                matrix: { region: [eu, us] }\n    environment:\n      name: prod-${{ matrix.region }}\n      url: \
                https://${{ matrix.region }}.example.com\n      services:\n        - name: api\n          probe: { target: \
                'tcp://${{ matrix.region }}.internal:80', interval: 5s }\n    steps: [{run: x}]\n";
    let p = plan_of(yaml, &push_main());
    let envs: Vec<&str> = p.jobs[1..].iter().map(|j| j.environment.as_ref().unwrap().name.as_str()).collect();
    assert_eq!(envs, ["prod-eu", "prod-us"]);
    let e = p.jobs[2].environment.as_ref().unwrap();
    assert_eq!(e.url.as_deref(), Some("https://us.example.com"));
    let probe = e.services[0].probe.as_ref().unwrap();
    assert_eq!((probe.target.as_str(), probe.interval), ("tcp://us.internal:80", Some(Duration::from_secs(5))));
    assert_eq!(p.jobs[1].artifacts_from, [0]);
    assert!(p.jobs[0].environment.is_none() && p.jobs[0].artifacts_from.is_empty());

    // Names and probes are checked once interpolated.
    let bad = "jobs:\n  d:\n    environment:\n      name: Prod\n      services:\n        - name: a\n          probe: { \
               target: 'ftp://x' }\n        - name: a\n          probe: { target: 'tcp://host' }\n    steps: [{run: x}]\n";
    let errs: Vec<String> = viaduct_pipeline::plan::plan(&pipeline(bad), &push_main())
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(errs.len(), 4, "{errs:#?}");
    assert!(errs[0].contains("environment `Prod`: expected lower-case letters"), "{errs:#?}");
    assert!(errs.iter().any(|e| e.contains("`ftp://x` is not `http://…`")), "{errs:#?}");
    assert!(errs.iter().any(|e| e.contains("service `a` is declared twice")), "{errs:#?}");
    assert!(errs.iter().any(|e| e.contains("`tcp://host` needs a port")), "{errs:#?}");
}
