//! Configuration: defaults, then the TOML file, then `MARNFLOW_*` environment variables, then
//! flags. One validation pass reports every problem at once, each naming its key.

use std::path::Path;

use anyhow::Context;
use marnflow_pipeline::features::FeaturesConfig;
use marnflow_pipeline::world::WorldConfig;
use serde::{Deserialize, Serialize};
use toml::Value;

/// The resolved configuration of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Lake root URI.
    pub lake: String,
    /// The synthetic world of `marnflow generate`.
    pub generate: WorldConfig,
    /// The feature job (`marnflow features`).
    pub features: FeaturesConfig,
    /// Training, evaluation and the daily run.
    pub train: TrainSection,
}

/// The `[train]` section: the model, the optimizer, the data stream, evaluation and `run`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    pub variant: String,
    pub epochs: u32,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub initial_accumulator: f64,
    pub importance_initial_accumulator: f64,
    pub representation_dim: usize,
    pub modality_dim: usize,
    pub gru_dim: usize,
    pub attention_dim: usize,
    pub head_layers: Vec<usize>,
    pub title_filters: usize,
    pub fine_tune_word_vectors: bool,
    pub lambda0: f64,
    pub grl_weight: f64,
    pub attention_context: marnflow_model::AttentionContext,
    pub seed: u64,
    pub device: String,
    pub shuffle_buffer: usize,
    pub prefetch_batches: usize,
    pub checkpoint_every: u64,
    pub window_days: u32,
    pub holdout_share: f64,
    pub promote_metric: String,
    pub recall_users: usize,
}

impl Default for TrainSection {
    fn default() -> Self {
        let optimizer = marnflow_model::TrainConfig::default();
        Self {
            variant: "marn".into(),
            epochs: 1,
            batch_size: 256,
            // One source of defaults: the optimizer's own.
            learning_rate: optimizer.learning_rate,
            initial_accumulator: optimizer.initial_accumulator,
            importance_initial_accumulator: optimizer.importance_initial_accumulator,
            representation_dim: 256,
            modality_dim: 128,
            gru_dim: 128,
            attention_dim: 64,
            head_layers: vec![128, 64],
            title_filters: 32,
            fine_tune_word_vectors: true,
            lambda0: 0.05,
            grl_weight: 1.0,
            attention_context: marnflow_model::AttentionContext::Own,
            seed: 42,
            device: "cpu".into(),
            shuffle_buffer: 65536,
            prefetch_batches: 8,
            checkpoint_every: 200,
            window_days: 7,
            holdout_share: 0.1,
            promote_metric: "auc".into(),
            recall_users: 200,
        }
    }
}

/// Metrics `run --promote-if-better` can compare (higher is better except `logloss`).
pub const PROMOTE_METRICS: [&str; 3] = ["auc", "user_auc", "logloss"];

