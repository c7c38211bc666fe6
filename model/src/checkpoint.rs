//! Checkpoints: a directory holding the weights (`weights.bpk`, burn's burnpack format) and
//! the resolved config plus data description (`model.json`), enough to rebuild the model.
//!
//! ```no_run
//! # use marnflow_model::{checkpoint, MarnConfig, ModelInputs};
//! # use burn::tensor::Device;
//! let device = Device::flex();
//! let model = MarnConfig::default().init(&ModelInputs::ids_only(10, 2), &device).unwrap();
//! checkpoint::save(&model, "ckpt".as_ref()).unwrap();
//! let again = checkpoint::load("ckpt".as_ref(), &device).unwrap();
//! ```

use std::path::Path;

use burn::module::Module;
use burn::store::ModuleRecord;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::batch::ModelInputs;
use crate::error::{Error, Result};
use crate::modules::marn::{Marn, MarnConfig};

/// File name of the weights inside a checkpoint directory.
pub const WEIGHTS_FILE: &str = "weights.bpk";
/// File name of the config inside a checkpoint directory.
pub const CONFIG_FILE: &str = "model.json";

/// What `model.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointMeta {
    /// The model config.
    pub config: MarnConfig,
    /// The data description the model was built for.
    pub inputs: ModelInputs,
}

fn err(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::Checkpoint { path: path.display().to_string(), message: message.to_string() }
}

/// Write `model` to the directory `dir` (created if needed; existing files are replaced).
pub fn save(model: &Marn, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    let meta = CheckpointMeta { config: model.config().clone(), inputs: model.inputs().clone() };
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| err(dir, e))?;
    let config_path = dir.join(CONFIG_FILE);
    std::fs::write(&config_path, json).map_err(|e| err(&config_path, e))?;
    let weights_path = dir.join(WEIGHTS_FILE);
    model.valid().into_record().save(&weights_path).map_err(|e| err(&weights_path, e))?;
    Ok(())
}

/// Read the config of a checkpoint directory.
pub fn load_meta(dir: &Path) -> Result<CheckpointMeta> {
    let config_path = dir.join(CONFIG_FILE);
    let bytes = std::fs::read(&config_path).map_err(|e| err(&config_path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| err(&config_path, e))
}

/// Rebuild the model of the checkpoint directory `dir` on `device` (use `device.autodiff()` to
/// continue training).
pub fn load(dir: &Path, device: &Device) -> Result<Marn> {
    let meta = load_meta(dir)?;
    let model = meta.config.init(&meta.inputs, device)?;
    let weights_path = dir.join(WEIGHTS_FILE);
    let record = ModuleRecord::load(&weights_path).map_err(|e| err(&weights_path, e))?;
    model.try_load_record(record).map_err(|e| err(&weights_path, e))
}
