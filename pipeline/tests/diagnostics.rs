//! Every diagnostic the parser produces, with exact positions and messages.

use viaduct_pipeline::{parse, validate};

fn diags(yaml: &str) -> Vec<String> {
    validate("p.yml", yaml).iter().map(ToString::to_string).collect()
}

/// Asserts the diagnostics are exactly `expected` (in order).
#[track_caller]
fn check(yaml: &str, expected: &[&str]) {
    assert_eq!(diags(yaml), expected, "\n--- yaml ---\n{yaml}");
}

/// A minimal job body, to keep cases short.
const STEPS: &str = "    steps:\n      - run: x\n";

#[test]
fn full_example_is_valid() {
    let text = include_str!("fixtures/full.yml");
    let p = parse("full.yml", text).unwrap_or_else(|d| panic!("{d:#?}"));
    assert_eq!(p.name, "ci");
    assert_eq!(p.jobs.len(), 3);
    assert_eq!(p.env["JOBS"], "4");
    assert_eq!(p.env["DEBUG"], "false");
    assert_eq!(p.triggers.schedules().len(), 1);
}

#[test]
fn unknown_key_with_suggestion_and_expected_list() {
    check(
        "jobs:\n  test:\n    stpes:\n      - run: x\n",
        &[
            "p.yml:2:3: missing required key `steps` in job `test`",
            "p.yml:3:5: unknown key `stpes` in job `test`; did you mean `steps`? (expected one of: name, runs_on, image, services, network, resources, matrix, fail_fast, timeout, retries, priority, env, secrets, needs, if, continue_on_error, artifacts, notify, snapshots, environment, artifacts_from, steps)",
        ],
    );
    check(
        &format!("zzz: 1\njobs:\n  a:\n{STEPS}"),
        &[
            "p.yml:1:1: unknown key `zzz` at the top level (expected one of: name, on, env, priority, concurrency, notify, snapshots, jobs)",
        ],
    );
}

#[test]
fn unknown_keys_at_every_level() {
    let yaml = "\
on:
  pushh: {}
  push: { branch: [main] }
  pull_request: { tags: [x] }
  manual: { input: {} }
concurrency: { grop: x }
jobs:
  a:
    image: { name: x, pul: always }
    services: { db: { image: x, envv: {} } }
    resources: { cpu: 1 }
    steps:
      - run: x
        nmae: y
      - uses: p@1
        allow: { net: true }
";
    check(
        yaml,
        &[
            "p.yml:2:3: unknown key `pushh` in `on`; did you mean `push`? (expected one of: push, pull_request, schedule, manual)",
            "p.yml:3:11: unknown key `branch` in `on.push`; did you mean `branches`? (expected one of: branches, tags)",
            "p.yml:4:19: unknown key `tags` in `on.pull_request` (expected one of: branches)",
            "p.yml:5:13: unknown key `input` in `on.manual`; did you mean `inputs`? (expected one of: inputs)",
            "p.yml:6:1: missing required key `group` in `concurrency`",
            "p.yml:6:16: unknown key `grop` in `concurrency`; did you mean `group`? (expected one of: group, cancel_in_progress)",
            "p.yml:9:23: unknown key `pul` in `image` in job `a`; did you mean `pull`? (expected one of: name, pull, user, credentials)",
            "p.yml:10:33: unknown key `envv` in service `db` of job `a`; did you mean `env`? (expected one of: image, env, command)",
            "p.yml:11:18: unknown key `cpu` in `resources` in job `a`; did you mean `cpus`? (expected one of: cpus, memory)",
            "p.yml:14:9: unknown key `nmae` in step 1 of job `a`; did you mean `name`? (expected one of: name, id, run, uses, with, env, timeout, continue_on_error, if, working_directory, allow, reuse)",
            "p.yml:16:18: unknown key `net` in `allow` in step 2 of job `a` (expected one of: network, secrets)",
        ],
    );
}

