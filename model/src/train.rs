//! One training step: forward, loss, backward and an AdaGrad update, on one [`Batch`].
//!
//! The data loop (reading Parquet, epochs, progress) belongs to the caller; it passes the
//! training progress `p ∈ [0, 1]` that drives the auxiliary-loss weight λ.
//!
//! ```no_run
//! use marnflow_model::{device, MarnConfig, ModelInputs, TrainConfig, Trainer};
//! # fn batches() -> Vec<marnflow_model::Batch> { vec![] }
//! let device = device::parse_device("cpu").unwrap().autodiff();
//! let inputs = ModelInputs::ids_only(1000, 20);
//! let model = MarnConfig::default().init(&inputs, &device).unwrap();
//! let mut trainer = Trainer::new(model, TrainConfig::default()).unwrap();
//! let all = batches();
//! for (i, batch) in all.iter().enumerate() {
//!     let losses = trainer.step(batch, i as f64 / all.len() as f64).unwrap();
//!     println!("{losses:?}");
//! }
//! let model = trainer.into_model();
//! ```

use std::sync::{Arc, Mutex};

use burn::module::{Module, ParamGroup};
use burn::optim::{GradientsParams, LearningRate, ModuleOptimizer, Optimizer, RecordState, StateSink, StateSource};
use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::batch::Batch;
use crate::batch_tensors::{BatchTensors, Table, TableRows};
use crate::distributed::{Collective, RowTable};
use crate::error::{Error, Result};
use crate::modules::marn::Marn;

/// Optimizer settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// AdaGrad learning rate (paper: 0.1; 0.05 here, where MARN diverged on MovieLens at 0.1
    /// with the default accumulator).
    pub learning_rate: f64,
    /// AdaGrad epsilon.
    pub epsilon: f32,
    /// Initial value of AdaGrad's squared-gradient accumulator. TensorFlow's default, 0.1,
    /// which the paper's training used, divides the first updates of an embedding row (whose
    /// gradient is ~1e-3, its share of a mean loss) by √0.1: the models then learned almost
    /// nothing in an epoch (the README's optimizer table), so the default is 1e-5. With 0 the
    /// first update of every weight would be a full `±learning_rate`.
    pub initial_accumulator: f64,
    /// Initial accumulator of the importance discriminator `D0`, which learns from the
    /// λ-weighted `L_D0` alone and has no adversary. AdaGrad divides a step by the root of the
    /// accumulated squared gradients, so with a tiny accumulator a constant factor on the only
    /// loss a parameter sees cancels out of its steps: λ would no longer slow `D0`, which then
    /// separates the modalities within a few hundred steps and sends every `w_m = 1 − D0_m` to 0
    /// (the DDMA collapse this setting fixes). TensorFlow's 0.1, which the paper's training used,
    /// keeps λ in its steps. `D1` (and the matrix `D_s` shares) stay on the main optimizer: the
    /// gradient reversal game needs a discriminator that keeps pace with `I`.
    #[serde(default = "default_importance_accumulator")]
    pub importance_initial_accumulator: f64,
    /// Update only the rows of the embedding tables a batch read (row-wise AdaGrad, exactly the
    /// dense update: an unread row has a zero gradient, which leaves its accumulator and its
    /// weights as they are). `false` runs AdaGrad over every row of every table each step.
    #[serde(default = "default_sparse_embeddings")]
    pub sparse_embeddings: bool,
}

fn default_sparse_embeddings() -> bool {
    true
}

fn default_importance_accumulator() -> f64 {
    0.1
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            learning_rate: 0.05,
            epsilon: 1e-7,
            initial_accumulator: 1e-5,
            importance_initial_accumulator: default_importance_accumulator(),
            sparse_embeddings: default_sparse_embeddings(),
        }
    }
}

impl TrainConfig {
    /// Every problem, each naming its field and value.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            p.push(format!("learning_rate = {} must be finite and > 0", self.learning_rate));
        }
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            p.push(format!("epsilon = {} must be finite and > 0", self.epsilon));
        }
        for (name, v) in [
            ("initial_accumulator", self.initial_accumulator),
            ("importance_initial_accumulator", self.importance_initial_accumulator),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                p.push(format!("{name} = {v} must be finite and >= 0"));
            }
        }
        p
    }

    /// Report every problem at once.
    pub fn validate(&self) -> Result<()> {
        let p = self.problems();
        if p.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(p.join("; ")))
        }
    }
}

