//! `marnflow train`: streams the `samples` partitions of a date range into the model, checkpoints
//! as it goes (what `--resume` continues from), and registers the trained model as a new version.
//!
//! A training run is identified by its **run key**: the sha256 of the exact training partitions
//! (their content digests), the settings and the warm-start version. Training the same key again
//! returns the version already registered for it, so rerunning a finished or killed job gives
//! the same registered outcome instead of a second version.

use std::collections::{BTreeMap, VecDeque};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use burn::module::Module;
use chrono::NaiveDate;
use marnflow_model::device::DeviceSpec;
use marnflow_model::{checkpoint, metrics, BatchTensors, Marn, ResidentImages, TrainConfig, Trainer, Variant};
use marnflow_pipeline::features::{DICTIONARIES, DICTIONARY_NAMES};
use marnflow_pipeline::lake::Lake;
use marnflow_registry::{DataLineage, Manifest, Registry, TrainingSummary, VersionMetadata};
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::TrainSection;
use crate::data::{self, day_string, DataSpec, FileDigest, Slice, StreamConfig, Vocab};

/// The file of a version holding the training curves and data description.
pub const TRAINING_FILE: &str = "training.json";

/// The registry of a lake: `<lake>/models/`.
pub fn registry(lake: &Lake) -> Registry {
    Registry::new(lake.store().clone(), lake.path("models"))
}

/// What to train.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    pub model: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub variant: Variant,
    pub settings: TrainSection,
    pub warm_start: Option<String>,
    pub resume: bool,
    /// Rows of a day left out (held-out evaluation slices).
    pub slices: BTreeMap<NaiveDate, Slice>,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
    /// Data-parallel: this process is one replica of the run, the others reached through this
    /// (`train --workers N`; see [`marnflow_model::distributed`]). `None`: one process.
    pub replicas: Option<Arc<dyn marnflow_model::Collective>>,
}

/// One point of the training curves (means over the steps since the previous point).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub step: u64,
    pub samples: u64,
    pub ctr_loss: f64,
    pub total_loss: f64,
    pub adversarial_loss: Option<f64>,
    pub importance_loss: Option<f64>,
    pub specific_loss: Option<f64>,
    pub lambda: f64,
    /// DDMA: share of (item, modality) pairs `D0` classifies right.
    #[serde(default)]
    pub importance_accuracy: Option<f64>,
    /// Adversarial variants: share `D1` classifies right (behind the GRL).
    #[serde(default)]
    pub modality_accuracy: Option<f64>,
    /// Adversarial variants: mean `w_m` per modality, in the order of the record's `modalities`.
    #[serde(default)]
    pub mean_weights: Option<Vec<f64>>,
    /// Adversarial variants: mean share of `‖rep‖` from the invariant part `c`.
    #[serde(default)]
    pub invariant_share: Option<f64>,
}

/// `training.json` of a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingRecord {
    pub run_key: String,
    pub variant: String,
    pub from: String,
    pub to: String,
    pub partitions: Vec<FileDigest>,
    pub spec: DataSpec,
    /// The `[train]` section of the run (records of earlier builds hold it flat).
    #[serde(deserialize_with = "crate::config::recorded_settings")]
    pub settings: TrainSection,
    pub warm_start: Option<String>,
    pub samples: u64,
    pub steps: u64,
    pub seconds: f64,
    pub samples_per_second: f64,
    /// The model's modalities, in model order (names the curve's `mean_weights`).
    #[serde(default)]
    pub modalities: Vec<String>,
    pub curve: Vec<CurvePoint>,
}

/// What a training run gives back.
#[derive(Debug, Clone, Serialize)]
pub struct TrainOutcome {
    pub model: String,
    pub version: u32,
    /// True when an identical run had already registered this version.
    pub reused: bool,
    pub samples: u64,
    pub steps: u64,
    pub seconds: f64,
    pub samples_per_second: f64,
    pub final_ctr_loss: Option<f64>,
    /// Seconds the trainer waited for the reader thread, and that share of the run: the pipeline
    /// is the bottleneck only when this share is large.
    pub waited_for_data_seconds: f64,
    pub data_wait_share: f64,
    /// Peak resident memory of the process (VmHWM), MiB; NaN where /proc is missing.
    pub peak_rss_mib: f64,
}

