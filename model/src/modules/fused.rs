//! `tanh` and the sigmoid as single operations with their own backward pass, through burn's
//! backend extensions.
//!
//! Why. burn's autodiff keeps the *input* of `tanh` and `sigmoid` and evaluates the function
//! again in the backward pass to get its derivative, and burn's CPU backend (flex) evaluates both
//! with the C library's scalar `expf`/`tanhf`, one element after another on one thread. MARN
//! applies them to every distinct item's `s_m` and `c_m` (4 × 17,921 × 256 values at batch 1024,
//! four times per step) and to every GRU step, so on flex they took more of the step than the
//! matrix products around them. Here:
//! - the derivative is taken from the *output* (`1 − y²`, `y (1 − y)`), which the backward pass
//!   keeps instead of the input, so nothing is evaluated twice;
//! - on flex, forward and backward run vectorised (whatever SIMD width the processor has, chosen
//!   at run time) over both cores, with `exp` evaluated by range reduction and a polynomial
//!   ([`exp`]), within a few units in the last place of the C library's;
//! - the arithmetic is the same on every SIMD width (no fused multiply-add, which would round
//!   differently), so a run gives the same bits on every x86 machine;
//! - elsewhere (LibTorch) the forward is the backend's own `tanh`/`sigmoid` and only the
//!   backward changes. Other backends (the GPU's cubecl) never reach here: [`super::tanh`] and
//!   [`sigmoid`] keep burn's own operations for them.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::{ActivationOps, FloatTensorOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Flex};
use burn::tensor::{DType, Device, Tensor, TensorData};
use rayon::prelude::*;

/// The two activations as backend operations. The default bodies are burn's own operations; flex
/// overrides them with the vectorised kernels below, and autodiff with the backward from the
/// output.
#[backend_extension(Flex, LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait FusedActivations: Backend {
    /// `tanh(x)`.
    fn fused_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_tanh(x)
    }

    /// The gradient of `tanh` at the input whose output is `output`: `grad · (1 − output²)`.
    fn fused_tanh_backward(output: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let square = Self::float_mul(output.clone(), output);
        Self::float_mul(grad, Self::float_add_scalar(Self::float_neg(square), 1f32.into()))
    }

    /// `σ(x) = 1 / (1 + e^−x)`.
    fn fused_sigmoid(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::sigmoid(x)
    }

    /// The gradient of `σ` at the input whose output is `output`: `grad · output (1 − output)`.
    fn fused_sigmoid_backward(output: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::sigmoid_backward(output, grad)
    }
}

impl FusedActivations for Flex {
    fn fused_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match unary_f32(&x, Kernel::Tanh) {
            Some(y) => y,
            None => Self::float_tanh(x),
        }
    }

    fn fused_tanh_backward(output: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        match binary_f32(&output, &grad, Kernel::TanhGrad) {
            Some(g) => g,
            None => {
                let square = Self::float_mul(output.clone(), output);
                Self::float_mul(grad, Self::float_add_scalar(Self::float_neg(square), 1f32.into()))
            }
        }
    }

    fn fused_sigmoid(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match unary_f32(&x, Kernel::Sigmoid) {
            Some(y) => y,
            None => Self::sigmoid(x),
        }
    }

    fn fused_sigmoid_backward(output: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        match binary_f32(&output, &grad, Kernel::SigmoidGrad) {
            Some(g) => g,
            None => Self::sigmoid_backward(output, grad),
        }
    }
}

#[cfg(feature = "tch")]
impl FusedActivations for burn::backend::LibTorch {}

/// The backward step of both activations: the output is the state.
#[derive(Debug)]
struct FromOutput {
    sigmoid: bool,
}

impl<B: Backend + FusedActivations> Backward<B, 1> for FromOutput {
    type State = B::FloatTensorPrimitive;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let output = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| match self.sigmoid {
            true => B::fused_sigmoid_backward(output, grad),
            false => B::fused_tanh_backward(output, grad),
        });
    }
}

