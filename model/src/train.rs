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

use burn::module::Module;
use burn::optim::{GradientsParams, LearningRate, ModuleOptimizer, Optimizer, RecordState, StateSink, StateSource};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::modules::marn::Marn;

/// Optimizer settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// AdaGrad learning rate (paper: 0.1).
    pub learning_rate: f64,
    /// AdaGrad epsilon.
    pub epsilon: f32,
    /// Initial value of AdaGrad's squared-gradient accumulator (TensorFlow's default, 0.1,
    /// which the paper's TensorFlow training used). It damps the first steps: with 0 the first
    /// update of every weight is a full `±learning_rate`, enough to kill every ReLU of a small
    /// head at learning rate 0.1.
    pub initial_accumulator: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self { learning_rate: 0.1, epsilon: 1e-7, initial_accumulator: 0.1 }
    }
}

impl TrainConfig {
    /// Report every problem at once.
    pub fn validate(&self) -> Result<()> {
        let mut p = Vec::new();
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            p.push("learning_rate must be finite and > 0");
        }
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            p.push("epsilon must be finite and > 0");
        }
        if !(self.initial_accumulator.is_finite() && self.initial_accumulator >= 0.0) {
            p.push("initial_accumulator must be finite and >= 0");
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(p.join("; ")))
        }
    }
}

/// Losses of one step, read back from the device.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepLosses {
    /// `L_CTR + λ (L_Ds + L_D0 + L_ADV)`.
    pub total: f32,
    /// `L_CTR`, the mean log loss.
    pub ctr: f32,
    /// `L_D0` (DDMA variants).
    pub importance: Option<f32>,
    /// `L_Ds` (DDMA variants).
    pub specific: Option<f32>,
    /// `L_ADV` (adversarial variants).
    pub adversarial: Option<f32>,
    /// λ(p) used.
    pub lambda: f64,
}

/// A model and its AdaGrad state.
pub struct Trainer {
    model: Option<Marn>,
    optimizer: ModuleOptimizer,
    config: TrainConfig,
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
        let optimizer = ModuleOptimizer::from(AdaGrad {
            initial_accumulator: config.initial_accumulator,
            epsilon: config.epsilon as f64,
        });
        Ok(Self { model: Some(model), optimizer, config })
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

    /// The model's weights (with their parameter ids) and the AdaGrad accumulators, as two byte
    /// buffers: a training checkpoint that [`Trainer::restore`] continues exactly.
    pub fn state_bytes(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        let model = self.model_ref()?;
        let weights = model
            .clone()
            .into_record()
            .into_bytes()
            .map_err(|e| Error::Checkpoint { path: "training state".into(), message: e.to_string() })?;
        let optimizer = self
            .optimizer
            .into_bytes()
            .map_err(|e| Error::Checkpoint { path: "optimizer state".into(), message: e.to_string() })?;
        Ok((weights.to_vec(), optimizer.to_vec()))
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
        let fresh = std::mem::replace(
            &mut trainer.optimizer,
            ModuleOptimizer::from(AdaGrad { initial_accumulator: 0.0, epsilon: 1.0 }),
        );
        trainer.optimizer =
            fresh.from_bytes(burn::tensor::Bytes::from_bytes_vec(optimizer)).map_err(|e| bad("optimizer", &e))?;
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
        let model = self.model_ref()?;
        let x = model.tensors(batch)?;
        let output = model.forward(&x)?;
        let scores = burn::tensor::activation::sigmoid(output.logits.clone().detach());
        let loss = model.loss(output, x.labels.clone(), progress);
        let grads = loss.total.backward();
        let model = self.model.take().ok_or_else(|| Error::Config("the trainer has no model".into()))?;
        let grads = GradientsParams::from_grads(grads, &model);
        self.model = Some(self.optimizer.step(self.config.learning_rate, model, grads));

        let aux = &loss.aux;
        let parts: Vec<Tensor<1>> = [
            Some(loss.total.clone()),
            Some(loss.ctr.clone()),
            aux.importance.clone(),
            aux.specific.clone(),
            aux.adversarial.clone(),
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
        Ok((StepLosses { total, ctr, importance, specific, adversarial, lambda: loss.lambda }, scores.to_vec()))
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
        let update = grad.div(sum.clone().sqrt().add_scalar(self.epsilon)).mul_scalar(lr);
        (tensor - update, Some(AdaGradAccumulator { sum }))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        AdaGradAccumulator { sum: state.sum.to_device(device) }
    }
}

/// Losses of `model` on `batch` without a step (evaluation on an autodiff or plain model).
pub fn evaluate_loss(model: &Marn, batch: &Batch, progress: f64) -> Result<f32> {
    let model = model.valid();
    let x = model.tensors(batch)?;
    let output = model.forward(&x)?;
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