#[test]
fn type_mismatches() {
    check(
        "jobs:\n  a:\n    steps:\n      - run: { x: 1 }\n",
        &["p.yml:4:14: expected a string for `run`, found a mapping"],
    );
    check(
        &format!("jobs:\n  a:\n    needs: {{ b: 1 }}\n{STEPS}"),
        &["p.yml:3:12: expected a string or a list of strings for `needs`, found a mapping"],
    );
    check(
        &format!("jobs:\n  a:\n    needs: [1]\n{STEPS}"),
        &["p.yml:3:13: expected a string or a list of strings for `needs`, found a list containing an integer"],
    );
    check(
        &format!("jobs:\n  a:\n    fail_fast: yes\n{STEPS}"),
        &["p.yml:3:16: expected `true` or `false` for `fail_fast`, found a string"],
    );
    check("jobs:\n  a:\n    steps: x\n", &["p.yml:3:12: expected a list of steps for `steps`, found a string"]);
    check("- a\n- b\n", &["p.yml:1:1: expected a mapping with a `jobs` key at the top level, found a list"]);
    check("just text", &["p.yml:1:1: expected a mapping with a `jobs` key at the top level, found a string"]);
}

#[test]
fn needs_errors() {
    check(
        &format!("jobs:\n  build:\n{STEPS}  deploy:\n    needs: [biuld]\n{STEPS}"),
        &["p.yml:6:13: job `deploy` needs unknown job `biuld`; did you mean `build`?"],
    );
    check(&format!("jobs:\n  a:\n    needs: a\n{STEPS}"), &["p.yml:3:12: job `a` needs itself"]);
}

#[test]
fn dependency_cycles() {
    let yaml = format!(
        "jobs:\n  x:\n{STEPS}  b:\n    needs: [c]\n{STEPS}  a:\n    needs: [x, b]\n{STEPS}  c:\n    needs: a\n{STEPS}"
    );
    check(&yaml, &["p.yml:6:13: dependency cycle: b → c → a → b"]);
    // Two separate cycles are both reported.
    let yaml = format!(
        "jobs:\n  a:\n    needs: b\n{STEPS}  b:\n    needs: a\n{STEPS}  c:\n    needs: d\n{STEPS}  d:\n    needs: c\n{STEPS}"
    );
    check(&yaml, &["p.yml:3:12: dependency cycle: a → b → a", "p.yml:11:12: dependency cycle: c → d → c"]);
}

#[test]
fn step_needs_exactly_one_action() {
    check(
        "jobs:\n  a:\n    steps:\n      - name: nothing\n      - run: x\n        uses: p@1\n",
        &[
            "p.yml:4:9: a step must have exactly one of `run` or `uses`",
            "p.yml:5:9: a step must have exactly one of `run` or `uses`",
        ],
    );
}

#[test]
fn durations() {
    check(
        &format!("jobs:\n  a:\n    timeout: 10 minutes\n{STEPS}"),
        &[
            "p.yml:3:14: invalid duration `10 minutes`: expected a number and a unit (ms, s, m, h, d), e.g. 90s, 10m, 1h",
        ],
    );
    check(
        &format!("jobs:\n  a:\n    timeout: 30\n{STEPS}"),
        &["p.yml:3:14: invalid duration `30`: a duration needs a unit; add a unit: 90s, 10m, 1h"],
    );
    check(&format!("jobs:\n  a:\n    timeout: 0s\n{STEPS}"), &["p.yml:3:14: `timeout` must be greater than zero"]);
}

#[test]
fn yaml_syntax_errors() {
    check(
        "jobs:\n  a: [\n",
        &["p.yml:3:1: YAML syntax error: while parsing a node, did not find expected node content"],
    );
    check(
        "jobs:\n  a:\n\tsteps: []\n",
        &["p.yml:3:2: YAML syntax error: tabs disallowed within this context (block indentation)"],
    );
}

#[test]
fn duplicate_keys_are_all_reported() {
    check(
        "name: a\nname: b\njobs:\n  a:\n    steps:\n      - run: x\n        run: y\n",
        &[
            "p.yml:2:1: duplicate key `name` (first defined at 1:1)",
            "p.yml:7:9: duplicate key `run` (first defined at 6:9)",
        ],
    );
}

#[test]
fn step_ids_and_step_references() {
    let yaml = "\
jobs:
  a:
    steps:
      - run: x
        id: one
        if: ${{ steps.two.outcome == 'success' }}
      - run: echo ${{ steps.one.outputs.v }}
        id: two
      - run: x
        id: one
      - run: ${{ steps.tow.outcome }}
";
    check(
        yaml,
        &[
            "p.yml:6:17: invalid expression in `if`: step `two` runs after this step; `steps.two` can only refer to earlier steps",
            "p.yml:10:13: duplicate step id `one` in job `a` (first used at 5:13)",
            "p.yml:11:18: invalid expression in `run`: unknown step id `tow` in job `a`; did you mean `two`?",
        ],
    );
    check(
        &format!("jobs:\n  a:\n    env: {{ X: \"${{{{ steps.s.outcome }}}}\" }}\n{STEPS}"),
        &["p.yml:3:20: invalid expression in `X`: the `steps` context is only available inside steps"],
    );
}

