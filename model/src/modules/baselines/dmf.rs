//! DMF (Hu et al., "Dense Multimodal Fusion for Hierarchically Joint Representation",
//! ICASSP 2019), a group-3 baseline of Table 2.
//!
//! Kept: every modality has its own stack of layers, and a **shared layer at every level**
//! fuses the modalities of that level **and the shared layer below** (the dense, layer-by-layer
//! correlation of the original):
//!
//! ```text
//! h^m_0 = s_m                        f_0 = tanh(Σ_m W^m_0 h^m_0 + b_0)
//! h^m_l = tanh(V^m_l h^m_{l−1})      f_l = tanh(Σ_m W^m_l h^m_l + U_l f_{l−1} + b_l)
//! ```
//!
//! and the item vector is the top shared layer `f_L`. Fed MARN's features: `h^m_0` is MARN's
//! modality-specific projection `s_m`, zero for a modality the item lacks (the modality layers
//! have no bias, so an absent modality stays zero at every level). The behaviors are integrated
//! by the ablations' BaseModel GRU (last real state), so DMF against `conc` and `maf` compares
//! fusions alone. Simplified: the original trains its modality stacks with a reconstruction
//! objective before the joint one; here everything trains end to end on the CTR loss, and the
//! depth is fixed at [`DMF_DEPTH`] levels.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use super::present;
use crate::modules::tanh;

/// Levels of shared layers.
pub const DMF_DEPTH: usize = 2;

/// Config of [`Dmf`].
#[derive(Debug, Clone, PartialEq)]
pub struct DmfConfig {
    /// Width of every layer.
    pub dim: usize,
    /// Number of modalities `M`.
    pub n_modalities: usize,
}

impl DmfConfig {
    /// Build [`DMF_DEPTH`] levels.
    pub fn init(&self, device: &Device) -> Dmf {
        let (d, m) = (self.dim, self.n_modalities);
        let linear = |bias: bool| LinearConfig::new(d, d).with_bias(bias).init(device);
        Dmf {
            modality: (0..(DMF_DEPTH - 1) * m).map(|_| linear(false)).collect(),
            shared_in: (0..DMF_DEPTH * m).map(|k| linear(k % m == 0)).collect(),
            shared_below: (0..DMF_DEPTH - 1).map(|_| linear(false)).collect(),
            n_modalities: m,
        }
    }
}

/// DMF's fusion.
#[derive(Module, Debug)]
pub struct Dmf {
    /// `V^m_l` for levels 1.., row-major by (level − 1, modality).
    pub modality: Vec<Linear>,
    /// `W^m_l` by (level, modality); the first of each level carries `b_l`.
    pub shared_in: Vec<Linear>,
    /// `U_l` for levels 1...
    pub shared_below: Vec<Linear>,
    /// `M`.
    pub n_modalities: usize,
}

impl Dmf {
    /// Item vectors `f_L`.
    ///
    /// # Shapes
    /// - `specific`: M tensors `[n, d]`; `presence`: M entries, `[n, 1]` or `None`
    /// - output: `[n, d]`
    pub fn forward(&self, specific: Vec<Tensor<2>>, presence: &[Option<Tensor<2>>]) -> Tensor<2> {
        let m = self.n_modalities;
        let mut h = present(specific, presence);
        let mut shared: Option<Tensor<2>> = None;
        for level in 0..DMF_DEPTH {
            if level > 0 {
                h = h
                    .iter()
                    .enumerate()
                    .map(|(k, x)| tanh(self.modality[(level - 1) * m + k].forward(x.clone())))
                    .collect();
            }
            let mut sum = h
                .iter()
                .enumerate()
                .map(|(k, x)| self.shared_in[level * m + k].forward(x.clone()))
                .reduce(|a, b| a + b)
                .expect("at least one modality");
            if let Some(below) = shared {
                sum = sum + self.shared_below[level - 1].forward(below);
            }
            shared = Some(tanh(sum));
        }
        shared.expect("DMF_DEPTH > 0")
    }
}