impl TrainOutcome {
    /// The outcome of a run that an identical earlier run already registered as `m`.
    fn reused(m: &Manifest) -> Self {
        let t = &m.metadata.training;
        Self {
            model: m.model.clone(),
            version: m.version,
            reused: true,
            samples: t.samples,
            steps: t.steps,
            seconds: t.seconds,
            samples_per_second: t.samples_per_second,
            final_ctr_loss: t.final_ctr_loss,
            waited_for_data_seconds: 0.0,
            data_wait_share: 0.0,
            peak_rss_mib: marnflow_model::device::peak_rss_mib(),
        }
    }
}

/// Where an unfinished run keeps its training state.
fn work_dir(model: &str, run_key: &str) -> String {
    format!("_work/train/{model}/{}", &run_key[..16])
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ResumeState {
    run_key: String,
    /// Epoch to continue in and batches of it already trained.
    epoch: u32,
    batches_done: u64,
    step: u64,
    samples: u64,
    seconds: f64,
    curve: Vec<CurvePoint>,
    weights: String,
    optimizer: String,
}

/// Accumulates step losses into curve points.
#[derive(Debug, Default)]
struct CurveAccumulator {
    n: u64,
    ctr: f64,
    total: f64,
    adversarial: (f64, u64),
    importance: (f64, u64),
    specific: (f64, u64),
    lambda: f64,
    importance_accuracy: (f64, u64),
    modality_accuracy: (f64, u64),
    invariant_share: (f64, u64),
    mean_weights: Vec<f64>,
    weight_steps: u64,
}

impl CurveAccumulator {
    fn add(&mut self, l: &marnflow_model::StepLosses) {
        self.n += 1;
        self.ctr += f64::from(l.ctr);
        self.total += f64::from(l.total);
        self.lambda = l.lambda;
        for (slot, v) in [
            (&mut self.adversarial, l.adversarial),
            (&mut self.importance, l.importance),
            (&mut self.specific, l.specific),
        ] {
            if let Some(v) = v {
                slot.0 += f64::from(v);
                slot.1 += 1;
            }
        }
        if let Some(d) = &l.diagnostics {
            for (slot, v) in [
                (&mut self.importance_accuracy, d.importance_accuracy),
                (&mut self.modality_accuracy, Some(d.modality_accuracy)),
                (&mut self.invariant_share, Some(d.invariant_share)),
            ] {
                if let Some(v) = v {
                    slot.0 += f64::from(v);
                    slot.1 += 1;
                }
            }
            if self.mean_weights.len() != d.mean_weights.len() {
                self.mean_weights = vec![0.0; d.mean_weights.len()];
                self.weight_steps = 0;
            }
            for (acc, w) in self.mean_weights.iter_mut().zip(&d.mean_weights) {
                *acc += f64::from(*w);
            }
            self.weight_steps += 1;
        }
    }

    fn take(&mut self, step: u64, samples: u64) -> Option<CurvePoint> {
        if self.n == 0 {
            return None;
        }
        let mean = |(s, n): (f64, u64)| (n > 0).then(|| s / n as f64);
        let p = CurvePoint {
            step,
            samples,
            ctr_loss: self.ctr / self.n as f64,
            total_loss: self.total / self.n as f64,
            adversarial_loss: mean(self.adversarial),
            importance_loss: mean(self.importance),
            specific_loss: mean(self.specific),
            lambda: self.lambda,
            importance_accuracy: mean(self.importance_accuracy),
            modality_accuracy: mean(self.modality_accuracy),
            mean_weights: (self.weight_steps > 0)
                .then(|| self.mean_weights.iter().map(|w| w / self.weight_steps as f64).collect()),
            invariant_share: mean(self.invariant_share),
        };
        *self = Self::default();
        Some(p)
    }
}

/// Loads a registered version's files, checking every checksum.
pub async fn load_version(lake: &Lake, spec: &str) -> Result<(Manifest, BTreeMap<String, Vec<u8>>)> {
    let registry = registry(lake);
    let (name, version) = registry.resolve(spec).await?;
    let (manifest, files) = registry.load(&name, version).await?;
    Ok((manifest, files))
}

/// The model of a registered version on `device`.
pub async fn load_model(
    lake: &Lake,
    spec: &str,
    device: &burn::tensor::Device,
) -> Result<(Manifest, Marn, BTreeMap<String, Vec<u8>>)> {
    let (manifest, files) = load_version(lake, spec).await?;
    let model = checkpoint::from_files(&files, device)
        .with_context(|| format!("loading {}@v{}", manifest.model, manifest.version))?;
    Ok((manifest, model, files))
}

/// A registered model ready to score one day or several: the model on its device, the
/// dictionaries, and each day's item side table read the way the model was trained.
pub struct Scorer {
    pub manifest: Manifest,
    pub model: Marn,
    pub record: Option<TrainingRecord>,
    pub vocab: Vocab,
    /// The item side table of every day, by the day's index in `days`.
    stores: std::collections::HashMap<u16, Arc<data::ItemStore>>,
    days: Vec<NaiveDate>,
}

impl std::fmt::Debug for Scorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scorer").field("model", &self.manifest.model).field("version", &self.manifest.version).finish()
    }
}

