//! `/runs/:id/jobs/:job`: a job's log, live.
//!
//! `Logs.Follow` streams the stored log then live chunks (no polling); after
//! a broken stream it resumes from the byte offsets already shown. Chunks
//! are applied in batches (at most one render per [`FLUSH_MS`]). Rendering
//! is virtual: every row (step header or line) is [`ROW_HEIGHT`] px tall
//! and only the rows near the viewport are in the DOM, so 100,000 lines
//! scroll smoothly. The view follows new lines while scrolled to the
//! bottom, stops when the user scrolls up, and follows again at the bottom.
//! `#L<step>-<line>` in the URL scrolls to and highlights a line.

use std::{cell::RefCell, rc::Rc, time::Duration};

use leptos::{ev, html, prelude::*};
use leptos_router::hooks::{use_location, use_params_map};
use tonic::{Code, Status};
use viaduct_proto::v1::{
    FollowRequest, GetRunRequest, Job, LogEvent, Run, Step, WatchRequest, follow_request, log_event, run_event,
};

use crate::{
    app::{
        api::{Api, ApiError, use_api},
        browser,
        live::{Connection, Loadable, Reconnecting, retryable, spawn_scoped},
        widgets::{Elapsed, ErrorBox, StatusBadge, StatusIcon},
    },
    backoff::Backoff,
    log_anchor::Anchor,
    log_buffer::{Boundary, JobLog, SectionKey},
    log_search::{Mark, Search, pieces},
    log_window::{self, Row, RowIndex, SectionShape, Viewport},
    status, time_format,
};

/// Height of every row, in px (the CSS uses the same).
pub const ROW_HEIGHT: f64 = 20.0;
/// Rows rendered above and below the viewport (generous: fast scrolling
/// and find-in-page see more, and a few hundred rows render quickly).
const MARGIN: usize = 120;
/// The rendered range moves in steps of this many rows.
const QUANTUM: usize = 40;
/// How often arrived chunks are applied, at most.
const FLUSH_MS: u64 = 40;

/// The log page (re-created when the run or job changes).
#[component]
pub fn LogPage() -> impl IntoView {
    let params = use_params_map();
    let ids = Memo::new(move |_| params.with(|p| (p.get("id").unwrap_or_default(), p.get("job").unwrap_or_default())));
    move || {
        let (run_id, job_id) = ids.get();
        view! { <LogView run_id job_id /> }
    }
}

/// Where the stream is.
#[derive(Clone, Debug, PartialEq)]
enum Stream {
    /// Receiving (history or live).
    Live,
    /// Everything was sent: the job finished.
    Done,
    /// It failed for good.
    Failed(ApiError),
}

/// Everything the log view shares between its parts (all `Copy`).
#[derive(Clone, Copy)]
struct LogState {
    log: RwSignal<JobLog>,
    search: RwSignal<Search>,
    viewport: RwSignal<Viewport>,
    following: RwSignal<bool>,
    highlight: RwSignal<Option<(SectionKey, usize)>>,
    anchor: RwSignal<Option<Anchor>>,
    stream: RwSignal<Stream>,
    /// Bumped when a step starts or ends (the job's facts are fetched again).
    steps_changed: RwSignal<u32>,
    scroller: NodeRef<html::Div>,
}

impl LogState {
    fn new() -> Self {
        LogState {
            log: RwSignal::new(JobLog::default()),
            search: RwSignal::new(Search::default()),
            viewport: RwSignal::new(Viewport { scroll_top: 0.0, height: 600.0 }),
            following: RwSignal::new(true),
            highlight: RwSignal::new(None),
            anchor: RwSignal::new(None),
            stream: RwSignal::new(Stream::Live),
            steps_changed: RwSignal::new(0),
            scroller: NodeRef::new(),
        }
    }

    fn alive(&self) -> bool {
        !self.log.is_disposed()
    }

    fn index(&self) -> RowIndex {
        self.log.with_untracked(row_index)
    }

