use super::*;

fn ctx() -> MapContext {
    MapContext::new(Status::Success)
        .with("branch", "main")
        .with("event", "push")
        .with("matrix.os", "linux")
        .with("matrix.version", "1")
        .with("steps.cache.outputs.hit", "true")
        .with("inputs.count", "3")
        .with("env.EMPTY", "")
}

fn eval(src: &str) -> Value {
    parse_expr(src).unwrap_or_else(|e| panic!("{src}: {e}")).eval(&ctx()).unwrap_or_else(|e| panic!("{src}: {e}"))
}

fn parse_err(src: &str) -> (usize, String) {
    let e = parse_expr(src).expect_err(src);
    (e.offset, e.message)
}

#[test]
fn literals_and_paths() {
    assert_eq!(eval("'it''s'"), Value::from("it's"));
    assert_eq!(eval("42"), Value::Number(42.0));
    assert_eq!(eval("-2.5"), Value::Number(-2.5));
    assert_eq!(eval("1e3"), Value::Number(1000.0));
    assert_eq!(eval("true"), Value::Bool(true));
    assert_eq!(eval("null"), Value::Null);
    assert_eq!(eval("branch"), Value::from("main"));
    assert_eq!(eval("matrix.os"), Value::from("linux"));
    assert_eq!(eval("matrix['os']"), Value::from("linux"));
    assert_eq!(eval("steps.cache.outputs.hit"), Value::from("true"));
    assert_eq!(eval("matrix.missing"), Value::Null);
}

#[test]
fn operators_and_precedence() {
    assert_eq!(eval("branch == 'main'"), Value::Bool(true));
    assert_eq!(eval("branch == 'Main'"), Value::Bool(false), "case-sensitive");
    assert_eq!(eval("branch != 'dev'"), Value::Bool(true));
    assert_eq!(eval("matrix.version == 1"), Value::Bool(true), "coerced to number");
    assert_eq!(eval("inputs.count > 2"), Value::Bool(true));
    assert_eq!(eval("inputs.count <= 2"), Value::Bool(false));
    assert_eq!(eval("'a' < 'b'"), Value::Bool(true));
    assert_eq!(eval("'abc' >= 'abd'"), Value::Bool(false));
    assert_eq!(eval("'x' < 1"), Value::Bool(false), "NaN compares false");
    assert_eq!(eval("!true || true && false"), Value::Bool(false));
    assert_eq!(eval("!(true || true) || true"), Value::Bool(true));
    assert_eq!(eval("env.EMPTY || 'fallback'"), Value::from("fallback"));
    assert_eq!(eval("branch && 'yes'"), Value::from("yes"));
    assert_eq!(eval("null == 0"), Value::Bool(true));
    assert_eq!(eval("null == null"), Value::Bool(true));
}

#[test]
fn functions() {
    assert_eq!(eval("contains('hello', 'ell')"), Value::Bool(true));
    assert_eq!(eval("contains('hello', 'ELL')"), Value::Bool(false));
    assert_eq!(eval("startsWith(branch, 'ma')"), Value::Bool(true));
    assert_eq!(eval("endsWith(branch, 'in')"), Value::Bool(true));
    assert_eq!(eval("format('{0}-{1}', branch, 3)"), Value::from("main-3"));
    assert_eq!(eval("format('{{0}} {0}', 'x')"), Value::from("{0} x"));
    assert_eq!(eval("success()"), Value::Bool(true));
    assert_eq!(eval("failure()"), Value::Bool(false));
    assert_eq!(eval("always()"), Value::Bool(true));
    assert_eq!(eval("cancelled()"), Value::Bool(false));
    let e = parse_expr("format('{2}', 'a')").unwrap().eval(&ctx()).unwrap_err();
    assert_eq!(e.offset, 0);
    assert!(e.message.contains("invalid placeholder `{2}`"), "{}", e.message);
    let e = parse_expr("format('a}')").unwrap().eval(&ctx()).unwrap_err();
    assert!(e.message.contains("unmatched `}`"), "{}", e.message);
}

#[test]
fn truthiness() {
    for falsy in [Value::Null, Value::Bool(false), Value::Number(0.0), Value::Number(f64::NAN), Value::from("")] {
        assert!(!falsy.is_truthy(), "{falsy:?}");
    }
    for truthy in [Value::Bool(true), Value::Number(-1.0), Value::from("0"), Value::from("false")] {
        assert!(truthy.is_truthy(), "{truthy:?}");
    }
    assert_eq!(Value::Number(3.0).to_string(), "3");
    assert_eq!(Value::Number(2.5).to_string(), "2.5");
    assert_eq!(Value::Null.to_string(), "");
}

