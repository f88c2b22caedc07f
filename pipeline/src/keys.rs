//! The single source of truth for the keys of every mapping in the format.
//!
//! Each [`Table`] lists a mapping's keys with their expected type and doc
//! string. The decoder uses the tables for unknown-key detection, "did you
//! mean" suggestions and "expected one of" lists; [`crate::json_schema`]
//! renders the same tables as a JSON Schema.

/// The expected type of a value, as documented and rendered in the schema.
#[derive(Debug)]
pub(crate) enum Ty {
    /// `null` (an empty value, as in `push:`).
    Null,
    /// A string.
    Str,
    /// A string that may contain `${{ }}` expressions.
    Template,
    /// A condition: an expression with or without `${{ }}` (or a boolean).
    Condition,
    /// `true` / `false`.
    Bool,
    /// An integer in an inclusive range.
    Int { min: i64, max: i64 },
    /// A positive number.
    Number,
    /// A duration string such as `10m`.
    Duration,
    /// A memory size: bytes or a string such as `512m`.
    Memory,
    /// A string, number or boolean (converted to a string).
    Scalar,
    /// A string or a list of strings.
    StrOrList,
    /// A list of values of the given type.
    List(&'static Ty),
    /// A mapping described by a table.
    Map(&'static Table),
    /// A mapping with free-form keys and values of the given type.
    MapOf(&'static Ty),
    /// Any of the given types.
    OneOf(&'static [Ty]),
    /// One of the given words.
    Enum(&'static [&'static str]),
    /// Any YAML value.
    Any,
}

/// One key of a mapping.
#[derive(Debug)]
pub(crate) struct KeySpec {
    pub(crate) name: &'static str,
    pub(crate) ty: Ty,
    pub(crate) required: bool,
    pub(crate) doc: &'static str,
}

/// The keys of one kind of mapping.
#[derive(Debug)]
pub(crate) struct Table {
    /// Name of the definition in the JSON schema (`$defs/<id>`).
    pub(crate) id: &'static str,
    /// What the mapping is.
    pub(crate) doc: &'static str,
    pub(crate) keys: &'static [KeySpec],
    /// Type and doc of free-form extra keys (e.g. matrix axes); `None` means
    /// unknown keys are errors.
    pub(crate) extra: Option<(&'static Ty, &'static str)>,
    /// Keys of which exactly one must be present.
    pub(crate) exactly_one_of: &'static [&'static str],
}

impl Table {
    /// The key names, in documentation order.
    pub(crate) fn names(&self) -> impl Iterator<Item = &'static str> + Clone + use<> {
        let keys: &'static [KeySpec] = self.keys;
        keys.iter().map(|k| k.name)
    }

    /// Whether `name` is a declared key.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.keys.iter().any(|k| k.name == name)
    }
}

const fn key(name: &'static str, ty: Ty, doc: &'static str) -> KeySpec {
    KeySpec { name, ty, required: false, doc }
}

const fn required(name: &'static str, ty: Ty, doc: &'static str) -> KeySpec {
    KeySpec { name, ty, required: true, doc }
}

const fn table(id: &'static str, doc: &'static str, keys: &'static [KeySpec]) -> Table {
    Table { id, doc, keys, extra: None, exactly_one_of: &[] }
}

const PRIORITY: Ty = Ty::Int { min: 0, max: 10 };
const IMAGE_TY: Ty = Ty::OneOf(&[Ty::Str, Ty::Map(&IMAGE)]);
const ENV_TY: Ty = Ty::MapOf(&Ty::Scalar);
const NOTIFY_TY: Ty = Ty::List(&Ty::Map(&NOTIFY));
const ENVIRONMENT_TY: Ty = Ty::OneOf(&[Ty::Template, Ty::Map(&ENVIRONMENT)]);

/// The words of `notify[].on`, in the order of [`crate::spec::NotifyOn::ALL`].
pub(crate) const NOTIFY_ON_WORDS: &[&str] = &["success", "failure", "fixed", "broken"];

