//! What the rollout controller and fleet drift read from the store: a
//! version's reference profile (from its package) and the decoded
//! telemetry windows.

use std::sync::Arc;

use outpost_runtime::{Package, PackageLimits};
use outpost_telemetry::{
    REFERENCE_DECODE_LIMIT, ReferenceProfile, WINDOW_DECODE_LIMIT, WindowProfile,
};

use crate::store::{Store, WindowRecord};

/// The reference profile packed with `name` `version` (the package member
/// `reference.bin`). Errors are for people: which version, what is wrong.
pub(crate) fn reference_of(
    store: &dyn Store,
    name: &str,
    version: &str,
) -> Result<Arc<ReferenceProfile>, String> {
    let record = store
        .get_version(name, version)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{name} {version} is not registered"))?;
    let bytes = store
        .get_blob(&record.sha256)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "{name} {version}: package blob {} is missing",
                record.sha256
            )
        })?;
    let origin = format!("{name} {version}");
    let pkg = Package::from_bytes(&bytes, &origin, &PackageLimits::default())
        .map_err(|e| e.to_string())?;
    let member = pkg
        .member(outpost_runtime::package::REFERENCE)
        .ok_or_else(|| format!("{origin} was packed without a reference profile"))?;
    ReferenceProfile::from_bytes(member, REFERENCE_DECODE_LIMIT)
        .map(Arc::new)
        .map_err(|e| format!("{origin}: reference profile: {e}"))
}

/// The window profile a stored telemetry window carries, when it decodes
/// and its key names the device that sent it (a window claiming another
/// device's id is not counted).
pub(crate) fn window_profile(record: &WindowRecord) -> Option<WindowProfile> {
    checked_window(record).ok()
}

/// [`window_profile`], or why not: `"profile"` (it does not decode) or
/// `"forged"` (its key names another device, model or version than the
/// topic and the envelope).
pub(crate) fn checked_window(record: &WindowRecord) -> Result<WindowProfile, &'static str> {
    let w = WindowProfile::from_bytes(&record.window.profile, WINDOW_DECODE_LIMIT)
        .map_err(|_| "profile")?;
    if w.key.device == record.device.as_str()
        && w.key.model == record.window.model.name
        && w.key.version == record.window.model.version
    {
        Ok(w)
    } else {
        Err("forged")
    }
}
