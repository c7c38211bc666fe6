//! One file per block of the paper (§3): modality embedding (§3.1), attention fusion (§3.2),
//! the adversarial network (§3.3), APGRU (§3.4.1), the CTR head (§3.4.2), the whole model, and
//! the Table 2 baselines ([`baselines`], one file per model).

pub mod adversarial;
pub mod apgru;
pub mod attention_fusion;
pub mod baselines;
pub mod ctr_head;
pub mod marn;
pub mod modality_embedding;

use burn::tensor::activation::sigmoid;
use burn::tensor::Tensor;

/// `tanh(x) = 2 σ(2x) − 1`, the form every layer here uses. The same function (to within
/// 1e-7, the rounding of the subtraction near 0), computed through the backend's sigmoid: burn's
/// CPU backend evaluates `Tensor::tanh` with the C library's scalar `tanhf` per element, which
/// took 16% of MARN's training step, against about a third of that for this form.
pub(crate) fn tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    sigmoid(x.mul_scalar(2.0)).mul_scalar(2.0).sub_scalar(1.0)
}