    /// Reads the scroller's geometry; updates following.
    fn measure(&self) {
        let Some(el) = self.scroller.get_untracked() else { return };
        let view = Viewport { scroll_top: f64::from(el.scroll_top()), height: f64::from(el.client_height()) };
        self.viewport.set(view);
        self.following.set(log_window::at_bottom(view, f64::from(el.scroll_height()), ROW_HEIGHT));
    }

    /// Scrolls to the end (after the DOM caught up).
    fn scroll_to_end(self) {
        request_animation_frame(move || {
            if !self.alive() {
                return;
            }
            if let Some(el) = self.scroller.get_untracked() {
                el.set_scroll_top(el.scroll_height());
            }
        });
    }

    /// Scrolls so that `row` shows (a third down the view, or only if it
    /// is off screen with `only_if_hidden`).
    fn scroll_to_row(self, row: usize, only_if_hidden: bool) {
        self.following.set(false);
        request_animation_frame(move || {
            if !self.alive() {
                return;
            }
            let Some(el) = self.scroller.get_untracked() else { return };
            let view = Viewport { scroll_top: f64::from(el.scroll_top()), height: f64::from(el.client_height()) };
            let target = if only_if_hidden {
                log_window::reveal_row(row, ROW_HEIGHT, view)
            } else {
                Some(log_window::scroll_to_row(row, ROW_HEIGHT, view.height))
            };
            if let Some(top) = target {
                el.set_scroll_top(top as i32);
            }
        });
    }

    /// Shows a line: unfolds its section, scrolls to it.
    fn reveal_line(self, key: SectionKey, line: usize, only_if_hidden: bool) {
        let Some(si) = self.log.with_untracked(|l| l.find(key)) else { return };
        self.log.update(|l| l.expand(si));
        if let Some(row) = self.index().line_row(si, line) {
            self.scroll_to_row(row, only_if_hidden);
        }
    }

    /// Goes to the line the URL points at, once it has arrived.
    fn try_anchor(self) {
        let Some(a) = self.anchor.get_untracked() else { return };
        let found = self.log.with_untracked(|l| {
            let attempt = a.attempt.unwrap_or_else(|| l.latest_attempt());
            let key = SectionKey { attempt, step: a.step };
            l.find(key).and_then(|si| l.sections.get(si)).filter(|s| a.line <= s.line_count()).map(|s| s.key)
        });
        match found {
            Some(key) => {
                self.anchor.set(None);
                self.highlight.set(Some((key, a.line - 1)));
                self.reveal_line(key, a.line - 1, false);
            }
            None if self.stream.get_untracked() != Stream::Live => self.anchor.set(None),
            None => {}
        }
    }

    /// Moves to the next (or previous) search match.
    fn step_search(self, forward: bool) {
        let mut hit = None;
        self.search.update(|s| hit = if forward { s.next_hit() } else { s.prev_hit() });
        if let Some(h) = hit {
            self.reveal_line(h.section, h.line, true);
        }
    }
}

fn row_index(l: &JobLog) -> RowIndex {
    RowIndex::new(l.sections.iter().map(|s| SectionShape { lines: s.line_count(), collapsed: s.collapsed }))
}

/// Applies streamed events in batches.
struct Batcher {
    state: LogState,
    queue: RefCell<Vec<LogEvent>>,
    scheduled: std::cell::Cell<bool>,
}

impl Batcher {
    fn push(self: &Rc<Self>, ev: LogEvent) {
        self.queue.borrow_mut().push(ev);
        if !self.scheduled.replace(true) {
            let me = Rc::clone(self);
            set_timeout(move || me.flush(), Duration::from_millis(FLUSH_MS));
        }
    }

