//! One file per block of the paper (§3): modality embedding (§3.1), attention fusion (§3.2),
//! the adversarial network (§3.3), APGRU (§3.4.1), the CTR head (§3.4.2), the whole model, and
//! the Table 2 baselines ([`baselines`], one file per model).

pub mod adversarial;
pub mod apgru;
pub mod attention_fusion;
pub mod baselines;
pub mod ctr_head;
pub mod fused;
pub mod marn;
pub mod modality_embedding;

use std::cell::Cell;

use burn::nn::Linear;
use burn::tensor::{FloatDType, Tensor};
use serde::{Deserialize, Serialize};

/// The precision of the linear layers' matrix products (`[train.model] precision`). `bf16` is
/// mixed precision: weights, biases, activations and AdaGrad stay f32, and each product rounds
/// its two operands to bfloat16 and returns f32 (its backward likewise), which is what a GPU's
/// tensor cores run fast. The title convolutions and the attention's own products stay f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// f32 throughout.
    #[default]
    F32,
    /// The linear layers' products in bfloat16.
    Bf16,
}

impl Precision {
    /// Whether this is the default, f32 (left out of a run key, so the keys of f32 runs stay
    /// what they were before the setting existed).
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }
}

thread_local! {
    /// The precision [`linear`] computes in on this thread: set for one forward pass by
    /// [`PrecisionScope`], the way an autocast region works (a pass runs on one thread).
    static PRODUCTS: Cell<Precision> = const { Cell::new(Precision::F32) };
}

/// Sets this thread's product precision until dropped, then restores the one before.
pub(crate) struct PrecisionScope(Precision);

impl PrecisionScope {
    pub(crate) fn enter(precision: Precision) -> Self {
        Self(PRODUCTS.with(|p| p.replace(precision)))
    }
}

impl Drop for PrecisionScope {
    fn drop(&mut self) {
        PRODUCTS.with(|p| p.set(self.0));
    }
}

/// `layer` applied to `x`, its product in this thread's precision ([`PrecisionScope`]).
///
/// # Shapes
/// - `x`: `[.., d_in]`; output: `[.., d_out]`
pub(crate) fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    if PRODUCTS.with(Cell::get) == Precision::F32 {
        return layer.forward(x);
    }
    let w = layer.weight.val().cast(FloatDType::BF16);
    let y = burn::tensor::module::linear(x.cast(FloatDType::BF16), w, None).cast(FloatDType::F32);
    match &layer.bias {
        Some(b) => y + b.val().unsqueeze::<D>(),
        None => y,
    }
}

// `tanh` for every block: one operation with its backward from the output.
pub(crate) use fused::tanh;

/// One [`burn::nn::Linear`] per modality, each applied to its own modality of a stacked input,
/// as one batched product: `y[m] = x[m] · W_m + b_m`. The same values as calling each layer on
/// its modality; one matrix product and one bias add instead of M of each.
///
/// # Shapes
/// - `layers`: M layers `d_in → d_out`, all with a bias or all without; `x`: `[M, n, d_in]`
/// - output: `[M, n, d_out]`
pub(crate) fn per_modality_linear(layers: &[burn::nn::Linear], x: Tensor<3>) -> Tensor<3> {
    let weights = Tensor::stack::<3>(layers.iter().map(|l| l.weight.val()).collect(), 0);
    let y = match PRODUCTS.with(Cell::get) {
        Precision::F32 => x.matmul(weights),
        Precision::Bf16 => x.cast(FloatDType::BF16).matmul(weights.cast(FloatDType::BF16)).cast(FloatDType::F32),
    };
    let biases: Option<Vec<Tensor<1>>> = layers.iter().map(|l| l.bias.as_ref().map(|b| b.val())).collect();
    match biases {
        Some(b) => y + Tensor::stack::<2>(b, 0).unsqueeze_dim::<3>(1),
        None => y,
    }
}

/// The modalities stacked along a first axis.
///
/// # Shapes
/// - `features`: M tensors `[n, d]`; output: `[M, n, d]`
pub(crate) fn stack(features: &[Tensor<2>]) -> Tensor<3> {
    Tensor::stack::<3>(features.to_vec(), 0)
}

/// The modalities of a stack, one tensor each (for inspection: no backward runs through it).
///
/// # Shapes
/// - `stacked`: `[M, n, d]`; output: M tensors `[n, d]`
pub(crate) fn unstack(stacked: Tensor<3>) -> Vec<Tensor<2>> {
    let m = stacked.dims()[0];
    stacked.chunk(m, 0).into_iter().map(|t| t.squeeze_dim::<2>(0)).collect()
}

