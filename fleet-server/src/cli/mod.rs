//! Subcommands of `outpost`, and how their errors become exit codes.
//!
//! Exit codes: 0 success; 1 failure (an operation failed, or a trust check
//! refused the result); 2 usage or validation error (bad arguments, or
//! input files the user must fix; the server's 400/422). clap's own usage
//! errors also exit 2. Talking to a server: 3 authentication or
//! authorization refused (401/403); 4 not found (404); 5 conflict with the
//! current state (409: a lifecycle move not allowed, other bytes under the
//! same version); 6 the server cannot be reached.

pub(crate) mod agent;
pub(crate) mod alerts;
pub(crate) mod audit;
pub(crate) mod client;
pub(crate) mod demo;
pub(crate) mod devices;
pub(crate) mod drift;
pub(crate) mod keys;
pub(crate) mod model;
pub(crate) mod pack;
pub(crate) mod registry;
pub(crate) mod rollout;
pub(crate) mod serve;
pub(crate) mod sign;
pub(crate) mod tokens;

/// Exit code of a failure.
pub(crate) const EXIT_FAILURE: u8 = 1;
/// Exit code of a usage or validation error.
pub(crate) const EXIT_INVALID: u8 = 2;
/// The server refused the token (401) or its role (403).
pub(crate) const EXIT_AUTH: u8 = 3;
/// The server has no such thing (404).
pub(crate) const EXIT_NOT_FOUND: u8 = 4;
/// The server refused because of the current state (409).
pub(crate) const EXIT_CONFLICT: u8 = 5;
/// The server could not be reached.
pub(crate) const EXIT_UNREACHABLE: u8 = 6;

/// Marks an error as the user's to fix: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub(crate) struct Invalid(anyhow::Error);

/// A trust check refused the result (exit code 1); `details` is what the
/// command would have printed, for `--json`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct CheckFailed {
    pub(crate) check: &'static str,
    pub(crate) message: String,
    pub(crate) details: serde_json::Value,
}

/// Wraps `e` as a usage or validation error.
pub(crate) fn invalid(e: impl Into<anyhow::Error>) -> anyhow::Error {
    anyhow::Error::new(Invalid(e.into()))
}

/// A library error, as invalid input or as a failure.
pub(crate) fn classify<E>(e: E, is_invalid: bool) -> anyhow::Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    if is_invalid {
        invalid(e)
    } else {
        anyhow::Error::new(e)
    }
}

pub(crate) fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(f) = e
        .chain()
        .find_map(|c| c.downcast_ref::<client::ApiFailure>())
    {
        return f.exit_code();
    }
    if e.chain().any(|c| c.is::<Invalid>()) {
        EXIT_INVALID
    } else {
        EXIT_FAILURE
    }
}

/// The `--json` form of an error.
pub(crate) fn error_json(e: &anyhow::Error) -> serde_json::Value {
    let mut v = serde_json::json!({
        "ok": false,
        "exit_code": exit_code(e),
        "error": format!("{e:#}"),
    });
    if let Some(f) = e
        .chain()
        .find_map(|c| c.downcast_ref::<client::ApiFailure>())
    {
        v["status"] = f.status.into();
        v["code"] = f.code.clone().into();
        if !f.details.is_null() {
            v["details"] = f.details.clone();
        }
    }
    if let Some(c) = e.chain().find_map(|c| c.downcast_ref::<CheckFailed>()) {
        v["check"] = c.check.into();
        v["details"] = c.details.clone();
    }
    v
}

/// Prints `value` as JSON (with `--json`) or runs `text`.
pub(crate) fn emit(
    json: bool,
    value: &serde_json::Value,
    text: impl FnOnce(),
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        text();
    }
    Ok(())
}

/// `--server` and `--token` (or OUTPOST_SERVER / OUTPOST_TOKEN).
#[derive(Debug, Clone, Default)]
pub(crate) struct Conn {
    pub(crate) server: Option<String>,
    pub(crate) token: Option<String>,
}

impl Conn {
    pub(crate) fn client(&self) -> client::Client {
        client::Client::new(self.server.as_deref(), self.token.as_deref())
    }
}

pub(crate) use outpost_agent::stdin_closed;
