//! YoutubeNet (Covington, Adams and Sargin, "Deep Neural Networks for YouTube Recommendations",
//! RecSys 2016), a group-2 baseline of Table 2.
//!
//! Kept: the user vector is the plain average of the behavior items' embeddings, and an MLP
//! scores it beside the candidate. Fed MARN's features (§4.3): an item's embedding is the
//! concatenation-based fusion of its modalities, `Σ_m S_m e_m` (the sum of the per-modality
//! projections is one linear layer over the concatenated `[e_ids; e_image; e_title; e_stats]`),
//! the same item vector as the `conc` ablation. Simplified: the candidate-generation and
//! watch-time parts of the original (sampled softmax, example age) have no counterpart in CTR
//! prediction and are left out.

use burn::tensor::Tensor;

/// The mean of the real slots; a row without history gives zeros.
///
/// # Shapes
/// - `slots`: `[B, T, d]`; `mask`: `[B, T]`, 1.0 at real positions; output: `[B, d]`
pub fn mean_pool(slots: Tensor<3>, mask: Tensor<2>) -> Tensor<2> {
    let [b, _, d] = slots.dims();
    let count = mask.clone().sum_dim(1).clamp_min(1.0); // [B, 1]
    (slots * mask.unsqueeze_dim::<3>(2)).sum_dim(1).reshape([b, d]) / count
}