/// The presence of every modality stacked: `[M, n, 1]`, 1.0 where the item has modality `m`;
/// `None` when every item has every modality.
///
/// # Shapes
/// - `presence`: M entries, `[n, 1]` or `None` (every item has it); output: `[M, n, 1]`
pub fn stack_presence(presence: &[Option<Tensor<2>>], n: usize, device: &burn::tensor::Device) -> Option<Tensor<3>> {
    if presence.iter().all(Option::is_none) {
        return None;
    }
    let rows = presence.iter().map(|p| p.clone().unwrap_or_else(|| Tensor::ones([n, 1], device))).collect();
    Some(Tensor::stack::<3>(rows, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::LinearConfig;
    use burn::tensor::{Device, Distribution, Tolerance};

    #[test]
    fn bf16_products_round_the_operands_and_keep_f32_outside() {
        let device = Device::flex().autodiff();
        let layer = LinearConfig::new(64, 8).init(&device);
        let x = Tensor::<2>::random([16, 64], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let exact = linear(&layer, x.clone());
        let mixed = {
            let _bf16 = PrecisionScope::enter(Precision::Bf16);
            linear(&layer, x.clone())
        };
        // The scope ended: f32 again.
        assert_eq!(PRODUCTS.with(Cell::get), Precision::F32);
        assert_eq!(mixed.dtype(), exact.dtype());
        let (a, b) = (
            exact.clone().into_data().try_to_vec::<f32>().unwrap(),
            mixed.clone().into_data().try_to_vec::<f32>().unwrap(),
        );
        let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        // bfloat16 keeps 8 significant bits: products of unit-scale inputs over 64 terms differ
        // by about 1e-2, not 0 (the rounding happened) and not 1 (the product is still right).
        assert!(diff > 1e-5 && diff < 0.1, "largest difference {diff}");
        // The gradient reaches the f32 weights and input, in f32.
        let grads = mixed.sum().backward();
        let gw = layer.weight.grad(&grads).unwrap();
        assert_eq!(gw.dims(), [64, 8]);
        let gx = x.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
        assert!(gx.iter().all(|g| g.is_finite()) && gx.iter().any(|g| *g != 0.0));
        // Per-modality products follow the same scope.
        let layers: Vec<Linear> = (0..2).map(|_| LinearConfig::new(64, 8).init(&device)).collect();
        let xs = Tensor::<3>::random([2, 16, 64], Distribution::Normal(0.0, 1.0), &device);
        let exact = per_modality_linear(&layers, xs.clone());
        let _bf16 = PrecisionScope::enter(Precision::Bf16);
        let mixed = per_modality_linear(&layers, xs);
        exact.into_data().assert_approx_eq::<f32>(&mixed.clone().into_data(), Tolerance::absolute(0.1));
    }

    #[test]
    fn per_modality_and_shared_linear_equal_each_layer_on_its_modality() {
        let device = Device::flex();
        let (m, n, d_in, d_out) = (3, 5, 4, 6);
        let x = Tensor::<3>::random([m, n, d_in], Distribution::Default, &device);
        let layers: Vec<burn::nn::Linear> = (0..m).map(|_| LinearConfig::new(d_in, d_out).init(&device)).collect();
        let stacked = per_modality_linear(&layers, x.clone());
        // A shared layer takes the stack as it is (burn folds the leading axes into the rows).
        let shared = layers[1].forward(x.clone());
        assert_eq!(stacked.dims(), [m, n, d_out]);
        for (k, layer) in layers.iter().enumerate() {
            let x_k = x.clone().narrow(0, k, 1).reshape([n, d_in]);
            let own = stacked.clone().narrow(0, k, 1).reshape([n, d_out]);
            own.into_data().assert_approx_eq::<f32>(&layer.forward(x_k.clone()).into_data(), Tolerance::absolute(1e-6));
            let by_shared = shared.clone().narrow(0, k, 1).reshape([n, d_out]);
            by_shared
                .into_data()
                .assert_approx_eq::<f32>(&layers[1].forward(x_k).into_data(), Tolerance::absolute(1e-6));
        }
        // Without biases, the product alone.
        let plain: Vec<burn::nn::Linear> =
            (0..m).map(|_| LinearConfig::new(d_in, d_out).with_bias(false).init(&device)).collect();
        let x_0 = x.clone().narrow(0, 0, 1).reshape([n, d_in]);
        per_modality_linear(&plain, x)
            .narrow(0, 0, 1)
            .reshape([n, d_out])
            .into_data()
            .assert_approx_eq::<f32>(&plain[0].forward(x_0).into_data(), Tolerance::absolute(1e-6));
    }
}
