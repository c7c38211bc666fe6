//! DIN (Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018). Not
//! one of Table 2's nine baselines; kept because users found it useful.
//!
//! Kept: the user vector is the candidate-attention-weighted sum of the behavior items, the
//! weights from an MLP over each behavior and the candidate. Fed MARN's features: items are the
//! concatenation-based fusion of all modalities, as in [`super::youtube_net`]. Simplified: the
//! attention MLP sees `[rep_t, rep_X]` (not their product and difference), its weights are
//! softmax-normalised over the sequence, and there is no Dice activation or
//! mini-batch-aware regularisation.

use burn::module::Module;
use burn::tensor::{Bool, Device, Tensor};

use crate::modules::apgru::{CandidateAttention, CandidateAttentionConfig};

/// Config of [`Din`].
#[derive(Debug, Clone, PartialEq)]
pub struct DinConfig {
    /// Width of the item vectors.
    pub item_dim: usize,
    /// Hidden width of the attention MLP.
    pub attention_dim: usize,
}

impl DinConfig {
    /// Build the attention.
    pub fn init(&self, device: &Device) -> Din {
        Din {
            attention: CandidateAttentionConfig {
                state_dim: self.item_dim,
                candidate_dim: self.item_dim,
                hidden_dim: self.attention_dim,
            }
            .init(device),
        }
    }
}

/// DIN's user layer.
#[derive(Module, Debug)]
pub struct Din {
    /// Candidate attention over the behavior items.
    pub attention: CandidateAttention,
}

impl Din {
    /// User vectors.
    ///
    /// # Shapes
    /// - `slots`: `[B, T, d]`; `candidate`: `[B, d]`; `padding`, `mask`: `[B, T]`
    /// - output: `[B, d]`
    pub fn user(&self, slots: Tensor<3>, candidate: Tensor<2>, padding: Tensor<2, Bool>, mask: Tensor<2>) -> Tensor<2> {
        self.attention.forward(slots, candidate, padding, mask)
    }
}
