//! NAML (Wu et al., "Neural News Recommendation with Attentive Multi-View Learning",
//! IJCAI 2019), a group-3 baseline of Table 2.
//!
//! Kept: the **attentive multi-view item encoder** — every view (modality) is encoded on its
//! own, and a **view-level attention** `α_m = softmax_m(q^T tanh(V s_m + v))` weights them into
//! the item vector `Σ_m α_m s_m` — and the **user encoder**, an additive attention over the
//! behavior items, `a_t = softmax_t(q_u^T tanh(U rep_t + u))`, `user = Σ_t a_t rep_t`, which does
//! not depend on the candidate.
//!
//! Fed MARN's features: the views are MARN's modalities (ids, image, title, statistics) encoded
//! by MARN's modality embedding and `s_m`, where the original's views are a news item's title,
//! body and category; a view the item lacks gets zero attention. Simplified: the click score is
//! the shared prediction MLP on `[user, item]`, where the original takes their dot product and
//! trains with negative sampling.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Device, Tensor};

use super::ViewAttention;
use crate::modules::tanh;

/// Config of [`Naml`].
#[derive(Debug, Clone, PartialEq)]
pub struct NamlConfig {
    /// Width of the item vectors.
    pub dim: usize,
    /// Hidden width of both attentions.
    pub attention_dim: usize,
}

impl NamlConfig {
    /// Build the view attention and the user encoder.
    pub fn init(&self, device: &Device) -> Naml {
        Naml {
            views: ViewAttention::new(self.dim, self.attention_dim, device),
            user_projection: LinearConfig::new(self.dim, self.attention_dim).init(device),
            user_query: LinearConfig::new(self.attention_dim, 1).with_bias(false).init(device),
        }
    }
}

/// NAML's item and user encoders.
#[derive(Module, Debug)]
pub struct Naml {
    /// View-level attention.
    pub views: ViewAttention,
    /// `U`, `u` of the user encoder.
    pub user_projection: Linear,
    /// `q_u` of the user encoder.
    pub user_query: Linear,
}

impl Naml {
    /// Item vectors from the views.
    ///
    /// # Shapes
    /// - `specific`: M tensors `[n, d]`; `presence`: M entries, `[n, 1]` or `None`
    /// - output: `[n, d]`
    pub fn items(&self, specific: Vec<Tensor<2>>, presence: &[Option<Tensor<2>>]) -> Tensor<2> {
        self.views.forward(&super::present(specific, presence), presence)
    }

    /// User vectors: the additive attention over the behavior items (zero weight on padding;
    /// a row without history gives zeros).
    ///
    /// # Shapes
    /// - `slots`: `[B, T, d]`; `padding`, `mask`: `[B, T]`; output: `[B, d]`
    pub fn user(&self, slots: Tensor<3>, padding: Tensor<2, Bool>, mask: Tensor<2>) -> Tensor<2> {
        let [b, t, d] = slots.dims();
        let scores = self
            .user_query
            .forward(tanh(self.user_projection.forward(slots.clone())))
            .reshape([b, t])
            .mask_fill(padding, -1e9);
        let any = mask.sum_dim(1).clamp_max(1.0);
        let weights = softmax(scores, 1) * any;
        (slots * weights.unsqueeze_dim::<3>(2)).sum_dim(1).reshape([b, d])
    }
}
