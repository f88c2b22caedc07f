//! The debug shell panel of a job: a terminal on a shell in the job's
//! workspace restored from its newest snapshot, over a WebSocket to the
//! server's `/debug/shell` (gRPC-web has no bidirectional streams; the
//! browser sends the session cookie, and the server checks the page's
//! origin).
//!
//! A simple line-oriented terminal, not a terminal emulator (see
//! [`crate::terminal`]): the output is shown as plain text in a `<pre>`
//! (text nodes only, colours dropped), and keys typed while the terminal
//! has the focus are sent as a terminal sends them — printable keys,
//! Enter as CR, Backspace as DEL, Tab, arrows as escape sequences, Ctrl-C
//! and Ctrl-D as their control characters — and pasted text likewise.

use leptos::{html, prelude::*};
use wasm_bindgen::{JsCast, closure::Closure};
use web_sys::{BinaryType, ClipboardEvent, CloseEvent, KeyboardEvent, MessageEvent, WebSocket};

use super::browser;
use crate::terminal::{self, Screen};

/// The socket and the callbacks it calls (kept alive with it).
struct Socket {
    ws: WebSocket,
    _callbacks: Vec<Closure<dyn FnMut(web_sys::Event)>>,
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        let _ = self.ws.close();
    }
}

/// What the status line says.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Until the shell runs (the server finds a runner, which restores the
    /// snapshot).
    Connecting,
    /// The shell runs.
    On { runner: String, step: u32, attempt: u32 },
    /// It ended (how).
    Ended(String),
}

impl Phase {
    fn line(&self) -> String {
        match self {
            Phase::Connecting => "connecting…".into(),
            Phase::On { runner, step, attempt } if *attempt > 1 => {
                format!("on runner {runner}, after step {step} (attempt {attempt})")
            }
            Phase::On { runner, step, .. } => format!("on runner {runner}, after step {step}"),
            Phase::Ended(how) => format!("ended: {how}"),
        }
    }
}

/// A field of a JSON object parsed by the browser.
fn field(v: &wasm_bindgen::JsValue, name: &str) -> wasm_bindgen::JsValue {
    js_sys::Reflect::get(v, &name.into()).unwrap_or(wasm_bindgen::JsValue::UNDEFINED)
}

/// A text frame from the server: `{"started":{…}}` or `{"ended":{…}}`.
fn control(text: &str) -> Option<Phase> {
    let v = js_sys::JSON::parse(text).ok()?;
    let started = field(&v, "started");
    if started.is_object() {
        let number = |name: &str| field(&started, name).as_f64().unwrap_or_default() as u32;
        return Some(Phase::On {
            runner: field(&started, "runner_id").as_string().unwrap_or_default(),
            step: number("step"),
            attempt: number("attempt"),
        });
    }
    let ended = field(&v, "ended");
    if ended.is_object() {
        let message = field(&ended, "message").as_string().unwrap_or_default();
        let how = match field(&ended, "exit_code").as_f64() {
            Some(code) if message.is_empty() => format!("exit code {}", code as i64),
            Some(code) => format!("exit code {} ({message})", code as i64),
            None if message.is_empty() => "the session ended".into(),
            None => message,
        };
        return Some(Phase::Ended(how));
    }
    None
}

/// The terminal's size for the page's width (the runner clamps it).
fn size() -> (u32, u32) {
    let width = web_sys::window().and_then(|w| w.inner_width().ok()).and_then(|w| w.as_f64()).unwrap_or(1000.0);
    // The panel's padding, and a monospace character at 13 px.
    let cols = ((width - 120.0) / 7.8).clamp(40.0, 200.0) as u32;
    (cols, 24)
}