/// Top level of `.viaduct/pipeline.yml`.
pub(crate) static PIPELINE: Table = table(
    "pipeline",
    "A Viaduct pipeline (.viaduct/pipeline.yml, format v1).",
    &[
        key("name", Ty::Template, "Display name of the pipeline (default `pipeline`)."),
        key(
            "on",
            Ty::Map(&ON),
            "Events that start the pipeline; when absent the pipeline only runs manually or through the API.",
        ),
        key("env", ENV_TY, "Environment variables for every job; values are strings, numbers or booleans."),
        key("priority", PRIORITY, "Run priority from 0 to 10 (default 5)."),
        key(
            "concurrency",
            Ty::OneOf(&[Ty::Template, Ty::Map(&CONCURRENCY)]),
            "Concurrency group of the run, as a string or a mapping.",
        ),
        key(
            "notify",
            NOTIFY_TY,
            "Notifications about the run (at most 10): where to send them and for which outcomes.",
        ),
        key(
            "snapshots",
            Ty::Bool,
            "Keep a snapshot of each job's workspace after every step that succeeds, so a retry can resume from \
             the failed step (default: the server's `--snapshots`).",
        ),
        required("jobs", Ty::MapOf(&Ty::Map(&JOB)), "The jobs, by key."),
    ],
);

/// `on:`
pub(crate) static ON: Table = table(
    "on",
    "Events that start the pipeline.",
    &[
        key("push", Ty::OneOf(&[Ty::Null, Ty::Map(&PUSH)]), "Run on pushes; `push:` or `push: {}` means every push."),
        key(
            "pull_request",
            Ty::OneOf(&[Ty::Null, Ty::Map(&PULL_REQUEST)]),
            "Run on pull requests; `pull_request:` means every pull request.",
        ),
        key("schedule", Ty::StrOrList, "5-field cron expressions (UTC)."),
        key(
            "manual",
            Ty::OneOf(&[Ty::Null, Ty::Bool, Ty::Map(&MANUAL)]),
            "Allow starting the pipeline manually, optionally with inputs.",
        ),
    ],
);

/// `on.push:`
pub(crate) static PUSH: Table = table(
    "push",
    "Push filters. With `branches` only, tag pushes do not match; with `tags` only, branch pushes do not match.",
    &[
        key(
            "branches",
            Ty::StrOrList,
            "Branch name globs (`*` excludes `/`, `**` matches anything, `?` one character).",
        ),
        key("tags", Ty::StrOrList, "Tag name globs."),
    ],
);

/// `on.pull_request:`
pub(crate) static PULL_REQUEST: Table = table(
    "pull_request",
    "Pull request filters.",
    &[key("branches", Ty::StrOrList, "Globs matched against the pull request's target branch.")],
);

/// `on.manual:`
pub(crate) static MANUAL: Table = table(
    "manual",
    "Manual trigger settings.",
    &[key(
        "inputs",
        Ty::MapOf(&Ty::OneOf(&[Ty::Null, Ty::Map(&INPUT)])),
        "Inputs offered when starting the pipeline manually, by name; read them with `inputs.<name>`.",
    )],
);

/// `on.manual.inputs.<name>:`
pub(crate) static INPUT: Table = table(
    "input",
    "A manual input.",
    &[
        key("default", Ty::Scalar, "Default value."),
        key("description", Ty::Str, "Help text."),
        key("required", Ty::Bool, "Whether a value must be given (default false)."),
    ],
);

/// `concurrency:`
pub(crate) static CONCURRENCY: Table = table(
    "concurrency",
    "Runs in the same concurrency group do not run at the same time.",
    &[
        required("group", Ty::Template, "Group name; may use `${{ }}` (e.g. `ci-${{ branch }}`)."),
        key(
            "cancel_in_progress",
            Ty::Bool,
            "Cancel the running run of the group when a new one starts (default false).",
        ),
    ],
);

/// `jobs.<key>:`
pub(crate) static JOB: Table = table(
    "job",
    "A job: steps run in order in one container.",
    &[
        key("name", Ty::Template, "Display name (default: the job key)."),
        key("runs_on", Ty::StrOrList, "Runner labels the job requires."),
        key("image", IMAGE_TY, "Container image, as a string or a mapping."),
        key("services", Ty::MapOf(&Ty::Map(&SERVICE)), "Service containers reachable by name, by name."),
        key("network", Ty::Enum(&["bridge", "none"]), "Container network: `bridge` (default) or `none`."),
        key("resources", Ty::Map(&RESOURCES), "Resource limits."),
        key("matrix", Ty::Map(&MATRIX), "Run the job once per combination of axis values."),
        key("fail_fast", Ty::Bool, "Cancel matrix siblings when one fails (default true)."),
        key("timeout", Ty::Duration, "Job timeout, e.g. 30m."),
        key("retries", Ty::Int { min: 0, max: 10 }, "Automatic retries on failure, 0 to 10 (default 0)."),
        key("priority", PRIORITY, "Priority 0 to 10; overrides the run priority."),
        key("env", ENV_TY, "Environment variables for every step."),
        key("secrets", Ty::StrOrList, "Names of secrets exposed to the job as environment variables."),
        key("needs", Ty::StrOrList, "Keys of jobs that must finish first; a matrix job key means all its expansions."),
        key(
            "if",
            Ty::Condition,
            "Condition, e.g. `${{ branch == 'main' }}`; without a status function it implies `success() &&`.",
        ),
        key("continue_on_error", Ty::Bool, "A failure of this job does not fail the run (default false)."),
        key("artifacts", Ty::StrOrList, "Paths or globs (relative, no `..`) collected after the job."),
        key(
            "notify",
            NOTIFY_TY,
            "Notifications about this job (at most 10; a matrix job's expansions each send their own).",
        ),
        key(
            "snapshots",
            Ty::Bool,
            "Keep a snapshot of the workspace after every step that succeeds (default: the pipeline's).",
        ),
        key(
            "environment",
            ENVIRONMENT_TY,
            "The environment the job deploys to (its name, or a mapping): its rules must pass before the job starts, \
             and its deployment is recorded.",
        ),
        key(
            "artifacts_from",
            Ty::StrOrList,
            "Keys of jobs among `needs` whose artifacts are put in the workspace before the first step.",
        ),
        required("steps", Ty::List(&Ty::Map(&STEP)), "The steps, run in order."),
    ],
);

