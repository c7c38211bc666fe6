//! Configuration: defaults, then the TOML file, then `MARNFLOW_*` environment variables, then
//! flags. One validation pass reports every problem at once, each naming its key.

use std::path::Path;

use anyhow::Context;
use marnflow_model::device::DeviceSpec;
use marnflow_model::{MarnConfig, TrainConfig, Variant};
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

/// The `[train]` section: the data stream, evaluation and `run`, with the model
/// (`[train.model]`, the model crate's own [`MarnConfig`]) and the optimizer
/// (`[train.optimizer]`, its [`TrainConfig`]) nested inside, so each default lives in one place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    pub epochs: u32,
    pub batch_size: usize,
    pub seed: u64,
    pub device: DeviceSpec,
    pub shuffle_buffer: usize,
    pub prefetch_batches: usize,
    /// Each batch is moved to the model's device on the reader thread, ahead of its step.
    pub upload_ahead: bool,
    /// The images of the run's days are kept on the model's device, each version once, and a
    /// batch sends row indices instead of its items' images.
    pub images_on_device: bool,
    pub checkpoint_every: u64,
    pub window_days: u32,
    pub holdout_share: f64,
    pub promote_metric: PromoteMetric,
    pub recall_users: usize,
    /// `[train.model]`: the variant and everything that shapes it.
    pub model: MarnConfig,
    /// `[train.optimizer]`: AdaGrad.
    pub optimizer: TrainConfig,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            epochs: 1,
            batch_size: 256,
            seed: 42,
            device: DeviceSpec::Cpu,
            shuffle_buffer: 65536,
            prefetch_batches: 8,
            upload_ahead: true,
            images_on_device: false,
            checkpoint_every: 200,
            window_days: 7,
            holdout_share: 0.1,
            promote_metric: PromoteMetric::Auc,
            recall_users: 200,
            model: MarnConfig::default(),
            optimizer: TrainConfig::default(),
        }
    }
}

/// The metric `run --promote-if-better` compares (higher is better except `logloss`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromoteMetric {
    #[default]
    Auc,
    UserAuc,
    Logloss,
}

impl PromoteMetric {
    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            PromoteMetric::Auc => "auc",
            PromoteMetric::UserAuc => "user_auc",
            PromoteMetric::Logloss => "logloss",
        }
    }
}

impl std::fmt::Display for PromoteMetric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TrainSection {
    /// Every problem, naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        let ranges: [(&str, u64, u64, u64); 6] = [
            ("epochs", self.epochs.into(), 1, 1000),
            ("batch_size", self.batch_size as u64, 1, 1 << 20),
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
        if !(self.holdout_share > 0.0 && self.holdout_share < 1.0) {
            p.push(format!("train.holdout_share = {} is out of range: allowed between 0 and 1", self.holdout_share));
        }
        if let Err(e) = self.device.device() {
            p.push(format!("train.device = \"{}\": {e}", self.device));
        }
        p.extend(self.model.problems().into_iter().map(|e| format!("train.model.{e}")));
        p.extend(self.optimizer.problems().into_iter().map(|e| format!("train.optimizer.{e}")));
        p
    }

    /// The model config these settings describe, for `variant`.
    pub fn model_config(&self, variant: Variant) -> MarnConfig {
        MarnConfig { variant, ..self.model.clone() }
    }
}

/// Keys of `[train]` that builds before the nested `[train.model]` and `[train.optimizer]`
/// kept flat, and where each lives now. Old `training.json` records are read through it, and a
/// config file or variable using an old name is told the new one.
const MOVED_TRAIN_KEYS: [(&str, &[&str]); 14] = [
    ("variant", &["model", "variant"]),
    ("representation_dim", &["model", "representation_dim"]),
    ("gru_dim", &["model", "gru_dim"]),
    ("attention_dim", &["model", "attention_dim"]),
    ("head_layers", &["model", "head_layers"]),
    ("lambda0", &["model", "lambda0"]),
    ("grl_weight", &["model", "grl_weight"]),
    ("attention_context", &["model", "attention_context"]),
    ("modality_dim", &["model", "embedding", "modality_dim"]),
    ("title_filters", &["model", "embedding", "title_filters"]),
    ("fine_tune_word_vectors", &["model", "embedding", "fine_tune_word_vectors"]),
    ("learning_rate", &["optimizer", "learning_rate"]),
    ("initial_accumulator", &["optimizer", "initial_accumulator"]),
    ("importance_initial_accumulator", &["optimizer", "importance_initial_accumulator"]),
];

