//! DUPN (Ni et al., "Perceive Your Users in Depth: Learning Universal User Representations from
//! Multiple E-commerce Tasks", KDD 2018), a group-2 baseline of Table 2.
//!
//! Kept: an **LSTM over the behavior sequence** whose input is each behavior's item vector
//! together with its **behavior property** (the behavior type and the time bucket: DUPN's
//! "property" of a behavior), then **attention pooling** over the LSTM's states, scored from each
//! state, its property and the query. Fed MARN's features: the item vector is the
//! concatenation-based fusion of every modality (as in [`super::youtube_net`]).
//! Simplified: CTR prediction has no search query and one task, so the candidate item plays the
//! query's part in the attention and there is no multi-task head; DUPN's property-gated LSTM
//! (the property in the gates only) is a standard LSTM with the property concatenated to its
//! input, so the property also reaches the cell input.

use burn::module::Module;
use burn::nn::{Lstm, LstmConfig};
use burn::tensor::{Bool, Device, Tensor};

use crate::modules::apgru::{CandidateAttention, CandidateAttentionConfig};

/// Config of [`Dupn`].
#[derive(Debug, Clone, PartialEq)]
pub struct DupnConfig {
    /// Width of the item vectors.
    pub item_dim: usize,
    /// Width of the behavior property.
    pub property_dim: usize,
    /// LSTM hidden width.
    pub hidden_dim: usize,
    /// Hidden width of the attention MLP.
    pub attention_dim: usize,
}

impl DupnConfig {
    /// Build the LSTM and the attention.
    pub fn init(&self, device: &Device) -> Dupn {
        Dupn {
            lstm: LstmConfig::new(self.item_dim + self.property_dim, self.hidden_dim, true).init(device),
            attention: CandidateAttentionConfig {
                state_dim: self.hidden_dim + self.property_dim,
                candidate_dim: self.item_dim,
                hidden_dim: self.attention_dim,
            }
            .init(device),
            hidden_dim: self.hidden_dim,
        }
    }
}

/// DUPN's user layer.
#[derive(Module, Debug)]
pub struct Dupn {
    /// The LSTM over `[rep_t; p_t]`.
    pub lstm: Lstm,
    /// Attention scored from `[h_t; p_t]` and the candidate.
    pub attention: CandidateAttention,
    /// LSTM hidden width (the user vector's width).
    pub hidden_dim: usize,
}

impl Dupn {
    /// User vectors: the attention-weighted sum of the LSTM states. Sequences are left-aligned,
    /// so padding after a sequence's end changes none of its real states, and the masked softmax
    /// gives padding zero weight.
    ///
    /// # Shapes
    /// - `slots`: `[B, T, d]`; `property`: `[B, T, p]`; `candidate`: `[B, d]`;
    ///   `padding`, `mask`: `[B, T]`
    /// - output: `[B, hidden_dim]`
    pub fn user(
        &self,
        slots: Tensor<3>,
        property: Tensor<3>,
        candidate: Tensor<2>,
        padding: Tensor<2, Bool>,
        mask: Tensor<2>,
    ) -> Tensor<2> {
        let [b, _, _] = slots.dims();
        let (states, _) = self.lstm.forward(Tensor::cat(vec![slots, property.clone()], 2), None);
        let weights = self.attention.weights(Tensor::cat(vec![states.clone(), property], 2), candidate, padding, mask);
        (states * weights.unsqueeze_dim::<3>(2)).sum_dim(1).reshape([b, self.hidden_dim])
    }
}
