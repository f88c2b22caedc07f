//! `viaduct-pipeline`: the `.viaduct/pipeline.yml` (format v1) library of
//! Viaduct.
//!
//! A pure library (no I/O, no async) used by the server (validate + plan),
//! the runner (evaluate `if:` and interpolate `${{ }}` at run time) and the
//! CLI (offline validation).
//!
//! - [`parse`] turns a file into a typed [`spec::Pipeline`], or returns
//!   **all** problems as [`Diagnostic`]s (`file:line:column: message`,
//!   sorted by position). [`validate`] returns just the diagnostics.
//! - [`plan::plan`] compiles a pipeline and a [`plan::PlanContext`] into a
//!   backend-neutral [`plan::Plan`] (matrix expansion, `needs` indices,
//!   plan-time interpolation — see the [`plan`] module docs for exactly what
//!   is interpolated when).
//! - [`expr`] is the expression language: [`expr::eval_condition`],
//!   [`expr::interpolate`], [`expr::parse_expr`], [`expr::Expr::references`].
//! - [`json_schema`] returns a JSON Schema (draft 2020-12) for editors,
//!   generated from the same key tables the parser checks keys against.
//! - Trigger matching for the server lives on [`spec::Triggers`]
//!   (`matches_push`, `matches_pull_request`, `schedules`, `allows_manual`).
//!
//! # Design notes
//! - YAML is loaded with `saphyr` into `MarkedYaml` trees (spans for every
//!   node). Its event stream passes through a small receiver that reports
//!   every duplicate key (saphyr's own check stops at the first) and caps
//!   nesting at 64 levels, so later recursive walks cannot overflow.
//! - Every mapping's keys are declared once in a private key table (name,
//!   type, doc); unknown keys, "did you mean" (via `strsim`), "expected one
//!   of" lists and the JSON schema all come from these tables.
//! - Branch/tag filters use a ~40-line glob matcher ([`glob::Glob`]: `*`
//!   excludes `/`, `**` matches anything, `?` one character) instead of
//!   `globset`: three operators on short ref names do not justify a regex
//!   engine, and unsupported syntax (`[…]`, `{a,b}`, `!`) is rejected.
//! - Cron expressions are validated with `croner` (5 fields, UTC) and
//!   exposed as [`cron::CronSchedule`], which the server can use to compute
//!   fire times with the very same parser.
//!
//! ```
//! let yaml = "jobs:\n  test:\n    steps:\n      - run: cargo test\n";
//! let pipeline = viaduct_pipeline::parse("pipeline.yml", yaml).unwrap();
//! let ctx = viaduct_pipeline::plan::PlanContext {
//!     event: "push".into(),
//!     branch: Some("main".into()),
//!     ..Default::default()
//! };
//! let plan = viaduct_pipeline::plan::plan(&pipeline, &ctx).unwrap();
//! assert_eq!(plan.jobs[0].steps[0].name, "cargo test");
//! ```

#![warn(missing_docs)]

pub mod cron;
mod dag;
mod decode;
mod diag;
pub mod duration;
pub mod expr;
pub mod glob;
mod keys;
pub mod matrix;
mod node;
mod parse;
pub mod plan;
mod schema;
mod scope;
pub mod spec;
pub mod toolchains;
mod triggers;
mod yaml;

pub use diag::{Diagnostic, Pos, suggestion};
pub use parse::{check, parse, validate};
pub use schema::json_schema;
