//! `/runs/:id`: one run, live — its job graph (columns by `needs`, matrix
//! groups), a job's steps with plugin summaries and where it deploys, the
//! artifacts, and cancel / retry / approve (a run that waits for approval,
//! or a job's deployment).

use leptos::{prelude::*, task::spawn_local};
use leptos_router::hooks::use_params_map;
use viaduct_proto::v1::{
    ApproveRunRequest, Artifact, CancelRunRequest, DownloadArtifactRequest, GetRunRequest, Job, ListArtifactsRequest,
    RetryFrom, RetryRunRequest, Run, Step,
};
use wasm_bindgen::JsCast;

use super::deployments::JobDeployment;
use crate::{
    app::{
        api::{Api, use_api},
        browser,
        debug_shell::DebugShell,
        live::{Loadable, spawn_scoped, sync_with_watch},
        widgets::{Ago, Elapsed, Empty, StatusBadge, StatusIcon, show_loadable},
    },
    dag::{self, JobInput},
    deployments, markdown, run_model, status, time_format,
};

/// The run page (re-created when the id changes).
#[component]
pub fn RunPage() -> impl IntoView {
    let params = use_params_map();
    let id = Memo::new(move |_| params.with(|p| p.get("id").unwrap_or_default()));
    move || {
        let id = id.get();
        view! { <RunView id /> }
    }
}

fn job_times(job: &Job) -> (Option<i64>, Option<i64>) {
    let t = job.times.as_ref();
    (
        time_format::timestamp_ms(t.and_then(|t| t.started_at.as_ref())),
        time_format::timestamp_ms(t.and_then(|t| t.finished_at.as_ref())),
    )
}

fn step_times(step: &Step) -> (Option<i64>, Option<i64>) {
    let t = step.times.as_ref();
    (
        time_format::timestamp_ms(t.and_then(|t| t.started_at.as_ref())),
        time_format::timestamp_ms(t.and_then(|t| t.finished_at.as_ref())),
    )
}