    /// Applies everything queued now.
    fn flush(&self) {
        self.scheduled.set(false);
        let events = std::mem::take(&mut *self.queue.borrow_mut());
        let s = self.state;
        if events.is_empty() || !s.alive() {
            return;
        }
        let boundaries = events.iter().filter(|e| matches!(e.event, Some(log_event::Event::Step(_)))).count();
        s.log.update(|l| {
            for ev in events {
                match ev.event {
                    Some(log_event::Event::Chunk(c)) => {
                        l.chunk(&c.step_id, c.attempt.max(1), c.offset, &c.data);
                    }
                    Some(log_event::Event::Step(b)) => l.boundary(&Boundary {
                        status: b.status(),
                        step_id: b.step_id,
                        name: b.step_name,
                        index: b.index,
                        attempt: b.attempt.max(1),
                        exit_code: b.exit_code,
                        finished: b.finished,
                    }),
                    // The run's own view follows the run (Watch).
                    Some(log_event::Event::Ended(_)) | None => {}
                }
            }
        });
        if boundaries > 0 {
            s.steps_changed.update(|n| *n += 1);
        }
        s.log.with_untracked(|l| {
            s.search.update(|search| {
                search.refresh(l);
            })
        });
        s.try_anchor();
        if s.following.get_untracked() {
            s.scroll_to_end();
        }
    }
}

/// The job's current attempt (0 when it cannot be read now).
async fn current_attempt(api: &Api, run_id: &str, job_id: &str) -> u32 {
    match api.runs().get(GetRunRequest { id: run_id.to_string() }).await {
        Ok(r) => r.into_inner().jobs.iter().find(|j| j.id == job_id).map_or(0, |j| j.attempt),
        Err(_) => 0,
    }
}

/// Waits (watching the run) until the job runs again: a retry after it
/// finished. Reconnects quietly; returns `false` when watching is
/// impossible (the run is gone, the token refused).
async fn rerun(api: &Api, run_id: &str, job_id: &str) -> bool {
    let mut backoff = Backoff::default();
    let mut cursor = 0u64;
    loop {
        let req = WatchRequest { after_cursor: cursor, run_id: run_id.to_string(), from_start: false };
        let broke = match api.runs().watch(req).await {
            Err(s) => s,
            Ok(r) => {
                backoff.reset();
                // Nothing missed: a retry that began before the watch
                // opened shows in the job's state now.
                if cursor == 0
                    && let Ok(run) = api.runs().get(GetRunRequest { id: run_id.to_string() }).await
                    && run.into_inner().jobs.iter().any(|j| j.id == job_id && status::is_active(j.status()))
                {
                    return true;
                }
                let mut stream = r.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(ev)) => {
                            cursor = cursor.max(ev.cursor);
                            if let Some(run_event::Change::Job(j)) = &ev.change
                                && j.id == job_id
                                && status::is_active(j.status())
                            {
                                return true;
                            }
                        }
                        Ok(None) => break Status::unavailable("the server closed the stream"),
                        Err(s) => break s,
                    }
                }
            }
        };
        if !retryable(&api.fail(&broke)) {
            return false;
        }
        browser::sleep(backoff.next_delay(browser::random())).await;
    }
}

/// Follows the job's log, reconnecting with backoff and resuming from the
/// offsets shown; once the job finished, waits for a retry and follows it.
async fn follow(api: Api, run_id: String, job_id: String, state: LogState, conn: Connection) {
    let batcher = Rc::new(Batcher { state, queue: RefCell::new(Vec::new()), scheduled: std::cell::Cell::new(false) });
    let mut backoff = Backoff::default();
    let mut reconnecting = Reconnecting::new(conn);
    let mut first = true;
    loop {
        // Resume from what is shown (apply what is queued first).
        batcher.flush();
        if !state.alive() {
            return;
        }
        let attempt = if first { 0 } else { current_attempt(&api, &run_id, &job_id).await };
        first = false;
        let from_offsets = state.log.with_untracked(|l| l.resume_offsets(attempt)).into_iter().collect();
        let req = FollowRequest {
            scope: Some(follow_request::Scope::JobId(job_id.clone())),
            from_offset: 0,
            from_offsets,
            no_follow: false,
        };
        let broke = match api.logs().follow(req).await {
            Err(s) => s,
            Ok(r) => {
                reconnecting.back();
                backoff.reset();
                state.stream.set(Stream::Live);
                let mut stream = r.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(ev)) => batcher.push(ev),
                        Ok(None) => break Status::ok("complete"),
                        Err(s) => break s,
                    }
                }
            }
        };
        if broke.code() == Code::Ok {
            // Everything was sent: the job finished.
            batcher.flush();
            if !state.alive() {
                return;
            }
            state.stream.set(Stream::Done);
            state.steps_changed.update(|n| *n += 1);
            state.try_anchor();
            if !rerun(&api, &run_id, &job_id).await {
                return;
            }
            state.steps_changed.update(|n| *n += 1);
            continue;
        }
        let e = api.fail(&broke);
        if !retryable(&e) {
            batcher.flush();
            state.stream.set(Stream::Failed(e));
            return;
        }
        reconnecting.lost();
        browser::sleep(backoff.next_delay(browser::random())).await;
    }
}