/// The adversarial game on one step's batch (adversarial variants), read back with the losses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepDiagnostics {
    /// Share of (item, modality) pairs `D0` classifies right (DDMA only).
    pub importance_accuracy: Option<f32>,
    /// Share `D1` classifies right.
    pub modality_accuracy: f32,
    /// Mean `w_m` per modality, in model order.
    pub mean_weights: Vec<f32>,
    /// Mean share of `‖rep‖` that comes from the invariant part `c`.
    pub invariant_share: f32,
}

/// Losses of one step, read back from the device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLosses {
    /// `L_CTR + λ (L_Ds + L_D0 + L_ADV) + α L_next` (the terms the variant has).
    pub total: f32,
    /// `L_CTR`, the mean log loss.
    pub ctr: f32,
    /// `L_D0` (DDMA variants).
    pub importance: Option<f32>,
    /// `L_Ds` (DDMA variants).
    pub specific: Option<f32>,
    /// `L_ADV` (adversarial variants).
    pub adversarial: Option<f32>,
    /// DIEN's auxiliary next-behavior loss (`dien`).
    #[serde(default)]
    pub next_behavior: Option<f32>,
    /// λ(p) used.
    pub lambda: f64,
    /// The adversarial game (adversarial variants).
    pub diagnostics: Option<StepDiagnostics>,
}

/// A model and its AdaGrad state: one optimizer for the importance discriminator `D0`, one for
/// everything else (see [`TrainConfig::importance_initial_accumulator`]).
pub struct Trainer {
    model: Option<Marn>,
    optimizer: ModuleOptimizer,
    importance: ModuleOptimizer,
    /// The row slot of each embedding table the main optimizer updates row-wise.
    row_slots: Vec<(Table, RowSlot)>,
    config: TrainConfig,
    /// Data-parallel training: the other replicas ([`Trainer::with_collective`]).
    collective: Option<Arc<dyn Collective>>,
    /// Samples of the last step, over every replica.
    global_batch: usize,
    /// Data-parallel: whether rank 0's state has reached every replica ([`Trainer::sync`]).
    synced: bool,
}

/// Two byte strings as one: the first's length (8 bytes, little-endian), the first, the second.
fn frame(first: &[u8], second: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(8 + first.len() + second.len());
    framed.extend_from_slice(&(first.len() as u64).to_le_bytes());
    framed.extend_from_slice(first);
    framed.extend_from_slice(second);
    framed
}

/// The two byte strings of [`frame`]; `None` when `framed` is truncated.
fn unframe(framed: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (head, rest) = framed.split_first_chunk::<8>()?;
    let n = usize::try_from(u64::from_le_bytes(*head)).ok().filter(|&n| n <= rest.len())?;
    Some((rest[..n].to_vec(), rest[n..].to_vec()))
}

fn adagrad(initial_accumulator: f64, config: &TrainConfig) -> ModuleOptimizer {
    ModuleOptimizer::from(AdaGrad { initial_accumulator, epsilon: config.epsilon as f64 })
}

