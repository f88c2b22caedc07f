//! `notify:` at the top level and in jobs: decoding, the plan, the schema and
//! every diagnostic with its position.

use viaduct_pipeline::plan::{PlanContext, plan};
use viaduct_pipeline::spec::{Channel, Notify, NotifyOn, Pipeline};
use viaduct_pipeline::{Pos, json_schema, parse, validate};

fn pipeline(yaml: &str) -> Pipeline {
    parse("p.yml", yaml).unwrap_or_else(|d| panic!("{d:#?}"))
}

/// Asserts the diagnostics are exactly `expected` (in order).
#[track_caller]
fn check(yaml: &str, expected: &[&str]) {
    let diags: Vec<String> = validate("p.yml", yaml).iter().map(ToString::to_string).collect();
    assert_eq!(diags, expected, "\n--- yaml ---\n{yaml}");
}

/// A minimal `jobs:` section, to follow a top-level `notify:`.
const JOBS: &str = "jobs:\n  a:\n    steps:\n      - run: x\n";

/// `notify:` entries at the top level (each line indented by 2), then [`JOBS`].
fn top(entries: &str) -> String {
    format!("notify:\n{entries}{JOBS}")
}

const DEFAULT_ON: [NotifyOn; 2] = [NotifyOn::Failure, NotifyOn::Fixed];

const FULL: &str = "\
notify:
  - webhook: { url: HOOK_URL, secret: HOOK_KEY }
    on: [failure, fixed]
  - slack: SLACK_URL
  - matrix: MATRIX_URL
  - email: [dev@example.com, ops@example.com]
    on: [broken]
jobs:
  test:
    matrix: { os: [linux, mac] }
    notify:
      - webhook: PLAIN_URL
        on: success
      - email: one@example.com
        on: [success, broken, success]
      - slack: _S1
    steps:
      - run: x
  other:
    steps:
      - run: y
";

fn full_pipeline_notify() -> Vec<Notify> {
    vec![
        Notify {
            on: DEFAULT_ON.to_vec(),
            channel: Channel::Webhook { url_secret: "HOOK_URL".into(), key_secret: Some("HOOK_KEY".into()) },
            pos: Pos::new(2, 5),
        },
        Notify {
            on: DEFAULT_ON.to_vec(),
            channel: Channel::Slack { url_secret: "SLACK_URL".into() },
            pos: Pos::new(4, 5),
        },
        Notify {
            on: DEFAULT_ON.to_vec(),
            channel: Channel::Matrix { url_secret: "MATRIX_URL".into() },
            pos: Pos::new(5, 5),
        },
        Notify {
            on: vec![NotifyOn::Broken],
            channel: Channel::Email { to: vec!["dev@example.com".into(), "ops@example.com".into()] },
            pos: Pos::new(6, 5),
        },
    ]
}

fn full_job_notify() -> Vec<Notify> {
    vec![
        Notify {
            on: vec![NotifyOn::Success],
            channel: Channel::Webhook { url_secret: "PLAIN_URL".into(), key_secret: None },
            pos: Pos::new(12, 9),
        },
        Notify {
            on: vec![NotifyOn::Success, NotifyOn::Broken],
            channel: Channel::Email { to: vec!["one@example.com".into()] },
            pos: Pos::new(14, 9),
        },
        Notify { on: DEFAULT_ON.to_vec(), channel: Channel::Slack { url_secret: "_S1".into() }, pos: Pos::new(16, 9) },
    ]
}

#[test]
fn every_channel_at_the_top_level_and_in_a_job() {
    let p = pipeline(FULL);
    assert_eq!(p.notify, full_pipeline_notify());
    assert_eq!(p.job("test").map(|j| j.notify.clone()), Some(full_job_notify()));
    assert_eq!(p.job("other").map(|j| j.notify.len()), Some(0));
}

#[test]
fn absent_or_empty_means_no_notifications() {
    assert!(pipeline(JOBS).notify.is_empty());
    assert!(pipeline(&format!("notify:\n{JOBS}")).notify.is_empty());
    assert!(pipeline(&format!("notify: []\n{JOBS}")).notify.is_empty());
}

