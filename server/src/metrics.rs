//! What `/metrics` exports, in the OpenMetrics text format (which
//! Prometheus scrapes), through `prometheus-client`: the engine's
//! instruments (queue wait, pickup, step and run durations as histograms;
//! runs and jobs by result), scrape-time gauges (queue depth, jobs running,
//! runners and their slots, store and disk size) and the depot's counters
//! (caches, packed logs). Names follow Prometheus' conventions: the
//! `viaduct_` prefix, base units in the name (`_seconds`, `_bytes`),
//! `_total` on counters. Who may read it: `http` (a global `read` token, or
//! `--metrics-listen`).

use std::sync::atomic::Ordering;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
    },
    registry::{Registry, Unit},
};

use crate::{depot::Depot, engine::telemetry::ResultLabel, status::Status, store::compact::files_size};

/// Bytes as written or as stored.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Form {
    form: &'static str,
}

fn count(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn gauge(v: u64) -> ConstGauge {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

/// The exposition, now.
pub fn exposition(status: &Status, depot: &Depot) -> String {
    let mut r = Registry::with_prefix("viaduct");
    status.engine.telemetry().register(&mut r);
    let m = status.engine.metrics();
    r.register("queue_depth", "Jobs waiting for a runner.", ConstGauge::new(count(m.queued)));
    r.register("jobs_running", "Jobs leased to runners (busy slots).", ConstGauge::new(count(m.running)));
    r.register("runners_connected", "Runners with an open stream.", ConstGauge::new(count(m.runners_connected)));
    r.register(
        "runner_slots",
        "Slots of connected runners that take jobs (neither draining nor paused).",
        ConstGauge::new(count(m.slots)),
    );
    let store = status.engine.store_counters();
    r.register(
        "store_commits",
        "Write sets committed to the store (state transitions, log chunks and the rest) since the server started.",
        ConstCounter::new(store.commits),
    );
    r.register(
        "store_flushes",
        "Group commits since the server started: each makes every write before it durable at once (one fsync, one backend transaction).",
        ConstCounter::new(store.flushes),
    );
    r.register_with_unit(
        "store_flush_duration",
        "Time each group commit took, from its start until its writes were durable (sled: the store's log \
         written and synced; PostgreSQL: the transaction); a failed attempt is not timed.",
        Unit::Seconds,
        status.engine.store_flush_durations(),
    );
    if let Some(dir) = &status.sled_dir {
        r.register_with_unit("store_files", "Bytes of the sled database's files.", Unit::Bytes, gauge(files_size(dir)));
    }
    if let Some(free) = status.room.free() {
        r.register_with_unit("data_disk_free", "Free bytes on the data directory's disk.", Unit::Bytes, gauge(free));
    }
    if let Ok(c) = depot.caches.stats() {
        // Built per scrape, so plain counters set to the totals.
        let family: Family<ResultLabel, Counter> = Family::default();
        for (result, n) in [("hit", c.hits), ("partial", c.partial_hits), ("miss", c.misses)] {
            family.get_or_create(&ResultLabel { result }).inc_by(n);
        }
        r.register("cache_restores", "Cache restores by result since the server started.", family);
        r.register_with_unit("cache", "Bytes stored in build caches.", Unit::Bytes, gauge(c.bytes));
        r.register("cache_entries", "Build cache entries.", gauge(c.entries));
        r.register("cache_evicted", "Cache entries expired or evicted.", ConstCounter::new(c.evicted));
    }
    let packed = &depot.logs.stats;
    r.register(
        "logs_packed",
        "Step logs packed into blobs since the server started.",
        ConstCounter::new(packed.steps.load(Ordering::Relaxed)),
    );
    let bytes: Family<Form, Counter> = Family::default();
    bytes.get_or_create(&Form { form: "log" }).inc_by(packed.raw_bytes.load(Ordering::Relaxed));
    bytes.get_or_create(&Form { form: "packed" }).inc_by(packed.packed_bytes.load(Ordering::Relaxed));
    r.register(
        "log_bytes_packed",
        "Bytes of the step logs packed since the server started: as written (log), and in blobs (packed).",
        bytes,
    );
    let forges = &status.forges.counters;
    let statuses: Family<ResultLabel, Counter> = Family::default();
    for (result, n) in [("delivered", &forges.delivered), ("retried", &forges.retried), ("dropped", &forges.dropped)] {
        statuses.get_or_create(&ResultLabel { result }).inc_by(n.load(Ordering::Relaxed));
    }
    r.register(
        "forge_statuses",
        "Commit statuses sent to forges since the server started: delivered, attempts that failed and are retried, dropped (refused for good or expired).",
        statuses,
    );
    let notes = &status.notifier.counters;
    let notifications: Family<ResultLabel, Counter> = Family::default();
    for (result, n) in [("sent", &notes.sent), ("retried", &notes.retried), ("dropped", &notes.dropped)] {
        notifications.get_or_create(&ResultLabel { result }).inc_by(n.load(Ordering::Relaxed));
    }
    r.register(
        "notifications",
        "Notifications (notify:) since the server started: sent, attempts that failed and are retried, dropped.",
        notifications,
    );
    let mut out = String::new();
    if let Err(e) = encode(&mut out, &r) {
        tracing::error!(error = %e, "cannot encode /metrics");
    }
    out
}

/// The content type of [`exposition`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
