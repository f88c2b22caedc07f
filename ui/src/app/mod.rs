//! The app: the shell (navigation, connection banner, shortcuts, help,
//! theme, the sign-in guard) and the routes of every page.

mod api;
mod browser;
mod debug_shell;
mod live;
mod pages;
mod widgets;

use std::{cell::Cell, rc::Rc, time::Duration};

use leptos::{ev, prelude::*};
use leptos_router::{
    NavigateOptions,
    components::{Route, Router, Routes},
    hooks::{use_location, use_navigate},
    path,
};
use wasm_bindgen::JsCast;

use self::{
    api::{Session, SignedIn, use_session},
    live::Connection,
    widgets::Clock,
};
use crate::{
    run_filter::encode,
    shortcuts::{self, Action, Key, Sequencer},
};

/// Mounts the app on `<body>` (replacing the "Loading…" placeholder).
pub fn mount() {
    if let Some(placeholder) = browser::query("#boot") {
        placeholder.remove();
    }
    leptos::mount::mount_to_body(App);
}

/// The root: context (session, clock, connection) and the router.
#[component]
fn App() -> impl IntoView {
    provide_context(Session::restore());
    provide_context(Connection::new());
    let clock = RwSignal::new(browser::now_ms());
    provide_context(Clock(clock));
    let _ = set_interval_with_handle(move || clock.set(browser::now_ms()), Duration::from_secs(1));
    view! {
        <Router>
            <Shell />
        </Router>
    }
}

/// The colour theme: `None` follows the system.
fn initial_theme() -> Option<String> {
    browser::load(browser::THEME_KEY).filter(|t| t == "light" || t == "dark")
}

/// Navigation, banner, overlays and the page.
#[component]
fn Shell() -> impl IntoView {
    let session = use_session();
    let conn = expect_context::<Connection>();
    let location = use_location();
    let navigate = use_navigate();
    let help_open = RwSignal::new(false);
    let theme = RwSignal::new(initial_theme());
    Effect::new(move |_| browser::apply_theme(theme.get().as_deref()));

    // Signed out (or the token was refused): go to sign-in, and come back.
    let nav = navigate.clone();
    Effect::new(move |_| {
        let signed_out = session.who.get() == SignedIn::Out;
        let path = location.pathname.get();
        if signed_out && path != "/sign-in" {
            let here = format!("{path}{}", location.search.get_untracked());
            let next = if here == "/" { String::new() } else { format!("?next={}", encode(&here)) };
            nav(&format!("/sign-in{next}"), NavigateOptions { replace: true, ..NavigateOptions::default() });
        }
    });

    // Keyboard shortcuts.
    let seq = Rc::new(Cell::new(Sequencer::default()));
    let nav = navigate.clone();
    let handle = window_event_listener(ev::keydown, move |e: web_sys::KeyboardEvent| {
        let key = e.key();
        let in_field = browser::focus_in_field();
        let mut s = seq.get();
        let action = s.feed(
            Key { key: &key, ctrl: e.ctrl_key(), meta: e.meta_key(), alt: e.alt_key(), in_field },
            js_sys::Date::now(),
        );
        seq.set(s);
        let Some(action) = action else { return };
        let go = |to: &str| nav(to, NavigateOptions::default());
        match action {
            Action::GoRuns => go("/"),
            Action::GoRunners => go("/runners"),
            Action::GoPipelines => go("/pipelines"),
            Action::GoRepos => go("/repos"),
            Action::GoStats => go("/stats"),
            Action::FocusSearch => {
                if let Some(el) = browser::query("[data-search]") {
                    e.prevent_default();
                    browser::focus(&el);
                }
            }
            Action::Next | Action::Prev => {
                if move_selection(if action == Action::Next { 1 } else { -1 }) {
                    e.prevent_default();
                }
            }
            Action::Open => {
                if open_selection() {
                    e.prevent_default();
                }
            }
            Action::Help => help_open.update(|o| *o = !*o),
            Action::Escape => {
                help_open.set(false);
                browser::blur_active();
            }
        }
    });
    on_cleanup(move || handle.remove());

    let signed_in = move || session.signed_in();
    let admin = move || matches!(session.who.get(), SignedIn::As { admin: true, .. });
    let who = move || match session.who.get() {
        SignedIn::As { name, .. } => name,
        _ => String::new(),
    };
    let toggle_theme = move |_| {
        let dark = match theme.get_untracked().as_deref() {
            Some("dark") => true,
            Some(_) => false,
            None => browser::system_prefers_dark(),
        };
        let next = if dark { "light" } else { "dark" };
        browser::store(browser::THEME_KEY, next);
        theme.set(Some(next.to_string()));
    };
    let active = move |prefix: &'static str| {
        move || {
            let p = location.pathname.get();
            let on = if prefix == "/" { p == "/" || p.starts_with("/runs") } else { p.starts_with(prefix) };
            if on { "nav-link active" } else { "nav-link" }
        }
    };
    let sign_out = move |_| session.sign_out(Some("You signed out.".to_string()));

    view! {
        <header class="topbar">
            <a class="brand" href="/" aria-label="Viaduct home">
                <svg class="logo" viewBox="0 0 24 24" aria-hidden="true">
                    <path d="M2 8h20M4 8v10M20 8v10M8 8v10M16 8v10M4 18a4 4 0 0 1 4 0M16 18a4 4 0 0 1 4 0M8 13a4 4 0 0 1 8 0"></path>
                </svg>
                <span>"Viaduct"</span>
            </a>
            <Show when=signed_in>
                <nav class="nav" aria-label="Main">
                    <a class=active("/") href="/">"Runs"</a>
                    <a class=active("/pipelines") href="/pipelines">"Pipelines"</a>
                    <a class=active("/repos") href="/repos">"Repos"</a>
                    <a class=active("/runners") href="/runners">"Runners"</a>
                    <a class=active("/stats") href="/stats">"Stats"</a>
                    <Show when=admin>
                        <a class=active("/audit") href="/audit">"Audit"</a>
                        <a class=active("/admin") href="/admin">"Admin"</a>
                    </Show>
                </nav>
            </Show>
            <div class="topbar-actions">
                <button class="icon-button" title="Toggle light/dark theme" aria-label="Toggle theme" on:click=toggle_theme>
                    <svg class="icon" viewBox="0 0 16 16" aria-hidden="true">
                        <path d="M8 1.5a6.5 6.5 0 1 0 0 13zM8 1.5a6.5 6.5 0 0 1 0 13"></path>
                    </svg>
                </button>
                <button class="icon-button help-button" title="Keyboard shortcuts (?)" aria-label="Keyboard shortcuts" on:click=move |_| help_open.set(true)>
                    "?"
                </button>
                <Show when=signed_in>
                    <span id="signed-in-as" class="muted small" title="Signed in as">{who}</span>
                    <button id="sign-out" class="button subtle" on:click=sign_out>"Sign out"</button>
                </Show>
            </div>
        </header>
        <Show when=move || conn.is_reconnecting()>
            <div id="connection-banner" role="status">
                <span class="spinner" aria-hidden="true"></span>
                "Connection lost — reconnecting…"
            </div>
        </Show>
        <main class="main">
            <Show
                when=move || signed_in() || location.pathname.get() == "/sign-in"
                fallback=move || {
                    let what = if session.who.get() == SignedIn::Checking { "Loading…" } else { "Redirecting to sign-in…" };
                    view! { <div class="loading">{what}</div> }
                }
            >
                <Routes fallback=|| view! { <pages::NotFound /> }>
                    <Route path=path!("/sign-in") view=pages::sign_in::SignInPage />
                    <Route path=path!("/") view=pages::runs::RunsPage />
                    <Route path=path!("/runs/:id") view=pages::run::RunPage />
                    <Route path=path!("/runs/:id/jobs/:job") view=pages::log::LogPage />
                    <Route path=path!("/runners") view=pages::runners::RunnersPage />
                    <Route path=path!("/pipelines") view=pages::pipelines::PipelinesPage />
                    <Route path=path!("/pipelines/:name") view=pages::pipelines::PipelinePage />
                    <Route path=path!("/repos") view=pages::repos::ReposPage />
                    <Route path=path!("/repos/:name") view=pages::repos::RepoPage />
                    <Route path=path!("/repos/:name/environments") view=pages::environments::EnvironmentsPage />
                    <Route path=path!("/stats") view=pages::stats::StatsPage />
                    <Route path=path!("/audit") view=pages::audit::AuditPage />
                    <Route path=path!("/admin") view=pages::admin::AdminPage />
                </Routes>
            </Show>
        </main>
        <Show when=move || help_open.get()>
            <HelpOverlay on_close=move || help_open.set(false) />
        </Show>
    }
}