impl Scorer {
    /// Loads `spec` (NAME@ALIAS or NAME@vN) on `device` with the item tables of `days` (at least one).
    pub async fn open(lake: &Lake, spec: &str, days: &[NaiveDate], device: DeviceSpec) -> Result<Self> {
        let last = *days.last().ok_or_else(|| anyhow!("no day to score"))?;
        // Rows and batches number the days with a u16.
        anyhow::ensure!(days.len() <= usize::from(u16::MAX), "at most {} days can be scored at once", u16::MAX);
        let device = device.device()?;
        let (manifest, model, files) = load_model(lake, spec, &device).await?;
        let record = training_record(&files).with_context(|| format!("model {spec}"))?;
        let vocab = Vocab::load(lake).await?;
        let stat_columns = match &record {
            Some(r) => r.spec.stat_columns.clone(),
            None => DataSpec::discover(lake, &vocab, last).await?.stat_columns,
        };
        let data_spec = DataSpec { inputs: model.inputs().clone(), stat_columns };
        let mut stores = std::collections::HashMap::new();
        for (i, &day) in days.iter().enumerate() {
            stores.insert(i as u16, Arc::new(data::ItemStore::load(lake, day, &data_spec, &vocab, None).await?));
        }
        Ok(Self { manifest, model, record, vocab, stores, days: days.to_vec() })
    }

    /// The index of the last day and its item side table.
    pub fn last(&self) -> (u16, &data::ItemStore) {
        let day = (self.days.len() - 1) as u16;
        (day, &self.stores[&day])
    }

    /// Builds batches of rows of the scorer's days.
    pub fn builder(&self) -> data::BatchBuilder<'_> {
        data::BatchBuilder { inputs: self.model.inputs(), stores: &self.stores }
    }

    /// The rows of every day, in day order, ids mapped for this model.
    pub async fn rows(&self, lake: &Lake, slice: Slice) -> Result<Vec<data::Row>> {
        let mut rows = Vec::new();
        for (i, &day) in self.days.iter().enumerate() {
            rows.extend(data::read_day(lake, &self.vocab, self.model.inputs(), day, i as u16, slice).await?);
        }
        Ok(rows)
    }

    /// Click probabilities of `rows`, in batches.
    pub fn predict(&self, rows: &[data::Row]) -> Result<Vec<f32>> {
        let builder = self.builder();
        let mut scores = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(1024) {
            let refs: Vec<&data::Row> = chunk.iter().collect();
            scores.extend(self.model.predict(&builder.build(&refs, None)?)?);
        }
        Ok(scores)
    }
}

/// The training record of a version's files, when it has one.
pub fn training_record(files: &BTreeMap<String, Vec<u8>>) -> Result<Option<TrainingRecord>> {
    // A record that cannot be read is an error: read as "no record", evaluate would silently cut
    // deciles by item id and count every item as unseen.
    files
        .get(TRAINING_FILE)
        .map(|b| {
            serde_json::from_slice(b)
                .with_context(|| format!("{TRAINING_FILE} of this version cannot be read (written by another build?)"))
        })
        .transpose()
}

