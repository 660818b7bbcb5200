//! Model cards: the `card.toml` a data scientist writes for `outpost model
//! pack`, and the completeness check the registry enforces on every version
//! (ARCHITECTURE §3, §9). `examples/card.toml` documents the schema.

use std::collections::BTreeMap;
use std::fmt;

use outpost_runtime::EngineKind;
use outpost_runtime::manifest::{ModelCard, TargetConstraints, Training};
use serde::Deserialize;

/// Risk classes a card may declare. "high" needs extra approvals in the
/// registry (risk and legal, plus an impact assessment).
pub const RISK_CLASSES: [&str; 3] = ["low", "medium", "high"];

/// `card.toml` as written. Unknown keys are refused so that a misspelt
/// field is reported rather than silently read as missing.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardFile {
    /// Package name; `--name` supplies it when the card has none.
    pub name: Option<String>,
    /// Semantic version; `--version` supplies it when the card has none.
    pub version: Option<String>,
    pub purpose: Option<String>,
    pub owner: Option<String>,
    pub intended_use: Option<String>,
    #[serde(default)]
    pub data_sources: Vec<String>,
    pub training: Option<TrainingFile>,
    /// Claimed metrics, `metric = value`.
    #[serde(default)]
    pub evaluation: BTreeMap<String, f64>,
    pub limitations: Option<String>,
    #[serde(default)]
    pub failure_modes: Vec<String>,
    pub risk_class: Option<String>,
    /// Where the package may be installed.
    pub target: Option<TargetFile>,
    /// Annotations of model inputs, by input name.
    #[serde(default)]
    pub inputs: BTreeMap<String, InputAnnotation>,
    /// Annotations of model outputs, by output name.
    #[serde(default)]
    pub outputs: BTreeMap<String, OutputAnnotation>,
}

/// `[training]`: what it takes to reproduce the model.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingFile {
    pub dataset_version: Option<String>,
    pub seed: Option<u64>,
    pub environment: Option<String>,
}

/// `[target]`: device constraints, copied into the manifest and into the
/// release-signed target.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetFile {
    #[serde(default)]
    pub arch: Vec<String>,
    pub min_memory_mb: Option<u64>,
    pub engine: Option<EngineKind>,
}

/// `[inputs.NAME]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputAnnotation {
    /// One name per feature (the width of a row of this input).
    #[serde(default)]
    pub feature_names: Vec<String>,
    /// Inclusive valid range `[min, max]` of every feature of this input.
    pub range: Option<[f64; 2]>,
    /// Allowed values of a categorical input.
    #[serde(default)]
    pub vocabulary: Vec<String>,
}

/// `[outputs.NAME]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputAnnotation {
    /// Class names, one per output column; a labelled output is a classifier.
    #[serde(default)]
    pub labels: Vec<String>,
}

impl CardFile {
    /// Parses `card.toml` text.
    pub fn parse(text: &str) -> Result<CardFile, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The card as the manifest stores it.
    pub fn model_card(&self) -> ModelCard {
        ModelCard {
            purpose: self.purpose.clone(),
            owner: self.owner.clone(),
            intended_use: self.intended_use.clone(),
            data_sources: self.data_sources.clone(),
            training: self.training.as_ref().map(|t| Training {
                dataset_version: t.dataset_version.clone(),
                seed: t.seed,
                environment: t.environment.clone(),
            }),
            evaluation: self.evaluation.clone(),
            limitations: self.limitations.clone(),
            failure_modes: self.failure_modes.clone(),
            risk_class: self.risk_class.clone(),
        }
    }

    /// The manifest's `[target]`.
    pub fn target_constraints(&self) -> TargetConstraints {
        self.target
            .as_ref()
            .map(|t| TargetConstraints {
                arch: t.arch.clone(),
                min_memory_mb: t.min_memory_mb,
                engine: t.engine,
            })
            .unwrap_or_default()
    }
}

/// A card the registry refuses: every missing field and every invalid one,
/// so the author fixes them in one go.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CardError {
    /// Required fields that are absent or blank, in card order.
    pub missing: Vec<&'static str>,
    /// Fields present with a value the registry does not accept.
    pub invalid: Vec<String>,
}

impl fmt::Display for CardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("model card is incomplete or invalid")?;
        if !self.missing.is_empty() {
            write!(f, "; missing: {}", self.missing.join(", "))?;
        }
        if !self.invalid.is_empty() {
            write!(f, "; invalid: {}", self.invalid.join("; "))?;
        }
        Ok(())
    }
}

fn blank(s: &Option<String>) -> bool {
    s.as_deref().is_none_or(|s| s.trim().is_empty())
}

/// The required fields a card lacks (absent, blank, or empty lists), named
/// as in `card.toml`. Empty when the card is complete.
pub fn missing_fields(card: &ModelCard) -> Vec<&'static str> {
    let training = card.training.clone().unwrap_or_default();
    let checks = [
        ("purpose", blank(&card.purpose)),
        ("owner", blank(&card.owner)),
        ("intended_use", blank(&card.intended_use)),
        (
            "data_sources",
            card.data_sources.iter().all(|s| s.trim().is_empty()),
        ),
        ("training.dataset_version", blank(&training.dataset_version)),
        ("training.seed", training.seed.is_none()),
        ("training.environment", blank(&training.environment)),
        ("evaluation", card.evaluation.is_empty()),
        ("limitations", blank(&card.limitations)),
        (
            "failure_modes",
            card.failure_modes.iter().all(|s| s.trim().is_empty()),
        ),
        ("risk_class", blank(&card.risk_class)),
    ];
    checks
        .into_iter()
        .filter(|(_, missing)| *missing)
        .map(|(name, _)| name)
        .collect()
}

/// The registry's card check: every required field present, the risk class
/// one of [`RISK_CLASSES`], every claimed metric a finite number. `outpost
/// model pack` runs it too, so a package that packs is one the registry
/// accepts.
pub fn check_card(card: &ModelCard) -> Result<(), CardError> {
    let missing = missing_fields(card);
    let mut invalid = vec![];
    if let Some(risk) = card.risk_class.as_deref().filter(|r| !r.trim().is_empty())
        && !RISK_CLASSES.contains(&risk)
    {
        invalid.push(format!(
            "risk_class {risk:?} is not one of {}",
            RISK_CLASSES.join(", ")
        ));
    }
    for (metric, value) in &card.evaluation {
        if !value.is_finite() {
            invalid.push(format!(
                "evaluation.{metric} = {value} is not a finite number"
            ));
        }
    }
    if missing.is_empty() && invalid.is_empty() {
        Ok(())
    } else {
        Err(CardError { missing, invalid })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_empty_card_lists_every_required_field() {
        let err = check_card(&ModelCard::default()).unwrap_err();
        assert_eq!(err.missing.len(), 11, "{err}");
        assert!(err.to_string().contains("training.seed"), "{err}");
    }

    #[test]
    fn blank_strings_count_as_missing_and_bad_values_are_named() {
        let card = CardFile::parse(
            r#"
purpose = "  "
owner = "ml-team"
intended_use = "tests"
data_sources = ["a"]
limitations = "none known"
failure_modes = ["b"]
risk_class = "extreme"
[training]
dataset_version = "v1"
seed = 1
environment = "py3.12"
[evaluation]
accuracy = nan
"#,
        )
        .unwrap();
        let err = check_card(&card.model_card()).unwrap_err();
        assert_eq!(err.missing, vec!["purpose"]);
        assert_eq!(err.invalid.len(), 2, "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = CardFile::parse("purpse = \"typo\"\n").unwrap_err();
        assert!(err.contains("purpse"), "{err}");
    }
}
