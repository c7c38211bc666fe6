//! DIEN (Zhou et al., "Deep Interest Evolution Network for Click-Through Rate Prediction",
//! AAAI 2019), a group-2 baseline of Table 2.
//!
//! Kept, the two layers of the original:
//! - **interest extraction**: a GRU over the behavior items, with the **auxiliary loss** that
//!   makes every state `h_t` predict the next behavior: `−log σ(⟨h_t, A e_{t+1}⟩) −
//!   log(1 − σ(⟨h_t, A ê_{t+1}⟩))`, with `ê_{t+1}` a negative item, averaged over the pairs of
//!   consecutive real behaviors and added to the CTR loss with weight α
//!   ([`crate::MarnConfig::next_behavior_weight`], the original's α = 1);
//! - **interest evolution**: an **AUGRU** over the extracted states, its update gate scaled by
//!   the attention of each state to the candidate, `u'_t = a_t · u_t`; the user vector is its
//!   last real state.
//!
//! Fed MARN's features: item vectors are the concatenation-based fusion of every modality (as in
//! [`super::youtube_net`]). Simplified: the original scores the auxiliary pairs with a small MLP
//! and its attention is `softmax(h_t W e_X)`; here the pair score is a bilinear form and the
//! attention is the MLP of [`CandidateAttention`] (softmax over the real behaviors). The
//! negative of a behavior is another distinct item of the same batch, picked by position
//! (deterministic, never the positive), where the original samples from the unclicked items.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::log_sigmoid;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::slots;
use crate::batch_tensors::BatchTensors;
use crate::modules::apgru::{ApGru, ApGruConfig, CandidateAttention, CandidateAttentionConfig};

/// Config of [`Dien`].
#[derive(Debug, Clone, PartialEq)]
pub struct DienConfig {
    /// Width of the item vectors.
    pub item_dim: usize,
    /// Hidden width of both GRUs.
    pub hidden_dim: usize,
    /// Hidden width of the attention MLP.
    pub attention_dim: usize,
}

impl DienConfig {
    /// Build both layers.
    pub fn init(&self, device: &Device) -> Dien {
        let g = self.hidden_dim;
        Dien {
            extractor: ApGruConfig { input_dim: self.item_dim, property_dim: None, hidden_dim: g }.init(device),
            auxiliary: LinearConfig::new(self.item_dim, g).with_bias(false).init(device),
            attention: CandidateAttentionConfig {
                state_dim: g,
                candidate_dim: self.item_dim,
                hidden_dim: self.attention_dim,
            }
            .init(device),
            evolution: ApGruConfig { input_dim: g, property_dim: None, hidden_dim: g }.init(device),
        }
    }
}

/// DIEN's user layer.
#[derive(Module, Debug)]
pub struct Dien {
    /// Interest extractor GRU.
    pub extractor: ApGru,
    /// `A` of the auxiliary next-behavior score `⟨h_t, A e⟩`.
    pub auxiliary: Linear,
    /// Attention of the extracted interests to the candidate.
    pub attention: CandidateAttention,
    /// Interest evolution AUGRU.
    pub evolution: ApGru,
}

/// Output of [`Dien::user`].
#[derive(Debug, Clone)]
pub struct DienOutput {
    /// User vectors, `[B, hidden_dim]`.
    pub user: Tensor<2>,
    /// The auxiliary next-behavior loss, `[1]`; `None` without a pair of consecutive behaviors.
    pub next_behavior: Option<Tensor<1>>,
}

impl Dien {
    /// The interest states `h_t` of the extractor GRU.
    ///
    /// # Shapes
    /// - `items`: `[n, d]` (distinct items); output: `[B, T, hidden_dim]`
    pub fn interests(&self, items: Tensor<2>, x: &BatchTensors) -> Tensor<3> {
        self.extractor.forward(slots(self.extractor.input_projection(items), x), None)
    }

    /// User vectors and the auxiliary loss.
    ///
    /// # Shapes
    /// - `items`: `[n, d]` (distinct items); `candidate`: `[B, d]`
    pub fn user(&self, items: Tensor<2>, candidate: Tensor<2>, x: &BatchTensors) -> DienOutput {
        let (b, g) = (x.batch_size, self.extractor.hidden_dim);
        let states = self.interests(items.clone(), x);
        let next_behavior = self.next_behavior_loss(states.clone(), items, x);
        let attention = self.attention.weights(states.clone(), candidate, x.padding.clone(), x.mask.clone());
        let evolved = self.evolution.forward_gated(self.evolution.input.forward(states), None, Some(attention));
        let user = (evolved * x.last.clone().unsqueeze_dim::<3>(2)).sum_dim(1).reshape([b, g]);
        DienOutput { user, next_behavior }
    }

    /// The auxiliary loss over every pair of consecutive real behaviors `(t, t+1)`.
    fn next_behavior_loss(&self, states: Tensor<3>, items: Tensor<2>, x: &BatchTensors) -> Option<Tensor<1>> {
        let (b, t, n) = (x.batch_size, x.seq_len, x.n_items);
        if t < 2 || n < 2 || x.lengths.iter().all(|&l| l < 2) {
            return None;
        }
        let g = self.extractor.hidden_dim;
        let device = states.device();
        let scored = self.auxiliary.forward(items); // [n, g]
        let next: Tensor<1, Int> = x.history.clone().reshape([b, t]).narrow(1, 1, t - 1).reshape([b * (t - 1)]);
        // Another distinct item: shift the positive's index by 1..n−1 (mod n), by position.
        let shifts: Vec<i64> = (0..b * (t - 1)).map(|k| 1 + ((k as u64 * 7919) % (n as u64 - 1)) as i64).collect();
        let negative = (next.clone() + Tensor::<1, Int>::from_data(TensorData::new(shifts, [b * (t - 1)]), &device))
            .remainder_scalar(n as i64);
        let h = states.narrow(1, 0, t - 1); // h_t for t < T − 1
        let score = |idx: Tensor<1, Int>| {
            (h.clone() * scored.clone().select(0, idx).reshape([b, t - 1, g])).sum_dim(2).reshape([b, t - 1])
        };
        let pair = x.mask.clone().narrow(1, 1, t - 1); // t+1 real (left-aligned, so t is too)
        let nll = (log_sigmoid(score(next)) + log_sigmoid(score(negative).neg())).neg() * pair.clone();
        Some(nll.sum().reshape([1]) / pair.sum().reshape([1]).clamp_min(1.0))
    }
}
