//! Deployments as the environments page and the run page show them: a
//! state badge, a link to the job that deploys, Approve / Reject (a
//! rejection may say why; a refusal shows inline), the history table, and
//! the note of a job that deploys.

use leptos::{prelude::*, task::spawn_local};
use viaduct_proto::v1::{Deployment, DeploymentState, Job, ReviewDeploymentRequest};

use crate::{
    app::{
        api::use_api,
        widgets::{Ago, StatusBadge},
    },
    deployments, time_format,
};

/// A deployment's state as a badge (a run state's look, its own label).
#[component]
pub fn DeploymentBadge(
    /// The state.
    state: DeploymentState,
) -> impl IntoView {
    view! { <StatusBadge status=deployments::look(state) label=Some(deployments::label(state)) /> }
}

/// The run and job that deploy: "#42 · deploy", a link to the run page.
#[component]
pub fn DeploymentJob(
    /// The deployment.
    deployment: Deployment,
) -> impl IntoView {
    let d = deployment;
    if d.run_id.is_empty() {
        return view! { <span class="muted">"—"</span> }.into_any();
    }
    let name = if d.job_name.is_empty() { d.job_id.clone() } else { d.job_name.clone() };
    view! { <a href=format!("/runs/{}", d.run_id) data-run-link=d.run_id.clone()>{format!("#{} · {name}", d.run_id)}</a> }
        .into_any()
}

/// A name, or a dash when empty.
fn or_dash(s: &str) -> AnyView {
    if s.is_empty() {
        view! { <span class="muted">"—"</span> }.into_any()
    } else {
        view! { <span>{s.to_string()}</span> }.into_any()
    }
}

/// Approve and Reject for a deployment that waits for approval. Reject
/// first asks why (optional). The server's refusal — e.g. the one who
/// started the run may not approve it — shows beside the buttons.
#[component]
pub fn ReviewButtons(
    /// Which deployment: `id`, or `run_id` + `job` (the comment is filled
    /// in here).
    target: ReviewDeploymentRequest,
    /// Called after the server accepted the review.
    #[prop(optional)]
    on_done: Option<Callback<()>>,
) -> impl IntoView {
    let api = use_api();
    let busy = RwSignal::new(false);
    let error = RwSignal::new(None::<String>);
    let rejecting = RwSignal::new(false);
    let comment = RwSignal::new(String::new());
    let key = if target.id != 0 { target.id.to_string() } else { target.job.clone() };
    let review = move |approve: bool| {
        if busy.get_untracked() {
            return;
        }
        busy.set(true);
        error.set(None);
        let api = api.clone();
        let comment = if approve { String::new() } else { comment.get_untracked().trim().to_string() };
        let req = ReviewDeploymentRequest { comment, ..target.clone() };
        spawn_local(async move {
            let r = if approve {
                api.check(api.deployments().approve(req).await)
            } else {
                api.check(api.deployments().reject(req).await)
            };
            if busy.is_disposed() {
                return;
            }
            busy.set(false);
            match r {
                Ok(_) => {
                    rejecting.set(false);
                    if let Some(done) = on_done {
                        done.run(());
                    }
                }
                Err(e) => error.set(Some(e.to_string())),
            }
        });
    };
    let (approve, confirm) = (review.clone(), review);
    let (approve_key, reject_key) = (key.clone(), key.clone());
    view! {
        <div class="review" data-review=key>
            <Show
                when=move || rejecting.get()
                fallback=move || {
                    let approve = approve.clone();
                    view! {
                        <button
                            class="button small primary"
                            data-approve-deployment=approve_key.clone()
                            disabled=move || busy.get()
                            on:click=move |_| approve(true)
                        >
                            "Approve"
                        </button>
                        <button
                            class="button small danger"
                            data-reject-deployment=reject_key.clone()
                            disabled=move || busy.get()
                            on:click=move |_| rejecting.set(true)
                        >
                            "Reject"
                        </button>
                    }
                }
            >
                {
                    let confirm = confirm.clone();
                    view! {
                        <input
                            class="review-comment"
                            data-reject-comment=""
                            placeholder="Why (optional)"
                            aria-label="Why the deployment is rejected (optional)"
                            prop:value=move || comment.get()
                            on:input=move |e| comment.set(event_target_value(&e))
                        />
                        <button
                            class="button small danger"
                            data-confirm-reject=""
                            disabled=move || busy.get()
                            on:click=move |_| confirm(false)
                        >
                            "Reject deployment"
                        </button>
                        <button class="button small subtle" disabled=move || busy.get() on:click=move |_| rejecting.set(false)>
                            "Back"
                        </button>
                    }
                }
            </Show>
            {move || error.get().map(|e| view! { <p class="form-error small" role="alert">{e}</p> })}
        </div>
    }
}

