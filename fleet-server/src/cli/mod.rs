//! Subcommands of `outpost`, and how their errors become exit codes.
//!
//! Exit codes: 0 success; 1 failure (an operation failed, or a trust check
//! refused the result); 2 usage or validation error (bad arguments, or
//! input files the user must fix). clap's own usage errors also exit 2.

pub(crate) mod keys;
pub(crate) mod model;
pub(crate) mod pack;
pub(crate) mod sign;

/// Exit code of a failure.
pub(crate) const EXIT_FAILURE: u8 = 1;
/// Exit code of a usage or validation error.
pub(crate) const EXIT_INVALID: u8 = 2;

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