impl TrainSection {
    /// Every problem, naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.variant.parse::<marnflow_model::Variant>().is_err() {
            let names: Vec<&str> = marnflow_model::Variant::ALL.iter().map(|v| v.as_str()).collect();
            p.push(format!("train.variant = {:?}: use one of {}", self.variant, names.join(", ")));
        }
        let ranges: [(&str, u64, u64, u64); 11] = [
            ("epochs", self.epochs.into(), 1, 1000),
            ("batch_size", self.batch_size as u64, 1, 1 << 20),
            ("representation_dim", self.representation_dim as u64, 1, 8192),
            ("modality_dim", self.modality_dim as u64, 1, 8192),
            ("gru_dim", self.gru_dim as u64, 1, 8192),
            ("attention_dim", self.attention_dim as u64, 1, 8192),
            ("title_filters", self.title_filters as u64, 1, 4096),
            ("shuffle_buffer", self.shuffle_buffer as u64, 1, 1 << 26),
            ("prefetch_batches", self.prefetch_batches as u64, 1, 1024),
            ("checkpoint_every", self.checkpoint_every, 1, u64::MAX),
            ("window_days", self.window_days.into(), 1, 3650),
        ];
        for (key, v, lo, hi) in ranges {
            if !(lo..=hi).contains(&v) {
                p.push(format!("train.{key} = {v} is out of range: allowed {lo} to {hi}"));
            }
        }
        if self.head_layers.iter().any(|&w| w == 0 || w > 8192) {
            p.push(format!("train.head_layers = {:?}: every width must be 1 to 8192", self.head_layers));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            p.push(format!("train.learning_rate = {} must be a number > 0", self.learning_rate));
        }
        if !(self.initial_accumulator.is_finite() && self.initial_accumulator >= 0.0) {
            p.push(format!("train.initial_accumulator = {} must be a number >= 0", self.initial_accumulator));
        }
        if !(self.importance_initial_accumulator.is_finite() && self.importance_initial_accumulator >= 0.0) {
            p.push(format!(
                "train.importance_initial_accumulator = {} must be a number >= 0",
                self.importance_initial_accumulator
            ));
        }
        if !(self.lambda0.is_finite() && self.lambda0 >= 0.0) {
            p.push(format!("train.lambda0 = {} must be a number >= 0", self.lambda0));
        }
        if !(self.grl_weight.is_finite() && self.grl_weight >= 0.0) {
            p.push(format!("train.grl_weight = {} must be a number >= 0", self.grl_weight));
        }
        if !(self.holdout_share > 0.0 && self.holdout_share < 1.0) {
            p.push(format!("train.holdout_share = {} is out of range: allowed between 0 and 1", self.holdout_share));
        }
        if !PROMOTE_METRICS.contains(&self.promote_metric.as_str()) {
            p.push(format!(
                "train.promote_metric = {:?}: use one of {}",
                self.promote_metric,
                PROMOTE_METRICS.join(", ")
            ));
        }
        if let Err(e) = marnflow_model::device::parse_device(&self.device) {
            p.push(format!("train.device = {:?}: {e}", self.device));
        }
        p
    }

    /// The model config these settings describe, for `variant`.
    pub fn model_config(&self, variant: marnflow_model::Variant) -> marnflow_model::MarnConfig {
        let mut c = marnflow_model::MarnConfig {
            variant,
            representation_dim: self.representation_dim,
            gru_dim: self.gru_dim,
            attention_dim: self.attention_dim,
            head_layers: self.head_layers.clone(),
            lambda0: self.lambda0,
            grl_weight: self.grl_weight,
            attention_context: self.attention_context,
            ..Default::default()
        };
        c.embedding.modality_dim = self.modality_dim;
        c.embedding.title_filters = self.title_filters;
        c.embedding.fine_tune_word_vectors = self.fine_tune_word_vectors;
        c
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            lake: "./lake".into(),
            generate: WorldConfig::default(),
            features: FeaturesConfig::default(),
            train: TrainSection::default(),
        }
    }
}

/// A model variant by name; an unknown name is a configuration error.
pub fn parse_variant(name: &str) -> anyhow::Result<marnflow_model::Variant> {
    name.parse().map_err(|e| anyhow::anyhow!(ConfigError(vec![format!("train.variant: {e}")])))
}