#[test]
fn matrix_references() {
    let yaml = "\
jobs:
  a:
    matrix:
      os: [linux, mac]
      include: [{ os: linux, extra: x }]
    name: ${{ matrix.extra }} ${{ matrix.oss }}
    steps:
      - run: echo ${{ matrix.os }}
  b:
    runs_on: ${{ matrix.os }}
    steps:
      - run: x
";
    check(
        yaml,
        &[
            "p.yml:6:35: invalid expression in `name`: `matrix.oss` is not an axis of job `a`; did you mean `os`? (axes: os, extra)",
            "p.yml:10:18: invalid expression in `runs_on`: `matrix.os` is used but job `b` has no matrix",
        ],
    );
    check(
        &format!("concurrency: ${{{{ matrix.os }}}}\njobs:\n  a:\n{STEPS}"),
        &["p.yml:1:18: invalid expression in `concurrency`: the `matrix` context is only available inside jobs"],
    );
}

#[test]
fn matrix_errors() {
    let yaml = format!("jobs:\n  a:\n    matrix:\n      os: linux\n      v: []\n      exclude: [{{ o: x }}]\n{STEPS}");
    check(
        &yaml,
        &[
            "p.yml:3:5: the matrix expands to no combinations (job `a`)",
            "p.yml:4:11: expected a list of values for `os`, found a string",
            "p.yml:5:10: matrix axis `v` has no values",
            "p.yml:6:19: `o` in `exclude` is not a matrix axis of job `a` (axes: )",
        ],
    );
    let values = (0..17).map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
    check(
        &format!("jobs:\n  a:\n    matrix:\n      x: [{values}]\n      y: [{values}]\n{STEPS}"),
        &["p.yml:3:5: the matrix expands to 289 combinations; the limit is 256 (job `a`)"],
    );
}

#[test]
fn priorities() {
    check(
        &format!("priority: 11\njobs:\n  a:\n    priority: -1\n{STEPS}"),
        &[
            "p.yml:1:11: `priority` must be between 0 and 10, found 11",
            "p.yml:4:15: `priority` must be between 0 and 10, found -1",
        ],
    );
    check(
        &format!("jobs:\n  a:\n    retries: 99999999999999999999\n{STEPS}"),
        &["p.yml:3:14: expected an integer from 0 to 10 for `retries`, found a number"],
    );
}

#[test]
fn jobs_and_steps_must_exist() {
    check("name: x\n", &["p.yml:1:1: missing required key `jobs` at the top level"]);
    check("jobs: {}\n", &["p.yml:1:7: `jobs` must define at least one job"]);
    check("jobs:\n", &["p.yml:1:5: `jobs` must define at least one job"]);
    check("jobs:\n  a:\n    steps: []\n", &["p.yml:3:12: job `a` has no steps; add at least one step under `steps`"]);
    check("jobs:\n  a:\n    name: x\n", &["p.yml:2:3: missing required key `steps` in job `a`"]);
}

#[test]
fn triggers() {
    check(
        &format!("on:\n  schedule: ['0 3 * * *', '0 25 * * *', '* * *']\njobs:\n  a:\n{STEPS}"),
        &[
            "p.yml:2:27: invalid cron expression `0 25 * * *`: Component error: Number out of bounds.",
            "p.yml:2:41: invalid cron expression `* * *`: expected 5 fields (minute hour day-of-month month day-of-week), found 3",
        ],
    );
    check(
        &format!("on:\n  push: {{ branches: ['release/[0-9]', '!main'] }}\njobs:\n  a:\n{STEPS}"),
        &[
            "p.yml:2:22: invalid pattern `release/[0-9]`: `[` is not supported (only `*`, `**` and `?` are special)",
            "p.yml:2:39: invalid pattern `!main`: negated patterns (`!…`) are not supported",
        ],
    );
    check(
        &format!("on:\n  manual: yes\njobs:\n  a:\n{STEPS}"),
        &["p.yml:2:11: expected a mapping for `manual`, found a string"],
    );
}

