//! `agent.toml`: what the agent is, where it reports, what it trusts and
//! what it serves at first boot. Every error names the key and the problem;
//! the agent refuses to start on a bad config rather than half-start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use outpost_protocol::topic::DeviceId;
use outpost_runtime::TargetProfile;
use serde::Deserialize;

/// A config that could not be read or is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{path}: {reason}")]
    Read { path: PathBuf, reason: String },
    /// The TOML does not parse, or a key has the wrong type or is unknown.
    #[error("{path}: {reason}")]
    Syntax { path: PathBuf, reason: String },
    /// A key's value is not acceptable.
    #[error("{path}: `{key}`: {problem}")]
    Invalid {
        path: PathBuf,
        key: String,
        problem: String,
    },
}

/// The parsed, checked config.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub device_id: DeviceId,
    pub target: TargetProfile,
    pub data_dir: PathBuf,
    pub mqtt: MqttConfig,
    pub trust_root: PathBuf,
    pub api: ApiConfig,
    pub telemetry: TelemetryConfig,
    pub shadow_cpu_budget_percent: u8,
    pub breaker: BreakerConfig,
    pub models: Vec<ModelConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub tls: Option<TlsConfig>,
    pub prefix: String,
    pub keep_alive_secs: u16,
    /// Payload encoding this device uses (postcard, or JSON for other IoT
    /// platforms).
    pub json: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub ca: PathBuf,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    pub bind: SocketAddr,
    pub max_body_bytes: usize,
    /// How many async results are kept for `GET /v1/requests/{id}`.
    pub max_pending: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    pub window_secs: u32,
    pub outbox_budget_bytes: u64,
    /// KLL sketch parameter for numeric columns; `None`: bins only (about
    /// a third of the profiling cost, no sketch statistics on the server).
    pub kll_k: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive engine failures that open the breaker.
    pub failures: u32,
    /// How long it stays open before one probe call is let through.
    pub open_secs: u64,
    /// Retries of a failed engine call (on top of the first try).
    pub retries: u32,
}

/// What to answer when an input is out of distribution (outside the
/// manifest's ranges or vocabularies).
#[derive(Debug, Clone, PartialEq)]
pub enum Fallback {
    /// 422 with the reason.
    Reject,
    /// Answer these values for the first output instead.
    Default(Vec<f32>),
    /// Answer with the previous model, if one is loaded.
    Previous,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The `.opk` package to serve at first boot.
    pub package: PathBuf,
    /// Its signed release metadata (checked against the pinned root).
    pub release: PathBuf,
    pub fallback: Fallback,
}

// The file's shape. `deny_unknown_fields` so a misspelt key is an error,
// not a silently ignored setting.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    device_id: String,
    target: String,
    data_dir: PathBuf,
    mqtt: RawMqtt,
    trust: RawTrust,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    telemetry: RawTelemetry,
    #[serde(default)]
    shadow: RawShadow,
    #[serde(default)]
    breaker: RawBreaker,
    #[serde(default)]
    models: Vec<RawModel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    url: String,
    ca: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    #[serde(default = "default_prefix")]
    prefix: String,
    #[serde(default = "default_keep_alive")]
    keep_alive_secs: u16,
    #[serde(default)]
    encoding: RawEncoding,
}