/// Configuration problems, all of them (exit code 2).
#[derive(Debug)]
pub struct ConfigError(pub Vec<String>);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid configuration ({} problem{}):", self.0.len(), if self.0.len() == 1 { "" } else { "s" })?;
        for p in &self.0 {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Environment variables that are not config keys but belong to marnflow.
const ENV_NOT_KEYS: [&str; 2] = ["MARNFLOW_CONFIG", "MARNFLOW_LOG_FORMAT"];

/// Prefix of the variables the test suite reads (`MARNFLOW_TEST_S3_ENDPOINT`, set by
/// `ops/s3-server.sh`): never config keys, so a shell that exported them still runs marnflow.
const ENV_TEST_PREFIX: &str = "MARNFLOW_TEST_";

impl Config {
    /// Defaults, overlaid by `text` (a TOML document, `origin` names it in messages), then by
    /// the `MARNFLOW_*` variables of `env`.
    pub fn layered(
        text: Option<(&str, &str)>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let defaults = Value::try_from(Config::default()).map_err(|e| ConfigError(vec![e.to_string()]))?;
        let mut merged = defaults.clone();
        if let Some((origin, text)) = text {
            match text.parse::<toml::Table>() {
                Ok(file) => overlay(&mut merged, &defaults, &Value::Table(file), "", origin, &mut problems),
                Err(e) => return Err(ConfigError(vec![format!("{origin}: not valid TOML: {e}")])),
            }
        }
        let mut env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with("MARNFLOW_")).collect();
        env.sort();
        for (name, raw) in env {
            if ENV_NOT_KEYS.contains(&name.as_str()) || name.starts_with(ENV_TEST_PREFIX) {
                continue;
            }
            match env_key(&defaults, &name) {
                Some((section, key)) => {
                    let expected = match &section {
                        Some(s) => &defaults[s.as_str()][key.as_str()],
                        None => &defaults[key.as_str()],
                    };
                    match parse_like(expected, &raw) {
                        Ok(v) => {
                            let slot = match &section {
                                Some(s) => merged.get_mut(s.as_str()).and_then(|t| t.get_mut(key.as_str())),
                                None => merged.get_mut(key.as_str()),
                            };
                            if let Some(slot) = slot {
                                *slot = v;
                            }
                        }
                        Err(kind) => problems.push(format!("{name} = {raw:?} is not {kind}")),
                    }
                }
                None => problems.push(format!("{name} is not a marnflow setting (see configs/default.toml)")),
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError(problems));
        }
        merged.try_into().map_err(|e: toml::de::Error| ConfigError(vec![e.to_string()]))
    }

    /// Reads the file (if any) and the process environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let text = match file {
            Some(p) => Some((
                p.display().to_string(),
                std::fs::read_to_string(p).with_context(|| format!("cannot read config file {}", p.display()))?,
            )),
            None => None,
        };
        Ok(Self::layered(text.as_ref().map(|(o, t)| (o.as_str(), t.as_str())), std::env::vars())?)
    }

    /// Every problem of the resolved configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.lake.trim().is_empty() {
            problems.push("lake is empty: give a path or URI, e.g. ./lake or s3://bucket/prefix".into());
        }
        problems.extend(self.generate.validate("generate"));
        problems.extend(self.features.validate());
        problems.extend(self.train.validate());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(problems))
        }
    }
}

/// Copies `file` over `merged`, checking every key against `defaults`.
fn overlay(merged: &mut Value, defaults: &Value, file: &Value, path: &str, origin: &str, problems: &mut Vec<String>) {
    let (Some(m), Some(d), Some(f)) = (merged.as_table_mut(), defaults.as_table(), file.as_table()) else {
        return;
    };
    for (key, value) in f {
        let full = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
        let Some(expected) = d.get(key) else {
            let mut known: Vec<&String> = d.keys().collect();
            known.sort();
            let known: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
            problems.push(format!("{origin}: unknown key {full} (known here: {})", known.join(", ")));
            continue;
        };
        match (expected, value) {
            (Value::Table(_), Value::Table(_)) => {
                if let Some(slot) = m.get_mut(key) {
                    overlay(slot, expected, value, &full, origin, problems);
                }
            }
            (Value::Float(_), Value::Integer(i)) => {
                m.insert(key.clone(), Value::Float(*i as f64));
            }
            (e, v) if e.same_type(v) => {
                m.insert(key.clone(), v.clone());
            }
            (e, v) => problems.push(format!("{origin}: {full} must be {}, found {}", e.type_str(), v.type_str())),
        }
    }
}

/// Maps `MARNFLOW_GENERATE_USERS` to (`generate`, `users`) and `MARNFLOW_LAKE` to (None, `lake`).
fn env_key(defaults: &Value, name: &str) -> Option<(Option<String>, String)> {
    let rest = name.strip_prefix("MARNFLOW_")?.to_ascii_lowercase();
    let table = defaults.as_table()?;
    for (key, value) in table {
        match value {
            Value::Table(section) => {
                if let Some(k) = rest.strip_prefix(&format!("{key}_")) {
                    if section.contains_key(k) {
                        return Some((Some(key.clone()), k.to_string()));
                    }
                }
            }
            _ if *key == rest => return Some((None, key.clone())),
            _ => {}
        }
    }
    None
}