/// The main optimizer: AdaGrad, with a [`RowAdaGrad`] group for each embedding table of the
/// model's modality embedding layer when `sparse_embeddings` is on. The accumulators keep one
/// format either way (a checkpoint of one setting resumes under the other).
fn main_optimizer(model: &Marn, config: &TrainConfig) -> (ModuleOptimizer, Vec<(Table, RowSlot)>) {
    let adagrad = AdaGrad { initial_accumulator: config.initial_accumulator, epsilon: config.epsilon as f64 };
    let mut optimizer = ModuleOptimizer::from(adagrad);
    let mut slots = Vec::new();
    if config.sparse_embeddings {
        for (table, id) in model.embedding.as_ref().map(|e| e.tables()).unwrap_or_default() {
            let rows = RowSlot::default();
            optimizer =
                optimizer.with_group(ParamGroup::from_ids(vec![id]), RowAdaGrad { adagrad, rows: rows.clone() }, None);
            slots.push((table, rows));
        }
    }
    (optimizer, slots)
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Trainer {
    /// Train `model`, which must live on an autodiff device (`device.autodiff()`).
    pub fn new(model: Marn, config: TrainConfig) -> Result<Self> {
        config.validate()?;
        if !model.device().is_autodiff() {
            return Err(Error::Device(
                "training needs an autodiff device: build the model on `device.autodiff()`".into(),
            ));
        }
        let (optimizer, row_slots) = main_optimizer(&model, &config);
        let importance = adagrad(config.importance_initial_accumulator, &config);
        Ok(Self {
            model: Some(model),
            optimizer,
            importance,
            row_slots,
            config,
            collective: None,
            global_batch: 0,
            synced: false,
        })
    }

    /// This trainer as one replica of a data-parallel run: every replica starts from rank 0's
    /// weights and optimizer state (sent to the others at the first step), steps on its own
    /// shard of each global batch ([`Trainer::step_scored_with`], or
    /// [`Trainer::step_without_batch`] when its shard of a step is empty), and applies the same
    /// combined update (see [`crate::distributed`]).
    pub fn with_collective(mut self, collective: Arc<dyn Collective>) -> Self {
        self.collective = Some(collective);
        self.synced = false;
        self
    }

    /// At a data-parallel run's first step: rank 0's weights and optimizer state to every
    /// replica. Rank 0 first runs the forward pass of its shard, so that parameters initialised
    /// lazily draw their values in the order one process's first step draws them (the run then
    /// starts from exactly the weights of the same run on one process).
    fn sync(&mut self, first: Option<&BatchTensors>) -> Result<()> {
        let Some(collective) = self.collective.clone().filter(|_| !self.synced) else {
            return Ok(());
        };
        let (weights, optimizer) = if collective.rank() == 0 {
            if let Some(x) = first {
                self.model_ref()?.forward(x)?;
            }
            self.state_bytes()?
        } else {
            (Vec::new(), Vec::new())
        };
        let framed = collective.broadcast(frame(&weights, &optimizer))?;
        if collective.rank() != 0 {
            let (weights, optimizer) =
                unframe(&framed).ok_or_else(|| Error::Config("rank 0 sent a truncated training state".into()))?;
            let model = self.model.take().ok_or_else(|| Error::Config("the trainer has no model".into()))?;
            let restored = Self::restore(model, weights, optimizer, self.config.clone())?;
            *self = Self { collective: self.collective.take(), ..restored };
        }
        self.synced = true;
        Ok(())
    }

    /// The samples of the last step over every replica (this replica's alone without any).
    pub fn global_batch_len(&self) -> usize {
        self.global_batch
    }

    /// A step of a data-parallel run in which this replica has no samples (the last global batch
    /// of an epoch can have fewer shards than replicas): it takes part in the exchange with
    /// nothing and applies the combined update like the others.
    pub fn step_without_batch(&mut self) -> Result<()> {
        let Some(collective) = self.collective.clone() else {
            return Err(Error::Config("a step without a batch needs a data-parallel trainer".into()));
        };
        self.sync(None)?;
        self.global_batch = collective.all_reduce_sum(&[0.0])?[0] as usize;
        let model = self.model.take().ok_or_else(|| Error::Config("the trainer has no model".into()))?;
        let importance = model.adversarial.as_ref().and_then(|a| a.importance.as_ref()).map(|_| GradientsParams::new());
        self.apply(model, GradientsParams::new(), importance, &TableRows::default(), 0.0)
    }

    /// Combines the gradients with the other replicas' (when data-parallel), then updates the
    /// model: the main optimizer (row-wise for the tables read), then `D0`'s.
    fn apply(
        &mut self,
        model: Marn,
        grads: GradientsParams,
        importance_grads: Option<GradientsParams>,
        rows: &TableRows,
        weight: f32,
    ) -> Result<()> {
        let (grads, importance_grads, union) = match &self.collective {
            None => (grads, importance_grads, None),
            Some(c) => {
                let ids = model.embedding.as_ref().map(|e| e.tables()).unwrap_or_default();
                let tables: Vec<RowTable> = self
                    .row_slots
                    .iter()
                    .filter_map(|(table, _)| {
                        let id = ids.iter().find(|(t, _)| t == table)?.1;
                        Some(RowTable { id, rows: rows.get(*table) })
                    })
                    .collect();
                let main = crate::distributed::combine(c.as_ref(), &model, grads, weight, &tables)?;
                let importance =
                    match (importance_grads, model.adversarial.as_ref().and_then(|a| a.importance.as_ref())) {
                        (Some(g), Some(d0)) => Some(crate::distributed::combine(c.as_ref(), d0, g, weight, &[])?.grads),
                        _ => None,
                    };
                (main.grads, importance, Some(main.rows))
            }
        };
        // Each table's row-wise AdaGrad reads the rows this step read of it (every replica's,
        // when data-parallel), then forgets them.
        for (k, (table, slot)) in self.row_slots.iter().enumerate() {
            let rows = match &union {
                Some(u) => u.get(k).cloned().flatten(),
                None => rows.get(*table),
            };
            set_rows(slot, rows);
        }
        let mut model = self.optimizer.step(self.config.learning_rate, model, grads);
        for (_, slot) in &self.row_slots {
            set_rows(slot, None);
        }
        if let Some(g) = importance_grads {
            model = self.importance.step(self.config.learning_rate, model, g);
        }
        self.model = Some(model);
        Ok(())
    }

    fn model_ref(&self) -> Result<&Marn> {
        self.model.as_ref().ok_or_else(|| Error::Config("the trainer lost its model in a failed step".into()))
    }

    /// The model being trained.
    pub fn model(&self) -> Result<&Marn> {
        self.model_ref()
    }

    /// The trained model.
    pub fn into_model(self) -> Option<Marn> {
        self.model
    }

    /// The model's weights (with their parameter ids) and the AdaGrad accumulators (of the
    /// main optimizer and of `D0`'s, framed: an 8-byte little-endian length, the
    /// first, then the second), as two byte buffers: a training checkpoint that
    /// [`Trainer::restore`] continues exactly.
    pub fn state_bytes(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        let model = self.model_ref()?;
        let weights = model
            .clone()
            .into_record()
            .into_bytes()
            .map_err(|e| Error::Checkpoint { path: "training state".into(), message: e.to_string() })?;
        let bytes = |o: &ModuleOptimizer| {
            o.into_bytes().map_err(|e| Error::Checkpoint { path: "optimizer state".into(), message: e.to_string() })
        };
        let (main, importance) = (bytes(&self.optimizer)?, bytes(&self.importance)?);
        Ok((weights.to_vec(), frame(&main, &importance)))
    }

    /// A trainer continuing from [`Trainer::state_bytes`]: `model` is a freshly built model of
    /// the same config and inputs on an autodiff device.
    pub fn restore(model: Marn, weights: Vec<u8>, optimizer: Vec<u8>, config: TrainConfig) -> Result<Self> {
        let bad = |what: &str, e: &dyn std::fmt::Display| Error::Checkpoint {
            path: format!("training state ({what})"),
            message: e.to_string(),
        };
        let record = burn::store::ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(weights))
            .map_err(|e| bad("weights", &e))?;
        let model = model.try_load_record(record).map_err(|e| bad("weights", &e))?;
        let mut trainer = Self::new(model, config)?;
        let (main, importance) = unframe(&optimizer).ok_or_else(|| bad("optimizer", &"truncated optimizer state"))?;
        for (slot, bytes) in [(&mut trainer.optimizer, main), (&mut trainer.importance, importance)] {
            let fresh =
                std::mem::replace(slot, ModuleOptimizer::from(AdaGrad { initial_accumulator: 0.0, epsilon: 1.0 }));
            *slot = fresh.from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes)).map_err(|e| bad("optimizer", &e))?;
        }
        Ok(trainer)
    }

    /// One step on `batch` at training progress `progress ∈ [0, 1]`.
    pub fn step(&mut self, batch: &Batch, progress: f64) -> Result<StepLosses> {
        Ok(self.step_scored(batch, progress)?.0)
    }

    /// One step, also returning the click probabilities the model gave the batch before the
    /// update (read back with the losses in one transfer): a running AUC for free.
    #[tracing::instrument(level = "trace", skip_all, fields(batch = batch.len(), items = batch.n_items()))]
    pub fn step_scored(&mut self, batch: &Batch, progress: f64) -> Result<(StepLosses, Vec<f32>)> {
        self.step_scored_with(batch, None, progress)
    }

    /// [`Trainer::step_scored`] with the batch's tensors already on the model's device, built by
    /// [`BatchTensors::new`] from `batch` (on another thread, ahead of the step: the copy to a GPU
    /// then overlaps the previous step). `None` builds them here.
    pub fn step_scored_with(
        &mut self,
        batch: &Batch,
        tensors: Option<BatchTensors>,
        progress: f64,
    ) -> Result<(StepLosses, Vec<f32>)> {
        let x = match tensors {
            Some(x) => x,
            None => self.model_ref()?.tensors(batch)?,
        };
        self.sync(Some(&x))?;
        let model = self.model_ref()?;
        let output = model.forward(&x)?;
        let scores = burn::tensor::activation::sigmoid(output.logits.clone().detach());
        let loss = model.loss(output, x.labels.clone(), progress);
        let mut grads = loss.total.backward();
        let model = self.model.take().ok_or_else(|| Error::Config("the trainer has no model".into()))?;
        // D0's gradients go to its own optimizer (see TrainConfig::importance_initial_accumulator).
        let importance_grads = model
            .adversarial
            .as_ref()
            .and_then(|a| a.importance.as_ref())
            .map(|d0| GradientsParams::from_module(&mut grads, d0));
        let grads = GradientsParams::from_grads(grads, &model);
        // Data-parallel: this replica's share of the global batch weighs its gradients.
        let weight = match &self.collective {
            Some(c) => {
                let total = c.all_reduce_sum(&[batch.len() as f32])?[0];
                self.global_batch = total as usize;
                batch.len() as f32 / total.max(1.0)
            }
            None => {
                self.global_batch = batch.len();
                1.0
            }
        };
        self.apply(model, grads, importance_grads, &x.rows, weight)?;

        let aux = &loss.aux;
        let diag = aux.diagnostics.as_ref();
        let n_weights = diag.map_or(0, |d| d.mean_weights.dims()[0]);
        let parts: Vec<Tensor<1>> = [
            Some(loss.total.clone()),
            Some(loss.ctr.clone()),
            aux.importance.clone(),
            aux.specific.clone(),
            aux.adversarial.clone(),
            aux.next_behavior.clone(),
            diag.and_then(|d| d.importance_accuracy.clone()),
            diag.map(|d| d.modality_accuracy.clone()),
            diag.map(|d| d.invariant_share.clone()),
            diag.map(|d| d.mean_weights.clone()),
        ]
        .into_iter()
        .flatten()
        .map(|t| t.detach())
        .chain(std::iter::once(scores))
        .collect();
        let values = Tensor::cat(parts, 0)
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| Error::Batch(format!("reading losses: {e:?}")))?;
        let n_losses = values.len().saturating_sub(batch.len());
        let (losses, scores) = values.split_at(n_losses);
        let mut it = losses.iter().copied();
        let mut next = || it.next();
        let total = next().unwrap_or(f32::NAN);
        let ctr = next().unwrap_or(f32::NAN);
        let importance = aux.importance.as_ref().and_then(|_| next());
        let specific = aux.specific.as_ref().and_then(|_| next());
        let adversarial = aux.adversarial.as_ref().and_then(|_| next());
        let next_behavior = aux.next_behavior.as_ref().and_then(|_| next());
        let diagnostics = diag.map(|d| {
            let importance_accuracy = d.importance_accuracy.as_ref().and_then(|_| next());
            let modality_accuracy = next().unwrap_or(f32::NAN);
            let invariant_share = next().unwrap_or(f32::NAN);
            let mean_weights = (0..n_weights).map(|_| next().unwrap_or(f32::NAN)).collect();
            StepDiagnostics { importance_accuracy, modality_accuracy, mean_weights, invariant_share }
        });
        let losses = StepLosses {
            total,
            ctr,
            importance,
            specific,
            adversarial,
            next_behavior,
            lambda: loss.lambda,
            diagnostics,
        };
        Ok((losses, scores.to_vec()))
    }
}

