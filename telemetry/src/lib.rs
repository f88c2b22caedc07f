//! Logs and traces of Viaduct's binaries (the server and the runner).
//!
//! Logs go to stderr, filtered by `VIADUCT_LOG` (an `EnvFilter`). Traces
//! are off by default: given an OTLP endpoint (`--otlp-endpoint`), the
//! spans a binary names (the runner's `job` and `step`) and those it
//! exports itself (the server's `run` and `queued`) go as OpenTelemetry
//! spans over OTLP/gRPC, in batches, whatever `VIADUCT_LOG` says. Nothing
//! else is exported: not API calls (a stranger's refused call is no span).
//!
//! **One trace per run.** A run's trace id and the id of its root span are
//! derived from the run id under a key of the server's ([`RunTrace::of`]):
//! distinct between servers sharing a collector, and unguessable to whoever
//! can write to it. The server exports the root span when the run ends
//! ([`export_root`]; a retried run's next ending is another root of the
//! same trace), its jobs' waits under it ([`export_in_run`]), and hands the
//! root's context to runners with each job (`traceparent`), whose `job`
//! spans go under it ([`in_trace`]).
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

/// Whether log lines are coloured: only for a person at a terminal. A file,
/// a pipe or the journal gets plain text (colour codes would split every
/// `key=value` for `grep`), and `NO_COLOR` turns them off anywhere.
fn colours() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Logs to stderr (`VIADUCT_LOG`, else `default_filter`; the exporter's
/// own warnings, such as a collector that does not answer, among them)
/// and, with `otlp` (an `http://host:port` URL), traces as `service`: the
/// spans of this crate's exports and the Viaduct spans named in `spans`.
pub fn init(
    service: &'static str,
    default_filter: &str,
    otlp: Option<&str>,
    spans: &'static [&'static str],
) -> Result<Logging, String> {
    let quiet_exporter = ",opentelemetry=warn,opentelemetry_sdk=warn,opentelemetry_otlp=warn";
    let env =
        EnvFilter::try_from_env("VIADUCT_LOG").unwrap_or_else(|_| format!("{default_filter}{quiet_exporter}").into());
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(colours()).with_filter(env);
    let Some(endpoint) = otlp else {
        tracing_subscriber::registry().with(logs).try_init().map_err(|e| e.to_string())?;
        return Ok(Logging { traces: None });
    };
    if !endpoint.starts_with("http://") {
        return Err(format!(
            "--otlp-endpoint {endpoint}: expected http://HOST:PORT (plain OTLP/gRPC; put a collector where the network is trusted)"
        ));
    }
    let (traces, tracer) = exporter(service, endpoint)?;
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer.clone())
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_target(false)
        // Nothing here starts OpenTelemetry spans inside ours: entering a
        // span (every poll of a step) need not switch contexts.
        .with_context_activation(false)
        .with_filter(filter::filter_fn(move |m| {
            m.is_span() && m.target().starts_with("viaduct") && spans.contains(&m.name())
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

/// Where a run's spans go: its trace, and the root span of one ending of
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunTrace {
    trace: TraceId,
    root: SpanId,
}

impl RunTrace {
    /// The trace of run `run_id` under a server's `key`, for its ending
    /// after `retried` retries.
    pub fn of(key: &[u8; 32], run_id: &str, retried: u32) -> Self {
        let mut trace = [0u8; 16];
        blake3::Hasher::new_keyed(key).update(b"trace\0").update(run_id.as_bytes()).finalize_xof().fill(&mut trace);
        let mut root = [0u8; 8];
        blake3::Hasher::new_keyed(key)
            .update(b"root\0")
            .update(run_id.as_bytes())
            .update(b"\0")
            .update(&retried.to_be_bytes())
            .finalize_xof()
            .fill(&mut root);
        // All-zero ids are invalid; a hash makes them only in theory.
        trace[15] |= 1;
        root[7] |= 1;
        Self { trace: TraceId::from_bytes(trace), root: SpanId::from_bytes(root) }
    }

    /// Its root span's W3C trace context (`00-<trace>-<span>-01`).
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace, self.root)
    }

    /// A W3C trace context, as [`RunTrace::traceparent`] writes it.
    pub fn parse(traceparent: &str) -> Option<Self> {
        let mut parts = traceparent.split('-');
        let (Some("00"), Some(trace), Some(root), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(trace, 32) || !hex(root, 16) {
            return None;
        }
        let trace = TraceId::from_hex(trace).ok().filter(|t| *t != TraceId::INVALID)?;
        let root = SpanId::from_hex(root).ok().filter(|s| *s != SpanId::INVALID)?;
        Some(Self { trace, root })
    }

    /// Its root span's context (as if from another process).
    fn context(&self) -> Context {
        let sc = SpanContext::new(self.trace, self.root, TraceFlags::SAMPLED, true, TraceState::default());
        Context::new().with_remote_span_context(sc)
    }
}

/// Puts `span` (not yet entered) under the root span of `traceparent`
/// (from the server); nothing when traces are off or it does not parse.
pub fn in_trace(span: &tracing::Span, traceparent: &str) {
    if TRACER.get().is_some()
        && let Some(t) = RunTrace::parse(traceparent)
    {
        let _ = span.set_parent(t.context());
    }
}

/// A span that already ended, of one run.
#[derive(Debug, Clone)]
pub struct Ended {
    /// `run`, `queued`…
    pub name: &'static str,
    /// The run's trace.
    pub trace: RunTrace,
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

/// Whether spans are exported (else the exports below do nothing: callers
/// may skip preparing them).
pub fn traces_on() -> bool {
    TRACER.get().is_some()
}

/// Exports `e` as the root span of its trace; nothing when traces are off.
pub fn export_root(e: Ended) {
    let Some(tracer) = TRACER.get() else { return };
    PINNED.with(|p| p.set(Some((e.trace.trace, e.trace.root))));
    let span = start(tracer, &e, &Context::new());
    PINNED.with(|p| p.set(None));
    finish(span, e);
}

/// Exports `e` as a child of its trace's root span; nothing when traces
/// are off.
pub fn export_in_run(e: Ended) {
    let Some(tracer) = TRACER.get() else { return };
    let span = start(tracer, &e, &e.trace.context());
    finish(span, e);
}

fn start(tracer: &SdkTracer, e: &Ended, parent: &Context) -> opentelemetry_sdk::trace::Span {
    let attributes: Vec<KeyValue> = e.attributes.iter().map(|(k, v)| KeyValue::new(*k, v.clone())).collect();
    tracer
        .span_builder(e.name)
        .with_start_time(time(e.start_ms))
        .with_attributes(attributes)
        .start_with_context(tracer, parent)
}

fn finish(mut span: opentelemetry_sdk::trace::Span, e: Ended) {
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
    fn a_run_has_one_trace_and_a_root_per_ending_keyed_by_the_server() {
        let key = [7u8; 32];
        let first = RunTrace::of(&key, "42", 0);
        assert_eq!(RunTrace::of(&key, "42", 0), first);
        let retried = RunTrace::of(&key, "42", 1);
        assert_eq!(retried.trace, first.trace, "one trace");
        assert_ne!(retried.root, first.root, "a root per ending");
        let other_server = RunTrace::of(&[8u8; 32], "42", 0);
        assert_ne!(other_server.trace, first.trace);
        assert_ne!(RunTrace::of(&key, "43", 0).trace, first.trace);
        let tp = first.traceparent();
        assert_eq!(tp.len(), 55);
        assert_eq!(RunTrace::parse(&tp), Some(first));
        for bad in ["", "00-x-y-01", "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", &format!("{tp}-x")] {
            assert_eq!(RunTrace::parse(bad), None, "{bad}");
        }
    }
}