#[test]
fn errors_have_positions() {
    assert_eq!(parse_err("branch == 'main"), (10, "unterminated string: expected a closing `'`".to_owned()));
    let (off, msg) = parse_err("contain('a', 'b')");
    assert_eq!(off, 0);
    assert!(msg.starts_with("unknown function `contain`; did you mean `contains`?"), "{msg}");
    let (off, msg) = parse_err("true && startsWith('a')");
    assert_eq!(off, 8);
    assert_eq!(msg, "`startsWith()` takes 2 arguments, found 1");
    let (off, msg) = parse_err("success(1)");
    assert_eq!((off, msg.as_str()), (0, "`success()` takes 0 arguments, found 1"));
    let (off, msg) = parse_err("format()");
    assert_eq!((off, msg.as_str()), (0, "`format()` takes at least 1 argument, found 0"));
    let (off, msg) = parse_err("a == brach");
    assert_eq!(off, 0, "`a` is reported first");
    assert!(msg.starts_with("unknown context `a`"), "{msg}");
    let (off, msg) = parse_err("branch == brach");
    assert_eq!(off, 10);
    assert!(msg.starts_with("unknown context `brach`; did you mean `branch`? (expected one of: branch, tag"), "{msg}");
    assert_eq!(parse_err("branch = 'x'").1, "unexpected character `=`; use `==` to compare");
    assert_eq!(parse_err("\"x\"").1, "unexpected character `\"`; strings use single quotes: 'text'");
    assert_eq!(parse_err("(true").0, 5);
    assert_eq!(parse_err("true false").0, 5);
    assert_eq!(parse_err("").1, "empty expression");
    assert_eq!(parse_err("branch.name").1, "`branch` is a plain value and has no properties");
    assert!(parse_err("steps.x.output.y").1.starts_with("expected `steps.<id>.outputs.<name>`"));
    assert!(parse_err("needs.x").1.starts_with("expected `needs.<job>.result`"));
    assert!(parse_err("matrix").1.starts_with("expected `matrix.<name>`"));
    assert!(parse_err("matrix[0]").1.contains("quoted property name"));
    assert!(parse_err("a &").1.contains("use `&&`"));
}

#[test]
fn nesting_is_bounded() {
    let deep = format!("{}true{}", "(".repeat(500), ")".repeat(500));
    assert!(parse_err(&deep).1.contains("too deeply nested"));
    let nots = format!("{}true", "!".repeat(500));
    assert!(parse_err(&nots).1.contains("too deeply nested"));
    let chain = vec!["true"; 500].join(" || ");
    assert!(parse_err(&chain).1.contains("too deeply nested"));
    let ok = vec!["true"; 50].join(" || ");
    assert!(parse_expr(&ok).is_ok());
}

#[test]
fn conditions_imply_success() {
    let failed = MapContext::new(Status::Failure).with("branch", "main");
    let cancelled = MapContext::new(Status::Cancelled);
    // No status function: behaves as `success() && (expr)`.
    assert!(eval_condition("${{ branch == 'main' }}", &ctx()).unwrap());
    assert!(eval_condition("branch == 'main'", &ctx()).unwrap());
    assert!(!eval_condition("branch == 'main'", &failed).unwrap());
    assert!(!eval_condition("true", &cancelled).unwrap());
    // Not evaluated at all when the status is not success.
    assert!(!eval_condition("format('{9}')", &failed).unwrap());
    // Status functions take over.
    assert!(eval_condition("failure()", &failed).unwrap());
    assert!(eval_condition("always()", &failed).unwrap());
    assert!(eval_condition("${{ failure() && branch == 'main' }}", &failed).unwrap());
    assert!(eval_condition("cancelled()", &cancelled).unwrap());
    assert!(!eval_condition("success()", &failed).unwrap());
    // Empty condition is success().
    assert!(eval_condition("", &ctx()).unwrap());
    assert!(!eval_condition("  ", &failed).unwrap());
    // Error offsets are relative to the whole condition string.
    let e = eval_condition("${{ bad( }}", &ctx()).unwrap_err();
    assert_eq!(e.offset, 4);
    let e = eval_condition("${{ success( }}", &ctx()).unwrap_err();
    assert_eq!((e.offset, e.message.as_str()), (13, "unexpected end of expression: expected a value"));
    let e = parse_condition("  ${{ x }}").unwrap_err();
    assert_eq!(e.offset, 6);
}

#[test]
fn interpolation() {
    assert_eq!(interpolate("os=${{ matrix.os }} n=${{ inputs.count }}${{ null }}!", &ctx()).unwrap(), "os=linux n=3!");
    assert_eq!(interpolate("no expressions", &ctx()).unwrap(), "no expressions");
    assert_eq!(interpolate("${{ '}}' }}", &ctx()).unwrap(), "}}");
    let e = interpolate("a ${{ branch", &ctx()).unwrap_err();
    assert_eq!((e.offset, e.message.as_str()), (2, "unterminated `${{`: expected a closing `}}`"));
    let e = interpolate("ab ${{ nope.x }}", &ctx()).unwrap_err();
    assert_eq!(e.offset, 7);
    let e = interpolate("${{ }}", &ctx()).unwrap_err();
    assert_eq!(e.message, "empty expression");
}

#[test]
fn references_and_partial_rendering() {
    let t = parse_template("${{ matrix.os }}-${{ steps.a.outputs.b == branch }}").unwrap();
    let refs: Vec<Vec<String>> = t.expressions().flat_map(|e| e.references()).map(|r| r.path).collect();
    assert_eq!(
        refs,
        vec![
            vec!["matrix".to_owned(), "os".to_owned()],
            vec!["steps".into(), "a".into(), "outputs".into(), "b".into()],
            vec!["branch".to_owned()],
        ]
    );
    let offsets: Vec<usize> = t.expressions().flat_map(|e| e.references()).map(|r| r.offset).collect();
    assert_eq!(offsets, vec![4, 21, 42]);
    let only_matrix = |e: &Expr| e.references().iter().all(|r| r.path[0] == "matrix");
    assert_eq!(t.render_where(&ctx(), &only_matrix).unwrap(), "linux-${{ steps.a.outputs.b == branch }}");
    assert!(parse_expr("always() || x.y").is_err());
    assert!(parse_expr("!failure()").unwrap().uses_status_function());
    assert!(!parse_expr("contains(branch, 'x')").unwrap().uses_status_function());
}
