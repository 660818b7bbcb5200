//! `GET /v1/drift/{name}/{version}` (`outpost drift MODEL@VERSION`): the
//! fleet drift report of one version over its stored telemetry windows,
//! optionally only the devices of one inventory group and only windows
//! starting in `[since, until)`. Device classes are the targets the
//! inventory knows. The selection and merge live here so the alerting
//! tick computes the same report the API shows.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use outpost_telemetry::ProfileSet;
use serde::{Deserialize, Serialize};

use super::App;
use super::evidence::{reference_of, window_profile};
use super::http::{ApiError, ApiResult, authorize};
use crate::auth::Permission;
use crate::clock::now_unix;
use crate::drift::{DriftError, DriftReport, DriftSettings, fleet_drift};
use crate::store::{Store, StoreError, WindowQuery};

/// Which windows a report covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Selection {
    pub(crate) name: String,
    pub(crate) version: String,
    /// Only devices in this inventory group.
    pub(crate) group: Option<String>,
    /// Windows starting at or after this Unix second.
    pub(crate) from: Option<u64>,
    /// Windows starting before this Unix second.
    pub(crate) to: Option<u64>,
}

/// Why no report was made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DriftFailure {
    /// The version is not registered: 404.
    #[error("{0}")]
    NotFound(String),
    /// The version has no usable reference profile, or its windows do not
    /// merge: 422.
    #[error("{0}")]
    Unprocessable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The report and what it was made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct DriftResponse {
    pub(crate) model: String,
    pub(crate) version: String,
    pub(crate) group: Option<String>,
    /// The requested range (Unix seconds), when one was given.
    pub(crate) from: Option<u64>,
    pub(crate) to: Option<u64>,
    /// Stored windows whose profile did not decode, or that claim another
    /// device, model or version than they were stored under: not counted.
    pub(crate) undecodable: usize,
    #[serde(flatten)]
    pub(crate) report: DriftReport,
}

/// The fleet drift report of `sel`. Blocking (store reads, decoding):
/// call it from `spawn_blocking`.
pub(crate) fn version_drift(
    store: &dyn Store,
    sel: &Selection,
) -> Result<DriftResponse, DriftFailure> {
    if store.get_version(&sel.name, &sel.version)?.is_none() {
        return Err(DriftFailure::NotFound(format!(
            "{} {} is not registered",
            sel.name, sel.version
        )));
    }
    let reference =
        reference_of(store, &sel.name, &sel.version).map_err(DriftFailure::Unprocessable)?;
    let devices = store.list_devices()?;
    let members: Option<BTreeSet<&str>> = sel.group.as_ref().map(|g| {
        devices
            .iter()
            .filter(|d| d.groups.contains(g))
            .map(|d| d.id.as_str())
            .collect()
    });
    let classes: BTreeMap<String, String> = devices
        .iter()
        .filter(|d| !d.target.is_empty())
        .map(|d| (d.id.as_str().to_owned(), d.target.clone()))
        .collect();
    let records = store.windows(&WindowQuery {
        model: sel.name.clone(),
        version: Some(sel.version.clone()),
        device: None,
        from: sel.from,
        to: sel.to,
    })?;
    let mut set = ProfileSet::new();
    let mut undecodable = 0usize;
    for record in &records {
        if members
            .as_ref()
            .is_some_and(|m| !m.contains(record.device.as_str()))
        {
            continue;
        }
        match window_profile(record) {
            Some(w) => set.insert(w),
            None => undecodable += 1,
        }
    }
    let report = fleet_drift(&reference, &set, &classes, &DriftSettings::default()).map_err(
        |e| match e {
            DriftError::Merge(m) => DriftFailure::Unprocessable(format!(
                "the windows of {} {} do not merge: {m}",
                sel.name, sel.version
            )),
            other => DriftFailure::Unprocessable(other.to_string()),
        },
    )?;
    Ok(DriftResponse {
        model: sel.name.clone(),
        version: sel.version.clone(),
        group: sel.group.clone(),
        from: sel.from,
        to: sel.to,
        undecodable,
        report,
    })
}

/// Seconds in `90`, `90s`, `10m`, `1h`, `2d` or a sum such as `1h30m`.
pub(crate) fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Some(secs);
    }
    let mut total = 0u64;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => crate::clock::DAY,
            _ => return None,
        };
        let n: u64 = digits.parse().ok()?;
        digits.clear();
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    digits.is_empty().then_some(total)
}

/// `since`/`until`: Unix seconds (digits only), or a duration before `now`
/// (`1h`, `30m`, `2d`).
pub(crate) fn parse_instant(text: &str, now: u64) -> Result<u64, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map_err(|_| format!("{text:?}: not a Unix time"));
    }
    parse_duration(text)
        .map(|d| now.saturating_sub(d))
        .ok_or_else(|| {
            format!("{text:?}: expected Unix seconds or a duration ago such as 30m, 1h, 2d")
        })
}

/// The query of `GET /v1/drift/{name}/{version}`.
#[derive(Debug, Deserialize)]
pub(crate) struct DriftParams {
    group: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

pub(crate) async fn fleet_drift_report(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
    Query(p): Query<DriftParams>,
) -> ApiResult<Json<DriftResponse>> {
    authorize(&app, &headers, Permission::Read)?;
    let now = now_unix();
    let instant = |s: &Option<String>, what: &str| {
        s.as_deref()
            .map(|s| parse_instant(s, now))
            .transpose()
            .map_err(|e| ApiError::bad_request(format!("{what}: {e}")))
    };
    let from = instant(&p.since, "since")?;
    let to = instant(&p.until, "until")?;
    if let (Some(f), Some(t)) = (from, to)
        && f >= t
    {
        return Err(ApiError::bad_request(format!(
            "since ({f}) must be before until ({t})"
        )));
    }
    let sel = Selection {
        name,
        version,
        group: p.group.filter(|g| !g.is_empty()),
        from,
        to,
    };
    let store = app.store.clone();
    let result = tokio::task::spawn_blocking(move || version_drift(store.as_ref(), &sel))
        .await
        .map_err(|e| ApiError::internal(format!("the drift report failed: {e}")))?;
    result.map(Json).map_err(|e| match e {
        DriftFailure::NotFound(m) => ApiError::not_found(m),
        DriftFailure::Unprocessable(m) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "drift_unavailable", m)
        }
        DriftFailure::Store(s) => s.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_instants_parse_or_are_refused() {
        assert_eq!(parse_duration("90"), Some(90));
        assert_eq!(parse_duration("10m"), Some(600));
        assert_eq!(parse_duration("1h30m"), Some(5_400));
        assert_eq!(parse_duration("2d"), Some(172_800));
        for bad in ["", "h", "10x", "5m3", "-1h", "99999999999999999999d"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
        assert_eq!(parse_instant("1700000000", 5), Ok(1_700_000_000));
        assert_eq!(parse_instant("1h", 10_000), Ok(6_400));
        assert_eq!(parse_instant("1h", 10), Ok(0));
        assert!(parse_instant("yesterday", 10).is_err());
    }
}
