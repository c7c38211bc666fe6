//! MMSS (Li et al., "Multi-modal Sentence Summarization with Modality Attention and Image
//! Filtering", IJCAI 2018), a group-3 baseline of Table 2.
//!
//! Kept, the two mechanisms the paper names:
//! - the **image filter**: a gate computed from the image and the item's other modalities,
//!   `g = σ(F_v s_image + F_c mean_{m≠image} s_m + b)`, that selects the visual information
//!   passed on, `s'_image = g ⊙ s_image`;
//! - **modality attention**: `α_m = softmax_m(q^T tanh(V s'_m + v))` over the modalities the
//!   item has, and the item vector `Σ_m α_m s'_m`.
//!
//! Fed MARN's features: the modality vectors are MARN's `s_m`; an item without an image skips the
//! filter and the image gets zero attention. The behaviors are integrated by the ablations'
//! BaseModel GRU (last real state). Simplified: the original filters image regions for a
//! text decoder with a context from the decoder state; an item here has one image vector, and its
//! context is the item's other modalities.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor};

use super::{present, ViewAttention};

/// Config of [`Mmss`].
#[derive(Debug, Clone, PartialEq)]
pub struct MmssConfig {
    /// Width of the modality vectors.
    pub dim: usize,
    /// Hidden width of the modality attention.
    pub attention_dim: usize,
    /// Number of modalities `M`.
    pub n_modalities: usize,
    /// Position of the image among the modalities (`None`: no image, no filter).
    pub image: Option<usize>,
}

impl MmssConfig {
    /// Build the filter (with an image and another modality) and the attention.
    pub fn init(&self, device: &Device) -> Mmss {
        let filtered = self.image.filter(|_| self.n_modalities > 1);
        Mmss {
            filter_image: filtered.map(|_| LinearConfig::new(self.dim, self.dim).init(device)),
            filter_context: filtered.map(|_| LinearConfig::new(self.dim, self.dim).with_bias(false).init(device)),
            attention: ViewAttention::new(self.dim, self.attention_dim, device),
            image: filtered.unwrap_or(usize::MAX),
        }
    }
}

/// MMSS's fusion.
#[derive(Module, Debug)]
pub struct Mmss {
    /// `F_v`, `b` of the image filter.
    pub filter_image: Option<Linear>,
    /// `F_c` of the image filter.
    pub filter_context: Option<Linear>,
    /// The modality attention.
    pub attention: ViewAttention,
    /// Position of the filtered image (`usize::MAX`: none).
    pub image: usize,
}

impl Mmss {
    /// The image filter's gate `g` (`None` without an image to filter).
    ///
    /// # Shapes
    /// - `specific`: M tensors `[n, d]` (absent modalities zeroed); `presence`: M entries
    /// - output: `[n, d]`
    pub fn gate(&self, specific: &[Tensor<2>], presence: &[Option<Tensor<2>>]) -> Option<Tensor<2>> {
        let (Some(fv), Some(fc)) = (&self.filter_image, &self.filter_context) else {
            return None;
        };
        let image = specific.get(self.image)?;
        // The mean of the other modalities the item has.
        let (mut sum, mut count): (Option<Tensor<2>>, Option<Tensor<2>>) = (None, None);
        for (k, s) in specific.iter().enumerate().filter(|(k, _)| *k != self.image) {
            let here = presence.get(k).cloned().flatten().unwrap_or_else(|| s.clone().narrow(1, 0, 1).ones_like());
            sum = Some(sum.map_or(s.clone(), |a| a + s.clone()));
            count = Some(count.map_or(here.clone(), |c| c + here));
        }
        let context = sum? / count?.clamp_min(1.0);
        Some(sigmoid(fv.forward(image.clone()) + fc.forward(context)))
    }

    /// Item vectors.
    ///
    /// # Shapes
    /// - `specific`: M tensors `[n, d]`; `presence`: M entries, `[n, 1]` or `None`
    /// - output: `[n, d]`
    pub fn forward(&self, specific: Vec<Tensor<2>>, presence: &[Option<Tensor<2>>]) -> Tensor<2> {
        let mut s = present(specific, presence);
        if let Some(g) = self.gate(&s, presence) {
            s[self.image] = s[self.image].clone() * g;
        }
        self.attention.forward(&s, presence)
    }
}