/// AdaGrad as TensorFlow defines it: `acc ← acc + g²` starting from `initial_accumulator`,
/// `θ ← θ − lr · g / (√acc + ε)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaGrad {
    /// Starting value of the accumulator.
    pub initial_accumulator: f64,
    /// ε.
    pub epsilon: f64,
}

/// AdaGrad's per-parameter state: the squared-gradient accumulator.
#[derive(Debug, Clone)]
pub struct AdaGradAccumulator<const D: usize> {
    sum: Tensor<D>,
}

impl<const D: usize> RecordState for AdaGradAccumulator<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        out.push_tensor(prefix, "sum", self.sum.to_data());
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        let data = src.take_tensor(prefix, "sum")?;
        Some(Self { sum: Tensor::from_data(data, device) })
    }
}

impl AdaGrad {
    /// The step `lr · g / (√acc + ε)` for a gradient and its (already updated) accumulator.
    fn update<const D: usize>(&self, lr: LearningRate, grad: Tensor<D>, sum: Tensor<D>) -> Tensor<D> {
        grad.div(sum.sqrt().add_scalar(self.epsilon)).mul_scalar(lr)
    }
}

impl Optimizer for AdaGrad {
    type State<const D: usize> = AdaGradAccumulator<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let sum = match state {
            Some(state) => state.sum + grad.clone().square(),
            None => grad.clone().square().add_scalar(self.initial_accumulator),
        };
        let update = self.update(lr, grad, sum.clone());
        (tensor - update, Some(AdaGradAccumulator { sum }))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        AdaGradAccumulator { sum: state.sum.to_device(device) }
    }
}