fn parse_like(expected: &Value, raw: &str) -> Result<Value, &'static str> {
    match expected {
        Value::Integer(_) => raw.trim().parse().map(Value::Integer).map_err(|_| "an integer"),
        Value::Float(_) => raw.trim().parse().map(Value::Float).map_err(|_| "a number"),
        Value::Boolean(_) => raw.trim().parse().map(Value::Boolean).map_err(|_| "true or false"),
        Value::Array(_) => raw
            .split(',')
            .map(|x| x.trim().parse::<i64>().map(Value::Integer))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array)
            .map_err(|_| "a comma-separated list of integers"),
        _ => Ok(Value::String(raw.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn default_toml_is_the_defaults() {
        let text = include_str!("../../../configs/default.toml");
        let cfg = Config::layered(Some(("configs/default.toml", text)), no_env()).unwrap();
        assert_eq!(cfg, Config::default());
        cfg.validate().unwrap();
    }

    #[test]
    fn every_default_key_is_documented() {
        let text = include_str!("../../../configs/default.toml");
        let file: toml::Table = text.parse().unwrap();
        let defaults = Value::try_from(Config::default()).unwrap();
        for (k, v) in defaults.as_table().unwrap() {
            match v {
                Value::Table(section) => {
                    for key in section.keys() {
                        assert!(file[k].get(key).is_some(), "configs/default.toml lacks {k}.{key}");
                    }
                }
                _ => assert!(file.contains_key(k), "configs/default.toml lacks {k}"),
            }
        }
        // Every key line is preceded by a comment line.
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim();
            if t.contains('=') && !t.starts_with('#') {
                assert!(i > 0 && lines[i - 1].trim().starts_with('#'), "uncommented key: {t}");
            }
        }
    }

    #[test]
    fn precedence_is_file_then_env() {
        let file = "lake = \"/from/file\"\n[generate]\nusers = 10\nitems = 20\n";
        let env = vec![
            ("MARNFLOW_GENERATE_USERS".to_string(), "30".to_string()),
            ("HOME".to_string(), "/root".to_string()),
            ("MARNFLOW_TEST_S3_ENDPOINT".to_string(), "http://127.0.0.1:9000".to_string()),
        ];
        let cfg = Config::layered(Some(("f.toml", file)), env).unwrap();
        assert_eq!(cfg.lake, "/from/file");
        assert_eq!(cfg.generate.users, 30);
        assert_eq!(cfg.generate.items, 20);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let file = "lakes = 1\n[generate]\nusers = \"many\"\nitemz = 3\n";
        let env = vec![
            ("MARNFLOW_GENERATE_DAYS".to_string(), "seven".to_string()),
            ("MARNFLOW_NOPE".to_string(), "1".to_string()),
        ];
        let err = Config::layered(Some(("f.toml", file)), env).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.0.len(), 5, "{text}");
        for needle in [
            "unknown key lakes",
            "generate.users must be integer",
            "unknown key generate.itemz",
            "MARNFLOW_GENERATE_DAYS",
            "MARNFLOW_NOPE",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in {text}");
        }
    }

    #[test]
    fn validation_names_keys_and_ranges() {
        let mut cfg = Config::default();
        cfg.generate.users = 0;
        cfg.generate.image_dim = 0;
        cfg.generate.new_item_share = 2.0;
        cfg.generate.start_date = "yesterday".into();
        let err = cfg.validate().unwrap_err();
        assert_eq!(err.0.len(), 4, "{err}");
        let text = err.to_string();
        assert!(text.contains("generate.users = 0 is out of range: allowed 1"), "{text}");
        assert!(text.contains("generate.image_dim = 0"), "{text}");
        assert!(text.contains("generate.new_item_share = 2"), "{text}");
        assert!(text.contains("generate.start_date"), "{text}");
    }
}