/// The activation `forward` of `x` as one tracked operation whose backward reads its output.
fn from_output<B, C>(
    x: FloatTensor<Autodiff<B, C>>,
    sigmoid: bool,
    forward: fn(FloatTensor<B>) -> FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>>
where
    B: Backend + FusedActivations,
    C: CheckpointStrategy,
{
    let (primitive, node) = x.into_parts();
    match <FromOutput as Backward<B, 1>>::prepare::<C>(FromOutput { sigmoid }, [node]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let y = forward(primitive);
            prep.finish(y.clone(), y)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(primitive)),
    }
}

impl<B: Backend + FusedActivations, C: CheckpointStrategy> FusedActivations for Autodiff<B, C> {
    fn fused_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        from_output::<B, C>(x, false, B::fused_tanh)
    }

    fn fused_sigmoid(x: FloatTensor<Self>) -> FloatTensor<Self> {
        from_output::<B, C>(x, true, B::fused_sigmoid)
    }
}

/// Whether `device` is burn's CPU backend (flex) or LibTorch, with or without autodiff: the
/// backends [`FusedActivations`] is implemented for.
fn fused_here(device: &Device) -> bool {
    use burn::backend::DispatchDevice;
    match device.clone().inner().as_dispatch() {
        DispatchDevice::Flex(_) => true,
        #[cfg(feature = "tch")]
        DispatchDevice::LibTorch(_) => true,
        _ => false,
    }
}

/// `tanh(x)`: [`FusedActivations::fused_tanh`] on flex and LibTorch, burn's own elsewhere.
pub fn tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if !fused_here(&x.device()) {
        return x.tanh();
    }
    Tensor::from_dispatch(<burn::backend::Dispatch as FusedActivations>::fused_tanh(x.into_dispatch()))
}

/// `σ(x)`: [`FusedActivations::fused_sigmoid`] on flex and LibTorch, burn's own elsewhere.
pub fn sigmoid<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if !fused_here(&x.device()) {
        return burn::tensor::activation::sigmoid(x);
    }
    Tensor::from_dispatch(<burn::backend::Dispatch as FusedActivations>::fused_sigmoid(x.into_dispatch()))
}

/// The element-wise kernels of flex's overrides.
#[derive(Debug, Clone, Copy)]
enum Kernel {
    Tanh,
    Sigmoid,
    /// `grad · (1 − y²)` of the output `y`.
    TanhGrad,
    /// `grad · y (1 − y)`.
    SigmoidGrad,
}

/// Elements per task: large enough that a task's overhead is small against its work, small
/// enough that both cores get some of a [B, 128] GRU step's.
const CHUNK: usize = 16 * 1024;

/// The f32 values of `t` in logical (row-major) order, borrowed when they lie so in memory.
fn values(t: &FlexTensor) -> Option<std::borrow::Cow<'_, [f32]>> {
    if t.dtype() != DType::F32 {
        return None;
    }
    match t.as_slice::<f32>() {
        Some(s) => Some(std::borrow::Cow::Borrowed(s)),
        None => Some(std::borrow::Cow::Owned(t.to_contiguous().as_slice::<f32>()?.to_vec())),
    }
}

fn tensor(values: Vec<f32>, like: &FlexTensor) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, like.layout().shape().clone()))
}

/// `kernel` over `x`, on every core; `None` when `x` is not f32 (the caller falls back).
fn unary_f32(x: &FlexTensor, kernel: Kernel) -> Option<FlexTensor> {
    let src = values(x)?;
    let mut out = vec![0f32; src.len()];
    out.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(o, i)| {
        pulp::Arch::new().dispatch(Map { kernel, a: i, b: &[], out: o });
    });
    Some(tensor(out, x))
}

