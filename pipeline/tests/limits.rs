//! Every input is bounded in size and in cost: each limit of a pipeline
//! file, with an input just over it (refused with `file:line:column`) and
//! one at it (accepted), and hostile shapes that are small as text but large
//! once expanded.

use std::fmt::Write as _;

use viaduct_pipeline::{
    Diagnostic,
    expr::{MAX_EXPR_BYTES, MAX_STRING_BYTES, MapContext, Status, interpolate, parse_expr},
    parse,
    plan::{MAX_ARTIFACT_PATTERNS, MAX_ENV_BYTES, MAX_JOBS, MAX_STEPS, PlanContext, plan},
};

fn refused(yaml: &str) -> Vec<Diagnostic> {
    match parse("p.yml", yaml) {
        Err(d) => d,
        Ok(p) => plan(&p, &PlanContext::default()).expect_err("refused at plan time"),
    }
}

fn accepted(yaml: &str) {
    let p = parse("p.yml", yaml).unwrap_or_else(|d| panic!("{}", d[0]));
    plan(&p, &PlanContext::default()).unwrap_or_else(|d| panic!("{}", d[0]));
}

/// `a: &a [x, x, …]`, `b: &b [*a, *a, …]`, …: nine lines that expand to
/// 10⁹ nodes ("billion laughs").
#[test]
fn aliases_that_expand_past_the_limit_are_refused_where_they_cross_it() {
    let mut yaml = String::from("x0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..9 {
        let p = i - 1;
        let _ = writeln!(yaml, "x{i}: &x{i} [*x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}]");
    }
    yaml.push_str("jobs:\n  j:\n    steps:\n      - run: true\n");
    let t0 = std::time::Instant::now();
    let d = refused(&yaml);
    assert!(t0.elapsed() < std::time::Duration::from_secs(5), "refused cheaply, not after expanding");
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].message.contains("more than 100000 nodes with its aliases expanded"), "{}", d[0]);
    // x3 expands to 11 111 nodes: x4 (line 5), ten copies of it, crosses
    // 100 000 at its ninth.
    assert_eq!((d[0].line, d[0].column), (5, 45), "{}", d[0]);
}

#[test]
fn aliases_of_a_large_value_are_counted_by_bytes() {
    let big = "x".repeat(100_000);
    let mut yaml = format!("big: &big \"{big}\"\nmany: [");
    for _ in 0..100 {
        yaml.push_str("*big, ");
    }
    yaml.push_str("]\njobs:\n  j:\n    steps:\n      - run: true\n");
    let d = refused(&yaml);
    assert!(d[0].message.contains("MiB of values with its aliases expanded"), "{}", d[0]);
    assert_eq!(d[0].line, 2);
    // A few aliases are fine (and still an unknown key here).
    let few = format!("big: &big \"{big}\"\nmany: [*big, *big]\njobs:\n  j:\n    steps:\n      - run: true\n");
    assert!(refused(&few).iter().all(|d| !d.message.contains("too large")));
}

#[test]
fn steps_per_job() {
    let job = |n: usize| {
        let mut y = String::from("jobs:\n  j:\n    steps:\n");
        for _ in 0..n {
            y.push_str("      - run: true\n");
        }
        y
    };
    accepted(&job(MAX_STEPS));
    let d = refused(&job(MAX_STEPS + 1));
    assert_eq!(d[0].to_string(), format!("p.yml:4:7: job `j` has {} steps; the limit is {MAX_STEPS}", MAX_STEPS + 1));
}

#[test]
fn jobs_per_run_with_matrices_expanded() {
    // 4 jobs of a 250-combination matrix = 1000; one more job is over.
    let mut yaml = String::from("jobs:\n");
    for j in 0..4 {
        let _ = write!(yaml, "  m{j}:\n    matrix: {{ a: [");
        for i in 0..250 {
            let _ = write!(yaml, "{i}, ");
        }
        yaml.push_str("] }\n    steps:\n      - run: true\n");
    }
    assert_eq!(MAX_JOBS, 1000);
    accepted(&yaml);
    yaml.push_str("  last:\n    steps:\n      - run: true\n");
    let d = refused(&yaml);
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].message.contains("job `last` takes the run past 1000 jobs"), "{}", d[0]);
    assert_eq!(d[0].line as usize, yaml.lines().position(|l| l == "  last:").unwrap() + 1);
}

#[test]
fn expression_length() {
    let at = format!("'{}'", "x".repeat(MAX_EXPR_BYTES - 2));
    assert!(parse_expr(&at).is_ok());
    let over = format!("'{}'", "x".repeat(MAX_EXPR_BYTES - 1));
    let e = parse_expr(&over).unwrap_err();
    assert!(e.message.contains("expression too long"), "{}", e.message);
    let yaml = format!("jobs:\n  j:\n    steps:\n      - run: echo ${{{{ {over} }}}}\n");
    let d = refused(&yaml);
    assert!(d[0].message.contains("expression too long") && d[0].line == 4, "{}", d[0]);
}

#[test]
fn strings_made_by_expressions() {
    let ctx = MapContext::new(Status::Success);
    // format() doubling itself: 2^40 bytes if unbounded.
    let mut e = "'xxxxxxxxxxxxxxxx'".to_string();
    for _ in 0..40 {
        e = format!("format('{{0}}{{0}}', {e})");
    }
    let err = interpolate(&format!("${{{{ {e} }}}}"), &ctx).unwrap_err();
    assert!(err.message.contains(&format!("longer than {MAX_STRING_BYTES} bytes")), "{}", err.message);
    // Many expressions in one value add up too.
    let one = format!("${{{{ format('{{0}}{{0}}{{0}}{{0}}', '{}') }}}}", "y".repeat(4000));
    let err = interpolate(&one.repeat(20), &ctx).unwrap_err();
    assert!(err.message.contains("interpolated text is longer"), "{}", err.message);
    assert!(interpolate(&one.repeat(10), &ctx).is_ok());
}

#[test]
fn a_jobs_environment_and_its_artifact_patterns() {
    let value = "v".repeat(MAX_ENV_BYTES / 2);
    let yaml =
        format!("env: {{ A: {value} }}\njobs:\n  j:\n    env: {{ B: {value} }}\n    steps:\n      - run: true\n");
    let d = refused(&yaml);
    assert!(d[0].message.contains("the environment of job `j`"), "{}", d[0]);
    assert_eq!((d[0].line, d[0].column), (3, 3));
    accepted(&format!("env: {{ A: {value} }}\njobs:\n  j:\n    steps:\n      - run: true\n"));
    let patterns = |n: usize| {
        let list: Vec<String> = (0..n).map(|i| format!("out/{i}")).collect();
        format!("jobs:\n  j:\n    artifacts: [{}]\n    steps:\n      - run: true\n", list.join(", "))
    };
    accepted(&patterns(MAX_ARTIFACT_PATTERNS));
    let d = refused(&patterns(MAX_ARTIFACT_PATTERNS + 1));
    assert_eq!(
        d[0].to_string(),
        format!("p.yml:3:16: {} artifact patterns; the limit is 100", MAX_ARTIFACT_PATTERNS + 1)
    );
}