#[test]
fn enumerated_words() {
    check(
        &format!("jobs:\n  a:\n    image: {{ name: x, pull: alway }}\n    network: host\n{STEPS}"),
        &[
            "p.yml:3:29: invalid value `alway` for `pull`; did you mean `always`? (expected one of: if_not_present, always, never)",
            "p.yml:4:14: invalid value `host` for `network` (expected one of: bridge, none)",
        ],
    );
}

#[test]
fn documents() {
    check(
        &format!("jobs:\n  a:\n{STEPS}---\njobs: {{}}\n"),
        &["p.yml:6:1: expected a single YAML document; remove this second document (after `---`)"],
    );
    check("", &["p.yml:1:1: the pipeline file is empty; expected a mapping with a `jobs` key"]);
    check("# only a comment\n", &["p.yml:1:1: the pipeline file is empty; expected a mapping with a `jobs` key"]);
    // A trailing document marker is fine.
    check(&format!("jobs:\n  a:\n{STEPS}---\n"), &[]);
}

#[test]
fn expression_positions_inside_strings() {
    // Plain, single-quoted, double-quoted and literal block scalars.
    check(
        "jobs:\n  a:\n    steps:\n      - run: echo ${{ nope }}\n",
        &[
            "p.yml:4:23: invalid expression in `run`: unknown context `nope` (expected one of: branch, tag, event, commit, repo, run_id, matrix, env, inputs, steps, needs)",
        ],
    );
    check(
        "jobs:\n  a:\n    steps:\n      - run: 'echo ${{ 1 = 2 }}'\n",
        &["p.yml:4:26: invalid expression in `run`: unexpected character `=`; use `==` to compare"],
    );
    check(
        "jobs:\n  a:\n    steps:\n      - run: |\n          echo one\n          echo ${{ branch == }}\n",
        &["p.yml:6:30: invalid expression in `run`: unexpected end of expression: expected a value"],
    );
    // Escapes elsewhere in the string do not matter...
    check(
        "jobs:\n  a:\n    steps:\n      - run: \"\\techo ${{ nope }}\"\n",
        &[
            "p.yml:4:26: invalid expression in `run`: unknown context `nope` (expected one of: branch, tag, event, commit, repo, run_id, matrix, env, inputs, steps, needs)",
        ],
    );
    // ...but an escape inside the expression makes the position fall back to
    // the string start.
    check(
        "jobs:\n  a:\n    steps:\n      - run: \"${{ 'a\\tb' == nope }}\"\n",
        &[
            "p.yml:4:14: invalid expression in `run`: unknown context `nope` (expected one of: branch, tag, event, commit, repo, run_id, matrix, env, inputs, steps, needs)",
        ],
    );
    // Columns count characters, not bytes.
    check(
        "jobs:\n  a:\n    steps:\n      - run: echo «${{ x( }}\n",
        &[
            "p.yml:4:24: invalid expression in `run`: unknown function `x` (available: success, failure, always, cancelled, contains, startsWith, endsWith, format)",
        ],
    );
    // `if` without ${{ }} and an unterminated segment.
    check(
        "jobs:\n  a:\n    if: success() && needs.b.result\n    steps:\n      - run: \"a ${{ b\"\n",
        &[
            "p.yml:3:22: invalid expression in `if`: job `a` does not list `b` in `needs`; add it to `needs` to use `needs.b`",
            "p.yml:5:17: invalid expression in `run`: unterminated `${{`: expected a closing `}}`",
        ],
    );
}

