//! Device target profiles (`targets/*.toml`): what the device has and how
//! the runtime should use it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::engine::EngineKind;
use crate::error::Error;

/// One device class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetProfile {
    /// Short id, e.g. `rpi4`.
    pub name: String,
    pub description: String,
    /// Rust target architecture (`x86_64`, `aarch64`).
    pub arch: String,
    /// Rust target triple used to cross-build the agent.
    pub triple: String,
    pub cores: usize,
    pub memory_mb: u64,
    /// Accelerators present (`vulkan`, `cuda`, …); empty when none.
    #[serde(default)]
    pub accelerators: Vec<String>,
    pub preferred_engine: EngineKind,
    /// Threads the runtime uses for one model.
    pub threads: usize,
}

impl TargetProfile {
    /// Reads and checks a profile.
    pub fn load(path: impl AsRef<Path>) -> Result<TargetProfile, Error> {
        let path = path.as_ref();
        let err = |reason: String| Error::Target {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let profile: TargetProfile = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        if profile.threads == 0 || profile.threads > profile.cores {
            return Err(err(format!(
                "threads = {} must be between 1 and cores = {}",
                profile.threads, profile.cores
            )));
        }
        if !["x86_64", "aarch64", "arm", "riscv64"].contains(&profile.arch.as_str()) {
            return Err(err(format!(
                "arch {:?} is not one of x86_64, aarch64, arm, riscv64",
                profile.arch
            )));
        }
        Ok(profile)
    }

    /// Does this profile describe the machine we run on (by architecture)?
    pub fn matches_host(&self) -> bool {
        self.arch == std::env::consts::ARCH
    }
}
