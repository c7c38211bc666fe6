//! The paper's Table 2 baselines, one file per model, each opening with the paper it follows and
//! what was kept and simplified.
//!
//! | group | model | file |
//! |---|---|---|
//! | 1 | LR, FM (ids only, as in the paper) | [`lr`], [`fm`] |
//! | 2 | YoutubeNet, xDeepFM, DUPN, DIEN | [`youtube_net`], [`xdeepfm`], [`dupn`], [`dien`] |
//! | 3 | DMF, MMSS, NAML | [`dmf`], [`mmss`], [`naml`] |
//! | – | DIN (kept from earlier versions; not in Table 2) | [`din`] |
//!
//! "All compared neural network models are fed with the same features as MARN" (§4.3): every
//! neural baseline gets MARN's modality embedding layer (ids, image, title, statistics) and its
//! modality-specific projections `s_m`, with the same per-item presence (a modality an item lacks
//! is left out of every sum and attention), and the behavior property where the model has a
//! place for it (DUPN). What differs is what the paper compares: how the modalities are fused
//! into an item vector and how the behaviors are integrated into a user vector.

pub mod dien;
pub mod din;
pub mod dmf;
pub mod dupn;
pub mod fm;
pub mod lr;
pub mod mmss;
pub mod naml;
pub mod xdeepfm;
pub mod youtube_net;

use burn::tensor::activation::softmax;
use burn::tensor::Tensor;

use crate::batch_tensors::BatchTensors;
pub use crate::modules::attention_fusion::present;
use crate::modules::tanh;

/// Rows of a per-distinct-item table gathered for every behavior slot.
///
/// # Shapes
/// - `per_item`: `[n, d]`; output: `[B, T, d]`
pub fn slots(per_item: Tensor<2>, x: &BatchTensors) -> Tensor<3> {
    let d = per_item.dims()[1];
    per_item.select(0, x.history.clone()).reshape([x.batch_size, x.seq_len, d])
}

/// A softmax over the modalities of each item, over those it has: an absent modality gets
/// exactly zero weight.
///
/// # Shapes
/// - `scores`: M tensors `[n, 1]`; `presence`: M entries, `[n, 1]` or `None`
/// - output: `[n, M]`
pub fn modality_softmax(scores: Vec<Tensor<2>>, presence: &[Option<Tensor<2>>]) -> Tensor<2> {
    let masked: Vec<Tensor<2>> = scores
        .into_iter()
        .enumerate()
        .map(|(k, s)| match presence.get(k).cloned().flatten() {
            // −1e9 where absent: exp underflows to exactly 0 after the max is subtracted.
            Some(p) => s.mask_fill(p.lower_equal_elem(0.5), -1e9),
            None => s,
        })
        .collect();
    softmax(Tensor::cat(masked, 1), 1)
}

/// `Σ_m weights[:, m] · features_m`.
///
/// # Shapes
/// - `weights`: `[n, M]`; `features`: M tensors `[n, d]`; output: `[n, d]`
pub fn weighted_sum(weights: Tensor<2>, features: &[Tensor<2>]) -> Tensor<2> {
    features
        .iter()
        .enumerate()
        .map(|(k, f)| f.clone() * weights.clone().narrow(1, k, 1))
        .reduce(|a, b| a + b)
        .expect("at least one modality")
}

/// Additive attention over an item's modalities, `α_m = softmax_m(q^T tanh(V s_m + v))` over
/// the modalities it has, and the fused vector `Σ_m α_m s_m` (NAML's view-level attention,
/// MMSS's modality attention).
#[derive(burn::module::Module, Debug)]
pub struct ViewAttention {
    /// `V`, `v`.
    pub projection: burn::nn::Linear,
    /// `q`.
    pub query: burn::nn::Linear,
}

impl ViewAttention {
    /// Build with a `hidden`-wide attention over `dim`-wide modality vectors.
    pub fn new(dim: usize, hidden: usize, device: &burn::tensor::Device) -> Self {
        use burn::nn::LinearConfig;
        Self {
            projection: LinearConfig::new(dim, hidden).init(device),
            query: LinearConfig::new(hidden, 1).with_bias(false).init(device),
        }
    }

    /// The weights `α`, zero where a modality is absent.
    ///
    /// # Shapes
    /// - `features`: M tensors `[n, d]`; `presence`: M entries, `[n, 1]` or `None`
    /// - output: `[n, M]`
    pub fn weights(&self, features: &[Tensor<2>], presence: &[Option<Tensor<2>>]) -> Tensor<2> {
        let scores = features.iter().map(|f| self.query.forward(tanh(self.projection.forward(f.clone())))).collect();
        modality_softmax(scores, presence)
    }

    /// The fused vectors `Σ_m α_m s_m`.
    ///
    /// # Shapes
    /// - as [`ViewAttention::weights`]; output: `[n, d]`
    pub fn forward(&self, features: &[Tensor<2>], presence: &[Option<Tensor<2>>]) -> Tensor<2> {
        weighted_sum(self.weights(features, presence), features)
    }
}