/// One job's log page.
#[component]
fn LogView(run_id: String, job_id: String) -> impl IntoView {
    browser::set_title(&format!("Job {job_id} · Viaduct"));
    let api = use_api();
    let conn = expect_context::<Connection>();
    let state = LogState::new();
    let location = use_location();

    // The run (job name, state, step durations): fetched again whenever a
    // step starts or ends. Bursts (history replay) fold into one fetch: a
    // newer bump aborts the pending one. The page keeps one stream open
    // (the log): browsers allow only a few connections per server over
    // HTTP/1.1, and every open stream holds one.
    let run: RwSignal<Loadable<Run>> = RwSignal::new(Loadable::Loading);
    let get_api = api.clone();
    let get_id = run_id.clone();
    Effect::new(move |_| {
        let n = state.steps_changed.get();
        let api = get_api.clone();
        let req = GetRunRequest { id: get_id.clone() };
        spawn_scoped(async move {
            if n > 0 {
                browser::sleep(250).await;
            }
            match api.check(api.runs().get(req).await) {
                Ok(r) => run.set(Loadable::Ready(r)),
                Err(e) => {
                    if run.with_untracked(|r| r.ready().is_none()) {
                        run.set(Loadable::Failed(e));
                    }
                }
            }
        });
    });
    let jid = job_id.clone();
    let job = Memo::new(move |_| run.with(|r| r.ready().and_then(|r| r.jobs.iter().find(|j| j.id == jid).cloned())));

    // The log stream.
    spawn_scoped(follow(api.clone(), run_id.clone(), job_id.clone(), state, conn));

    // `#L…` in the URL.
    Effect::new(move |_| {
        let hash = location.hash.get();
        if let Some(a) = Anchor::parse(&hash) {
            state.anchor.set(Some(a));
            state.following.set(false);
            state.try_anchor();
        }
    });

    // Geometry: measure once mounted and on resize.
    Effect::new(move |_| {
        if state.scroller.get().is_some() {
            state.measure();
        }
    });
    let resize = window_event_listener(ev::resize, move |_| state.measure());
    on_cleanup(move || resize.remove());

    let run_href = format!("/runs/{run_id}");
    let job_st = Signal::derive(move || job.with(|j| j.as_ref().map(Job::status).unwrap_or_default()));
    let job_times = Memo::new(move |_| {
        job.with(|j| {
            let t = j.as_ref().and_then(|j| j.times.as_ref());
            (
                time_format::timestamp_ms(t.and_then(|t| t.started_at.as_ref())),
                time_format::timestamp_ms(t.and_then(|t| t.finished_at.as_ref())),
            )
        })
    });
    let job_name = move || job.with(|j| j.as_ref().map(|j| j.name.clone()).unwrap_or_default());
    let job_meta = move || {
        job.with(|j| {
            j.as_ref()
                .map(|j| {
                    let mut parts = vec![format!("job {}", j.id)];
                    if j.attempt > 1 {
                        parts.push(format!("attempt {} of {}", j.attempt, j.max_attempts.max(j.attempt)));
                    }
                    if !j.runner_id.is_empty() {
                        parts.push(format!("on {}", j.runner_id));
                    }
                    parts.join(" · ")
                })
                .unwrap_or_default()
        })
    };
    let job_message = move || job.with(|j| j.as_ref().map(|j| j.message.clone()).filter(|m| !m.is_empty()));
    let run_error = move || run.with(|r| if let Loadable::Failed(e) = r { Some(e.clone()) } else { None });

    view! {
        <section class="page log-page" data-page="log">
            <div class="page-head log-head">
                <a class="back" href=run_href>{format!("← Run #{run_id}")}</a>
                <div class="title-line">
                    <StatusBadge status=job_st />
                    <h1>{move || { let n = job_name(); if n.is_empty() { job_id.clone() } else { n } }}</h1>
                    <Elapsed start=Signal::derive(move || job_times.get().0) finish=Signal::derive(move || job_times.get().1) />
                </div>
                <p class="muted small">{job_meta}</p>
                {move || job_message().map(|m| view! { <p class="job-message">{m}</p> })}
                {move || run_error().map(|e| view! { <ErrorBox error=e /> })}
            </div>
            <LogToolbar state />
            <LogBody state job />
        </section>
    }
}