/// The model to train: built for `spec` on the settings' device and seed, with the lake's word
/// vectors, warm-started from `warm` when given (new ids get fresh rows).
pub(crate) async fn init_model(
    lake: &Lake,
    req: &TrainRequest,
    spec: &DataSpec,
    vocab: &Vocab,
    model_config: &marnflow_model::MarnConfig,
    warm: Option<&(String, u32)>,
) -> Result<Marn> {
    let settings = &req.settings;
    let device = settings.device.device()?;
    device.seed(settings.seed);
    let autodiff = device.clone().autodiff();
    let mut model = model_config.init(&spec.inputs, &autodiff)?;
    if spec.inputs.has_titles() {
        model = model.with_word_vectors(data::word_vector_table(lake, vocab, &spec.inputs).await?)?;
    }
    if let Some((name, version)) = &warm {
        let (_, old, _) = load_model(lake, &format!("{name}@v{version}"), &device).await?;
        if old.variant() != req.variant {
            bail!(
                "--warm-start {name}@v{version} is a {} model; this run trains {}",
                old.variant().as_str(),
                req.variant.as_str()
            );
        }
        model = checkpoint::grow_into(&old, model).with_context(|| format!("warm-starting from {name}@v{version}"))?;
        info!(from = %format!("{name}@v{version}"), "warm start: new ids get fresh embedding rows");
    }
    Ok(model)
}

/// A trainer and its progress: resumed from the last checkpoint of the run `run_key` when
/// `resume` is asked and one exists, else fresh.
async fn start_trainer(
    lake: &Lake,
    resume: bool,
    work: &str,
    run_key: &str,
    model: Marn,
    optimizer: TrainConfig,
) -> Result<(Trainer, ResumeState)> {
    let mut state = ResumeState {
        run_key: run_key.to_string(),
        epoch: 0,
        batches_done: 0,
        step: 0,
        samples: 0,
        seconds: 0.0,
        curve: Vec::new(),
        weights: String::new(),
        optimizer: String::new(),
    };
    let saved = read_state(lake, work).await;
    let trainer = match (resume, saved) {
        (true, Some(saved)) if saved.run_key == run_key => {
            let weights = lake.get(&format!("{work}/{}", saved.weights)).await?.to_vec();
            let opt = lake.get(&format!("{work}/{}", saved.optimizer)).await?.to_vec();
            info!(step = saved.step, epoch = saved.epoch, "resuming from the last checkpoint");
            let trainer = Trainer::restore(model, weights, opt, optimizer)?;
            state = saved;
            trainer
        }
        (resume, saved) => {
            if resume {
                info!("nothing to resume for this run: starting from the beginning");
            } else if saved.is_some() {
                warn!("an unfinished run with these settings exists: starting over (--resume continues it)");
            }
            Trainer::new(model, optimizer)?
        }
    };
    Ok((trainer, state))
}

/// Registers the trained `model` as a new version of `name`: its checkpoint, its training
/// record, the dictionaries scoring needs, and the typed metadata.
pub(crate) async fn register_version(
    lake: &Lake,
    registry: &Registry,
    name: &str,
    model: &Marn,
    record: &TrainingRecord,
    slices: Vec<(String, String)>,
    parent: Option<u32>,
) -> Result<Manifest> {
    let mut files = checkpoint::to_files(model)?;
    files.push((TRAINING_FILE.to_string(), serde_json::to_vec_pretty(record)?));
    for dictionary in DICTIONARY_NAMES {
        let rel = format!("{DICTIONARIES}/{dictionary}.parquet");
        if let Ok(bytes) = lake.get(&rel).await {
            files.push((format!("dictionary_{dictionary}.parquet"), bytes.to_vec()));
        }
    }
    let metadata = VersionMetadata {
        run_key: record.run_key.clone(),
        code_version: concat!("marnflow ", env!("CARGO_PKG_VERSION")).to_string(),
        variant: record.variant.clone(),
        config: serde_json::to_value(&record.settings)?,
        inputs: serde_json::to_value(&record.spec.inputs)?,
        warm_start: record.warm_start.clone(),
        data: DataLineage {
            from: record.from.clone(),
            to: record.to.clone(),
            partitions: record.partitions.clone(),
            slices,
        },
        training: TrainingSummary {
            samples: record.samples,
            steps: record.steps,
            seconds: record.seconds,
            samples_per_second: record.samples_per_second,
            final_ctr_loss: record.curve.last().map(|c| c.ctr_loss),
        },
        ..VersionMetadata::default()
    };
    Ok(registry.register(name, &files, parent, metadata).await?)
}