/// `jobs.<key>.environment:` (mapping form)
pub(crate) static ENVIRONMENT: Table = table(
    "environment",
    "The environment a job deploys to.",
    &[
        required("name", Ty::Template, "The environment's name (created with `viaduct environments put`)."),
        key("url", Ty::Template, "Where the deployment can be seen."),
        key(
            "services",
            Ty::List(&Ty::Map(&DEPLOYED_SERVICE)),
            "Services the deployment runs: registered when it succeeds, and probed by the server.",
        ),
    ],
);

/// `jobs.<key>.environment.services[]:`
pub(crate) static DEPLOYED_SERVICE: Table = table(
    "deployed_service",
    "A service a deployment runs.",
    &[
        required("name", Ty::Template, "Its name, unique in the environment."),
        key("endpoints", Ty::StrOrList, "Where it answers (shown with it)."),
        key("probe", Ty::Map(&PROBE), "How the server checks its health."),
        key("on_change", Ty::Str, "A stored pipeline started when its health changes."),
    ],
);

/// `jobs.<key>.environment.services[].probe:`
pub(crate) static PROBE: Table = table(
    "probe",
    "A health probe.",
    &[
        required("target", Ty::Template, "`http://…`/`https://…` (up: a 2xx or 3xx answer) or `tcp://host:port`."),
        key("interval", Ty::Duration, "Between probes (default 30s, at least 1s)."),
        key("timeout", Ty::Duration, "Per probe (default 5s, at most 60s)."),
    ],
);

/// `jobs.<key>.image:` (mapping form) and `services.<name>.image:`
pub(crate) static IMAGE: Table = table(
    "image",
    "A container image.",
    &[
        required("name", Ty::Template, "Image reference, e.g. rust:1-bookworm."),
        key("pull", Ty::Enum(&["if_not_present", "always", "never"]), "Pull policy (default if_not_present)."),
        key("user", Ty::Scalar, "User (name or uid[:gid]) to run as."),
        key("credentials", Ty::Str, "Name of a secret holding `user:password` for the image's registry."),
    ],
);

/// `jobs.<key>.services.<name>:`
pub(crate) static SERVICE: Table = table(
    "service",
    "A service container.",
    &[
        required("image", IMAGE_TY, "Container image."),
        key("env", ENV_TY, "Environment variables of the service."),
        key("command", Ty::StrOrList, "Command to run instead of the image's (a string or a list of words)."),
    ],
);

/// `jobs.<key>.resources:`
pub(crate) static RESOURCES: Table = table(
    "resources",
    "Resource limits of the job container.",
    &[
        key("cpus", Ty::Number, "CPU limit (may be fractional, e.g. 0.5)."),
        key("memory", Ty::Memory, "Memory limit: bytes or a size such as 512m or 2g."),
    ],
);

/// `jobs.<key>.matrix:`
pub(crate) static MATRIX: Table = Table {
    id: "matrix",
    doc: "Matrix axes (any other key: a list of values) plus include/exclude.",
    keys: &[
        key("include", Ty::List(&Ty::MapOf(&Ty::Scalar)), "Combinations to extend or add."),
        key("exclude", Ty::List(&Ty::MapOf(&Ty::Scalar)), "Combinations to remove (matching all given keys)."),
    ],
    extra: Some((&Ty::List(&Ty::Scalar), "A matrix axis: the list of its values.")),
    exactly_one_of: &[],
};