/// Deployments, newest first, as a table: id, state, kind, what, job, who,
/// when, and what the server says about it.
#[component]
pub fn DeploymentTable(
    /// The deployments.
    deployments: Vec<Deployment>,
) -> impl IntoView {
    view! {
        <div class="table-wrap">
            <table class="table deployments">
                <thead>
                    <tr>
                        <th class="num">"ID"</th>
                        <th>"State"</th>
                        <th>"Kind"</th>
                        <th>"Commit"</th>
                        <th>"Job"</th>
                        <th>"Triggered by"</th>
                        <th>"Approved by"</th>
                        <th>"Created"</th>
                        <th>"Finished"</th>
                        <th>"Message"</th>
                    </tr>
                </thead>
                <tbody>
                    {deployments
                        .into_iter()
                        .map(|d| {
                            let st = d.state();
                            let t = d.times.unwrap_or_default();
                            let created = time_format::timestamp_ms(t.created_at.as_ref());
                            let finished = time_format::timestamp_ms(t.finished_at.as_ref());
                            view! {
                                <tr data-deployment-id=d.id.to_string() data-state=deployments::word(st)>
                                    <td class="num">{d.id}</td>
                                    <td><DeploymentBadge state=st /></td>
                                    <td>{deployments::kind(&d).to_string()}</td>
                                    <td><code title=d.commit.clone()>{deployments::what(&d)}</code></td>
                                    <td><DeploymentJob deployment=d.clone() /></td>
                                    <td>{or_dash(&d.triggered_by)}</td>
                                    <td>{or_dash(&d.approved_by)}</td>
                                    <td><Ago at=created /></td>
                                    <td><Ago at=finished /></td>
                                    <td class="small">{d.message.clone()}</td>
                                </tr>
                            }
                        })
                        .collect_view()}
                </tbody>
            </table>
        </div>
    }
}

/// What a deployment deployed and who let it: commit, job, who triggered
/// and approved it, when it finished (or started, or was created).
#[component]
pub fn DeploymentFacts(
    /// The deployment.
    deployment: Deployment,
) -> impl IntoView {
    let d = deployment;
    let t = d.times.unwrap_or_default();
    let (when, at) = [("Finished", &t.finished_at), ("Started", &t.started_at), ("Created", &t.created_at)]
        .into_iter()
        .find_map(|(label, ts)| time_format::timestamp_ms(ts.as_ref()).map(|ms| (label, Some(ms))))
        .unwrap_or(("Finished", None));
    view! {
        <dl class="facts">
            <div><dt>"Commit"</dt><dd><code title=d.commit.clone()>{deployments::what(&d)}</code></dd></div>
            <div><dt>"Job"</dt><dd><DeploymentJob deployment=d.clone() /></dd></div>
            <div><dt>"Triggered by"</dt><dd>{or_dash(&d.triggered_by)}</dd></div>
            <div><dt>"Approved by"</dt><dd>{or_dash(&d.approved_by)}</dd></div>
            <div><dt>{when}</dt><dd><Ago at /></dd></div>
        </dl>
    }
}

/// A job that deploys, on its run page: where to (a link to the
/// environment on the repository's environments page) and, while it waits
/// for approval, Approve / Reject.
#[component]
pub fn JobDeployment(
    /// The job.
    job: Job,
    /// The run's repository (empty: no environments page to link to).
    repo: String,
) -> impl IntoView {
    if job.environment.is_empty() {
        return ().into_any();
    }
    let env = job.environment.clone();
    let place = if repo.is_empty() {
        view! { <strong>{env}</strong> }.into_any()
    } else {
        let href = format!("{}#{}", deployments::environments_href(&repo), deployments::environment_anchor(&env));
        view! { <a href=href>{env}</a> }.into_any()
    };
    let id = (job.deployment != 0).then(|| format!(" (deployment {})", job.deployment));
    let review = deployments::job_waits_for_approval(&job).then(|| {
        let run_id = crate::run_model::run_of_job(&job.id).to_string();
        let target = ReviewDeploymentRequest { run_id, job: job.id.clone(), ..ReviewDeploymentRequest::default() };
        view! { <ReviewButtons target /> }
    });
    view! {
        <div class="job-deployment" data-job-deployment=job.deployment.to_string()>
            <p>"Deploys to " {place} {id}</p>
            {review}
        </div>
    }
    .into_any()
}