/// Trains and registers; see the module docs.
pub async fn train(lake: &Lake, req: &TrainRequest) -> Result<TrainOutcome> {
    marnflow_registry::validate_name("model", &req.model)?;
    if req.to < req.from {
        bail!(crate::config::ConfigError(vec![format!("--to {} is before --from {}", req.to, req.from)]));
    }
    let settings = &req.settings;
    let (rank, replicas) = req.replicas.as_ref().map_or((0, 1), |c| (c.rank(), c.size()));
    if settings.batch_size % replicas != 0 {
        bail!(crate::config::ConfigError(vec![format!(
            "train.batch_size {} is the global batch: it must be a multiple of the {replicas} replicas",
            settings.batch_size
        )]));
    }
    let days = data::days(req.from, req.to);
    let vocab = Arc::new(Vocab::load(lake).await?);
    let spec = Arc::new(DataSpec::discover(lake, &vocab, req.to).await?);
    let partitions = data::digest_days(lake, &days).await?;
    let registry = registry(lake);
    let warm = match &req.warm_start {
        Some(s) => Some(registry.resolve(s).await?),
        None => None,
    };
    let model_config = settings.model_config(req.variant);
    let slices: Vec<(String, String)> = req.slices.iter().map(|(d, s)| (day_string(*d), format!("{s:?}"))).collect();
    let run_key = run_key(req, &model_config, &spec, &partitions, &slices, warm.as_ref())?;
    let work = work_dir(&req.model, &run_key);

    // A run with this key already registered: the same outcome, no second version.
    if let Some(m) = registry.versions(&req.model).await?.into_iter().find(|m| m.metadata.run_key == run_key) {
        info!(model = %req.model, version = m.version, "this exact run is already registered");
        clear_work(lake, &work).await;
        return Ok(TrainOutcome::reused(&m));
    }

    let model = init_model(lake, req, &spec, &vocab, &model_config, warm.as_ref()).await?;
    let optimizer = settings.optimizer.clone();

    // Resume from the last checkpoint of this exact run, if asked and present.
    let (trainer, mut state) = start_trainer(lake, req.resume, &work, &run_key, model, optimizer).await?;
    // Every replica continues from rank 0's progress (here) and its weights and optimizer state
    // (at the first step): the replicas must skip the same batches, whatever each read.
    let mut trainer = match &req.replicas {
        Some(c) => {
            let mine = serde_json::to_vec(&state)?;
            state = serde_json::from_slice(&c.broadcast(mine)?)?;
            trainer.with_collective(Arc::clone(c))
        }
        None => trainer,
    };

    let rows: u64 = partitions.iter().map(|p| p.rows).sum();
    if rows == 0 {
        bail!("no samples in {} .. {}: nothing to train on", req.from, req.to);
    }
    let steps_per_epoch = rows.div_ceil(settings.batch_size as u64);
    let total_steps = (steps_per_epoch * u64::from(settings.epochs)).max(1);
    let images = resident_images(lake, settings, &days, &spec, &vocab, trainer.model()?).await?;
    let (rx, handle) = data::spawn_stream(
        lake.clone(),
        vocab.clone(),
        spec.clone(),
        StreamConfig {
            days: days.clone(),
            slices: req.slices.clone(),
            epochs: settings.epochs,
            batch_size: settings.batch_size / replicas,
            shuffle_buffer: settings.shuffle_buffer,
            prefetch: settings.prefetch_batches,
            seed: settings.seed,
            start_epoch: state.epoch,
            skip: state.batches_done,
            upload: if settings.upload_ahead {
                let model = trainer.model()?;
                Some(data::Upload {
                    inputs: model.inputs().clone(),
                    device: model.device(),
                    images: images.as_ref().map(|(t, _)| t.clone()),
                })
            } else {
                None
            },
            images: images.as_ref().map(|(_, index)| index.clone()),
            shard: (rank, replicas),
        },
    )?;
    let run = LoopRun {
        lake,
        work: &work,
        total_steps,
        checkpoint_every: settings.checkpoint_every,
        images: images.map(|(t, _)| t),
        rank,
        replicas: replicas as u64,
    };
    let stats = train_loop(&run, &rx, &mut trainer, &mut state, req.progress && rank == 0).await?;
    handle.join().map_err(|_| anyhow!("the batch reader thread panicked"))?;
    let final_ctr_loss = state.curve.last().map(|c| c.ctr_loss);
    let model = trainer.into_model().ok_or_else(|| anyhow!("the trainer lost its model"))?.valid();

    let record = TrainingRecord {
        run_key: run_key.clone(),
        variant: req.variant.as_str().to_string(),
        from: day_string(req.from),
        to: day_string(req.to),
        partitions: partitions.clone(),
        spec: (*spec).clone(),
        settings: settings.clone(),
        warm_start: warm.as_ref().map(|(n, v)| format!("{n}@v{v}")),
        samples: state.samples,
        steps: state.step,
        seconds: state.seconds,
        samples_per_second: stats.samples_per_second,
        modalities: model.modalities().iter().map(|m| format!("{m:?}").to_lowercase()).collect(),
        curve: state.curve.clone(),
    };
    let parent = warm.as_ref().filter(|(n, _)| *n == req.model).map(|(_, v)| *v);
    // Rank 0 writes the checkpoint and registers the version; the other replicas hold the same
    // model and report version 0.
    let version = if rank == 0 {
        let manifest = register_version(lake, &registry, &req.model, &model, &record, slices, parent).await?;
        clear_work(lake, &work).await;
        manifest.version
    } else {
        0
    };
    Ok(TrainOutcome {
        model: req.model.clone(),
        version,
        reused: false,
        samples: state.samples,
        steps: state.step,
        seconds: state.seconds,
        samples_per_second: stats.samples_per_second,
        final_ctr_loss,
        waited_for_data_seconds: stats.waited,
        data_wait_share: stats.waited / stats.run_seconds.max(1e-9),
        peak_rss_mib: marnflow_model::device::peak_rss_mib(),
    })
}