#[derive(Deserialize, Default, PartialEq)]
#[serde(rename_all = "snake_case")]
enum RawEncoding {
    #[default]
    Postcard,
    Json,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    root: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawApi {
    bind: String,
    max_body_bytes: usize,
    max_pending: usize,
}

impl Default for RawApi {
    fn default() -> Self {
        RawApi {
            bind: "127.0.0.1:8080".into(),
            max_body_bytes: 8 << 20,
            max_pending: 1024,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTelemetry {
    window_secs: u32,
    /// Fractions allowed (0.5 = 512 KiB) for small devices.
    outbox_budget_mb: f64,
    /// 0 turns the sketches off.
    kll_k: u16,
}

impl Default for RawTelemetry {
    fn default() -> Self {
        RawTelemetry {
            window_secs: 60,
            outbox_budget_mb: 64.0,
            kll_k: outpost_telemetry::DEFAULT_KLL_K,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawShadow {
    cpu_budget_percent: u8,
}

impl Default for RawShadow {
    fn default() -> Self {
        RawShadow {
            cpu_budget_percent: 25,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBreaker {
    failures: u32,
    open_secs: u64,
    retries: u32,
}

impl Default for RawBreaker {
    fn default() -> Self {
        RawBreaker {
            failures: 5,
            open_secs: 30,
            retries: 1,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    package: PathBuf,
    release: PathBuf,
    #[serde(default)]
    fallback: Option<String>,
    #[serde(default)]
    default_output: Option<Vec<f32>>,
}

fn default_prefix() -> String {
    outpost_protocol::topic::DEFAULT_PREFIX.into()
}

fn default_keep_alive() -> u16 {
    30
}

impl AgentConfig {
    /// Reads and checks `path`. Relative paths inside are relative to the
    /// config file's folder.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, base)
    }

    /// Parses config text; `origin` names it in errors, `base` resolves
    /// relative paths.
    pub fn parse(text: &str, origin: &Path, base: &Path) -> Result<AgentConfig, ConfigError> {
        let raw: Raw = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_owned(),
            reason: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |key: &str, problem: String| ConfigError::Invalid {
            path: origin.to_owned(),
            key: key.to_owned(),
            problem,
        };
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };
        let must_exist = |key: &str, p: &Path| -> Result<PathBuf, ConfigError> {
            let p = resolve(p);
            if p.exists() {
                Ok(p)
            } else {
                Err(invalid(key, format!("{} does not exist", p.display())))
            }
        };

        let device_id =
            DeviceId::new(raw.device_id).map_err(|e| invalid("device_id", e.to_string()))?;
        let target = load_target(&raw.target, base).map_err(|e| invalid("target", e))?;
        let mqtt = parse_mqtt(&raw.mqtt, &invalid, &must_exist)?;
        let trust_root = must_exist("trust.root", &raw.trust.root)?;
        let bind: SocketAddr = raw.api.bind.parse().map_err(|e| {
            invalid(
                "api.bind",
                format!("{:?} is not ip:port ({e})", raw.api.bind),
            )
        })?;
        if raw.api.max_body_bytes < 1024 {
            return Err(invalid(
                "api.max_body_bytes",
                "must be at least 1024".into(),
            ));
        }
        if raw.telemetry.window_secs == 0 || raw.telemetry.window_secs > 86_400 {
            return Err(invalid(
                "telemetry.window_secs",
                format!("{} is not between 1 and 86400", raw.telemetry.window_secs),
            ));
        }
        let budget = raw.telemetry.outbox_budget_mb;
        if !(budget.is_finite() && (0.001..=1_048_576.0).contains(&budget)) {
            return Err(invalid(
                "telemetry.outbox_budget_mb",
                format!("{budget} is not between 0.001 (1 KB) and 1048576 (1 TiB)"),
            ));
        }
        let kll_k = match raw.telemetry.kll_k {
            0 => None,
            k if k >= outpost_telemetry::MIN_KLL_K => Some(k),
            k => {
                return Err(invalid(
                    "telemetry.kll_k",
                    format!(
                        "{k} is below the minimum of {} (0 turns sketches off)",
                        outpost_telemetry::MIN_KLL_K
                    ),
                ));
            }
        };
        if raw.shadow.cpu_budget_percent > 100 {
            return Err(invalid(
                "shadow.cpu_budget_percent",
                format!("{} is over 100", raw.shadow.cpu_budget_percent),
            ));
        }
        if raw.breaker.failures == 0 {
            return Err(invalid("breaker.failures", "must be at least 1".into()));
        }
        let mut models = Vec::new();
        for (i, m) in raw.models.iter().enumerate() {
            let key = |k: &str| format!("models[{i}].{k}");
            let fallback = match (m.fallback.as_deref(), &m.default_output) {
                (None | Some("reject"), None) => Fallback::Reject,
                (Some("previous"), None) => Fallback::Previous,
                (Some("default"), Some(v)) if !v.is_empty() => Fallback::Default(v.clone()),
                (Some("default"), _) => {
                    return Err(invalid(
                        &key("default_output"),
                        "fallback = \"default\" needs a non-empty default_output".into(),
                    ));
                }
                (Some(other), None) if !["reject", "previous", "default"].contains(&other) => {
                    return Err(invalid(
                        &key("fallback"),
                        format!("{other:?} is not one of reject, default, previous"),
                    ));
                }
                (_, Some(_)) => {
                    return Err(invalid(
                        &key("default_output"),
                        "only used with fallback = \"default\"".into(),
                    ));
                }
                (Some(_), None) => Fallback::Reject,
            };
            models.push(ModelConfig {
                package: must_exist(&key("package"), &m.package)?,
                release: must_exist(&key("release"), &m.release)?,
                fallback,
            });
        }
        Ok(AgentConfig {
            device_id,
            target,
            data_dir: resolve(&raw.data_dir),
            mqtt,
            trust_root,
            api: ApiConfig {
                bind,
                max_body_bytes: raw.api.max_body_bytes,
                max_pending: raw.api.max_pending.max(1),
            },
            telemetry: TelemetryConfig {
                window_secs: raw.telemetry.window_secs,
                outbox_budget_bytes: (budget * 1_048_576.0) as u64,
                kll_k,
            },
            shadow_cpu_budget_percent: raw.shadow.cpu_budget_percent,
            breaker: BreakerConfig {
                failures: raw.breaker.failures,
                open_secs: raw.breaker.open_secs,
                retries: raw.breaker.retries,
            },
            models,
        })
    }
}

/// `target` is a profile name from the repository's `targets/` (as
/// installed beside the config: `targets/{name}.toml`) or a path.
fn load_target(target: &str, base: &Path) -> Result<TargetProfile, String> {
    let candidates = if target.ends_with(".toml") {
        vec![base.join(target)]
    } else {
        vec![
            base.join("targets").join(format!("{target}.toml")),
            base.join(format!("{target}.toml")),
            PathBuf::from("/usr/share/outpost/targets").join(format!("{target}.toml")),
        ]
    };
    let found = candidates.iter().find(|p| p.exists()).ok_or_else(|| {
        format!(
            "no profile {target:?} (looked for {})",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    TargetProfile::load(found).map_err(|e| e.to_string())
}

fn parse_mqtt(
    raw: &RawMqtt,
    invalid: &impl Fn(&str, String) -> ConfigError,
    must_exist: &impl Fn(&str, &Path) -> Result<PathBuf, ConfigError>,
) -> Result<MqttConfig, ConfigError> {
    let (tls, rest) = if let Some(rest) = raw.url.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = raw.url.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        return Err(invalid(
            "mqtt.url",
            format!("{:?} must start with mqtt:// or mqtts://", raw.url),
        ));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| invalid("mqtt.url", format!("port {p:?} is not a number")))?,
        ),
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() || host.contains('/') {
        return Err(invalid("mqtt.url", format!("{:?} has no host", raw.url)));
    }
    let tls = if tls {
        let ca = raw
            .ca
            .as_deref()
            .ok_or_else(|| invalid("mqtt.ca", "mqtts:// needs a CA certificate".into()))?;
        let client = match (&raw.client_cert, &raw.client_key) {
            (Some(c), Some(k)) => Some((
                must_exist("mqtt.client_cert", c)?,
                must_exist("mqtt.client_key", k)?,
            )),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "mqtt.client_key",
                    "client_cert needs client_key".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "mqtt.client_cert",
                    "client_key needs client_cert".into(),
                ));
            }
        };
        Some(TlsConfig {
            ca: must_exist("mqtt.ca", ca)?,
            client,
        })
    } else {
        if raw.ca.is_some() || raw.client_cert.is_some() || raw.client_key.is_some() {
            return Err(invalid(
                "mqtt.url",
                "TLS files are set but the url is mqtt://; use mqtts://".into(),
            ));
        }
        None
    };
    if raw.keep_alive_secs < 5 {
        return Err(invalid("mqtt.keep_alive_secs", "must be at least 5".into()));
    }
    Ok(MqttConfig {
        host: host.to_owned(),
        port,
        tls,
        prefix: raw.prefix.trim_matches('/').to_owned(),
        keep_alive_secs: raw.keep_alive_secs,
        json: raw.encoding == RawEncoding::Json,
    })
}
