//! xDeepFM (Lian et al., "xDeepFM: Combining Explicit and Implicit Feature Interactions for
//! Recommender Systems", KDD 2018), a group-2 baseline of Table 2.
//!
//! Kept: the three parts summed into one logit over the same field embeddings —
//! - a linear part over the concatenated fields;
//! - the **Compressed Interaction Network**: `X^k_h = Σ_{i,j} W^{k,h}_{ij} (X^{k−1}_i ∘ X^0_j)`,
//!   layer after layer, each layer's feature maps sum-pooled over the embedding dimension and a
//!   linear unit over all pooled maps (explicit, vector-wise interactions of bounded degree);
//! - a **DNN** over the concatenated fields (implicit interactions).
//!
//! Fields, fed MARN's features (§4.3): the candidate's modality vectors `s_m` (one field per
//! modality: ids, image, title, statistics) and the user's behaviors as one field per modality,
//! the mean of the behavior items' `s_m`. A modality an item lacks is a zero field.
//! Simplified: the original's fields are raw categorical embeddings and its CIN layers may split
//! their maps half to the output (`split_half`); here every map of every layer goes to the output
//! and the CIN has no activation (the original's default identity).

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use crate::modules::ctr_head::{CtrHead, CtrHeadConfig};

/// Config of [`XDeepFm`].
#[derive(Debug, Clone, PartialEq)]
pub struct XDeepFmConfig {
    /// Number of fields `m`.
    pub n_fields: usize,
    /// Width `D` of every field embedding.
    pub field_dim: usize,
    /// Feature maps `H_k` of each CIN layer.
    pub cin_layers: Vec<usize>,
    /// Hidden widths of the DNN.
    pub dnn_layers: Vec<usize>,
}

impl XDeepFmConfig {
    /// Build the three parts.
    pub fn init(&self, device: &Device) -> XDeepFm {
        let (m, d) = (self.n_fields, self.field_dim);
        let mut maps = m;
        let mut cin = Vec::with_capacity(self.cin_layers.len());
        for &h in &self.cin_layers {
            cin.push(LinearConfig::new(maps * m, h).with_bias(false).init(device));
            maps = h;
        }
        let pooled: usize = self.cin_layers.iter().sum();
        XDeepFm {
            linear: LinearConfig::new(m * d, 1).init(device),
            cin,
            cin_output: LinearConfig::new(pooled.max(1), 1).with_bias(false).init(device),
            dnn: CtrHeadConfig { input_dim: m * d, layers: self.dnn_layers.clone() }.init(device),
        }
    }
}

/// xDeepFM: linear + CIN + DNN.
#[derive(Module, Debug)]
pub struct XDeepFm {
    /// The linear part.
    pub linear: Linear,
    /// `W^k`, one per CIN layer, mapping the `H_{k−1}·m` outer products to `H_k` maps.
    pub cin: Vec<Linear>,
    /// The linear unit over the sum-pooled maps of every layer.
    pub cin_output: Linear,
    /// The DNN (ReLU layers and one output unit).
    pub dnn: CtrHead,
}

impl XDeepFm {
    /// The CIN's logit.
    ///
    /// # Shapes
    /// - `fields`: `[B, m, D]`; output: `[B]`
    pub fn cin(&self, fields: Tensor<3>) -> Tensor<1> {
        let [b, m, d] = fields.dims();
        let mut x = fields.clone();
        let mut pooled = Vec::with_capacity(self.cin.len());
        for layer in &self.cin {
            let h = x.dims()[1];
            // Z[b, i, j, :] = X^{k−1}_i ∘ X^0_j, laid out as [B, D, H·m] for the map-mixing matmul.
            let z = x.unsqueeze_dim::<4>(2) * fields.clone().unsqueeze_dim::<4>(1);
            let z = z.reshape([b, h * m, d]).swap_dims(1, 2);
            x = layer.forward(z).swap_dims(1, 2); // [B, H_k, D]
            let maps = x.dims()[1];
            pooled.push(x.clone().sum_dim(2).reshape([b, maps]));
        }
        if pooled.is_empty() {
            return Tensor::zeros([b], &fields.device());
        }
        self.cin_output.forward(Tensor::cat(pooled, 1)).reshape([b])
    }

    /// Click logits: linear + CIN + DNN.
    ///
    /// # Shapes
    /// - `fields`: `[B, m, D]`; output: `[B]`
    pub fn forward(&self, fields: Tensor<3>) -> Tensor<1> {
        let [b, m, d] = fields.dims();
        let flat = fields.clone().reshape([b, m * d]);
        self.linear.forward(flat.clone()).reshape([b]) + self.cin(fields) + self.dnn.forward(flat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData, Tolerance};

    /// One CIN layer computed by hand: `Σ_{i,j} W_{h,(i,j)} x_i ∘ x_j`, summed over D.
    #[test]
    fn cin_layer_matches_the_definition() {
        let device = Device::flex();
        let model = XDeepFmConfig { n_fields: 2, field_dim: 3, cin_layers: vec![1], dnn_layers: vec![] }.init(&device);
        let fields = Tensor::<3>::random([1, 2, 3], Distribution::Default, &device);
        let x: Vec<f32> = fields.clone().into_data().try_to_vec::<f32>().unwrap();
        let w: Vec<f32> = model.cin[0].weight.val().into_data().try_to_vec::<f32>().unwrap(); // [m·m, 1]
        let out: Vec<f32> = model.cin_output.weight.val().into_data().try_to_vec::<f32>().unwrap(); // [1, 1]
        let mut expected = 0.0f32;
        for i in 0..2 {
            for j in 0..2 {
                let dot: f32 = (0..3).map(|k| x[i * 3 + k] * x[j * 3 + k]).sum();
                expected += w[i * 2 + j] * dot;
            }
        }
        model
            .cin(fields)
            .into_data()
            .assert_approx_eq::<f32>(&TensorData::from([expected * out[0]]), Tolerance::absolute(1e-5));
    }
}