/// One run.
#[component]
fn RunView(id: String) -> impl IntoView {
    browser::set_title(&format!("Run #{id} · Viaduct"));
    let api = use_api();
    let state: RwSignal<Loadable<Run>> = RwSignal::new(Loadable::Loading);
    let get_id = id.clone();
    sync_with_watch(
        api.clone(),
        id.clone(),
        state,
        move |api: Api| {
            let req = GetRunRequest { id: get_id.clone() };
            Box::pin(async move { api.check(api.runs().get(req).await) })
        },
        run_model::apply,
    );
    // Why queued jobs wait is the server's view at the moment it is asked:
    // asked again every 3 s while a job is queued.
    {
        let (api, id) = (api.clone(), id.clone());
        spawn_scoped(async move {
            loop {
                browser::sleep(3000).await;
                if state.is_disposed() {
                    return;
                }
                let queued = state.with_untracked(|s| matches!(s, Loadable::Ready(r) if run_model::has_queued(r)));
                if !queued {
                    continue;
                }
                if let Ok(fresh) = api.check(api.runs().get(GetRunRequest { id: id.clone() }).await) {
                    state.update(|s| {
                        if let Loadable::Ready(r) = s {
                            run_model::merge_waiting(r, &fresh);
                        }
                    });
                }
            }
        });
    }
    let selected = RwSignal::new(None::<String>);
    let action_error = RwSignal::new(None::<String>);
    let busy = RwSignal::new(false);

    // Cancel (the run, or one job) and retry.
    let act = {
        let api = api.clone();
        let id = id.clone();
        move |what: Action| {
            if busy.get_untracked() {
                return;
            }
            busy.set(true);
            action_error.set(None);
            let api = api.clone();
            let id = id.clone();
            spawn_local(async move {
                let r = match what {
                    Action::Cancel(job_id) => api.check(api.runs().cancel(CancelRunRequest { id, job_id }).await),
                    Action::Retry => {
                        api.check(api.runs().retry(RetryRunRequest { id, from: None, keep_on_failure: false }).await)
                    }
                    Action::Resume => {
                        let from = Some(RetryFrom { job: String::new(), step: 0 });
                        api.check(api.runs().retry(RetryRunRequest { id, from, keep_on_failure: false }).await)
                    }
                    Action::Approve => api.check(api.runs().approve(ApproveRunRequest { id }).await),
                };
                busy.set(false);
                // The page shows what `Runs.Watch` says: every change the
                // action causes arrives there, in order. The response is a
                // snapshot taken before the runner acted (a cancelled job
                // still `running`), and applying it could overwrite the
                // newer `cancelled` the stream has already delivered.
                if let Err(e) = r {
                    action_error.set(Some(e.to_string()));
                }
            });
        }
    };

    let phase = Memo::new(move |_| {
        state.with(|s| match s {
            Loadable::Ready(_) => Loadable::Ready(()),
            Loadable::Loading => Loadable::Loading,
            Loadable::Failed(e) => Loadable::Failed(e.clone()),
        })
    });
    let header_id = id.clone();
    view! {
        <section class="page" data-page="run">
            {move || {
                let act = act.clone();
                let id = header_id.clone();
                show_loadable(phase.get(), move |()| {
                    let act_cancel = act.clone();
                    let act_retry = act.clone();
                    let act_approve = act.clone();
                    let act_job = act.clone();
                    view! {
                        <RunHeader state busy act_cancel act_retry act_approve />
                        {move || action_error.get().map(|e| view! { <div class="error-box" role="alert">{e}</div> })}
                        <RunDetails state />
                        <h2 class="section-title">"Jobs"</h2>
                        <JobGraph state selected busy act=act_job />
                        {move || selected.get().map(|job_id| view! { <JobPanel state job_id /> })}
                        <Artifacts run_id=id.clone() state />
                    }
                    .into_any()
                })
            }}
        </section>
    }
}

/// What a button asks of the server.
#[derive(Clone)]
enum Action {
    /// Cancel the run (empty) or one job.
    Cancel(String),
    /// Retry the failed jobs.
    Retry,
    /// Retry the failed jobs from their failed steps, on snapshots.
    Resume,
    /// Let a run that waits for approval start.
    Approve,
}

