//! Logs and traces of Viaduct's binaries (the server and the runner).
//!
//! Logs go to stderr, filtered by `VIADUCT_LOG` (an `EnvFilter`). Traces
//! are off by default: given an OTLP endpoint (`--otlp-endpoint`), the
//! `viaduct*` spans at INFO and above — one per RPC, per runner
//! connection, per job and per step — are exported as OpenTelemetry spans
//! over OTLP/gRPC, in batches, whatever `VIADUCT_LOG` says.
//!
//! **One trace per run.** A run's trace id and the id of its root span are
//! derived from the run id ([`run_ids`]), so the spans of one run made by
//! different processes — the server's `run` (accepted → finished) and
//! `queued` (each job attempt's wait for a runner), the runner's `job` and
//! `step` — join one trace without any context passed between them. The
//! server exports the root span when the run ends ([`export_run`]); the
//! runner puts its job spans under it ([`in_run`]).
//!
//! The exporter's gRPC connection lives on a runtime of its own (one
//! thread), so tracing starts before and ends after the program's own
//! runtime; dropping [`Logging`] flushes what is pending.

use std::{
    cell::Cell,
    sync::OnceLock,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry::{
    Context, KeyValue,
    trace::{
        Span as _, SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
        TracerProvider as _,
    },
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    trace::{BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider},
};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, filter, layer::SubscriberExt, util::SubscriberInitExt};

/// How long spans wait to be exported with others.
const BATCH_DELAY: Duration = Duration::from_secs(1);

/// The tracer spans are exported with, once traces are on.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Logging (and tracing, when on) of this process; dropping it flushes the
/// spans not yet exported.
pub struct Logging {
    traces: Option<Traces>,
}