#[test]
fn one_email_as_a_string_and_on_as_a_word() {
    let p = pipeline(&top("  - email: dev@example.com\n    on: fixed\n"));
    assert_eq!(
        p.notify,
        [Notify {
            on: vec![NotifyOn::Fixed],
            channel: Channel::Email { to: vec!["dev@example.com".into()] },
            pos: Pos::new(2, 5)
        }]
    );
}

#[test]
fn flow_style_entries() {
    let p = pipeline(&format!("notify: [{{ slack: S }}, {{ matrix: M, on: [success, failure] }}]\n{JOBS}"));
    assert_eq!(p.notify.len(), 2);
    assert_eq!(p.notify[0].on, DEFAULT_ON);
    assert_eq!(p.notify[1].on, [NotifyOn::Success, NotifyOn::Failure]);
    assert_eq!(p.notify[1].channel, Channel::Matrix { url_secret: "M".into() });
}

#[test]
fn the_plan_carries_them_to_the_run_and_every_matrix_expansion() {
    let p = pipeline(FULL);
    let ctx = PlanContext { event: "push".into(), branch: Some("main".into()), ..PlanContext::default() };
    let plan = plan(&p, &ctx).unwrap_or_else(|d| panic!("{d:#?}"));
    assert_eq!(plan.notify, full_pipeline_notify());
    let expansions: Vec<_> = plan.jobs.iter().filter(|j| j.key == "test").collect();
    assert_eq!(expansions.len(), 2);
    for job in expansions {
        assert_eq!(job.notify, full_job_notify(), "{}", job.name);
    }
    let other = plan.jobs.iter().find(|j| j.key == "other").map(|j| j.notify.len());
    assert_eq!(other, Some(0));
}

#[test]
fn outcome_words_and_channel_accessors() {
    for on in NotifyOn::ALL {
        assert_eq!(NotifyOn::from_word(on.word()), Some(on));
    }
    let words: Vec<&str> = NotifyOn::ALL.iter().map(|o| o.word()).collect();
    assert_eq!(words, ["success", "failure", "fixed", "broken"]);
    assert_eq!(NotifyOn::from_word("Failure"), None);

    let hook = Channel::Webhook { url_secret: "U".into(), key_secret: Some("K".into()) };
    assert_eq!((hook.kind(), hook.secrets()), ("webhook", vec!["U", "K"]));
    let plain = Channel::Webhook { url_secret: "U".into(), key_secret: None };
    assert_eq!(plain.secrets(), ["U"]);
    let slack = Channel::Slack { url_secret: "S".into() };
    assert_eq!((slack.kind(), slack.secrets()), ("slack", vec!["S"]));
    let matrix = Channel::Matrix { url_secret: "M".into() };
    assert_eq!((matrix.kind(), matrix.secrets()), ("matrix", vec!["M"]));
    let email = Channel::Email { to: vec!["a@b".into()] };
    assert_eq!((email.kind(), email.secrets()), ("email", Vec::<&str>::new()));
}

#[test]
fn the_schema_describes_them() {
    let schema = json_schema();
    let list = &schema["properties"]["notify"];
    assert_eq!(list["type"], "array");
    assert_eq!(list["items"]["$ref"], "#/$defs/notification");
    assert_eq!(schema["$defs"]["job"]["properties"]["notify"]["items"]["$ref"], "#/$defs/notification");
    let entry = &schema["$defs"]["notification"];
    assert_eq!(entry["additionalProperties"], false);
    assert_eq!(entry["oneOf"].as_array().map(Vec::len), Some(4));
    let words: Vec<&str> = NotifyOn::ALL.iter().map(|o| o.word()).collect();
    assert_eq!(entry["properties"]["on"]["oneOf"][0]["enum"], serde_json::json!(words));
    assert_eq!(entry["properties"]["webhook"]["oneOf"][1]["$ref"], "#/$defs/webhook");
    assert_eq!(schema["$defs"]["webhook"]["required"], serde_json::json!(["url"]));
}

const EXACTLY_ONE: &str = "a notification must have exactly one of `webhook` or `slack` or `matrix` or `email`";