/// Where a flat `[train]` key of earlier builds lives now (`train.model.variant`), if it moved.
fn moved_train_key(key: &str) -> Option<String> {
    MOVED_TRAIN_KEYS.iter().find(|(old, _)| *old == key).map(|(_, new)| format!("train.{}", new.join(".")))
}

/// Reads a recorded `[train]` section (`training.json`'s `settings`, through
/// `#[serde(deserialize_with)]`) in the current layout or the flat one of earlier builds, whose
/// moved keys are put where they live now first.
pub fn recorded_settings<'de, D: serde::Deserializer<'de>>(d: D) -> Result<TrainSection, D::Error> {
    let mut value = serde_json::Value::deserialize(d)?;
    if let Some(map) = value.as_object_mut() {
        for (old, path) in MOVED_TRAIN_KEYS {
            let (Some(v), Some((leaf, parents))) = (map.remove(old), path.split_last()) else { continue };
            let mut at = &mut *map;
            for key in parents {
                let slot = at.entry(key.to_string()).or_insert_with(|| serde_json::json!({}));
                match slot.as_object_mut() {
                    Some(next) => at = next,
                    None => return Err(serde::de::Error::custom(format!("settings.{key} is not a table"))),
                }
            }
            at.insert(leaf.to_string(), v);
        }
    }
    TrainSection::deserialize(&value).map_err(serde::de::Error::custom)
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
const ENV_NOT_KEYS: [&str; 3] = ["MARNFLOW_CONFIG", "MARNFLOW_LOG_FORMAT", marnflow_model::device::MALLOC_VARIABLE];

/// Prefix of the variables the test suite reads (`MARNFLOW_TEST_S3_ENDPOINT`, set by
/// `ops/s3-server.sh`): never config keys, so a shell that exported them still runs marnflow.
const ENV_TEST_PREFIX: &str = "MARNFLOW_TEST_";

impl Config {
    /// Defaults, overlaid by `text` (a TOML document, `origin` names it in messages), then by
    /// the `MARNFLOW_*` variables of `env`. Every problem is reported at once: unknown keys,
    /// values of the wrong type or outside an enum, and what [`Config::validate`] finds in the rest.
    pub fn layered(
        text: Option<(&str, &str)>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let defaults = Value::try_from(Config::default()).map_err(|e| ConfigError(vec![e.to_string()]))?;
        let mut merged = defaults.clone();
        // Every key given, with the name a message should use for it.
        let mut given: Vec<(Vec<String>, String)> = Vec::new();
        if let Some((origin, text)) = text {
            match text.parse::<toml::Table>() {
                Ok(file) => {
                    let mut layer = Layer { origin, root: &defaults, problems: &mut problems, given: &mut given };
                    layer.overlay(&mut merged, &defaults, &Value::Table(file), &[]);
                }
                Err(e) => return Err(ConfigError(vec![format!("{origin}: not valid TOML: {e}")])),
            }
        }
        let mut env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with("MARNFLOW_")).collect();
        env.sort();
        for (name, raw) in env {
            if ENV_NOT_KEYS.contains(&name.as_str()) || name.starts_with(ENV_TEST_PREFIX) {
                continue;
            }
            let Some(path) =
                name.strip_prefix("MARNFLOW_").and_then(|rest| env_path(&defaults, &rest.to_ascii_lowercase()))
            else {
                problems.push(unknown_env(&name));
                continue;
            };
            match (
                value_at(&defaults, &path).map(|expected| parse_like(expected, &raw)),
                value_at_mut(&mut merged, &path),
            ) {
                (Some(Ok(v)), Some(slot)) => {
                    *slot = v;
                    given.push((path, format!("{name} = {raw:?}")));
                }
                (Some(Err(kind)), _) => problems.push(format!("{name} = {raw:?} is not {kind}")),
                _ => problems.push(unknown_env(&name)),
            }
        }
        // Each given key on its own over the defaults: what serde rejects (an unknown variant, a
        // negative width) is named by its key, and falls back to its default so the other keys
        // are still checked.
        for (path, label) in given {
            let mut probe = defaults.clone();
            if let (Some(slot), Some(v)) = (value_at_mut(&mut probe, &path), value_at(&merged, &path)) {
                *slot = v.clone();
            }
            if let Err(e) = probe.try_into::<Config>() {
                problems.push(format!("{label}: {}", e.message().trim()));
                if let (Some(slot), Some(d)) = (value_at_mut(&mut merged, &path), value_at(&defaults, &path)) {
                    *slot = d.clone();
                }
            }
        }
        let cfg: Config = merged.try_into().map_err(|e: toml::de::Error| {
            problems.push(e.message().trim().to_string());
            ConfigError(std::mem::take(&mut problems))
        })?;
        if problems.is_empty() {
            return Ok(cfg);
        }
        if let Err(ConfigError(more)) = cfg.validate() {
            problems.extend(more);
        }
        Err(ConfigError(problems))
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

/// One layer (a config file) being copied over the merged configuration.
struct Layer<'a> {
    origin: &'a str,
    /// Every default, to tell where a misplaced key belongs.
    root: &'a Value,
    problems: &'a mut Vec<String>,
    given: &'a mut Vec<(Vec<String>, String)>,
}

impl Layer<'_> {
    /// Copies `file` over `merged`, checking every key against `defaults`.
    fn overlay(&mut self, merged: &mut Value, defaults: &Value, file: &Value, path: &[String]) {
        let (Some(m), Some(d), Some(f)) = (merged.as_table_mut(), defaults.as_table(), file.as_table()) else {
            return;
        };
        for (key, value) in f {
            let mut at = path.to_vec();
            at.push(key.clone());
            let full = at.join(".");
            let Some(expected) = d.get(key) else {
                let moved = (path.len() == 1 && path[0] == "train").then(|| moved_train_key(key)).flatten();
                // A key of an enclosing table written after a nested header (`epochs` after
                // `[train.model]`) lands in the nested table.
                let enclosing = (0..path.len()).rev().find_map(|i| {
                    let table = value_at(self.root, &path[..i])?;
                    table.get(key.as_str()).filter(|v| !v.is_table()).map(|_| path[..i].join("."))
                });
                self.problems.push(match (moved, enclosing) {
                    (Some(new), _) => format!("{}: {full} is now {new}", self.origin),
                    (None, Some(table)) => format!(
                        "{}: unknown key {full}: {key} belongs to [{table}]; a key after a [{}] header belongs to \
                         that table, so write it under [{table}]",
                        self.origin,
                        path.join(".")
                    ),
                    (None, None) => {
                        let known: Vec<&str> = d.keys().map(|s| s.as_str()).collect();
                        format!("{}: unknown key {full} (known here: {})", self.origin, known.join(", "))
                    }
                });
                continue;
            };
            match (expected, value) {
                (Value::Table(_), Value::Table(_)) => {
                    if let Some(slot) = m.get_mut(key) {
                        self.overlay(slot, expected, value, &at);
                    }
                }
                (Value::Float(_), Value::Integer(i)) => {
                    m.insert(key.clone(), Value::Float(*i as f64));
                    self.given.push((at, format!("{}: {full}", self.origin)));
                }
                (e, v) if e.same_type(v) => {
                    m.insert(key.clone(), v.clone());
                    self.given.push((at, format!("{}: {full} = {v}", self.origin)));
                }
                (e, v) => self.problems.push(format!(
                    "{}: {full} must be {}, found {}",
                    self.origin,
                    e.type_str(),
                    v.type_str()
                )),
            }
        }
    }
}