/// `kernel` over `(a, b)` of the same shape, on every core; `None` when either is not f32 or
/// their shapes differ.
fn binary_f32(a: &FlexTensor, b: &FlexTensor, kernel: Kernel) -> Option<FlexTensor> {
    if a.layout().shape() != b.layout().shape() {
        return None;
    }
    let (va, vb) = (values(a)?, values(b)?);
    let mut out = vec![0f32; va.len()];
    out.par_chunks_mut(CHUNK).zip(va.par_chunks(CHUNK)).zip(vb.par_chunks(CHUNK)).for_each(|((o, x), y)| {
        pulp::Arch::new().dispatch(Map { kernel, a: x, b: y, out: o });
    });
    Some(tensor(out, a))
}

/// One chunk of a kernel, compiled for the SIMD width `pulp` found at run time (the loops below
/// are vectorised by the compiler inside it).
struct Map<'a> {
    kernel: Kernel,
    a: &'a [f32],
    b: &'a [f32],
    out: &'a mut [f32],
}

impl pulp::WithSimd for Map<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let Map { kernel, a, b, out } = self;
        match kernel {
            Kernel::Tanh => out.iter_mut().zip(a).for_each(|(o, &x)| *o = tanh1(x)),
            Kernel::Sigmoid => out.iter_mut().zip(a).for_each(|(o, &x)| *o = sigmoid1(x)),
            Kernel::TanhGrad => out.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (&y, &g))| *o = g * (1.0 - y * y)),
            Kernel::SigmoidGrad => {
                out.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (&y, &g))| *o = g * (y * (1.0 - y)))
            }
        }
    }
}

/// `e^x` for f32, without branches (so that the loops vectorise).
///
/// `x = n ln 2 + r` with `n` the nearest integer to `x / ln 2` and `|r| ≤ ln 2 / 2`; `e^r` is
/// its Taylor polynomial of degree 7 (truncation error below `r⁸/8! < 6e-9`, under f32's
/// rounding); `2^n` is built in the exponent bits. `ln 2` is split in a part exact in f32 and a
/// correction, so `r` keeps its precision for large `|x|`. `x` is clamped to `[−87, 88]`, where
/// `2^n` stays a normal number: `e^88` is 1.65e38 and `e^−87` 1.6e-38, so the clamp changes
/// only results that overflow or fall below the normal range, where the callers' `1 + e` or
/// `1 / (1 + e)` round to the same values. NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 = LN2_HI + LN2_LO, LN2_HI = 355/512 (9 significant bits), so n · LN2_HI is exact.
    const LN2_HI: f32 = 355.0 / 512.0;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 · 2^23 rounds to an integer, to nearest (the bits below the unit are shifted
    // out), in any SIMD width.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // The integer n sits in the low bits of `shifted` (offset by the 0x4B400000 of ROUND).
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    p * scale
}