/// Title, state, source and the run's actions.
#[component]
fn RunHeader(
    state: RwSignal<Loadable<Run>>,
    busy: RwSignal<bool>,
    act_cancel: impl Fn(Action) + Clone + Send + Sync + 'static,
    act_retry: impl Fn(Action) + Clone + Send + Sync + 'static,
    act_approve: impl Fn(Action) + Clone + Send + Sync + 'static,
) -> impl IntoView {
    let field = move |f: fn(&Run) -> String| move || state.with(|s| s.ready().map(f).unwrap_or_default());
    let st = Signal::derive(move || state.with(|s| s.ready().map(Run::status).unwrap_or_default()));
    let times = Memo::new(move |_| state.with(|s| s.ready().map(run_model::run_times).unwrap_or_default()));
    let can_cancel = move || state.with(|s| s.ready().is_some_and(run_model::can_cancel));
    let can_retry = move || state.with(|s| s.ready().is_some_and(run_model::can_retry));
    let can_resume = move || state.with(|s| s.ready().is_some_and(run_model::can_resume));
    let act_resume = act_retry.clone();
    let can_approve = move || state.with(|s| s.ready().is_some_and(run_model::can_approve));
    let trust = move || state.with(|s| s.ready().map(run_model::trust_notice).unwrap_or_default());
    view! {
        <div class="page-head run-head">
            <div class="title-line">
                <StatusBadge status=st />
                <h1>"Run #" {field(|r| r.id.clone())}</h1>
                <span class="pipeline-name">{field(|r| if r.pipeline.is_empty() { r.pipeline_ref.clone() } else { r.pipeline.clone() })}</span>
            </div>
            <div class="actions">
                <Show when=can_cancel>
                    {
                        let act = act_cancel.clone();
                        view! {
                            <button id="cancel-run" class="button danger" disabled=move || busy.get() on:click=move |_| act(Action::Cancel(String::new()))>
                                "Cancel run"
                            </button>
                        }
                    }
                </Show>
                <Show when=can_retry>
                    {
                        let act = act_retry.clone();
                        view! {
                            <button id="retry-run" class="button primary" disabled=move || busy.get() on:click=move |_| act(Action::Retry)>
                                "Retry failed jobs"
                            </button>
                        }
                    }
                </Show>
                <Show when=can_resume>
                    {
                        let act = act_resume.clone();
                        view! {
                            <button
                                id="resume-run"
                                class="button"
                                title="Re-run failed jobs from their failed step, on the workspace their earlier steps left"
                                disabled=move || busy.get()
                                on:click=move |_| act(Action::Resume)
                            >
                                "Resume from failed steps"
                            </button>
                        }
                    }
                </Show>
                <Show when=can_approve>
                    {
                        let act = act_approve.clone();
                        view! {
                            <button id="approve-run" class="button primary" disabled=move || busy.get() on:click=move |_| act(Action::Approve)>
                                "Approve run"
                            </button>
                        }
                    }
                </Show>
            </div>
        </div>
        {move || {
            let notices = trust();
            (!notices.is_empty()).then(|| view! {
                <div class="trust-notice" role="status">
                    {notices.into_iter().map(|n| view! { <p>{n}</p> }).collect_view()}
                </div>
            })
        }}
        <dl class="facts">
            <div>
                <dt>"Source"</dt>
                <dd>{move || {
                    let s = field(run_model::source_summary)();
                    if s.is_empty() { "inline".to_string() } else { s }
                }}</dd>
            </div>
            <div>
                <dt>"Created"</dt>
                <dd><Ago at=Signal::derive(move || times.get().0) /></dd>
            </div>
            <div>
                <dt>"Duration"</dt>
                <dd><Elapsed start=Signal::derive(move || times.get().1) finish=Signal::derive(move || times.get().2) /></dd>
            </div>
        </dl>
    }
}