/// Search box, match count, follow toggle, fold/unfold all.
#[component]
fn LogToolbar(state: LogState) -> impl IntoView {
    let query = RwSignal::new(String::new());
    let count = move || {
        state.search.with(|s| {
            if !s.is_active() {
                String::new()
            } else if s.hits.is_empty() {
                "No matches".to_string()
            } else {
                format!("{} / {}", s.current.map_or(0, |c| c + 1), s.hits.len())
            }
        })
    };
    let on_input = move |e: ev::Event| {
        let q = event_target_value(&e);
        query.set(q.clone());
        state.log.with_untracked(|l| state.search.update(|s| s.set_query(&q, l)));
        if let Some(h) = state.search.with_untracked(|s| s.current_hit()) {
            state.reveal_line(h.section, h.line, true);
        }
    };
    let on_key = move |e: ev::KeyboardEvent| {
        if e.key() == "Enter" {
            e.prevent_default();
            state.step_search(!e.shift_key());
        }
    };
    let fold_all = move |collapse: bool| {
        state.log.update(|l| {
            for s in &mut l.sections {
                s.collapsed = collapse;
            }
            l.version += 1;
        })
    };
    let lines = move || state.log.with(|l| l.total_lines());
    view! {
        <div class="log-toolbar">
            <div class="search-box">
                <input
                    type="search"
                    data-search=""
                    placeholder="Search log"
                    aria-label="Search the log"
                    prop:value=move || query.get()
                    on:input=on_input
                    on:keydown=on_key
                />
                <button class="icon-button" title="Previous match (Shift+Enter)" aria-label="Previous match" on:click=move |_| state.step_search(false)>"↑"</button>
                <button class="icon-button" title="Next match (Enter)" aria-label="Next match" on:click=move |_| state.step_search(true)>"↓"</button>
                <span class="match-count" aria-live="polite">{count}</span>
            </div>
            <div class="log-tools">
                <span class="muted small">{move || { let n = lines(); format!("{n} line{}", if n == 1 { "" } else { "s" }) }}</span>
                <button class="button small subtle" on:click=move |_| fold_all(false)>"Expand all"</button>
                <button class="button small subtle" on:click=move |_| fold_all(true)>"Collapse all"</button>
                <button
                    class=move || if state.following.get() { "button small primary" } else { "button small" }
                    title="Keep showing new lines"
                    on:click=move |_| {
                        state.following.set(true);
                        state.scroll_to_end();
                    }
                >
                    {move || if state.following.get() { "Following" } else { "Follow" }}
                </button>
            </div>
        </div>
    }
}

/// What one rendered row shows (computed only for rows near the view).
#[derive(Clone, Debug, PartialEq)]
struct RowData {
    /// Identity and content: a row is re-rendered only when it changes.
    key: String,
    kind: RowKind,
}

#[derive(Clone, Debug, PartialEq)]
enum RowKind {
    Header {
        section: usize,
        step_id: String,
        title: String,
        status: viaduct_proto::v1::Status,
        collapsed: bool,
        lines: usize,
        exit: Option<i32>,
        times: Option<(Option<i64>, Option<i64>)>,
        attempt_note: Option<String>,
    },
    Line {
        id: String,
        number: usize,
        pieces: Vec<(String, String, Mark)>,
        highlighted: bool,
    },
}