/// The run key: the sha256 of everything that determines the trained weights (the model, its
/// config and inputs, the exact partitions, slices, optimizer, seed, shuffle and warm start).
fn run_key(
    req: &TrainRequest,
    model_config: &marnflow_model::MarnConfig,
    spec: &DataSpec,
    partitions: &[FileDigest],
    slices: &[(String, String)],
    warm: Option<&(String, u32)>,
) -> Result<String> {
    let settings = &req.settings;
    let mut key_material = serde_json::json!({
        "model": req.model,
        "model_config": model_config,
        "inputs": spec.inputs,
        "partitions": partitions,
        "slices": slices,
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "learning_rate": settings.optimizer.learning_rate,
        "initial_accumulator": settings.optimizer.initial_accumulator,
        "importance_initial_accumulator": settings.optimizer.importance_initial_accumulator,
        "seed": settings.seed,
        "shuffle_buffer": settings.shuffle_buffer,
        "warm_start": warm,
    });
    // Added only when set, so the keys of runs before it was a setting stay what they were.
    if model_config.precision.is_f32() {
        if let Some(m) = key_material["model_config"].as_object_mut() {
            m.remove("precision");
        }
    }
    if settings.optimizer.epsilon != TrainConfig::default().epsilon {
        key_material["epsilon"] = settings.optimizer.epsilon.into();
    }
    // Data-parallel runs combine gradients in another order: a key of their own (a resume needs
    // the same number of replicas).
    if let Some(c) = req.replicas.as_ref().filter(|c| c.size() > 1) {
        key_material["replicas"] = c.size().into();
    }
    Ok(marnflow_registry::sha256_hex(&serde_json::to_vec(&key_material)?))
}

/// With `train.images_on_device` and a model that reads images: the images of `days`, each
/// content version once, moved to the model's device, and where each version's row is.
async fn resident_images(
    lake: &Lake,
    settings: &TrainSection,
    days: &[NaiveDate],
    spec: &DataSpec,
    vocab: &Vocab,
    model: &marnflow_model::Marn,
) -> Result<Option<(ResidentImages, Arc<data::ImageIndex>)>> {
    if !settings.images_on_device || !model.inputs().has_images() {
        return Ok(None);
    }
    let started = Instant::now();
    let table = data::ImageTable::load(lake, days, spec, vocab).await?;
    let rows = table.len();
    let images = ResidentImages::new(table.values, &table.present, model.inputs().image_dim, &model.device())?;
    info!(
        rows,
        mib = images.bytes() as f64 / (1 << 20) as f64,
        seconds = started.elapsed().as_secs_f64(),
        "the run's images are on the device"
    );
    Ok(Some((images, table.index)))
}

