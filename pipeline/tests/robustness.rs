//! Nothing panics on malformed input.

use viaduct_pipeline::expr::{MapContext, Status, eval_condition, interpolate, parse_expr};
use viaduct_pipeline::plan::{PlanContext, plan};
use viaduct_pipeline::{parse, validate};

const FULL: &str = include_str!("fixtures/full.yml");

/// Parses, and plans when parsing succeeds; diagnostics must be well-formed.
fn exercise(text: &str) {
    match parse("fuzz.yml", text) {
        Ok(p) => {
            let ctx = PlanContext { event: "manual".into(), branch: Some("main".into()), ..PlanContext::default() };
            let _ = plan(&p, &ctx);
        }
        Err(diags) => {
            assert!(!diags.is_empty());
            for d in &diags {
                assert!(d.line >= 1 && d.column >= 1, "{d}");
                assert!(!d.message.is_empty());
            }
        }
    }
}

/// A tiny deterministic PRNG (xorshift) so the test needs no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn every_truncation() {
    for (i, _) in FULL.char_indices() {
        exercise(&FULL[..i]);
    }
}

#[test]
fn wrong_types_at_every_key() {
    let replacements = [
        "[1, 2]",
        "{ a: 1 }",
        "~",
        "",
        "123",
        "-1",
        "1.5",
        "true",
        "\"${{\"",
        "\"${{ nope }}\"",
        "!!int x",
        "*undefined",
        "99999999999999999999999999",
        "1e400",
        "\"\\t\"",
        "[[[[]]]]",
        "'${{ matrix.x }}'",
        "|\n  multi\n  line",
    ];
    let lines: Vec<&str> = FULL.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let Some(colon) = line.find(": ") else {
            continue;
        };
        for r in replacements {
            let mut doc = lines.clone();
            let replaced = format!("{} {r}", &line[..=colon]);
            doc[i] = &replaced;
            exercise(&doc.join("\n"));
        }
    }
}

#[test]
fn random_mutations() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let alphabet: Vec<char> = "{}[]:,-'\"\t\n #&*!|>?%@`$ax1.é".chars().collect();
    let base: Vec<char> = FULL.chars().collect();
    for _ in 0..1500 {
        let mut doc = base.clone();
        for _ in 0..1 + rng.below(6) {
            let at = rng.below(doc.len());
            match rng.below(3) {
                0 => {
                    doc.remove(at);
                }
                1 => doc.insert(at, alphabet[rng.below(alphabet.len())]),
                _ => doc[at] = alphabet[rng.below(alphabet.len())],
            }
        }
        exercise(&doc.iter().collect::<String>());
    }
}

#[test]
fn pathological_documents() {
    let deep_flow = format!("jobs: {}", "[".repeat(10_000));
    let deep_flow_closed = format!("jobs: {}{}", "[".repeat(200), "]".repeat(200));
    let deep_block = format!("jobs:\n{}x\n", "- ".repeat(5_000));
    let deep_map = (0..200).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect::<String>();
    let laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\njobs: {}\n";
    let anchors = "base: &s\n  - run: x\njobs:\n  a:\n    steps: *s\n  b:\n    <<: *s\n";
    let huge_numbers = "priority: 99999999999999999999999999999\njobs:\n  a:\n    retries: -99999999999999999999\n    timeout: 99999999999999999999h\n    resources: { cpus: 1e309, memory: 99999999999999999999999g }\n    steps: [{ run: x }]\n";
    let tabs = "jobs:\n\ta:\n\t\tsteps: []\n";
    let many_docs = "---\njobs: {}\n---\na: 1\n---\n- x\n...\n";
    let keys_galore =
        "? [complex, key]\n: 1\n? { a: b }\n: 2\n1: x\ntrue: y\n~: z\njobs: { a: { steps: [{ run: x }] } }\n";
    let long_line = format!("jobs:\n  a:\n    steps:\n      - run: {}\n", "${{ a ".repeat(20_000));
    let many_exprs = format!("jobs:\n  a:\n    steps:\n      - run: \"{}\"\n", "${{ branch }}".repeat(5_000));
    let cycle_chain = {
        let mut s = String::from("jobs:\n");
        for i in 0..3_000 {
            s.push_str(&format!("  j{i}:\n    needs: j{}\n    steps: [{{ run: x }}]\n", (i + 1) % 3_000));
        }
        s
    };
    let bom = "\u{feff}jobs:\n  a:\n    steps: [{ run: x }]\n";
    let nul = "jobs:\0\n";
    for doc in [
        deep_flow.as_str(),
        &deep_flow_closed,
        &deep_block,
        &deep_map,
        laughs,
        anchors,
        huge_numbers,
        tabs,
        many_docs,
        keys_galore,
        &long_line,
        &many_exprs,
        &cycle_chain,
        bom,
        nul,
        "%YAML 1.2\n---\njobs: {}\n",
        "!!map { jobs: !!str x }",
        "jobs: !custom { a: { steps: [{ run: x }] } }",
    ] {
        exercise(doc);
    }
    let diags = validate("p.yml", &cycle_chain);
    assert!(diags.iter().any(|d| d.message.starts_with("dependency cycle: j0 → j1 → j2")));
}

#[test]
fn random_expressions() {
    let ctx = MapContext::new(Status::Failure).with("branch", "main");
    let pieces = [
        "branch", "==", "!=", "<", ">=", "&&", "||", "!", "(", ")", "'s'", "'", "1", "-2.5e3", "null", "true",
        "matrix", ".", "x", "[", "]", "'k'", "format", "contains", ",", "success", "${{", "}}", "steps", "needs", "é",
        "=", "&", "\"", " ",
    ];
    let mut rng = Rng(42);
    for _ in 0..20_000 {
        let n = 1 + rng.below(12);
        let src: String = (0..n).map(|_| pieces[rng.below(pieces.len())]).collect::<Vec<_>>().join(" ");
        if let Ok(e) = parse_expr(&src) {
            let _ = e.eval(&ctx);
            let _ = e.references();
        }
        let _ = eval_condition(&src, &ctx);
        let _ = interpolate(&src, &ctx);
        let _ = interpolate(&format!("x ${{{{ {src} }}}} y"), &ctx);
    }
}
