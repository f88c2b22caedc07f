//! `hello`: the Viaduct plugin template. Greets someone.
//!
//! ```yaml
//! - id: hello
//!   uses: hello@0
//!   with: { name: Viaduct }
//! - run: echo "${{ steps.hello.outputs.greeting }}"
//! ```

#![warn(missing_docs)]

use serde::Deserialize;
use viaduct_plugin_sdk::prelude::*;

/// The step's `with:` values (every key of `[inputs]` in plugin.toml).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct With {
    /// Who to greet.
    #[serde(default = "world", deserialize_with = "de::string")]
    name: String,
    /// Greet in capitals. `de::bool` also accepts "true"/"false", which is
    /// what `${{ }}` expressions produce.
    #[serde(default, deserialize_with = "de::bool")]
    shout: bool,
}

fn world() -> String {
    "world".to_owned()
}

/// The greeting for these inputs (pure logic: unit-tested natively).
fn greeting(w: &With) -> String {
    let text = format!("Hello, {}!", w.name);
    if w.shout { text.to_uppercase() } else { text }
}

/// Runs the step: called once per use in a pipeline, in a fresh sandbox,
/// with the workspace as the current directory.
pub fn run(ctx: Context) -> Result<Output> {
    let w: With = ctx.with()?;
    ensure!(!w.name.trim().is_empty(), "`name` must not be empty");
    let text = greeting(&w);
    ctx.info(&text);
    Ok(Output::new().set("greeting", &text).summary(format!(
        "Greeted **{}** on run {}.\n",
        markdown::escape(&w.name),
        ctx.meta().run_id
    )))
}

viaduct_plugin_sdk::export!(run);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greets() {
        let out = run(Context::builder().with("name", "Viaduct").build()).unwrap();
        assert_eq!(out.get("greeting"), Some("Hello, Viaduct!"));
        let out = run(Context::builder().with("shout", "true").build()).unwrap();
        assert_eq!(out.get("greeting"), Some("HELLO, WORLD!"));
    }

    #[test]
    fn rejects_bad_input() {
        let e = run(Context::builder().with("name", " ").build()).unwrap_err();
        assert_eq!(e.message(), "`name` must not be empty");
        let e = run(Context::builder().with("nmae", "x").build()).unwrap_err();
        assert!(e.message().starts_with("unknown input `nmae`"), "{e}");
    }
}