/// The rows of one embedding table the current batch read, shared by the trainer (which sets
/// them around each step) and that table's [`RowAdaGrad`].
type RowSlot = Arc<Mutex<Option<Arc<[i64]>>>>;

fn set_rows(slot: &RowSlot, rows: Option<Arc<[i64]>>) {
    if let Ok(mut guard) = slot.lock() {
        *guard = rows;
    }
}

/// [`AdaGrad`] for an embedding table that updates only the rows the batch read: their
/// gradient rows are gathered, their accumulator rows and weights are updated in place
/// (`select_assign`), and every other row is left alone, which is exactly what the dense update
/// does to a row whose gradient is zero (`acc + 0`, `θ − 0`). Without rows (no batch set them)
/// it is the dense update. Its state is [`AdaGrad`]'s: the whole table's accumulator.
#[derive(Debug, Clone)]
pub struct RowAdaGrad {
    adagrad: AdaGrad,
    rows: RowSlot,
}

impl Optimizer for RowAdaGrad {
    type State<const D: usize> = AdaGradAccumulator<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let rows = self.rows.lock().ok().and_then(|r| r.clone());
        let Some(rows) = rows else {
            return self.adagrad.step(lr, tensor, grad, state);
        };
        let device = tensor.device();
        let index = Tensor::<1, Int>::from_data(TensorData::new(rows.to_vec(), [rows.len()]), &device);
        let sum = match state {
            Some(state) => state.sum,
            None => tensor.zeros_like().add_scalar(self.adagrad.initial_accumulator),
        };
        let grad = grad.select(0, index.clone());
        let squared = grad.clone().square();
        let sum_rows = sum.clone().select(0, index.clone()) + squared.clone();
        let sum = sum.select_assign(0, index.clone(), squared, IndexingUpdateOp::Add);
        let update = self.adagrad.update(lr, grad, sum_rows);
        (tensor.select_assign(0, index, update.neg(), IndexingUpdateOp::Add), Some(AdaGradAccumulator { sum }))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        <AdaGrad as Optimizer>::to_device(state, device)
    }
}

