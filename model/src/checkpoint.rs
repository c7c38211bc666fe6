//! Checkpoints: the weights as SafeTensors (`weights.safetensors`, so PyTorch users can open them
//! with `safetensors.torch.load_file`) and the resolved config plus data description
//! (`model.json`), enough to rebuild the model. A checkpoint is a set of named byte buffers, so it
//! can live in a directory ([`save`], [`load`]) or in the registry on object storage
//! ([`to_files`], [`from_files`]).
//!
//! [`grow_into`] carries trained weights into a model built for larger vocabularies (a warm start
//! after the dictionaries grew): every row the old model had keeps its trained value, new rows keep
//! their fresh initialisation.
//!
//! ```no_run
//! # use marnflow_model::{checkpoint, MarnConfig, ModelInputs};
//! # use burn::tensor::Device;
//! let device = Device::flex();
//! let model = MarnConfig::default().init(&ModelInputs::ids_only(10, 2), &device).unwrap();
//! checkpoint::save(&model, "ckpt".as_ref()).unwrap();
//! let again = checkpoint::load("ckpt".as_ref(), &device).unwrap();
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::store::{bridge, ModuleSnapshot, SafetensorsStore};
use burn::tensor::{Device, TensorData};
use serde::{Deserialize, Serialize};

use crate::batch::ModelInputs;
use crate::error::{Error, Result};
use crate::modules::marn::{Marn, MarnConfig, Variant};
use crate::modules::modality_embedding::Modality;

/// File name of the weights.
pub const WEIGHTS_FILE: &str = "weights.safetensors";
/// File name of the config.
pub const CONFIG_FILE: &str = "model.json";
/// Version of the checkpoint format written now.
/// - 3: `youtube_net` and `din` are fed every modality, as MARN is (Table 2's baselines, §4.3);
///   a format-2 checkpoint of either saw ids only and is refused. The other variants load.
/// - 2: the variants of §4.5 (BaseModel read out at the GRU's last state, the image-only and
///   summed-projection ablations), per-item modality masks (an item without an image or a title
///   leaves that modality out of MAF and the max-pool), and `D1` per Eq. 7. A format-1
///   checkpoint of any variant but `lr`/`fm` was built or scores differently and is refused.
/// - 1: the image layer standardises each image embedding before its projection.
/// - 0 (no `format` key): it projected the raw embedding.
pub const FORMAT: u32 = 3;

/// What `model.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointMeta {
    /// The checkpoint format ([`FORMAT`] when written by this build; 0 when absent).
    #[serde(default)]
    pub format: u32,
    /// The model config.
    pub config: MarnConfig,
    /// The data description the model was built for.
    pub inputs: ModelInputs,
}

fn err(path: &str, message: impl std::fmt::Display) -> Error {
    Error::Checkpoint { path: path.to_string(), message: message.to_string() }
}

/// The checkpoint of `model` as named files: `model.json` and `weights.safetensors`.
pub fn to_files(model: &Marn) -> Result<Vec<(String, Vec<u8>)>> {
    let meta = CheckpointMeta { format: FORMAT, config: model.config().clone(), inputs: model.inputs().clone() };
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| err(CONFIG_FILE, e))?;
    let mut store = SafetensorsStore::from_bytes(None).metadata("format", "marnflow-marn");
    model.valid().save_into(&mut store).map_err(|e| err(WEIGHTS_FILE, e))?;
    let weights = store.get_bytes().map_err(|e| err(WEIGHTS_FILE, e))?;
    Ok(vec![(CONFIG_FILE.to_string(), json), (WEIGHTS_FILE.to_string(), weights)])
}

/// The config of a checkpoint given as named files; a format this build cannot score the same
/// way is refused.
pub fn meta_from_files(files: &BTreeMap<String, Vec<u8>>) -> Result<CheckpointMeta> {
    let json = files.get(CONFIG_FILE).ok_or_else(|| err(CONFIG_FILE, "missing"))?;
    let meta: CheckpointMeta = serde_json::from_slice(json).map_err(|e| err(CONFIG_FILE, e))?;
    if meta.format > FORMAT {
        return Err(err(CONFIG_FILE, format!("format {} is newer than this build's {FORMAT}", meta.format)));
    }
    if meta.format < 1 && meta.config.modalities(&meta.inputs).contains(&Modality::Image) {
        return Err(err(
            CONFIG_FILE,
            "format 0: this model was trained on raw image embeddings, and this build standardises \
             them before the image projection, so it would score wrongly; train it again",
        ));
    }
    if meta.format < 2 && !matches!(meta.config.variant, Variant::Lr | Variant::Fm) {
        return Err(err(
            CONFIG_FILE,
            format!(
                "format {}: variant {} was built before the paper's ablations (section 4.5) and \
                 per-item modality masks, and this build's {} differs; train it again",
                meta.format, meta.config.variant, meta.config.variant
            ),
        ));
    }
    if meta.format < 3 && matches!(meta.config.variant, Variant::YoutubeNet | Variant::Din) {
        return Err(err(
            CONFIG_FILE,
            format!(
                "format {}: variant {} saw item ids only, and this build feeds it every modality \
                 (the paper's Table 2 setup); train it again",
                meta.format, meta.config.variant
            ),
        ));
    }
    Ok(meta)
}

