//! Live data: tasks tied to a component's lifetime, the server-streaming
//! `Runs.Watch` kept open with reconnects (resuming after the last cursor),
//! `Runners.Watch` likewise (a new snapshot after each reconnect), and the
//! connection banner's state.

use std::{
    cell::{Cell, RefCell},
    future::Future,
    pin::{Pin, pin},
};

use futures_util::future::{AbortHandle, Either, abortable, select};
use leptos::{prelude::*, task::spawn_local};
use tonic::{Code, Status, codec::Streaming};
use viaduct_proto::v1::{RunEvent, Runner, WatchRequest, WatchRunnersRequest};

use super::{
    api::{Api, ApiError},
    browser,
};
use crate::{backoff::Backoff, fleet};

/// Runs `fut` until it ends or the current component goes away.
pub fn spawn_scoped(fut: impl Future<Output = ()> + 'static) {
    let (fut, handle): (_, AbortHandle) = abortable(fut);
    on_cleanup(move || handle.abort());
    spawn_local(async move {
        let _ = fut.await;
    });
}

/// How many live streams are reconnecting (the banner shows while > 0).
#[derive(Clone, Copy)]
pub struct Connection {
    reconnecting: RwSignal<u32>,
}

impl Connection {
    /// A new, connected state.
    pub fn new() -> Self {
        Connection { reconnecting: RwSignal::new(0) }
    }

    /// True while any stream is reconnecting.
    pub fn is_reconnecting(&self) -> bool {
        self.reconnecting.get() > 0
    }
}

/// Marks one stream as reconnecting until it is connected again or dropped
/// (the page went away mid-backoff).
pub struct Reconnecting {
    conn: Connection,
    active: bool,
}

impl Reconnecting {
    /// A stream of `conn`, connected for now.
    pub fn new(conn: Connection) -> Self {
        Reconnecting { conn, active: false }
    }

    /// The stream broke.
    pub fn lost(&mut self) {
        if !self.active {
            self.active = true;
            self.conn.reconnecting.update(|n| *n += 1);
        }
    }

    /// The stream is back.
    pub fn back(&mut self) {
        if self.active {
            self.active = false;
            self.conn.reconnecting.update(|n| *n = n.saturating_sub(1));
        }
    }
}

impl Drop for Reconnecting {
    fn drop(&mut self) {
        self.back();
    }
}

/// Whether an error is worth reconnecting after (not for a refused token,
/// a missing run, a bad request).
pub fn retryable(e: &ApiError) -> bool {
    !matches!(
        e.code,
        Code::Unauthenticated | Code::PermissionDenied | Code::NotFound | Code::InvalidArgument | Code::Unimplemented
    )
}

/// Something that can be loaded, or failed to.
#[derive(Clone, Debug, PartialEq)]
pub enum Loadable<T> {
    /// Not there yet.
    Loading,
    /// Loaded.
    Ready(T),
    /// Failed.
    Failed(ApiError),
}

impl<T> Loadable<T> {
    /// The value, when loaded.
    pub fn ready(&self) -> Option<&T> {
        match self {
            Loadable::Ready(v) => Some(v),
            _ => None,
        }
    }
}

impl<T> From<Result<T, ApiError>> for Loadable<T> {
    fn from(r: Result<T, ApiError>) -> Self {
        match r {
            Ok(v) => Loadable::Ready(v),
            Err(e) => Loadable::Failed(e),
        }
    }
}

/// A signal that is `Loading` until `fut` (one API call, already checked
/// with `Api::check`) resolves, then holds its result; the call is dropped
/// if the page goes away first.
pub fn load<T: Send + Sync + 'static>(
    fut: impl Future<Output = Result<T, ApiError>> + 'static,
) -> RwSignal<Loadable<T>> {
    let state = RwSignal::new(Loadable::Loading);
    spawn_scoped(async move { state.set(fut.await.into()) });
    state
}

/// After a stream broke with `broke`: `false` (and `state` failed) when
/// reconnecting cannot help, else `true` once the backoff has passed
/// (the banner showing meanwhile).
async fn wait_to_reconnect<T: Send + Sync + 'static>(
    api: &Api,
    broke: &Status,
    state: RwSignal<Loadable<T>>,
    reconnecting: &mut Reconnecting,
    backoff: &mut Backoff,
) -> bool {
    let e = api.fail(broke);
    if !retryable(&e) {
        state.set(Loadable::Failed(e));
        return false;
    }
    reconnecting.lost();
    browser::sleep(backoff.next_delay(browser::random())).await;
    true
}

/// A boxed local future.
pub type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// Reads events until the stream breaks: each goes to `buffer` while the
/// snapshot loads (`loaded` false), then straight into `state`.
async fn read_events<T: Send + Sync + 'static>(
    stream: &mut Streaming<RunEvent>,
    cursor: &mut u64,
    loaded: &Cell<bool>,
    buffer: &RefCell<Vec<RunEvent>>,
    state: RwSignal<Loadable<T>>,
    apply: &dyn Fn(&mut T, &RunEvent),
) -> Status {
    loop {
        match stream.message().await {
            Ok(Some(ev)) => {
                *cursor = (*cursor).max(ev.cursor);
                if loaded.get() {
                    state.update(|s| {
                        if let Loadable::Ready(v) = s {
                            apply(v, &ev);
                        }
                    });
                } else {
                    buffer.borrow_mut().push(ev);
                }
            }
            Ok(None) => return Status::unavailable("the server closed the stream"),
            Err(s) => return s,
        }
    }
}