fn step_of(job: Option<&Job>, key: SectionKey) -> Option<&Step> {
    job?.steps.iter().find(|s| s.index == key.step && s.attempt.max(1) == key.attempt)
}

/// The rows in the rendered range.
fn rows(state: LogState, job: Option<&Job>, range: std::ops::Range<usize>) -> Vec<RowData> {
    state.log.with(|l| {
        state.search.with(|search| {
            let highlight = state.highlight.get();
            let index = row_index(l);
            let latest = l.latest_attempt();
            range
                .filter_map(|row| index.locate(row))
                .filter_map(|row| match row {
                    Row::Header(si) => {
                        let s = l.sections.get(si)?;
                        let step = step_of(job, s.key);
                        let name = if !s.name.is_empty() {
                            s.name.clone()
                        } else {
                            step.map(|st| st.name.clone()).unwrap_or_else(|| format!("step {}", s.key.step))
                        };
                        // The run's view of the step is fresher once it
                        // finished; before, whichever got further.
                        let status = match step.map(Step::status) {
                            Some(st) if status::is_terminal(st) => st,
                            _ if status::is_terminal(s.status) => s.status,
                            Some(st) => st.max(s.status),
                            None => s.status,
                        };
                        let times = step.map(|st| {
                            let t = st.times.as_ref();
                            (
                                time_format::timestamp_ms(t.and_then(|t| t.started_at.as_ref())),
                                time_format::timestamp_ms(t.and_then(|t| t.finished_at.as_ref())),
                            )
                        });
                        let exit = s.exit_code.or_else(|| step.and_then(|st| st.exit_code));
                        let attempt_note = (s.key.attempt != latest).then(|| format!("attempt {}", s.key.attempt));
                        let lines = s.line_count();
                        Some(RowData {
                            key: format!(
                                "h{}.{}:{:?}:{}:{}:{exit:?}:{times:?}:{name}",
                                s.key.attempt, s.key.step, status, s.collapsed, lines
                            ),
                            kind: RowKind::Header {
                                section: si,
                                step_id: s.step_id.clone(),
                                title: format!("{}. {name}", s.key.step),
                                status,
                                collapsed: s.collapsed,
                                lines,
                                exit,
                                times,
                                attempt_note,
                            },
                        })
                    }
                    Row::Line(si, li) => {
                        let s = l.sections.get(si)?;
                        let line = s.line(li)?;
                        let (hits, current) = search.in_line(s.key, li);
                        let highlighted = highlight == Some((s.key, li));
                        let id = Anchor::id(s.key.step, li + 1, s.key.attempt, latest);
                        let pieces: Vec<(String, String, Mark)> = pieces(&line, &hits, current)
                            .into_iter()
                            .map(|p| (p.text, p.style.css(), p.mark))
                            .collect();
                        Some(RowData {
                            key: format!(
                                "l{}.{}.{li}:{}:{}:{current:?}:{highlighted}",
                                s.key.attempt,
                                s.key.step,
                                line.text.len(),
                                hits.len()
                            ),
                            kind: RowKind::Line { id, number: li + 1, pieces, highlighted },
                        })
                    }
                })
                .collect()
        })
    })
}