/// Losses of `model` on `batch` without a step (evaluation on an autodiff or plain model).
pub fn evaluate_loss(model: &Marn, batch: &Batch, progress: f64) -> Result<f32> {
    let model = model.valid();
    let x = model.tensors(batch)?;
    let output = model.forward_pass(&x, crate::Pass::Score)?;
    let loss = model.loss(output, x.labels.clone(), progress);
    loss.ctr
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| Error::Batch(format!("reading loss: {e:?}")))?
        .first()
        .copied()
        .ok_or_else(|| Error::Batch("empty loss".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::{TensorData, Tolerance};

    fn table(values: Vec<f32>, device: &Device) -> Tensor<2> {
        let rows = values.len() / 2;
        Tensor::from_data(TensorData::new(values, [rows, 2]), device)
    }

    #[test]
    fn row_wise_adagrad_updates_the_given_rows_exactly_as_the_dense_update() {
        let device = Device::flex();
        let dense = AdaGrad { initial_accumulator: 0.1, epsilon: 1e-7 };
        let rows = RowSlot::default();
        let sparse = RowAdaGrad { adagrad: dense, rows: rows.clone() };
        let weights = table((0..12).map(|v| v as f32 * 0.1).collect(), &device);
        // Two steps; the gradient is non-zero on rows 1 and 4 only.
        let grads = [
            table(vec![0.0, 0.0, 0.5, -1.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.25, 0.0, 0.0], &device),
            table(vec![0.0, 0.0, -0.3, 0.7, 0.0, 0.0, 0.0, 0.0, 1.5, -2.0, 0.0, 0.0], &device),
        ];
        set_rows(&rows, Some(vec![1i64, 4].into()));
        let (mut a, mut b) = (weights.clone(), weights.clone());
        let (mut sa, mut sb) = (None, None);
        for g in &grads {
            (a, sa) = dense.step(0.05, a, g.clone(), sa);
            (b, sb) = sparse.step(0.05, b, g.clone(), sb);
        }
        let tol = Tolerance::absolute(1e-7);
        b.into_data().assert_approx_eq::<f32>(&a.into_data(), tol);
        let sum = |s: Option<AdaGradAccumulator<2>>| s.map(|s| s.sum.into_data());
        sum(sb).unwrap().assert_approx_eq::<f32>(&sum(sa).unwrap(), tol);
        // Only the given rows are touched: a gradient on row 2 is not applied.
        let stray = table(vec![0.0, 0.0, 0.0, 0.0, 9.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], &device);
        let (after, _) = sparse.step(0.05, weights.clone(), stray.clone(), None);
        after.into_data().assert_approx_eq::<f32>(&weights.clone().into_data(), tol);
        // Without rows it is the dense update.
        set_rows(&rows, None);
        let (after, _) = sparse.step(0.05, weights.clone(), stray.clone(), None);
        let (expected, _) = dense.step(0.05, weights, stray, None);
        after.into_data().assert_approx_eq::<f32>(&expected.into_data(), tol);
    }

    #[test]
    fn adagrad_matches_hand_computed_updates() {
        let device = Device::flex().autodiff();
        let mut linear: Linear = LinearConfig::new(1, 1).init(&device);
        linear.weight = burn::module::Param::from_tensor(Tensor::from_data(TensorData::from([[1.0f32]]), &device));
        linear.bias = Some(burn::module::Param::from_tensor(Tensor::from_data(TensorData::from([0.0f32]), &device)));
        let mut optim = ModuleOptimizer::from(AdaGrad { initial_accumulator: 0.1, epsilon: 1e-7 });
        let x = Tensor::<2>::from_data(TensorData::from([[2.0f32]]), &device);
        // loss = w x + b: dL/dw = 2, dL/db = 1.
        let grads = GradientsParams::from_grads(linear.forward(x.clone()).sum().backward(), &linear);
        let linear = optim.step(0.1, linear, grads);
        let w1 = 1.0 - 0.1 * 2.0 / ((0.1f64 + 4.0).sqrt() + 1e-7);
        linear
            .weight
            .val()
            .into_data()
            .assert_approx_eq::<f32>(&TensorData::from([[w1 as f32]]), Tolerance::absolute(1e-6));
        let grads = GradientsParams::from_grads(linear.forward(x).sum().backward(), &linear);
        let linear = optim.step(0.1, linear, grads);
        let w2 = w1 - 0.1 * 2.0 / ((0.1f64 + 8.0).sqrt() + 1e-7);
        let b2 = -0.1 / ((1.1f64).sqrt() + 1e-7) - 0.1 / ((2.1f64).sqrt() + 1e-7);
        linear
            .weight
            .val()
            .into_data()
            .assert_approx_eq::<f32>(&TensorData::from([[w2 as f32]]), Tolerance::absolute(1e-6));
        let bias = linear.bias.as_ref().map(|b| b.val().into_data());
        bias.unwrap().assert_approx_eq::<f32>(&TensorData::from([b2 as f32]), Tolerance::absolute(1e-6));
    }
}
