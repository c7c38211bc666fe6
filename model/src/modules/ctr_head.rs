//! CTR prediction layer (paper §3.4.2): an MLP with ReLU ([128, 64] by default, [512, 256] for
//! the Taobao config), a sigmoid output and the point-wise log loss.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::{log_sigmoid, relu};
use burn::tensor::{Device, Tensor};

use super::linear;

/// Config of [`CtrHead`].
#[derive(Debug, Clone, PartialEq)]
pub struct CtrHeadConfig {
    /// Input width.
    pub input_dim: usize,
    /// Hidden layer widths.
    pub layers: Vec<usize>,
}

impl CtrHeadConfig {
    /// Build the MLP.
    pub fn init(&self, device: &Device) -> CtrHead {
        let mut width = self.input_dim;
        let mut layers = Vec::with_capacity(self.layers.len());
        for &w in &self.layers {
            layers.push(LinearConfig::new(width, w).init(device));
            width = w;
        }
        CtrHead { layers, output: LinearConfig::new(width, 1).init(device) }
    }
}

/// MLP ending in one logit.
#[derive(Module, Debug)]
pub struct CtrHead {
    /// Hidden layers (ReLU).
    pub layers: Vec<Linear>,
    /// Output layer (the logit).
    pub output: Linear,
}

impl CtrHead {
    /// Click logits (apply a sigmoid for probabilities).
    ///
    /// # Shapes
    /// - `input`: `[B, input_dim]`; output: `[B]`
    pub fn forward(&self, input: Tensor<2>) -> Tensor<1> {
        let b = input.dims()[0];
        let mut x = input;
        for layer in &self.layers {
            x = relu(linear(layer, x));
        }
        linear(&self.output, x).reshape([b])
    }
}

/// Mean log loss of logits `z` against labels `y`:
/// `−mean(y log σ(z) + (1 − y) log σ(−z))`, computed stably in log space.
///
/// # Shapes
/// - `logits`, `labels`: `[B]`; output: `[1]`
pub fn log_loss(logits: Tensor<1>, labels: Tensor<1>) -> Tensor<1> {
    let positive = log_sigmoid(logits.clone()) * labels.clone();
    let negative = log_sigmoid(logits.neg()) * labels.neg().add_scalar(1.0);
    (positive + negative).mean().neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{TensorData, Tolerance};

    #[test]
    fn log_loss_matches_hand_computed_values() {
        let device = Device::flex();
        let z = Tensor::<1>::from_data(TensorData::from([0.0f32, 2.0, -1.0]), &device);
        let y = Tensor::<1>::from_data(TensorData::from([1.0f32, 0.0, 0.0]), &device);
        // ln 2, −ln(1 − σ(2)) = ln(1 + e^2), −ln(1 − σ(−1)) = ln(1 + e^−1)
        let expected = (2f64.ln() + (1.0 + 2f64.exp()).ln() + (1.0 + (-1f64).exp()).ln()) / 3.0;
        log_loss(z, y)
            .into_data()
            .assert_approx_eq::<f32>(&TensorData::from([expected as f32]), Tolerance::absolute(1e-5));
    }

    #[test]
    fn head_gives_one_logit_per_sample() {
        let device = Device::flex();
        let head = CtrHeadConfig { input_dim: 6, layers: vec![4, 3] }.init(&device);
        assert_eq!(head.forward(Tensor::zeros([5, 6], &device)).dims(), [5]);
    }
}