#[test]
fn other_value_checks() {
    let yaml = "\
env: { bad-name: x, OK: [1] }
jobs:
  a:
    secrets: [GOOD, bad-secret]
    resources: { cpus: 0, memory: 2q }
    artifacts: [/abs, ../up, ok/path]
    steps:
      - run: x
        working_directory: sub/../..
        with: { a: 1 }
      - uses: 'cache@'
      - uses: cache@1.2.3.4
      - uses: p
        with: { k: { deep: \"${{ nope }}\" } }
";
    check(
        yaml,
        &[
            "p.yml:1:8: invalid environment variable name `bad-name`: use letters, digits and `_`, not starting with a digit",
            "p.yml:1:25: expected a string, number or boolean for `OK`, found a list",
            "p.yml:4:21: invalid secret name `bad-secret`: use letters, digits and `_`",
            "p.yml:5:24: `cpus` must be a positive number, found 0",
            "p.yml:5:35: invalid memory size `2q`: expected a number of bytes or a number with a unit (k, m, g, t), e.g. 512m, 2g",
            "p.yml:6:17: invalid path `/abs` for `artifacts`: must be relative to the workspace (no leading `/`)",
            "p.yml:6:23: invalid path `../up` for `artifacts`: must not contain `..`",
            "p.yml:9:28: invalid path `sub/../..` for `working_directory`: must not contain `..`",
            "p.yml:10:9: `with` is only valid for plugin steps (with `uses`)",
            "p.yml:11:15: invalid plugin reference `cache@`: expected NAME@MAJOR[.MINOR[.PATCH]] such as cache@1, or NAME for the newest version",
            "p.yml:12:15: invalid plugin reference `cache@1.2.3.4`: expected NAME@MAJOR[.MINOR[.PATCH]] such as cache@1, or NAME for the newest version",
            "p.yml:14:33: invalid expression in `with`: unknown context `nope` (expected one of: branch, tag, event, commit, repo, run_id, matrix, env, inputs, steps, needs)",
        ],
    );
}

#[test]
fn diagnostics_are_sorted_and_display_formatted() {
    let all = validate("dir/p.yml", "jobs:\n  b:\n    zz: 1\n    steps: []\n  a:\n    yy: 2\n");
    let positions: Vec<(u32, u32)> = all.iter().map(|d| (d.line, d.column)).collect();
    let mut sorted = positions.clone();
    sorted.sort();
    assert_eq!(positions, sorted);
    assert!(all[0].to_string().starts_with("dir/p.yml:3:5: unknown key `zz`"));
}

#[test]
fn text_fields_take_scalars_as_written() {
    let p =
        viaduct_pipeline::parse("p.yml", "jobs:\n  a:\n    steps:\n      - run: true\n        name: 1.10\n").unwrap();
    let step = &p.jobs[0].steps[0];
    assert!(matches!(&step.action, viaduct_pipeline::spec::StepAction::Run { script } if script == "true"));
    assert_eq!(step.name.as_deref(), Some("1.10"));
}

#[test]
fn snapshots_and_reuse_are_checked() {
    check(
        &format!("snapshots: yes please\njobs:\n  a:\n{STEPS}"),
        &["p.yml:1:12: expected `true` or `false` for `snapshots`, found a string"],
    );
    check(
        "jobs:\n  a:\n    steps:\n      - run: x\n        reuse: { key_files: [../Cargo.lock] }\n",
        &["p.yml:5:30: invalid path `../Cargo.lock` for `key_files`: must not contain `..`"],
    );
    check(
        "jobs:\n  a:\n    steps:\n      - run: x\n        reuse: { keys: [a] }\n",
        &[
            "p.yml:5:16: missing required key `key_files` in `reuse` in step 1 of job `a`",
            "p.yml:5:18: unknown key `keys` in `reuse` in step 1 of job `a` (expected one of: key_files)",
        ],
    );
}

#[test]
fn environment_and_artifacts_from() {
    // `artifacts_from` names jobs among `needs`.
    check(
        &format!("jobs:\n  b:\n{STEPS}  d:\n    needs: [b]\n    artifacts_from: [b, c]\n{STEPS}"),
        &["p.yml:7:25: `artifacts_from` names `c`, which is not in the job's `needs` (b)"],
    );
    // The mapping form's keys, with suggestions.
    check(
        &format!("jobs:\n  d:\n    environment: {{ name: prod, urls: x }}\n{STEPS}"),
        &[
            "p.yml:3:32: unknown key `urls` in `environment` in job `d`; did you mean `url`? (expected one of: name, url, services)",
        ],
    );
    check(
        &format!("jobs:\n  d:\n    environment:\n      name: prod\n      services:\n        - endpoints: [x]\n{STEPS}"),
        &["p.yml:6:11: missing required key `name` in service 1 of `environment` in job `d`"],
    );
}

#[test]
fn a_plugin_step_allows_only_the_jobs_secrets() {
    check(
        "jobs:\n  d:\n    secrets: [KEY]\n    steps:\n      - uses: p@1\n        allow: { secrets: [KEY, OTHER] }\n",
        &["p.yml:6:33: `allow.secrets` names `OTHER`, which is not among the job's `secrets`"],
    );
}