#[test]
fn two_channels_or_none() {
    check(&top("  - slack: A\n    matrix: B\n")[..], &[&format!("p.yml:2:5: {EXACTLY_ONE}")]);
    check(&top("  - on: [failure]\n"), &[&format!("p.yml:2:5: {EXACTLY_ONE}")]);
    check(&top("  - {}\n"), &[&format!("p.yml:2:5: {EXACTLY_ONE}")]);
    check(
        "jobs:\n  a:\n    notify:\n      - email: a@b.c\n        webhook: W\n    steps:\n      - run: x\n",
        &[&format!("p.yml:4:9: {EXACTLY_ONE}")],
    );
}

#[test]
fn unknown_outcome_with_suggestion() {
    let expected = "(expected one of: success, failure, fixed, broken)";
    check(
        &top("  - slack: A\n    on: [failure, fixd]\n"),
        &[&format!("p.yml:3:19: invalid value `fixd` for `on`; did you mean `fixed`? {expected}")],
    );
    check(
        &top("  - slack: A\n    on: sucess\n"),
        &[&format!("p.yml:3:9: invalid value `sucess` for `on`; did you mean `success`? {expected}")],
    );
    check(&top("  - slack: A\n    on: always\n"), &[&format!("p.yml:3:9: invalid value `always` for `on` {expected}")]);
    check(
        &top("  - slack: A\n    on: []\n"),
        &["p.yml:3:9: `on` lists no outcome (expected some of: success, failure, fixed, broken)"],
    );
    check(
        &top("  - slack: A\n    on: { failure: true }\n"),
        &[
            "p.yml:3:9: expected an outcome or a list of outcomes (success, failure, fixed, broken) for `on`, found a mapping",
        ],
    );
}

#[test]
fn unknown_keys_in_entries_and_webhooks() {
    check(
        "jobs:\n  a:\n    notify:\n      - slack: A\n        when: [failure]\n    steps:\n      - run: x\n",
        &[
            "p.yml:5:9: unknown key `when` in notification 1 of job `a` (expected one of: webhook, slack, matrix, email, on)",
        ],
    );
    check(
        &top("  - matrix: M\n  - webhook: { url: U, key: K }\n"),
        &[
            "p.yml:3:24: unknown key `key` in `webhook` in notification 2 of the pipeline (expected one of: url, secret)",
        ],
    );
}

#[test]
fn bad_secret_names() {
    let rule = "use letters, digits and `_`";
    check(
        &top("  - slack: 9LIVES\n  - matrix: MY-URL\n  - webhook: { url: OK, secret: 'a b' }\n  - webhook: x.y\n"),
        &[
            &format!("p.yml:2:12: invalid secret name `9LIVES`: {rule}"),
            &format!("p.yml:3:13: invalid secret name `MY-URL`: {rule}"),
            &format!("p.yml:4:33: invalid secret name `a b`: {rule}"),
            &format!("p.yml:5:14: invalid secret name `x.y`: {rule}"),
        ],
    );
    check(&top("  - slack: ''\n"), &[&format!("p.yml:2:12: invalid secret name ``: {rule}")]);
    check(&top("  - slack: 42\n"), &["p.yml:2:12: expected a string for `slack`, found an integer"]);
    check(
        &top("  - webhook: [A]\n"),
        &["p.yml:2:14: expected a secret name or a mapping with `url` and `secret` for `webhook`, found a list"],
    );
}

#[test]
fn expressions_are_refused_as_secret_names() {
    let hint = "use letters, digits and `_` (give the secret's name; `${{ }}` is not allowed here)";
    check(
        &top("  - slack: ${{ inputs.hook }}\n  - webhook: { url: U, secret: \"K${{ branch }}\" }\n"),
        &[
            &format!("p.yml:2:12: invalid secret name `${{{{ inputs.hook }}}}`: {hint}"),
            &format!("p.yml:3:32: invalid secret name `K${{{{ branch }}}}`: {hint}"),
        ],
    );
}