/// Moves the list selection (`[data-nav-item]` elements) by `delta`;
/// false when the page has no list.
fn move_selection(delta: isize) -> bool {
    let items = browser::query_all("[data-nav-item]");
    if items.is_empty() {
        return false;
    }
    let current = items.iter().position(|el| el.class_list().contains("selected"));
    let Some(next) = shortcuts::step_selection(current, delta, items.len()) else { return false };
    for el in &items {
        let _ = el.class_list().remove_1("selected");
    }
    if let Some(el) = items.get(next) {
        let _ = el.class_list().add_1("selected");
        browser::reveal(el);
    }
    true
}

/// Opens the selected list item (follows its link); false when none is
/// selected or focus is on a control that handles Enter itself.
fn open_selection() -> bool {
    let focused_control = browser::document()
        .and_then(|d| d.active_element())
        .is_some_and(|el| matches!(el.tag_name().to_ascii_lowercase().as_str(), "a" | "button" | "summary"));
    if focused_control {
        return false;
    }
    let Some(el) = browser::query("[data-nav-item].selected") else { return false };
    let link = if el.tag_name().eq_ignore_ascii_case("a") { Some(el) } else { el.query_selector("a").ok().flatten() };
    match link.and_then(|l| l.dyn_into::<web_sys::HtmlElement>().ok()) {
        Some(a) => {
            a.click();
            true
        }
        None => false,
    }
}

/// The keyboard shortcut help.
#[component]
fn HelpOverlay(on_close: impl Fn() + Clone + Send + Sync + 'static) -> impl IntoView {
    let close = on_close.clone();
    view! {
        <div class="overlay" on:click=move |_| close()>
            <div class="dialog" role="dialog" aria-modal="true" aria-labelledby="help-title" on:click=|e| e.stop_propagation()>
                <div class="dialog-head">
                    <h2 id="help-title">"Keyboard shortcuts"</h2>
                    <button class="icon-button" aria-label="Close" on:click=move |_| on_close()>"×"</button>
                </div>
                <dl class="shortcuts">
                    {shortcuts::HELP
                        .iter()
                        .map(|(keys, what)| {
                            view! {
                                <dt>
                                    <kbd>{*keys}</kbd>
                                </dt>
                                <dd>{*what}</dd>
                            }
                        })
                        .collect_view()}
                </dl>
            </div>
        </div>
    }
}