/// The OTLP exporter and the runtime its connection lives on.
struct Traces {
    provider: SdkTracerProvider,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Traces {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("viaduct: flushing traces failed: {e}");
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Logging {
    /// Whether spans are exported.
    pub fn traces_on(&self) -> bool {
        self.traces.is_some()
    }
}

/// Logs to stderr (`VIADUCT_LOG`, else `default_filter`) and, with
/// `otlp` (an `http://host:port` URL), traces as `service`.
pub fn init(service: &'static str, default_filter: &str, otlp: Option<&str>) -> Result<Logging, String> {
    let env = EnvFilter::try_from_env("VIADUCT_LOG").unwrap_or_else(|_| default_filter.into());
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(env);
    let Some(endpoint) = otlp else {
        tracing_subscriber::registry().with(logs).try_init().map_err(|e| e.to_string())?;
        return Ok(Logging { traces: None });
    };
    let (traces, tracer) = exporter(service, endpoint)?;
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer.clone())
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(filter::filter_fn(|m| {
            m.is_span() && m.target().starts_with("viaduct") && *m.level() <= tracing::Level::INFO
        }));
    tracing_subscriber::registry().with(logs).with(spans).try_init().map_err(|e| e.to_string())?;
    let _ = TRACER.set(tracer);
    tracing::info!(endpoint, "exporting traces over OTLP");
    Ok(Logging { traces: Some(traces) })
}

/// Starts the exporter to `endpoint` on a runtime thread of its own.
fn exporter(service: &'static str, endpoint: &str) -> Result<(Traces, SdkTracer), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the trace exporter's runtime: {e}"))?;
    let exporter = {
        let _in = rt.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("--otlp-endpoint {endpoint}: {e}"))?
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("otlp-export".into())
        .spawn(move || {
            rt.block_on(async {
                let _ = stopped.await;
            });
        })
        .map_err(|e| format!("cannot start the trace exporter's thread: {e}"))?;
    let batches = BatchSpanProcessor::builder(exporter)
        .with_batch_config(BatchConfigBuilder::default().with_scheduled_delay(BATCH_DELAY).build())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(batches)
        .with_id_generator(PinnedIds::default())
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    let tracer = provider.tracer("viaduct");
    Ok((Traces { provider, stop: Some(stop), thread: Some(thread) }, tracer))
}

thread_local! {
    /// Ids the next span started on this thread takes (see [`export_run`]).
    static PINNED: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// Random ids, unless the span being started on this thread was given its
/// own (a run's root span, whose ids follow from the run id).
#[derive(Debug, Default)]
struct PinnedIds(RandomIdGenerator);

impl IdGenerator for PinnedIds {
    // The SDK asks for the span id first, then (for a root span) the
    // trace id: the pin is taken by the latter.
    fn new_span_id(&self) -> SpanId {
        match PINNED.with(Cell::get) {
            Some((_, span)) => span,
            None => self.0.new_span_id(),
        }
    }

    fn new_trace_id(&self) -> TraceId {
        match PINNED.with(Cell::take) {
            Some((trace, _)) => trace,
            None => self.0.new_trace_id(),
        }
    }
}

/// The trace id of run `run_id` and the span id of its root span.
pub fn run_ids(run_id: &str) -> (TraceId, SpanId) {
    let mut h = blake3::Hasher::new_derive_key("viaduct 2026 run trace ids v1");
    h.update(run_id.as_bytes());
    let mut out = [0u8; 24];
    h.finalize_xof().fill(&mut out);
    // All-zero ids are invalid; a hash makes them only in theory.
    out[15] |= 1;
    out[23] |= 1;
    let (mut trace, mut span) = ([0u8; 16], [0u8; 8]);
    trace.copy_from_slice(&out[..16]);
    span.copy_from_slice(&out[16..]);
    (TraceId::from_bytes(trace), SpanId::from_bytes(span))
}

/// The context of run `run_id`'s root span (as if from another process).
fn run_context(run_id: &str) -> Context {
    let (trace, span) = run_ids(run_id);
    let sc = SpanContext::new(trace, span, TraceFlags::SAMPLED, true, TraceState::default());
    Context::new().with_remote_span_context(sc)
}

/// Puts `span` (not yet entered) under run `run_id`'s root span; nothing
/// when traces are off.
pub fn in_run(span: &tracing::Span, run_id: &str) {
    if TRACER.get().is_some() {
        let _ = span.set_parent(run_context(run_id));
    }
}

/// A span that already ended, of one run.
#[derive(Debug, Clone)]
pub struct Ended<'a> {
    /// `run`, `queued`…
    pub name: &'static str,
    /// The run it belongs to.
    pub run_id: &'a str,
    /// Unix milliseconds.
    pub start_ms: i64,
    /// Unix milliseconds.
    pub end_ms: i64,
    /// `viaduct.*` attributes.
    pub attributes: Vec<(&'static str, String)>,
    /// Why it failed; `None`: it did not.
    pub error: Option<String>,
}

fn time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Exports `e` as run `e.run_id`'s root span (the ids of [`run_ids`]);
/// nothing when traces are off.
pub fn export_run(e: Ended<'_>) {
    let Some(tracer) = TRACER.get() else { return };
    PINNED.with(|p| p.set(Some(run_ids(e.run_id))));
    let span = start(tracer, &e, &Context::new());
    PINNED.with(|p| p.set(None));
    finish(span, e);
}

/// Exports `e` as a child of run `e.run_id`'s root span; nothing when
/// traces are off.
pub fn export_in_run(e: Ended<'_>) {
    let Some(tracer) = TRACER.get() else { return };
    let span = start(tracer, &e, &run_context(e.run_id));
    finish(span, e);
}

fn start(tracer: &SdkTracer, e: &Ended<'_>, parent: &Context) -> opentelemetry_sdk::trace::Span {
    let attributes: Vec<KeyValue> = e.attributes.iter().map(|(k, v)| KeyValue::new(*k, v.clone())).collect();
    tracer
        .span_builder(e.name)
        .with_start_time(time(e.start_ms))
        .with_attributes(attributes)
        .start_with_context(tracer, parent)
}

fn finish(mut span: opentelemetry_sdk::trace::Span, e: Ended<'_>) {
    span.set_status(match e.error {
        Some(why) => Status::error(why),
        None => Status::Ok,
    });
    span.end_with_timestamp(time(e.end_ms));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_has_one_fixed_trace_and_root_span() {
        let (t1, s1) = run_ids("0190a1b2c3d4e5f6");
        assert_eq!(run_ids("0190a1b2c3d4e5f6"), (t1, s1));
        let (t2, s2) = run_ids("0190a1b2c3d4e5f7");
        assert!(t1 != t2 && s1 != s2);
        assert!(t1 != TraceId::INVALID && s1 != SpanId::INVALID);
    }
}