/// The message for a `MARNFLOW_*` variable that names no setting, with the new name of a moved one.
fn unknown_env(name: &str) -> String {
    let moved = name.strip_prefix("MARNFLOW_TRAIN_").and_then(|k| moved_train_key(&k.to_ascii_lowercase()));
    match moved {
        Some(new) => {
            format!("{name}: the setting is now {new} (MARNFLOW_{})", new.replace('.', "_").to_ascii_uppercase())
        }
        None => format!("{name} is not a marnflow setting (see configs/default.toml)"),
    }
}

/// The path of a setting from a variable's name after `MARNFLOW_`, lowercased:
/// `generate_users` → `generate.users`, `train_model_embedding_modality_dim` →
/// `train.model.embedding.modality_dim`, `lake` → `lake`. Keys hold underscores, so every split
/// is tried.
fn env_path(table: &Value, rest: &str) -> Option<Vec<String>> {
    for (key, value) in table.as_table()? {
        if key == rest && !value.is_table() {
            return Some(vec![key.clone()]);
        }
        if let (Some(tail), true) =
            (rest.strip_prefix(key.as_str()).and_then(|t| t.strip_prefix('_')), value.is_table())
        {
            if let Some(mut path) = env_path(value, tail) {
                path.insert(0, key.clone());
                return Some(path);
            }
        }
    }
    None
}