/// Where the training loop checkpoints, and how far it goes.
struct LoopRun<'a> {
    lake: &'a Lake,
    work: &'a str,
    total_steps: u64,
    checkpoint_every: u64,
    /// The image table on the model's device, where batches give their images as its rows.
    images: Option<ResidentImages>,
    /// Data-parallel: this replica's rank (only rank 0 checkpoints) and the number of replicas.
    rank: usize,
    replicas: u64,
}

/// What the training loop measured.
struct LoopStats {
    /// Samples per second of this run (a resumed run counts its own part only).
    samples_per_second: f64,
    /// Seconds this run took, and those of it spent waiting for batches.
    run_seconds: f64,
    waited: f64,
}

/// Trains on every batch of `rx`: steps, the loss curve, progress, checkpoints every
/// `checkpoint_every` steps. `state` ends at the last step, its curve complete.
async fn train_loop(
    run: &LoopRun<'_>,
    rx: &std::sync::mpsc::Receiver<data::Msg>,
    trainer: &mut Trainer,
    state: &mut ResumeState,
    show_progress: bool,
) -> Result<LoopStats> {
    let total_steps = run.total_steps;
    let curve_every = (total_steps / 200).max(1);
    let mut progress = Progress::new(show_progress, total_steps, state.step);
    let started = Instant::now();
    let (seconds_before, samples_before) = (state.seconds, state.samples);
    let mut acc = CurveAccumulator::default();
    let mut waited = std::time::Duration::ZERO;
    loop {
        let wait = Instant::now();
        let Ok(msg) = rx.recv() else { break };
        waited += wait.elapsed();
        let (epoch, index, batch, tensors) = match msg {
            data::Msg::Failed(e) => bail!("reading the training data: {e}"),
            data::Msg::Skipped => continue,
            // Data-parallel: this replica has no shard of this step but takes part in it.
            data::Msg::Empty { epoch, index } => (epoch, index, None, None),
            data::Msg::Batch { epoch, index, batch, tensors } => (epoch, index, Some(batch), tensors),
        };
        let progress_at = state.step as f64 / total_steps as f64;
        let scored = match &batch {
            None => {
                trainer.step_without_batch()?;
                None
            }
            Some(b) => {
                let x = match (tensors, &run.images) {
                    (Some(x), _) => Some(*x),
                    (None, Some(images)) => {
                        let model = trainer.model()?;
                        Some(BatchTensors::with_images(b, model.inputs(), &model.device(), Some(images))?)
                    }
                    (None, None) => None,
                };
                let (losses, scores) = trainer.step_scored_with(b, x, progress_at)?;
                if !losses.total.is_finite() {
                    bail!("the loss became {} at step {}: lower train.learning_rate", losses.total, state.step);
                }
                Some((losses, scores))
            }
        };
        state.step += 1;
        // Every replica's samples of this step (its own alone when there is one replica).
        state.samples += trainer.global_batch_len() as u64;
        state.epoch = epoch;
        // The global batches done: every replica's shards of them.
        state.batches_done = (index / run.replicas + 1) * run.replicas;
        if let (Some((losses, scores)), Some(b)) = (scored, &batch) {
            acc.add(&losses);
            if state.step % curve_every == 0 {
                state.curve.extend(acc.take(state.step, state.samples));
            }
            let rate = (state.samples - samples_before) as f64 / started.elapsed().as_secs_f64().max(1e-9);
            progress.update(&scores, &b.samples().label, state.step, total_steps, rate, losses.ctr);
        }
        if state.step % run.checkpoint_every == 0 && run.rank == 0 {
            state.seconds = seconds_before + started.elapsed().as_secs_f64();
            // Resuming skips the batches done (an epoch fully done is skipped whole).
            let mut saved = state.clone();
            write_state(run.lake, run.work, trainer, &mut saved).await?;
        }
    }
    progress.finish();
    state.curve.extend(acc.take(state.step, state.samples));
    state.seconds = seconds_before + started.elapsed().as_secs_f64();
    let run_seconds = started.elapsed().as_secs_f64();
    let samples_per_second = (state.samples - samples_before) as f64 / run_seconds.max(1e-9);
    info!(
        samples = state.samples,
        steps = state.step,
        seconds = state.seconds,
        samples_per_s = samples_per_second as u64,
        waited_for_data_s = waited.as_secs_f64(),
        "training done"
    );
    Ok(LoopStats { samples_per_second, run_seconds, waited: waited.as_secs_f64() })
}