/// The terminal panel for job `job_id`; `on_close` when the user closes it
/// (the socket, and so the session, ends with the panel).
#[component]
pub fn DebugShell(job_id: String, on_close: Callback<()>) -> impl IntoView {
    let model = StoredValue::new(Screen::new());
    // What is shown: the finished lines and the cursor's line (before the
    // cursor, under it, after it), redrawn at most once a frame.
    let shown = RwSignal::new((String::new(), (String::new(), ' ', String::new())));
    let redraw_scheduled = StoredValue::new(false);
    let phase = RwSignal::new(Phase::Connecting);
    let opened = RwSignal::new(false);
    let pre: NodeRef<html::Pre> = NodeRef::new();
    let socket: StoredValue<Option<Socket>, LocalStorage> = StoredValue::new_local(None);

    let redraw = move || {
        if redraw_scheduled.get_value() {
            return;
        }
        redraw_scheduled.set_value(true);
        request_animation_frame(move || {
            if redraw_scheduled.is_disposed() {
                return;
            }
            redraw_scheduled.set_value(false);
            shown.set(model.with_value(|s| (s.history(), s.cursor_line())));
            if let Some(el) = pre.get_untracked() {
                el.set_scroll_top(el.scroll_height());
            }
        });
    };

    let (cols, rows) = size();
    let ws_origin = browser::origin().replacen("http", "ws", 1);
    let url = format!("{ws_origin}/debug/shell?job={job_id}&cols={cols}&rows={rows}");
    match WebSocket::new(&url) {
        Err(_) => phase.set(Phase::Ended("cannot open a WebSocket to the server".into())),
        Ok(ws) => {
            ws.set_binary_type(BinaryType::Arraybuffer);
            let on_open = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| opened.set(true));
            let on_message = Closure::<dyn FnMut(web_sys::Event)>::new(move |e: web_sys::Event| {
                let Some(e) = e.dyn_ref::<MessageEvent>() else { return };
                let data = e.data();
                if let Some(buf) = data.dyn_ref::<js_sys::ArrayBuffer>() {
                    let bytes = js_sys::Uint8Array::new(buf).to_vec();
                    model.update_value(|s| s.feed(&bytes));
                    redraw();
                } else if let Some(p) = data.as_string().as_deref().and_then(control) {
                    phase.set(p);
                }
            });
            let on_close = Closure::<dyn FnMut(web_sys::Event)>::new(move |e: web_sys::Event| {
                if matches!(phase.get_untracked(), Phase::Ended(_)) {
                    return;
                }
                let code = e.dyn_ref::<CloseEvent>().map(CloseEvent::code).unwrap_or_default();
                phase.set(Phase::Ended(if opened.get_untracked() {
                    format!("the connection was lost (code {code})")
                } else {
                    "could not connect (signed out, not allowed to push to this repository, or the server is \
                     unreachable)"
                        .into()
                }));
            });
            ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
            ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
            ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
            socket.set_value(Some(Socket { ws, _callbacks: vec![on_open, on_message, on_close] }));
        }
    }
    on_cleanup(move || {
        // Closing the socket ends the session.
        let _ = socket.try_update_value(|s| s.take());
    });

    let send = move |bytes: &[u8]| {
        if matches!(phase.get_untracked(), Phase::Ended(_)) {
            return;
        }
        socket.with_value(|s| {
            if let Some(s) = s {
                // A long paste in pieces the server takes (64 KiB at most).
                for piece in bytes.chunks(16 * 1024) {
                    let _ = s.ws.send_with_u8_array(piece);
                }
            }
        });
    };
    let on_key = move |e: KeyboardEvent| {
        if e.is_composing() {
            return;
        }
        if let Some(bytes) = terminal::key_bytes(&e.key(), e.ctrl_key(), e.alt_key(), e.meta_key()) {
            // The terminal's, not the page's (its shortcuts, Tab's focus move).
            e.prevent_default();
            e.stop_propagation();
            send(&bytes);
        }
    };
    let on_paste = move |e: ClipboardEvent| {
        if let Some(text) = e.clipboard_data().and_then(|d| d.get_data("text").ok()) {
            e.prevent_default();
            send(&terminal::paste_bytes(&text));
        }
    };
    // The terminal takes the keys as soon as it shows.
    Effect::new(move |_| {
        if let Some(el) = pre.get() {
            let _ = el.focus();
        }
    });

    view! {
        <div class="panel terminal-panel" data-debug-shell="">
            <div class="panel-head">
                <h3>"Debug shell"</h3>
                <span class="terminal-status muted" role="status" data-debug-status="">
                    {move || phase.with(Phase::line)}
                </span>
                <button class="button small" data-debug-close="" on:click=move |_| on_close.run(())>
                    "Close"
                </button>
            </div>
            <pre
                class="terminal"
                tabindex="0"
                node_ref=pre
                aria-label="Debug shell: type here"
                on:keydown=on_key
                on:paste=on_paste
            >
                {move || shown.with(|s| s.0.clone())}
                {move || shown.with(|s| s.1.0.clone())}
                <span class="terminal-cursor">{move || shown.with(|s| s.1.1.to_string())}</span>
                {move || shown.with(|s| s.1.2.clone())}
            </pre>
            <p class="terminal-note muted">
                "A shell in this job's workspace as its newest snapshot left it, with the job's environment \
                 but not its secrets. A simple line-oriented terminal: editors and pagers do not draw here. \
                 Closing this panel ends the shell."
            </p>
        </div>
    }
}