#[test]
fn webhook_mapping_without_url() {
    check(
        &top("  - webhook: { secret: HOOK_KEY }\n"),
        &["p.yml:2:14: missing required key `url` in `webhook` in notification 1 of the pipeline"],
    );
    check(
        "jobs:\n  a:\n    notify:\n      - webhook:\n          secret: K\n    steps:\n      - run: x\n",
        &["p.yml:5:11: missing required key `url` in `webhook` in notification 1 of job `a`"],
    );
}

#[test]
fn bad_email_addresses() {
    let yaml = top(
        "  - email:\n      - dev@\n      - '@example.com'\n      - 'a b@example.com'\n      - 'Dev <dev@example.com>'\n      - a@b@example.com\n      - dev.example.com\n      - \"a\\t@example.com\"\n      - 'x${{ inputs.to }}@example.com'\n      - 'a,b@example.com'\n",
    );
    check(
        &yaml,
        &[
            "p.yml:3:9: invalid email address `dev@`: no domain after the `@`",
            "p.yml:4:9: invalid email address `@example.com`: nothing before the `@`",
            "p.yml:5:9: invalid email address `a b@example.com`: it must not contain spaces or control characters",
            "p.yml:6:9: invalid email address `Dev <dev@example.com>`: it must not contain spaces or control characters",
            "p.yml:7:9: invalid email address `a@b@example.com`: expected exactly one `@`",
            "p.yml:8:9: invalid email address `dev.example.com`: expected exactly one `@`",
            "p.yml:9:9: invalid email address `a\\t@example.com`: it must not contain spaces or control characters",
            "p.yml:10:9: invalid email address `x${{ inputs.to }}@example.com`: `${{ }}` is not allowed here: write the address itself",
            "p.yml:11:9: invalid email address `a,b@example.com`: it must not contain `<`, `>`, `,`, `;` or `\"` (one plain address per entry)",
        ],
    );
    check(
        &top("  - email: 'dev;ops@example.com'\n"),
        &[
            "p.yml:2:12: invalid email address `dev;ops@example.com`: it must not contain `<`, `>`, `,`, `;` or `\"` (one plain address per entry)",
        ],
    );
    check(&top("  - email: []\n"), &["p.yml:2:12: `email` lists no address"]);
    check(
        &top("  - email: [a@b.c, 7]\n"),
        &["p.yml:2:20: expected a string or a list of strings for `email`, found a list containing an integer"],
    );
}

#[test]
fn email_length_limit() {
    let at_limit = format!("{}@example.com", "a".repeat(254 - 12));
    pipeline(&top(&format!("  - email: {at_limit}\n")));
    let over = format!("a{at_limit}");
    check(&top(&format!("  - email: {over}\n")), &["p.yml:2:12: an email address of 255 characters; the limit is 254"]);
}

#[test]
fn at_most_ten_addresses() {
    let ten: Vec<String> = (0..10).map(|i| format!("u{i}@example.com")).collect();
    pipeline(&top(&format!("  - email: [{}]\n", ten.join(", "))));
    let eleven: Vec<String> = (0..11).map(|i| format!("u{i}@example.com")).collect();
    check(&top(&format!("  - email: [{}]\n", eleven.join(", "))), &["p.yml:2:12: 11 email addresses; the limit is 10"]);
}

#[test]
fn at_most_ten_entries() {
    let ten = "  - slack: S\n".repeat(10);
    assert_eq!(pipeline(&top(&ten)).notify.len(), 10);
    check(&top(&"  - slack: S\n".repeat(11)), &["p.yml:2:3: 11 notifications of the pipeline; the limit is 10"]);
    let job = format!("jobs:\n  a:\n    notify:\n{}    steps:\n      - run: x\n", "      - matrix: M\n".repeat(11));
    check(&job, &["p.yml:4:7: 11 notifications of job `a`; the limit is 10"]);
}

#[test]
fn notify_must_be_a_list() {
    check(
        &format!("notify: {{ slack: S }}\n{JOBS}"),
        &["p.yml:1:9: expected a list of notifications for `notify`, found a mapping"],
    );
    check(&format!("notify: [slack]\n{JOBS}"), &["p.yml:1:10: expected a mapping for `notification`, found a string"]);
}
