//! `GET /metrics`: Prometheus text exposition (prometheus-client).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub model: String,
    /// ok, fallback_default, fallback_previous, bad_input, ood, unavailable,
    /// engine_error, unknown_model.
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FeedbackLabels {
    pub model: String,
    pub version: String,
    /// "true" or "false".
    pub correct: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    /// The check that refused it: decode, signature, sequence, expired, …
    pub check: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EngineLabels {
    pub model: String,
    pub version: String,
    /// active or candidate.
    pub slot: String,
    /// cpu or gpu.
    pub engine: String,
    /// Why: the target's request, the GPU engine's refusal, or the timings.
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BenchLabels {
    pub model: String,
    pub version: String,
    /// The engine measured: cpu or gpu.
    pub engine: String,
}

type HistogramFamily = Family<ModelLabels, Histogram, fn() -> Histogram>;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: HistogramFamily,
    pub feedback: Family<FeedbackLabels, Counter>,
    pub breaker_open: Family<ModelLabels, Gauge>,
    pub mqtt_connected: Gauge,
    pub mqtt_reconnects: Counter,
    pub mqtt_connect_failures: Counter,
    pub store_recreated: Counter,
    pub windows_sealed: Counter,
    pub windows_published: Counter,
    pub windows_dropped: Counter,
    pub events_dropped: Counter,
    pub unprofiled: Family<ModelLabels, Counter>,
    pub shadow_runs: Counter,
    pub update_persist_failures: Counter,
    pub commands_refused: Family<CheckLabels, Counter>,
    pub model_engine: Family<EngineLabels, Gauge>,
    pub engine_benchmark: Family<BenchLabels, Gauge>,
}

fn latency_histogram() -> Histogram {
    // 50 µs … ~1.6 s in 16 doublings.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("outpost_agent");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let feedback = Family::<FeedbackLabels, Counter>::default();
        let breaker_open = Family::<ModelLabels, Gauge>::default();
        let mqtt_connected = Gauge::default();
        let mqtt_reconnects = Counter::default();
        let mqtt_connect_failures = Counter::default();
        registry.register(
            "mqtt_connection_errors",
            "Broker connection attempts or connections that failed (TLS refusals included)",
            mqtt_connect_failures.clone(),
        );
        let store_recreated = Counter::default();
        let windows_sealed = Counter::default();
        let windows_published = Counter::default();
        let windows_dropped = Counter::default();
        let events_dropped = Counter::default();
        let unprofiled = Family::<ModelLabels, Counter>::default();
        let shadow_runs = Counter::default();
        registry.register(
            "shadow_runs",
            "Candidate runs in shadow probation (after the active model answered)",
            shadow_runs.clone(),
        );
        let update_persist_failures = Counter::default();
        registry.register(
            "update_persist_failures",
            "Times the update record could not be written (the update waits and resumes from disk)",
            update_persist_failures.clone(),
        );
        registry.register(
            "telemetry_windows_sealed",
            "Telemetry windows sealed into the outbox",
            windows_sealed.clone(),
        );
        registry.register(
            "telemetry_windows_published",
            "Telemetry windows acknowledged by the broker and removed from the outbox",
            windows_published.clone(),
        );
        registry.register(
            "telemetry_windows_dropped",
            "Telemetry windows dropped because the outbox was over its disk budget",
            windows_dropped.clone(),
        );
        registry.register(
            "events_dropped",
            "Events dropped unsent because the event outbox was full (the oldest go first)",
            events_dropped.clone(),
        );
        registry.register(
            "requests_unprofiled",
            "Requests not profiled (no reference profile, or one that does not fit the tensors)",
            unprofiled.clone(),
        );
        registry.register(
            "inference_requests",
            "Inference requests by model and outcome",
            requests.clone(),
        );
        registry.register(
            "inference_latency_seconds",
            "Inference latency (engine call, including retries)",
            latency.clone(),
        );
        registry.register(
            "feedback",
            "Ground-truth labels received, by whether the prediction was correct",
            feedback.clone(),
        );
        registry.register(
            "breaker_open",
            "1 while a model's circuit breaker is open",
            breaker_open.clone(),
        );
        registry.register(
            "mqtt_connected",
            "1 while connected to the broker",
            mqtt_connected.clone(),
        );
        registry.register(
            "mqtt_reconnects",
            "Broker connections lost",
            mqtt_reconnects.clone(),
        );
        let commands_refused = Family::<CheckLabels, Counter>::default();
        registry.register(
            "commands_refused",
            "Commands refused (undecodable, or failing a trust check), by check; each is also reported as a verification_failed event",
            commands_refused.clone(),
        );
        let model_engine = Family::<EngineLabels, Gauge>::default();
        registry.register(
            "model_engine",
            "1 for each loaded model (active and candidate), labelled with the engine that runs it and why",
            model_engine.clone(),
        );
        let engine_benchmark = Family::<BenchLabels, Gauge>::default();
        registry.register(
            "model_engine_benchmark_microseconds",
            "Median batch-1 run of each engine, measured when the model was loaded (engine auto)",
            engine_benchmark.clone(),
        );
        registry.register(
            "store_recreated",
            "Times the store failed to open and was recreated",
            store_recreated.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            feedback,
            breaker_open,
            mqtt_connected,
            mqtt_reconnects,
            mqtt_connect_failures,
            store_recreated,
            windows_sealed,
            windows_published,
            windows_dropped,
            events_dropped,
            unprofiled,
            shadow_runs,
            update_persist_failures,
            commands_refused,
            model_engine,
            engine_benchmark,
        }
    }
}

impl Metrics {
    /// Sets the engine gauges to the models loaded now (called before each
    /// scrape: a model unloaded since the last one disappears).
    pub fn set_engines(&self, reports: &[outpost_protocol::messages::EngineReport]) {
        self.model_engine.clear();
        self.engine_benchmark.clear();
        for r in reports {
            let slot = match r.slot {
                outpost_protocol::messages::Slot::Active => "active",
                outpost_protocol::messages::Slot::Candidate => "candidate",
                outpost_protocol::messages::Slot::Previous => "previous",
            };
            self.model_engine
                .get_or_create(&EngineLabels {
                    model: r.model.name.clone(),
                    version: r.model.version.clone(),
                    slot: slot.into(),
                    engine: r.engine.clone(),
                    reason: r.reason.clone(),
                })
                .set(1);
            for (engine, us) in [("cpu", r.cpu_us), ("gpu", r.gpu_us)] {
                if let Some(us) = us {
                    self.engine_benchmark
                        .get_or_create(&BenchLabels {
                            model: r.model.name.clone(),
                            version: r.model.version.clone(),
                            engine: engine.into(),
                        })
                        .set(i64::try_from(us).unwrap_or(i64::MAX));
                }
            }
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn request(&self, model: &str, outcome: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                model: model.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}