/// The scrolling, virtualised log.
#[component]
fn LogBody(state: LogState, job: Memo<Option<Job>>) -> impl IntoView {
    let total = Memo::new(move |_| state.log.with(|l| row_index(l).total()));
    let widest = Memo::new(move |_| state.log.with(|l| l.widest));
    // Gutter width: digits of the longest section's line count.
    let digits = Memo::new(move |_| {
        state.log.with(|l| l.sections.iter().map(|s| s.line_count()).max().unwrap_or(0).max(999).to_string().len())
    });
    let range = Memo::new(move |_| log_window::window(state.viewport.get(), ROW_HEIGHT, total.get(), MARGIN, QUANTUM));
    let visible = Memo::new(move |_| {
        let r = range.get();
        job.with(|j| rows(state, j.as_ref(), r))
    });
    let on_scroll = move |_| state.measure();
    let empty = move || total.get() == 0;
    let waiting = move || {
        job.with(|j| match j.as_ref().map(Job::status) {
            Some(s) if status::is_active(s) => "No output yet — waiting for the job to start…",
            _ => "This job wrote no output.",
        })
    };
    view! {
        {move || match state.stream.get() {
            Stream::Failed(e) => Some(view! { <ErrorBox error=e /> }),
            _ => None,
        }}
        <div
            id="log"
            class="log"
            node_ref=state.scroller
            on:scroll=on_scroll
            tabindex="0"
            aria-label="Job log"
            style=move || format!("--ln-digits:{}", digits.get())
        >
            <div
                class="log-space"
                style=move || {
                    format!("height:{}px;min-width:calc({}ch + {}ch + 3em)", total.get() as f64 * ROW_HEIGHT, widest.get(), digits.get())
                }
            >
                <div class="log-rows" style=move || format!("transform:translateY({}px)", range.get().start as f64 * ROW_HEIGHT)>
                    <For each=move || visible.get() key=|r: &RowData| r.key.clone() let:row>
                        {render_row(state, row)}
                    </For>
                </div>
            </div>
            <Show when=empty>
                <div class="log-empty muted">
                    {move || if state.stream.get() == Stream::Live { waiting() } else { "This job wrote no output." }}
                </div>
            </Show>
        </div>
    }
}

fn render_row(state: LogState, row: RowData) -> AnyView {
    match row.kind {
        RowKind::Header { section, step_id, title, status: st, collapsed, lines, exit, times, attempt_note } => {
            let toggle = move |_| state.log.update(|l| l.toggle(section));
            let (start, finish) = times.unwrap_or((None, None));
            view! {
                <div
                    class=if collapsed { "log-step collapsed" } else { "log-step" }
                    data-step-id=step_id
                    data-status=status::word(st)
                    role="button"
                    tabindex="0"
                    aria-expanded=if collapsed { "false" } else { "true" }
                    on:click=toggle
                    on:keydown=move |e: ev::KeyboardEvent| {
                        if e.key() == "Enter" || e.key() == " " {
                            e.prevent_default();
                            state.log.update(|l| l.toggle(section));
                        }
                    }
                >
                    <span class="chevron" aria-hidden="true">{if collapsed { "▸" } else { "▾" }}</span>
                    <StatusIcon status=st />
                    <span class="step-title">{title}</span>
                    {attempt_note.map(|n| view! { <span class="attempt-note">{n}</span> })}
                    {exit.filter(|c| *c != 0).map(|c| view! { <span class="exit-code">{format!("exit {c}")}</span> })}
                    <span class="step-lines muted">{format!("{lines} line{}", if lines == 1 { "" } else { "s" })}</span>
                    <span class="step-duration">
                        {(start.is_some()).then(|| view! { <Elapsed start=start finish=finish /> })}
                    </span>
                </div>
            }
            .into_any()
        }
        RowKind::Line { id, number, pieces, highlighted } => {
            let href = format!("#{id}");
            view! {
                <div class=if highlighted { "log-line highlighted" } else { "log-line" } id=id>
                    <a class="ln" href=href>{number}</a>
                    <span class="lt">
                        {pieces
                            .into_iter()
                            .map(|(text, css, mark)| {
                                let class = match mark {
                                    Mark::None => None,
                                    Mark::Hit => Some("hit"),
                                    Mark::Current => Some("hit current"),
                                };
                                match (class, css.is_empty()) {
                                    (None, true) => view! { <span>{text}</span> }.into_any(),
                                    (None, false) => view! { <span style=css>{text}</span> }.into_any(),
                                    (Some(c), true) => view! { <mark class=c>{text}</mark> }.into_any(),
                                    (Some(c), false) => view! { <mark class=c style=css>{text}</mark> }.into_any(),
                                }
                            })
                            .collect_view()}
                    </span>
                </div>
            }
            .into_any()
        }
    }
}