/// `σ(x) = 1 / (1 + e^−x)`.
#[inline(always)]
pub fn sigmoid1(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `tanh(x)`. For `|x| ≥ 0.25`, `(1 − t) / (1 + t)` with `t = e^−2|x|`; below, where `1 − t`
/// would cancel, its Taylor series to `x⁹` (the next term is under 4e-9 of the value there).
#[inline(always)]
pub fn tanh1(x: f32) -> f32 {
    let a = x.abs();
    let t = exp(-2.0 * a);
    let large = (1.0 - t) / (1.0 + t);
    let a2 = a * a;
    let small = a * (1.0 + a2 * (-1.0 / 3.0 + a2 * (2.0 / 15.0 + a2 * (-17.0 / 315.0 + a2 * (62.0 / 2835.0)))));
    let y = if a < 0.25 { small } else { large };
    y.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tolerance};

    /// Relative error of `f` against the f64 reference `reference`, in units of f32's epsilon,
    /// the largest over a dense sweep of `range`.
    fn worst(f: fn(f32) -> f32, reference: fn(f64) -> f64, range: std::ops::Range<f32>) -> f64 {
        let steps = 200_000;
        (0..=steps)
            .map(|i| {
                let x = range.start + (range.end - range.start) * i as f32 / steps as f32;
                let (got, want) = (f(x) as f64, reference(x as f64));
                if want == 0.0 {
                    got.abs() / f32::MIN_POSITIVE as f64
                } else {
                    ((got - want) / want).abs() / f32::EPSILON as f64
                }
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn exp_tanh_and_sigmoid_are_within_a_few_ulp_of_f64() {
        assert!(worst(exp, f64::exp, -87.0..88.0) < 4.0, "exp");
        assert!(worst(tanh1, f64::tanh, -10.0..10.0) < 4.0, "tanh");
        assert!(worst(tanh1, f64::tanh, -0.3..0.3) < 4.0, "tanh near 0");
        assert!(worst(sigmoid1, |x| 1.0 / (1.0 + (-x).exp()), -80.0..30.0) < 4.0, "sigmoid");
        // The ends: saturation, and tanh's sign and odd symmetry.
        assert_eq!(tanh1(50.0), 1.0);
        assert_eq!(tanh1(-50.0), -1.0);
        assert_eq!(tanh1(1e-30), 1e-30);
        assert!(tanh1(-0.0).is_sign_negative());
        assert_eq!(sigmoid1(200.0), 1.0);
        assert!(sigmoid1(-200.0) >= 0.0 && sigmoid1(-200.0) < 1e-37);
        assert!(exp(f32::NAN).is_nan() && tanh1(f32::NAN).is_nan() && sigmoid1(f32::NAN).is_nan());
    }

    /// Values and gradients of [`tanh`] and [`sigmoid`] against burn's own operations, on
    /// flex with autodiff, for a tensor larger than one chunk and for a transposed (strided)
    /// view.
    #[test]
    fn fused_activations_and_their_gradients_equal_burns() {
        let device = Device::flex().autodiff();
        for transposed in [false, true] {
            let base = Tensor::<2>::random([300, 257], Distribution::Normal(0.0, 2.0), &device);
            let x = if transposed { base.transpose() } else { base };
            let weights = Tensor::<2>::random(x.dims(), Distribution::Normal(0.0, 1.0), &device);
            for (name, fused, plain) in [
                (
                    "tanh",
                    tanh::<2> as fn(Tensor<2>) -> Tensor<2>,
                    (|x: Tensor<2>| x.tanh()) as fn(Tensor<2>) -> Tensor<2>,
                ),
                ("sigmoid", sigmoid::<2>, burn::tensor::activation::sigmoid::<2>),
            ] {
                let grad_of = |f: fn(Tensor<2>) -> Tensor<2>| {
                    let x = x.clone().detach().require_grad();
                    let y = f(x.clone());
                    let grads = (y.clone() * weights.clone()).sum().backward();
                    (y.into_data(), x.grad(&grads).expect("a gradient").into_data())
                };
                let (y, g) = grad_of(fused);
                let (y_ref, g_ref) = grad_of(plain);
                assert_eq!(y.shape(), y_ref.shape(), "{name}, transposed {transposed}");
                y.assert_approx_eq::<f32>(&y_ref, Tolerance::absolute(1e-6));
                g.assert_approx_eq::<f32>(&g_ref, Tolerance::absolute(1e-5));
            }
        }
    }

    /// Without autodiff the same kernels run, and a tensor that does not track gradients
    /// through autodiff gives the same values as one that does.
    #[test]
    fn the_untracked_path_gives_the_tracked_values() {
        let plain = Device::flex();
        let x = Tensor::<3>::random([4, 100, 50], Distribution::Normal(0.0, 3.0), &plain);
        let tracked = Tensor::<3>::from_data(x.clone().into_data(), &plain.clone().autodiff()).require_grad();
        tanh(x.clone()).into_data().assert_eq(&tanh(tracked.clone()).into_data(), true);
        sigmoid(x).into_data().assert_eq(&sigmoid(tracked).into_data(), true);
    }
}
