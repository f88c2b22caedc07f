//! Small view pieces shared by the pages: state icons and badges, relative
//! times and ticking durations, empty/error/loading states, charts.

use leptos::prelude::*;
use viaduct_proto::v1::Status;

use super::{api::ApiError, live::Loadable};
use crate::{chart::Chart, status, time_format};

/// The current time, ticking once a second (for relative times and running
/// durations).
#[derive(Clone, Copy)]
pub struct Clock(pub RwSignal<i64>);

/// "Now" in ms, tracked (re-renders every second).
pub fn now() -> i64 {
    use_context::<Clock>().map_or_else(super::browser::now_ms, |c| c.0.get())
}

/// A state's icon, coloured by its state.
#[component]
pub fn StatusIcon(
    /// The state shown.
    #[prop(into)]
    status: Signal<Status>,
    /// What it is called, when not the state's own label (a deployment's
    /// or a service's state drawn with a run state's look).
    #[prop(default = None)]
    label: Option<&'static str>,
) -> impl IntoView {
    let text = move || label.unwrap_or_else(|| status::label(status.get()));
    view! {
        <svg class=move || format!("icon {}", status::class(status.get())) viewBox="0 0 16 16" role="img" aria-label=text>
            <title>{text}</title>
            <path d=move || status::icon_path(status.get())></path>
        </svg>
    }
}

/// Icon and label of a state.
#[component]
pub fn StatusBadge(
    /// The state shown.
    #[prop(into)]
    status: Signal<Status>,
    /// What it is called, when not the state's own label.
    #[prop(default = None)]
    label: Option<&'static str>,
) -> impl IntoView {
    let text = move || label.unwrap_or_else(|| status::label(status.get()));
    view! {
        <span class=move || format!("badge {}", status::class(status.get()))>
            <StatusIcon status=status label=label />
            <span>{text}</span>
        </span>
    }
}

/// A relative time ("3 min ago") with the full time as a tooltip.
#[component]
pub fn Ago(
    /// The time (Unix ms); none shows a dash.
    #[prop(into)]
    at: Signal<Option<i64>>,
) -> impl IntoView {
    move || match at.get() {
        Some(ms) => {
            view! { <time title=time_format::full(ms)>{move || time_format::relative(now(), ms)}</time> }.into_any()
        }
        None => view! { <span class="muted">"—"</span> }.into_any(),
    }
}

/// How long something took, or has been running (ticking).
#[component]
pub fn Elapsed(
    /// When it started (Unix ms); none: not started.
    #[prop(into)]
    start: Signal<Option<i64>>,
    /// When it finished; none while it runs.
    #[prop(into)]
    finish: Signal<Option<i64>>,
) -> impl IntoView {
    move || {
        let (s, f) = (start.get(), finish.get());
        match (s, f) {
            (Some(_), None) => {
                view! { <span class="elapsed running">{move || time_format::elapsed(s, None, now()).map(time_format::duration)}</span> }
                    .into_any()
            }
            (Some(_), Some(_)) => {
                view! { <span class="elapsed">{time_format::elapsed(s, f, 0).map(time_format::duration)}</span> }.into_any()
            }
            _ => view! { <span class="elapsed muted">"—"</span> }.into_any(),
        }
    }
}

/// An error message box.
#[component]
pub fn ErrorBox(
    /// The error.
    error: ApiError,
) -> impl IntoView {
    let hint = match error.code {
        tonic::Code::PermissionDenied => Some("This token may not do that."),
        tonic::Code::Unavailable | tonic::Code::Unknown => {
            Some("Is the server running? The page retries live data by itself.")
        }
        _ => None,
    };
    view! {
        <div class="error-box" role="alert">
            <strong>{error.to_string()}</strong>
            {hint.map(|h| view! { <p class="muted">{h}</p> })}
        </div>
    }
}

/// Nothing to show: a message and what to do about it.
#[component]
pub fn Empty(
    /// What is missing.
    #[prop(into)]
    title: String,
    /// What to do about it.
    children: Children,
) -> impl IntoView {
    view! {
        <div class="empty">
            <p class="empty-title">{title}</p>
            <div class="muted">{children()}</div>
        </div>
    }
}

/// A loading placeholder.
#[component]
pub fn Loading() -> impl IntoView {
    view! { <div class="loading" aria-busy="true">"Loading…"</div> }
}

/// Shows `state`: loading, its error, or `ready` of the value.
pub fn show_loadable<T, V>(state: Loadable<T>, ready: impl FnOnce(T) -> V) -> AnyView
where
    V: IntoView + 'static,
{
    match state {
        Loadable::Loading => view! { <Loading /> }.into_any(),
        Loadable::Failed(e) => view! { <ErrorBox error=e /> }.into_any(),
        Loadable::Ready(v) => ready(v).into_any(),
    }
}

/// A chart drawn as inline SVG.
#[component]
pub fn ChartView(
    /// The drawing.
    chart: Chart,
    /// Its accessible name.
    #[prop(into)]
    label: String,
) -> impl IntoView {
    let f = chart.frame;
    let plot_left = f.left;
    let plot_right = f.width - f.pad;
    let axis_y = f.height - f.bottom;
    let aria = label.clone();
    let legend: Vec<(&'static str, &'static str)> = chart.lines.iter().map(|l| (l.class, l.name)).collect();
    view! {
        <figure class="chart">
            <svg viewBox=format!("0 0 {} {}", f.width, f.height) role="img" aria-label=aria>
                <title>{label}</title>
                {chart
                    .y_ticks
                    .into_iter()
                    .map(|t| {
                        view! {
                            <line class="grid" x1=plot_left x2=plot_right y1=t.at y2=t.at></line>
                            <text class="tick" x=plot_left - 6.0 y=t.at + 4.0 text-anchor="end">
                                {t.label}
                            </text>
                        }
                    })
                    .collect_view()}
                <line class="axis" x1=plot_left x2=plot_right y1=axis_y y2=axis_y></line>
                {chart
                    .x_ticks
                    .into_iter()
                    .map(|t| {
                        view! {
                            <text class="tick" x=t.at y=f.height - 6.0 text-anchor="middle">
                                {t.label}
                            </text>
                        }
                    })
                    .collect_view()}
                {chart
                    .bars
                    .into_iter()
                    .map(|b| {
                        view! {
                            <rect class=b.class x=b.x y=b.y width=b.width height=b.height>
                                <title>{b.title}</title>
                            </rect>
                        }
                    })
                    .collect_view()}
                {chart
                    .lines
                    .into_iter()
                    .map(|l| {
                        let class = l.class;
                        view! {
                            <path class=format!("line {class}") d=l.path></path>
                            {l
                                .points
                                .into_iter()
                                .map(|(x, y, tip)| {
                                    view! {
                                        <circle class=format!("dot {class}") cx=x cy=y r="3">
                                            <title>{tip}</title>
                                        </circle>
                                    }
                                })
                                .collect_view()}
                        }
                    })
                    .collect_view()}
            </svg>
            {(!legend.is_empty())
                .then(|| {
                    view! {
                        <figcaption class="legend">
                            {legend
                                .into_iter()
                                .map(|(class, name)| {
                                    view! {
                                        <span class="legend-item">
                                            <span class=format!("swatch {class}")></span>
                                            {name}
                                        </span>
                                    }
                                })
                                .collect_view()}
                        </figcaption>
                    }
                })}
        </figure>
    }
}