fn value_at<'v>(v: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(v, |at, key| at.get(key.as_str()))
}

fn value_at_mut<'v>(v: &'v mut Value, path: &[String]) -> Option<&'v mut Value> {
    path.iter().try_fold(v, |at, key| at.get_mut(key.as_str()))
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
        fn check(defaults: &Value, file: Option<&Value>, path: &str) {
            for (k, v) in defaults.as_table().unwrap() {
                let full = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                let given = file.and_then(|f| f.get(k));
                assert!(given.is_some(), "configs/default.toml lacks {full}");
                if v.is_table() {
                    check(v, given, &full);
                }
            }
        }
        let text = include_str!("../../../configs/default.toml");
        let file = Value::Table(text.parse().unwrap());
        check(&Value::try_from(Config::default()).unwrap(), Some(&file), "");
        // Every key and every section is preceded by a comment line.
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim();
            if (t.contains('=') || t.starts_with("[train.")) && !t.starts_with('#') {
                assert!(i > 0 && lines[i - 1].trim().starts_with('#'), "uncommented key: {t}");
            }
        }
    }

    #[test]
    fn nested_settings_come_from_the_file_and_from_variables() {
        let file = "[train.model]\nvariant = \"ids\"\n[train.model.embedding]\ntitle_filters = 4\n";
        let env = vec![
            ("MARNFLOW_TRAIN_MODEL_EMBEDDING_MODALITY_DIM".to_string(), "16".to_string()),
            ("MARNFLOW_TRAIN_OPTIMIZER_LEARNING_RATE".to_string(), "0.1".to_string()),
            ("MARNFLOW_TRAIN_DEVICE".to_string(), "cpu".to_string()),
            ("MARNFLOW_FEATURES_RAW_FORMAT".to_string(), "csv".to_string()),
        ];
        let cfg = Config::layered(Some(("f.toml", file)), env).unwrap();
        assert_eq!(cfg.train.model.variant, Variant::Ids);
        assert_eq!(cfg.train.model.embedding.title_filters, 4);
        assert_eq!(cfg.train.model.embedding.modality_dim, 16);
        assert_eq!(cfg.train.optimizer.learning_rate, 0.1);
        assert_eq!(cfg.train.device, DeviceSpec::Cpu);
        assert_eq!(cfg.features.raw_format, marnflow_pipeline::features::RawFormat::Csv);
        // The raw format of configs of earlier builds, "" for "by extension", still reads.
        let old = Config::layered(Some(("old.toml", "[features]\nraw_format = \"\"\n")), no_env()).unwrap();
        assert_eq!(old.features.raw_format, marnflow_pipeline::features::RawFormat::Auto);
    }

    #[test]
    fn enum_values_moved_keys_and_ranges_are_reported_together() {
        let file = "[train]\ndevice = \"tpu\"\npromote_metric = \"f1\"\nvariant = \"ids\"\n\
                    [train.model]\nvariant = \"marnx\"\n[features]\nraw_format = \"xml\"\n";
        let env = vec![
            ("MARNFLOW_TRAIN_EPOCHS".to_string(), "0".to_string()),
            ("MARNFLOW_TRAIN_LEARNING_RATE".to_string(), "0.1".to_string()),
        ];
        let err = Config::layered(Some(("f.toml", file)), env).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.0.len(), 7, "{text}");
        for needle in [
            "f.toml: train.device = \"tpu\": device: unknown device \"tpu\"",
            "f.toml: train.promote_metric = \"f1\"",
            "f.toml: train.variant is now train.model.variant",
            "f.toml: train.model.variant = \"marnx\"",
            "f.toml: features.raw_format = \"xml\": use auto, parquet, csv or json",
            "train.epochs = 0 is out of range",
            "MARNFLOW_TRAIN_LEARNING_RATE: the setting is now train.optimizer.learning_rate \
             (MARNFLOW_TRAIN_OPTIMIZER_LEARNING_RATE)",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in {text}");
        }
        // A run setting written after a nested header is told where it belongs.
        let file = "[train.model.embedding]\nmodality_dim = 16\nepochs = 2\n";
        let text = Config::layered(Some(("g.toml", file)), no_env()).unwrap_err().to_string();
        assert!(text.contains("g.toml: unknown key train.model.embedding.epochs: epochs belongs to [train]"), "{text}");
    }

    #[test]
    fn records_of_the_flat_layout_read_into_the_nested_one() {
        #[derive(Deserialize)]
        struct Record {
            #[serde(deserialize_with = "recorded_settings")]
            settings: TrainSection,
        }
        let flat = serde_json::json!({ "settings": {
            "variant": "maf_ddma", "epochs": 2, "batch_size": 128, "learning_rate": 0.05,
            "initial_accumulator": 1e-5, "representation_dim": 32, "modality_dim": 24, "gru_dim": 16,
            "attention_dim": 8, "head_layers": [64, 32], "title_filters": 8, "fine_tune_word_vectors": true,
            "lambda0": 0.05, "grl_weight": 1.0, "seed": 3, "device": "cpu", "shuffle_buffer": 65536,
            "prefetch_batches": 8, "checkpoint_every": 200, "window_days": 7, "holdout_share": 0.1,
            "promote_metric": "user_auc", "recall_users": 100
        }});
        let s = serde_json::from_value::<Record>(flat).unwrap().settings;
        assert_eq!(s.model.variant, Variant::MafDdma);
        assert_eq!((s.model.representation_dim, s.model.embedding.modality_dim), (32, 24));
        assert_eq!(s.optimizer.initial_accumulator, 1e-5);
        assert_eq!(s.optimizer.importance_initial_accumulator, TrainConfig::default().importance_initial_accumulator);
        assert_eq!((s.epochs, s.seed, s.promote_metric), (2, 3, PromoteMetric::UserAuc));
        // The current layout round-trips; a broken record is an error, not a default.
        let now = serde_json::json!({ "settings": serde_json::to_value(&s).unwrap() });
        assert_eq!(serde_json::from_value::<Record>(now).unwrap().settings, s);
        let broken = serde_json::json!({ "settings": { "epochs": "two" } });
        assert!(serde_json::from_value::<Record>(broken).is_err());
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