/// Keeps `state` current from `Runs.Watch` (all runs, or one with `run_id`):
/// opens the watch, loads the snapshot with `load`, applies every event
/// received since the watch opened (then each new one) with `apply`. After
/// a broken stream it reconnects with backoff, resuming after the last
/// cursor; if no event had arrived yet it loads the snapshot again.
///
/// Runs until the calling component goes away.
pub fn sync_with_watch<T: Send + Sync + 'static>(
    api: Api,
    run_id: String,
    state: RwSignal<Loadable<T>>,
    load: impl Fn(Api) -> LocalFuture<Result<T, ApiError>> + 'static,
    apply: impl Fn(&mut T, &RunEvent) + 'static,
) {
    let conn = expect_context::<Connection>();
    spawn_scoped(async move {
        let mut backoff = Backoff::default();
        let mut cursor = 0u64;
        let mut reconnecting = Reconnecting::new(conn);
        let mut have_snapshot = false;
        loop {
            if state.is_disposed() {
                return;
            }
            let req = WatchRequest { after_cursor: cursor, run_id: run_id.clone(), from_start: false };
            let broke: Status = match api.runs().watch(req).await {
                Err(s) => s,
                Ok(r) => {
                    reconnecting.back();
                    backoff.reset();
                    let mut stream = r.into_inner();
                    // Without a cursor (nothing received yet) events may
                    // have been missed: load the snapshot again.
                    let need_snapshot = !have_snapshot || cursor == 0;
                    let loaded = Cell::new(!need_snapshot);
                    let buffer = RefCell::new(Vec::new());
                    let mut reader = pin!(read_events(&mut stream, &mut cursor, &loaded, &buffer, state, &apply));
                    if need_snapshot {
                        let loader = pin!(async {
                            let result = load(api.clone()).await;
                            loaded.set(true);
                            result.map(|mut value| {
                                for ev in buffer.borrow_mut().drain(..) {
                                    apply(&mut value, &ev);
                                }
                                state.set(Loadable::Ready(value));
                            })
                        });
                        // Ok(Some): the stream broke (the snapshot loaded
                        // meanwhile); Ok(None): loaded, keep reading.
                        let outcome: Result<Option<Status>, ApiError> = match select(loader, reader.as_mut()).await {
                            Either::Left((loaded, _)) => loaded.map(|()| None),
                            Either::Right((broke, loader)) => loader.await.map(|()| Some(broke)),
                        };
                        match outcome {
                            Err(e) => {
                                if !retryable(&e) {
                                    state.set(Loadable::Failed(e));
                                    return;
                                }
                                reconnecting.lost();
                                browser::sleep(backoff.next_delay(browser::random())).await;
                                continue;
                            }
                            Ok(Some(broke)) => {
                                have_snapshot = true;
                                broke
                            }
                            Ok(None) => {
                                have_snapshot = true;
                                reader.await
                            }
                        }
                    } else {
                        reader.await
                    }
                }
            };
            if !wait_to_reconnect(&api, &broke, state, &mut reconnecting, &mut backoff).await {
                return;
            }
        }
    });
}

/// Keeps `state` current from `Runners.Watch`: the snapshot it starts
/// with, then each event. After a broken stream it reconnects with
/// backoff and takes the new snapshot. Runs until the calling component
/// goes away.
pub fn watch_runners(api: Api, state: RwSignal<Loadable<Vec<Runner>>>) {
    let conn = expect_context::<Connection>();
    spawn_scoped(async move {
        let mut backoff = Backoff::default();
        let mut reconnecting = Reconnecting::new(conn);
        loop {
            if state.is_disposed() {
                return;
            }
            let broke: Status = match api.runners().watch(WatchRunnersRequest {}).await {
                Err(s) => s,
                Ok(r) => {
                    reconnecting.back();
                    backoff.reset();
                    let mut stream = r.into_inner();
                    let mut snapshot = Some(fleet::Snapshot::default());
                    loop {
                        match stream.message().await {
                            Ok(Some(ev)) => match snapshot.as_mut() {
                                Some(s) => {
                                    if let Some(list) = s.take(&ev) {
                                        state.set(Loadable::Ready(list));
                                        snapshot = None;
                                    }
                                }
                                None => state.update(|s| {
                                    if let Loadable::Ready(list) = s {
                                        fleet::apply(list, &ev);
                                    }
                                }),
                            },
                            Ok(None) => break Status::unavailable("the server closed the stream"),
                            Err(s) => break s,
                        }
                    }
                }
            };
            if !wait_to_reconnect(&api, &broke, state, &mut reconnecting, &mut backoff).await {
                return;
            }
        }
    });
}