/// Rebuild a model from named files on `device` (use `device.autodiff()` to continue training).
pub fn from_files(files: &BTreeMap<String, Vec<u8>>, device: &Device) -> Result<Marn> {
    let meta = meta_from_files(files)?;
    let mut model = meta.config.init(&meta.inputs, device)?;
    let weights = files.get(WEIGHTS_FILE).ok_or_else(|| err(WEIGHTS_FILE, "missing"))?;
    let mut store = SafetensorsStore::from_bytes(Some(weights.clone()));
    let result = model.load_from(&mut store).map_err(|e| err(WEIGHTS_FILE, e))?;
    if !result.errors.is_empty() || !result.missing.is_empty() || !result.unused.is_empty() {
        return Err(err(
            WEIGHTS_FILE,
            format!(
                "does not fit the model of {CONFIG_FILE}: {} errors ({:?}), missing {:?}, not in the model {:?}",
                result.errors.len(),
                result.errors.first(),
                result.missing.iter().map(|(name, _)| name).take(5).collect::<Vec<_>>(),
                result.unused.iter().take(5).collect::<Vec<_>>()
            ),
        ));
    }
    Ok(model)
}

/// Write `model` to the directory `dir` (created if needed; existing files are replaced).
pub fn save(model: &Marn, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| err(&dir.display().to_string(), e))?;
    for (name, bytes) in to_files(model)? {
        let path = dir.join(&name);
        std::fs::write(&path, bytes).map_err(|e| err(&path.display().to_string(), e))?;
    }
    Ok(())
}

/// Read the config of a checkpoint directory.
pub fn load_meta(dir: &Path) -> Result<CheckpointMeta> {
    meta_from_files(&read_dir_files(dir)?)
}

fn read_dir_files(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut files = BTreeMap::new();
    for name in [CONFIG_FILE, WEIGHTS_FILE] {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(|e| err(&path.display().to_string(), e))?;
        files.insert(name.to_string(), bytes);
    }
    Ok(files)
}

/// Rebuild the model of the checkpoint directory `dir` on `device`.
pub fn load(dir: &Path, device: &Device) -> Result<Marn> {
    from_files(&read_dir_files(dir)?, device).map_err(|e| match e {
        Error::Checkpoint { path, message } => {
            Error::Checkpoint { path: dir.join(path).display().to_string(), message }
        }
        other => other,
    })
}

/// Carry the weights of `old` into `new`, a model of the same config built for vocabularies at
/// least as large (dictionaries only grow): a parameter of equal shape is copied; one whose first
/// dimension grew gets the old rows on top and keeps its fresh rows below. Any other difference is
/// an error naming the parameter.
pub fn grow_into(old: &Marn, mut new: Marn) -> Result<Marn> {
    if old.config() != new.config() {
        return Err(err("warm start", "the old and new models have different configs"));
    }
    let old_tensors: BTreeMap<String, burn::store::burn_pack::Tensor> =
        old.valid().collect(None, None, false).into_iter().map(|t| (t.name.clone(), t)).collect();
    let mut merged = Vec::new();
    for fresh in new.collect(None, None, false) {
        let name = fresh.name.clone();
        let Some(trained) = old_tensors.get(&name) else {
            return Err(err("warm start", format!("parameter {name} is new in this model")));
        };
        let trained = bridge::to_data(trained).map_err(|e| err(&name, e))?;
        let fresh_data = bridge::to_data(&fresh).map_err(|e| err(&name, e))?;
        let data = grow_rows(&name, trained, fresh_data)?;
        merged.push(bridge::from_data(data, name, None));
    }
    let result = new.apply(merged, None, None, false);
    if !result.errors.is_empty() {
        return Err(err("warm start", format!("{:?}", result.errors.first())));
    }
    Ok(new)
}

fn grow_rows(name: &str, trained: TensorData, fresh: TensorData) -> Result<TensorData> {
    let (old_shape, new_shape) = (trained.shape().to_vec(), fresh.shape().to_vec());
    if old_shape == new_shape {
        return Ok(trained);
    }
    let same_rest = old_shape.len() == new_shape.len() && old_shape.iter().skip(1).eq(new_shape.iter().skip(1));
    if !same_rest || old_shape.first() > new_shape.first() {
        return Err(err(name, format!("shape {old_shape:?} cannot grow into {new_shape:?}")));
    }
    let old_values = trained.try_to_vec::<f32>().map_err(|e| err(name, format!("{e:?}")))?;
    let mut values = fresh.try_to_vec::<f32>().map_err(|e| err(name, format!("{e:?}")))?;
    values[..old_values.len()].copy_from_slice(&old_values);
    Ok(TensorData::new(values, new_shape))
}