/// The run's error, commit message and inputs (when it has them).
#[component]
fn RunDetails(state: RwSignal<Loadable<Run>>) -> impl IntoView {
    let error = move || state.with(|s| s.ready().map(|r| r.error.clone()).filter(|e| !e.is_empty()));
    let message = move || {
        state.with(|s| {
            s.ready().and_then(|r| r.source.as_ref()).map(|src| {
                let first = src.message.lines().next().unwrap_or_default().to_string();
                (first, src.author.clone())
            })
        })
    };
    let inputs = move || {
        state.with(|s| {
            let mut v: Vec<(String, String)> =
                s.ready().map(|r| r.inputs.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default();
            v.sort();
            v
        })
    };
    view! {
        {move || error().map(|e| view! { <div class="error-box" role="alert"><strong>"The run failed before any job ran"</strong><pre>{e}</pre></div> })}
        {move || message().filter(|(m, _)| !m.is_empty()).map(|(m, author)| view! {
            <p class="commit-message">{m} {(!author.is_empty()).then(|| view! { <span class="muted">" — " {author}</span> })}</p>
        })}
        {move || {
            let inputs = inputs();
            (!inputs.is_empty()).then(|| view! {
                <dl class="inputs">
                    {inputs.into_iter().map(|(k, v)| view! { <div><dt>{k}</dt><dd><code>{v}</code></dd></div> }).collect_view()}
                </dl>
            })
        }}
    }
}

/// The job graph: columns by `needs`, matrix expansions grouped, edges
/// between groups.
#[component]
fn JobGraph(
    state: RwSignal<Loadable<Run>>,
    selected: RwSignal<Option<String>>,
    busy: RwSignal<bool>,
    act: impl Fn(Action) + Clone + Send + Sync + 'static,
) -> impl IntoView {
    // The layout changes only when jobs or needs change, not on every state.
    let inputs = Memo::new(move |_| {
        state.with(|s| {
            s.ready()
                .map(|r| {
                    r.jobs
                        .iter()
                        .map(|j| JobInput { id: j.id.clone(), key: j.key.clone(), needs: j.needs.clone() })
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
    });
    let layout = Memo::new(move |_| inputs.with(|i| dag::layout(i)));
    move || {
        let l = layout.get();
        let ids: Vec<String> = inputs.with(|i| i.iter().map(|j| j.id.clone()).collect());
        if ids.is_empty() {
            return view! { <Empty title="No jobs">"This run has no jobs."</Empty> }.into_any();
        }
        let style = format!("width:{}px;height:{}px", l.width, l.height);
        let act = act.clone();
        view! {
            <div class="graph-scroll">
                <div class="graph" style=style>
                    <svg class="edges" width=l.width height=l.height aria-hidden="true">
                        {l.edges.iter().map(|e| view! { <path d=e.path.clone()></path> }).collect_view()}
                    </svg>
                    {l.groups
                        .iter()
                        .map(|g| {
                            let frame = g.matrix.then(|| {
                                let style = format!(
                                    "left:{}px;top:{}px;width:{}px;height:{}px",
                                    g.x - dag::GROUP_PAD,
                                    g.y,
                                    dag::COLUMN_WIDTH + 2.0 * dag::GROUP_PAD,
                                    g.height
                                );
                                view! {
                                    <div class="matrix-group" style=style>
                                        <span class="matrix-title">{g.key.clone()} <span class="muted">{format!(" ×{}", g.jobs.len())}</span></span>
                                    </div>
                                }
                            });
                            let jobs = g
                                .jobs
                                .iter()
                                .enumerate()
                                .filter_map(|(i, &j)| ids.get(j).map(|id| (id.clone(), g.x, g.job_y(i))))
                                .map(|(id, x, y)| {
                                    let act = act.clone();
                                    view! { <JobCard state selected busy act id x y /> }
                                })
                                .collect_view();
                            view! { {frame} {jobs} }
                        })
                        .collect_view()}
                </div>
            </div>
        }
        .into_any()
    }
}

/// One job in the graph: state, name (a link to its log), duration, and a
/// cancel button while it runs. Clicking the box shows its steps.
#[component]
fn JobCard(
    state: RwSignal<Loadable<Run>>,
    selected: RwSignal<Option<String>>,
    busy: RwSignal<bool>,
    act: impl Fn(Action) + Clone + Send + Sync + 'static,
    id: String,
    x: f64,
    y: f64,
) -> impl IntoView {
    let job_id = id.clone();
    let job =
        Memo::new(move |_| state.with(|s| s.ready().and_then(|r| r.jobs.iter().find(|j| j.id == job_id).cloned())));
    let st = Signal::derive(move || job.with(|j| j.as_ref().map(Job::status).unwrap_or_default()));
    let times = Memo::new(move |_| job.with(|j| j.as_ref().map(job_times).unwrap_or_default()));
    let run_id = run_model::run_of_job(&id).to_string();
    let href = format!("/runs/{run_id}/jobs/{id}");
    let sel_id = id.clone();
    let is_selected = move || selected.with(|s| s.as_deref() == Some(sel_id.as_str()));
    let click_id = id.clone();
    let toggle = move |e: leptos::ev::MouseEvent| {
        // Links and buttons inside the box do their own thing.
        let on_control = e
            .target()
            .and_then(|t| t.dyn_into::<web_sys::Element>().ok())
            .is_some_and(|el| el.closest("a, button").ok().flatten().is_some());
        if on_control {
            return;
        }
        selected.update(|s| {
            *s = if s.as_deref() == Some(click_id.as_str()) { None } else { Some(click_id.clone()) };
        })
    };
    let cancel_id = id.clone();
    let style = format!("left:{x}px;top:{y}px;width:{}px;height:{}px", dag::COLUMN_WIDTH, dag::NODE_HEIGHT);
    let name = move || job.with(|j| j.as_ref().map(|j| j.name.clone()).unwrap_or_default());
    let title = move || {
        job.with(|j| {
            j.as_ref()
                .map(|j| {
                    let mut t = format!("{} — {}", j.name, status::label(j.status()));
                    for note in [&j.message, &j.waiting] {
                        if !note.is_empty() {
                            t.push_str(": ");
                            t.push_str(note);
                        }
                    }
                    if let Some(note) = deployments::job_note(j) {
                        t.push_str(" — ");
                        t.push_str(&note);
                    }
                    t
                })
                .unwrap_or_default()
        })
    };
    view! {
        <div
            class=move || format!("job {}{}", status::class(st.get()), if is_selected() { " selected-job" } else { "" })
            data-job-id=id.clone()
            data-status=move || status::word(st.get())
            data-nav-item=""
            style=style
            title=title
            on:click=toggle
        >
            <StatusIcon status=st />
            <a class="job-name" href=href>{name}</a>
            <span class="job-duration">
                <Elapsed start=Signal::derive(move || times.get().0) finish=Signal::derive(move || times.get().1) />
            </span>
            <Show when=move || job.with(|j| j.as_ref().is_some_and(run_model::can_cancel_job))>
                {
                    let act = act.clone();
                    let cancel_id = cancel_id.clone();
                    let attr = cancel_id.clone();
                    view! {
                        <button
                            class="job-cancel"
                            title="Cancel this job"
                            aria-label="Cancel this job"
                            data-cancel-job=attr
                            disabled=move || busy.get()
                            on:click=move |e| {
                                e.stop_propagation();
                                act(Action::Cancel(cancel_id.clone()));
                            }
                        >
                            "×"
                        </button>
                    }
                }
            </Show>
        </div>
    }
}

/// The selected job: facts, steps with states and durations, plugin
/// summaries; for a failed job with a snapshot, its debug shell.
#[component]
fn JobPanel(state: RwSignal<Loadable<Run>>, job_id: String) -> impl IntoView {
    let id = job_id.clone();
    let job = Memo::new(move |_| state.with(|s| s.ready().and_then(|r| r.jobs.iter().find(|j| j.id == id).cloned())));
    let run_id = run_model::run_of_job(&job_id).to_string();
    let repo = state
        .with_untracked(|s| s.ready().and_then(|r| r.source.as_ref()).map(|src| src.repo.clone()).unwrap_or_default());
    // Names of the jobs it needs (ids as a fallback).
    let need_names = move |needs: &[String]| -> String {
        state.with_untracked(|s| {
            needs
                .iter()
                .map(|n| {
                    s.ready()
                        .and_then(|r| r.jobs.iter().find(|j| &j.id == n))
                        .map_or_else(|| n.clone(), |j| j.name.clone())
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
    };
    // The debug shell's panel lives beside the job's (which is redrawn on
    // every change of the job), so its session outlives those changes.
    let shell_open = RwSignal::new(false);
    let shell_job = job_id.clone();
    let panel = move || {
        let Some(j) = job.get() else {
            return view! { <p class="muted">"Job " {job_id.clone()} " not found."</p> }.into_any();
        };
        let log_href = format!("/runs/{run_id}/jobs/{}", j.id);
        let st = j.status();
        let (start, finish) = job_times(&j);
        let matrix: Vec<String> = {
            let mut m: Vec<String> = j.matrix.iter().map(|(k, v)| format!("{k}={v}")).collect();
            m.sort();
            m
        };
        let steps = j.steps.clone();
        let attempts = j.previous_attempts.clone();
        view! {
            <div class="panel job-panel">
                <div class="panel-head">
                    <StatusBadge status=st />
                    <h3>{j.name.clone()}</h3>
                    <span class="panel-actions">
                        {run_model::can_debug(&j).then(|| view! {
                            <button
                                class="button"
                                data-debug-shell-open=""
                                title="A shell in this job's workspace, restored from its newest snapshot"
                                disabled=move || shell_open.get()
                                on:click=move |_| shell_open.set(true)
                            >
                                "Debug shell"
                            </button>
                        })}
                        <a class="button" href=log_href.clone()>"View log"</a>
                    </span>
                </div>
                <dl class="facts">
                    <div><dt>"Job"</dt><dd>{j.id.clone()}</dd></div>
                    <div><dt>"Duration"</dt><dd><Elapsed start=start finish=finish /></dd></div>
                    <div><dt>"Attempt"</dt><dd>{format!("{} of {}", j.attempt.max(1), j.max_attempts.max(1))}</dd></div>
                    {(!j.runner_id.is_empty()).then(|| view! { <div><dt>"Runner"</dt><dd>{j.runner_id.clone()}</dd></div> })}
                    {(!j.image.is_empty()).then(|| view! { <div><dt>"Image"</dt><dd><code>{j.image.clone()}</code></dd></div> })}
                    {(!matrix.is_empty()).then(|| view! { <div><dt>"Matrix"</dt><dd>{matrix.join(", ")}</dd></div> })}
                    {(!j.needs.is_empty()).then(|| view! { <div><dt>"Needs"</dt><dd>{need_names(&j.needs)}</dd></div> })}
                </dl>
                <JobDeployment job=j.clone() repo=repo.clone() />
                {(!j.message.is_empty()).then(|| view! { <p class="job-message">{j.message.clone()}</p> })}
                {(!j.waiting.is_empty()).then(|| view! { <p class="job-waiting" role="status">{format!("Queued: {}", j.waiting)}</p> })}
                {if steps.is_empty() {
                    view! { <p class="muted">"No steps have been planned yet."</p> }.into_any()
                } else {
                    view! {
                        <ol class="steps">
                            {steps.into_iter().map(|s| {
                                let href = format!("{log_href}#L{}-1", s.index);
                                view! { <StepItem step=s href /> }
                            }).collect_view()}
                        </ol>
                    }.into_any()
                }}
                {(!attempts.is_empty()).then(|| view! {
                    <h4>"Earlier attempts"</h4>
                    <ul class="attempts">
                        {attempts.into_iter().map(|a| {
                            let st = a.status();
                            view! {
                                <li>
                                    <StatusIcon status=st />
                                    {format!(" attempt {} — {}", a.attempt, status::label(st))}
                                    {(!a.message.is_empty()).then(|| format!(": {}", a.message))}
                                </li>
                            }
                        }).collect_view()}
                    </ul>
                })}
            </div>
        }
        .into_any()
    };
    view! {
        {panel}
        {move || shell_open.get().then(|| {
            let on_close = Callback::new(move |()| shell_open.set(false));
            view! { <DebugShell job_id=shell_job.clone() on_close /> }
        })}
    }
}

/// One step of a job, with its plugin summary.
#[component]
fn StepItem(step: Step, href: String) -> impl IntoView {
    let st = step.status();
    let (start, finish) = step_times(&step);
    let summary = (!step.summary.trim().is_empty()).then(|| markdown::to_safe_html(&step.summary));
    // The plugin a `uses` step runs, unless its name already says it.
    let detail = if step.kind == "uses" && step.detail != step.name { step.detail.clone() } else { String::new() };
    let exit = step.exit_code.filter(|c| *c != 0).map(|c| format!("exit {c}"));
    view! {
        <li class="step" data-step-id=step.id.clone() data-status=status::word(st)>
            <div class="step-line">
                <StatusIcon status=st />
                <a class="step-name" href=href>{format!("{}. {}", step.index, step.name)}</a>
                {(!detail.is_empty()).then(|| view! { <code class="step-uses">{detail}</code> })}
                {exit.map(|e| view! { <span class="exit-code">{e}</span> })}
                {step.snapshot.then(|| view! { <span class="step-snapshot muted" title="A snapshot of the workspace after this step is kept: a retry can resume after it">"snapshot"</span> })}
                <span class="step-duration"><Elapsed start=start finish=finish /></span>
            </div>
            {(!step.message.is_empty()).then(|| view! { <p class="step-message muted">{step.message.clone()}</p> })}
            {summary.map(|html| view! { <div class="summary markdown" inner_html=html></div> })}
        </li>
    }
}

/// An artifact and its signed download path (when one could be had).
type ArtifactLink = (Artifact, Option<String>);

/// The run's artifacts with download links (signed URLs from
/// `Artifacts.Link`). Reloaded when jobs finish (artifacts are uploaded at
/// job end).
#[component]
fn Artifacts(run_id: String, state: RwSignal<Loadable<Run>>) -> impl IntoView {
    let api = use_api();
    let list: RwSignal<Loadable<Vec<ArtifactLink>>> = RwSignal::new(Loadable::Loading);
    let finished = Memo::new(move |_| {
        state.with(|s| s.ready().map_or(0, |r| r.jobs.iter().filter(|j| status::is_terminal(j.status())).count()))
    });
    let load_api = api.clone();
    let load_id = run_id.clone();
    Effect::new(move |_| {
        finished.track();
        let api = load_api.clone();
        let run_id = load_id.clone();
        spawn_scoped(async move {
            let r = api.check(
                api.artifacts().list(ListArtifactsRequest { run_id: run_id.clone(), job_id: String::new() }).await,
            );
            match r {
                Err(e) => list.set(Loadable::Failed(e)),
                Ok(resp) => {
                    let mut out = Vec::with_capacity(resp.artifacts.len());
                    for a in resp.artifacts {
                        let req = DownloadArtifactRequest {
                            run_id: run_id.clone(),
                            job_id: a.job_id.clone(),
                            name: a.name.clone(),
                        };
                        let link = api.check(api.artifacts().link(req).await).ok().map(|l| l.path);
                        out.push((a, link));
                    }
                    list.set(Loadable::Ready(out));
                }
            }
        });
    });
    view! {
        <h2 class="section-title">"Artifacts"</h2>
        {move || {
            show_loadable(list.get(), |items: Vec<ArtifactLink>| {
                if items.is_empty() {
                    view! { <p class="muted">"No artifacts. Jobs keep files with " <code>"artifacts:"</code> " globs."</p> }.into_any()
                } else {
                    view! {
                        <div class="table-wrap">
                        <table class="table artifacts">
                            <thead><tr><th>"Name"</th><th>"Job"</th><th class="num">"Size"</th><th>"Expires"</th><th></th></tr></thead>
                            <tbody>
                                {items.into_iter().map(|(a, link)| {
                                    let expires = time_format::timestamp_ms(a.expires_at.as_ref());
                                    view! {
                                        <tr>
                                            <td><code>{a.name.clone()}</code></td>
                                            <td>{if a.job_name.is_empty() { a.job_id.clone() } else { a.job_name.clone() }}</td>
                                            <td class="num">{human_size(a.size)}</td>
                                            <td><Ago at=expires /></td>
                                            <td>{match link {
                                                Some(path) => view! { <a class="button small" href=path download="" rel="external">"Download"</a> }.into_any(),
                                                None => view! { <span class="muted">"no link"</span> }.into_any(),
                                            }}</td>
                                        </tr>
                                    }
                                }).collect_view()}
                            </tbody>
                        </table>
                        </div>
                    }.into_any()
                }
            })
        }}
    }
}

/// Bytes as "1.2 MiB".
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", UNITS[u]) }
}