/// `jobs.<key>.steps[]:`
pub(crate) static STEP: Table = Table {
    id: "step",
    doc: "A step: a shell script (`run`) or a plugin (`uses`).",
    keys: &[
        key("name", Ty::Template, "Display name (default: first line of `run`, or the `uses` reference)."),
        key("id", Ty::Str, "Identifier for `steps.<id>.outputs.<name>` and `steps.<id>.outcome`."),
        key("run", Ty::Template, "Shell script."),
        key("uses", Ty::Str, "Plugin reference NAME@MAJOR[.MINOR[.PATCH]], or NAME for the newest."),
        key("with", Ty::MapOf(&Ty::Any), "Plugin parameters (any YAML values)."),
        key("env", ENV_TY, "Environment variables of the step."),
        key("timeout", Ty::Duration, "Step timeout, e.g. 10m."),
        key("continue_on_error", Ty::Bool, "A failure of this step does not fail the job (default false)."),
        key("if", Ty::Condition, "Condition; without a status function it implies `success() &&`."),
        key("working_directory", Ty::Template, "Working directory relative to the workspace (no `..`)."),
        key("allow", Ty::Map(&ALLOW), "Capabilities granted to a plugin step."),
        key(
            "reuse",
            Ty::Map(&REUSE),
            "Start a later run after this step, from an earlier run's snapshot, while its key files and the steps \
             up to this one are unchanged (the job keeps snapshots).",
        ),
    ],
    extra: None,
    exactly_one_of: &["run", "uses"],
};

/// `jobs.<key>.steps[].reuse:`
pub(crate) static REUSE: Table = table(
    "reuse",
    "When a later run may start after this step, from an earlier run's snapshot.",
    &[required(
        "key_files",
        Ty::StrOrList,
        "Workspace-relative paths or globs (no `..`) whose contents, with the steps up to this one, decide \
         whether a snapshot may be reused (e.g. Cargo.lock, package-lock.json).",
    )],
);

/// `jobs.<key>.steps[].allow:`
pub(crate) static ALLOW: Table = table(
    "allow",
    "Capability grants for plugin steps.",
    &[
        key("network", Ty::Bool, "Allow network access (default false)."),
        key(
            "secrets",
            Ty::StrOrList,
            "The job's secrets (of its `secrets:`) the plugin gets in its environment (default none).",
        ),
    ],
);

/// `notify[]:` and `jobs.<key>.notify[]:`
pub(crate) static NOTIFY: Table = Table {
    id: "notification",
    doc: "A notification: exactly one channel (`webhook`, `slack`, `matrix` or `email`) and the outcomes it is sent for. \
          Channels name secrets, never URLs: a pipeline cannot compute where notifications go.",
    keys: &[
        key(
            "webhook",
            Ty::OneOf(&[Ty::Str, Ty::Map(&WEBHOOK)]),
            "A generic webhook: the name of the secret holding its URL, or a mapping with `url` and `secret`.",
        ),
        key("slack", Ty::Str, "Name of a secret holding a Slack incoming-webhook URL."),
        key("matrix", Ty::Str, "Name of a secret holding a Matrix (hookshot) incoming-webhook URL."),
        key("email", Ty::StrOrList, "Email addresses, one as a string or up to 10 as a list."),
        key(
            "on",
            Ty::OneOf(&[Ty::Enum(NOTIFY_ON_WORDS), Ty::List(&Ty::Enum(NOTIFY_ON_WORDS))]),
            "Outcomes to notify on: `success`, `failure`, `fixed` (succeeded after a failure), `broken` (failed after a success); default `[failure, fixed]`.",
        ),
    ],
    extra: None,
    exactly_one_of: &["webhook", "slack", "matrix", "email"],
};

/// `notify[].webhook:` (mapping form)
pub(crate) static WEBHOOK: Table = table(
    "webhook",
    "A generic webhook, by the names of its secrets.",
    &[
        required("url", Ty::Str, "Name of the secret holding the URL to post to."),
        key("secret", Ty::Str, "Name of the secret holding the HMAC key the request body is signed with (optional)."),
    ],
);

/// Every table, for schema generation and tests.
pub(crate) static ALL_TABLES: [&Table; 20] = [
    &PIPELINE,
    &ON,
    &PUSH,
    &PULL_REQUEST,
    &MANUAL,
    &INPUT,
    &CONCURRENCY,
    &JOB,
    &ENVIRONMENT,
    &DEPLOYED_SERVICE,
    &PROBE,
    &IMAGE,
    &SERVICE,
    &RESOURCES,
    &MATRIX,
    &STEP,
    &ALLOW,
    &REUSE,
    &NOTIFY,
    &WEBHOOK,
];