/// Training progress: a bar on a terminal, else a log line every 10 s, both with the running
/// AUC of the last 20,000 scored samples.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    recent: VecDeque<(f32, f32)>,
    last_log: Instant,
}

impl Progress {
    fn new(show: bool, total_steps: u64, step: u64) -> Self {
        let bar = (show && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total_steps);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {msg} [{elapsed_precise}] {wide_bar} {pos}/{len} steps",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_position(step);
            bar
        });
        Self { bar, recent: VecDeque::new(), last_log: Instant::now() }
    }

    fn running_auc(&self) -> Option<f64> {
        let (s, l): (Vec<f32>, Vec<f32>) = self.recent.iter().copied().unzip();
        metrics::auc(&s, &l).ok().flatten()
    }

    fn update(&mut self, scores: &[f32], labels: &[f32], step: u64, total_steps: u64, rate: f64, loss: f32) {
        self.recent.extend(scores.iter().copied().zip(labels.iter().copied()));
        while self.recent.len() > 20_000 {
            self.recent.pop_front();
        }
        if let Some(bar) = &self.bar {
            if step % 10 == 0 {
                let auc = self.running_auc().map_or("-".into(), |a| format!("{a:.4}"));
                bar.set_message(format!("{rate:.0} samples/s  loss {loss:.4}  auc {auc}"));
            }
            bar.set_position(step);
        } else if self.last_log.elapsed().as_secs() >= 10 {
            let running_auc = self.running_auc();
            info!(step, total_steps, samples_per_s = rate as u64, loss, running_auc, "training");
            self.last_log = Instant::now();
        }
    }

    fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

async fn read_state(lake: &Lake, work: &str) -> Option<ResumeState> {
    let bytes = lake.get(&format!("{work}/state.json")).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Weights and optimizer first (named by step), then `state.json` pointing at them; the
/// previous step's files are removed after.
async fn write_state(lake: &Lake, work: &str, trainer: &Trainer, state: &mut ResumeState) -> Result<()> {
    let previous = read_state(lake, work).await.map(|p| (p.weights, p.optimizer));
    save_trainer(lake, work, trainer, state.step, previous, |weights, optimizer| {
        state.weights = weights.to_string();
        state.optimizer = optimizer.to_string();
        Ok(serde_json::to_vec_pretty(&*state)?)
    })
    .await?;
    Ok(())
}

/// A trainer's checkpoint under `dir`: its weights and optimizer state, named by `step`, then
/// `state.json`, the bytes `state` makes given those two names (it points at them); then the
/// files of the checkpoint before (`previous`) that are not the new ones are removed. Returns the
/// two names. A stop at any point leaves `state.json` pointing at files that exist.
pub(crate) async fn save_trainer(
    lake: &Lake,
    dir: &str,
    trainer: &Trainer,
    step: u64,
    previous: Option<(String, String)>,
    state: impl FnOnce(&str, &str) -> Result<Vec<u8>>,
) -> Result<(String, String)> {
    let (weights, optimizer) = trainer.state_bytes()?;
    let names = (format!("weights-{step:010}.bpk"), format!("optimizer-{step:010}.bpk"));
    lake.put_atomic(&format!("{dir}/{}", names.0), weights).await?;
    lake.put_atomic(&format!("{dir}/{}", names.1), optimizer).await?;
    lake.put_atomic(&format!("{dir}/state.json"), state(&names.0, &names.1)?).await?;
    if let Some((w, o)) = previous {
        for f in [w, o] {
            if f != names.0 && f != names.1 {
                let _ = lake.store().delete(&lake.path(&format!("{dir}/{f}"))).await;
            }
        }
    }
    Ok(names)
}

async fn clear_work(lake: &Lake, work: &str) {
    if let Ok(files) = lake.list(work).await {
        for f in files {
            let _ = lake.store().delete(&f.location).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_training_record_that_cannot_be_read_is_an_error_not_a_missing_record() {
        let mut files = BTreeMap::new();
        assert!(training_record(&files).unwrap().is_none(), "a version without a record has none");
        files.insert(TRAINING_FILE.to_string(), br#"{"run_key": "k", "renamed_key": 1}"#.to_vec());
        let err = format!("{:#}", training_record(&files).unwrap_err());
        assert!(err.contains(TRAINING_FILE), "{err}");
    }
}
