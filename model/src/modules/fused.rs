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

// LibTorch (burn-tch) is deprecated upstream but is this project's `tch` backend.
#![cfg_attr(feature = "tch", allow(deprecated))]

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, NodeGuard, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::{ActivationOps, FloatTensorOps};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{backend_extension, Autodiff, Backend, Flex, TensorMetadata};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
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

/// A GRU over a whole sequence as one operation on flex: each step's recurrent product (burn's
/// matrix product) and then the gates, the candidate and the new state in one pass over the
/// step's values; in the backward pass the steps in reverse, each in one pass, and the recurrent
/// weight's gradient as one product over all steps at the end. The composed recurrence it
/// replaces is about fifteen operations per time step (slices, sums, products, the two
/// activations, the state's stack), each with its own pass, allocation and autodiff node, and the
/// backward of each slice a zero-filled copy of what it was cut from.
///
/// `x` `[B, T, 3g]` are the input's gate pre-activations `[x_u, x_r, x_n]` of every step,
/// `extra` `[B, T, g]` a second term of the update gate's (the behavior property's `P^u p_t`),
/// `u` `[g, 3g]` the recurrent weight `[U^u, U^r, U^n]` (no bias). With `rec = h U`:
/// `z = σ((x_u + extra) + rec_u)`, `r = σ(x_r + rec_r)`, `n = tanh(x_n + r ⊙ rec_n)`,
/// `h' = h + z ⊙ (n − h)`, from `h = 0`. Output: every step's state, `[B, T, g]`.
#[backend_extension(Flex, LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait FusedGru: Backend {
    /// See [`FusedGru`].
    fn gru_sequence(x: FloatTensor<Self>, extra: FloatTensor<Self>, u: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl FusedGru for Flex {
    fn gru_sequence(x: FloatTensor<Self>, extra: FloatTensor<Self>, u: FloatTensor<Self>) -> FloatTensor<Self> {
        gru_sequence_forward(&x, &extra, &u).0
    }
}

#[cfg(feature = "tch")]
impl FusedGru for burn::backend::LibTorch {
    fn gru_sequence(x: FloatTensor<Self>, extra: FloatTensor<Self>, u: FloatTensor<Self>) -> FloatTensor<Self> {
        let device = x.device();
        let (x, extra, u) = (Self::to_host(x), Self::to_host(extra), Self::to_host(u));
        Self::from_host(gru_sequence_forward(&x, &extra, &u).0, &device)
    }
}

/// What the backward pass of [`FusedGru::gru_sequence`] keeps: the inputs, every step's state
/// and every step's recurrent product.
#[derive(Debug, Clone)]
struct GruSequenceState {
    x: FlexTensor,
    extra: FlexTensor,
    u: FlexTensor,
    states: FlexTensor,
    recs: FlexTensor,
}

/// The backward step of [`FusedGru::gru_sequence`], on the device its gradients go back to.
#[derive(Debug)]
struct GruSequenceStep<D> {
    device: D,
}

impl<B: Backend + HostKernels> Backward<B, 3> for GruSequenceStep<B::Device> {
    type State = GruSequenceState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let grad = B::to_host(grads.consume::<B>(&ops.node));
        let [dx, dextra, du] = gru_sequence_backward(&ops.state, &grad);
        for (parent, g) in ops.parents.into_iter().zip([dx, dextra, du]) {
            if let Some(parent) = parent {
                grads.register::<B>(parent.id, B::from_host(g, &self.device));
            }
        }
    }
}

impl<B: Backend + HostKernels + FusedGru, C: CheckpointStrategy> FusedGru for Autodiff<B, C> {
    fn gru_sequence(x: FloatTensor<Self>, extra: FloatTensor<Self>, u: FloatTensor<Self>) -> FloatTensor<Self> {
        let (x, x_node) = x.into_parts();
        let (extra, extra_node) = extra.into_parts();
        let (u, u_node) = u.into_parts();
        let device = x.device();
        let (x, extra, u) = (B::to_host(x), B::to_host(extra), B::to_host(u));
        let step = GruSequenceStep { device: device.clone() };
        let prep = <GruSequenceStep<B::Device> as Backward<B, 3>>::prepare::<C>(step, [x_node, extra_node, u_node]);
        match prep.compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (states, recs) = gru_sequence_forward(&x, &extra, &u);
                let out = B::from_host(states.clone(), &device);
                prep.finish(GruSequenceState { x, extra, u, states, recs }, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::from_host(gru_sequence_forward(&x, &extra, &u).0, &device)),
        }
    }
}

/// Whether the host kernels of this module run on `device` (with or without autodiff): burn's
/// CPU backend (flex), where they read the tensors in place, and LibTorch on the CPU, where the
/// tensors are copied to and from host buffers around them.
pub fn on_host(device: &Device) -> bool {
    use burn::backend::DispatchDevice;
    match device.clone().inner().as_dispatch() {
        DispatchDevice::Flex(_) => true,
        #[cfg(feature = "tch")]
        DispatchDevice::LibTorch(burn::backend::libtorch::LibTorchDevice::Cpu) => true,
        _ => false,
    }
}

/// A backend whose tensors the host kernels here can read and write as [`FlexTensor`]s: flex
/// itself (no copy), and LibTorch on the CPU (one copy each way).
pub trait HostKernels: Backend {
    /// `t` as a host tensor.
    fn to_host(t: FloatTensor<Self>) -> FlexTensor;
    /// An integer `t` as a host tensor.
    fn int_to_host(t: IntTensor<Self>) -> FlexTensor;
    /// A host tensor on `device`.
    fn from_host(t: FlexTensor, device: &Self::Device) -> FloatTensor<Self>;
}

impl HostKernels for Flex {
    fn to_host(t: FloatTensor<Self>) -> FlexTensor {
        t
    }

    fn int_to_host(t: IntTensor<Self>) -> FlexTensor {
        t
    }

    fn from_host(t: FlexTensor, _device: &Self::Device) -> FloatTensor<Self> {
        t
    }
}

#[cfg(feature = "tch")]
impl HostKernels for burn::backend::LibTorch {
    fn to_host(t: FloatTensor<Self>) -> FlexTensor {
        FlexTensor::from_data(ready(Self::float_into_data(t)).expect("a CPU tensor reads back"))
    }

    fn int_to_host(t: IntTensor<Self>) -> FlexTensor {
        use burn::backend::ops::IntTensorOps;
        FlexTensor::from_data(ready(Self::int_into_data(t)).expect("a CPU tensor reads back"))
    }

    fn from_host(t: FlexTensor, device: &Self::Device) -> FloatTensor<Self> {
        Self::float_from_data(t.into_data(), device)
    }
}

/// What a host kernel with one differentiable input keeps for its backward pass: it maps the
/// gradient of the output to the gradient of that input.
trait HostGradient: Clone + Send + std::fmt::Debug + 'static {
    /// The input's gradient from the output's, both host tensors.
    fn input_gradient(&self, grad: &FlexTensor) -> FlexTensor;
}

/// The backward step of a host kernel with one differentiable input, on the device its gradient
/// goes back to; the state `S` does the work.
#[derive(Debug)]
struct HostUnaryStep<D, S> {
    device: D,
    state: std::marker::PhantomData<S>,
}

impl<B: Backend + HostKernels, S: HostGradient> Backward<B, 1> for HostUnaryStep<B::Device, S> {
    type State = S;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let (state, device) = (ops.state, self.device);
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::from_host(state.input_gradient(&B::to_host(grad)), &device)
        });
    }
}

/// The host kernel's output `out` as an autodiff tensor on `device` whose one parent is `node`;
/// `state` is kept for the backward pass when the parent tracks gradients.
fn host_unary<B: Backend + HostKernels, C: CheckpointStrategy, S: HostGradient>(
    node: NodeGuard,
    device: B::Device,
    out: FlexTensor,
    state: S,
) -> FloatTensor<Autodiff<B, C>> {
    let out = B::from_host(out, &device);
    let step = HostUnaryStep { device, state: std::marker::PhantomData };
    match <HostUnaryStep<B::Device, S> as Backward<B, 1>>::prepare::<C>(step, [node]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(state, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// The value of a future that is ready when first polled (LibTorch's reads of CPU tensors are),
/// polling again, yielding in between, if it is not.
#[cfg(feature = "tch")]
fn ready<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(value) = future.as_mut().poll(&mut context) {
            return value;
        }
        std::thread::yield_now();
    }
}

/// [`FusedGru::gru_sequence`] on tensors: on flex or LibTorch's CPU (check [`on_host`]), every
/// tensor f32.
///
/// # Shapes
/// - `x`: `[B, T, 3g]`; `extra`: `[B, T, g]`; `u`: `[g, 3g]`; output: `[B, T, g]`
pub fn gru_sequence(x: Tensor<3>, extra: Tensor<3>, u: Tensor<2>) -> Tensor<3> {
    let out = <burn::backend::Dispatch as FusedGru>::gru_sequence(
        x.into_dispatch(),
        extra.into_dispatch(),
        u.into_dispatch(),
    );
    Tensor::from_dispatch(out)
}

/// Rows per task of the row-wise kernels: about [`CHUNK`] values.
fn rows_per_task(cols: usize) -> usize {
    (CHUNK / cols.max(1)).max(1)
}

fn flex_tensor(values: Vec<f32>, dims: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, dims.to_vec()))
}

/// The values of step `t` of row `b` in a `[B, T, k]` row-major sequence (`T = t_len`).
fn at(t_len: usize, k: usize, b: usize, t: usize) -> std::ops::Range<usize> {
    let begin = (b * t_len + t) * k;
    begin..begin + k
}

/// Every step's state and recurrent product, `[B, T, g]` and `[B, T, 3g]`.
fn gru_sequence_forward(x: &FlexTensor, extra: &FlexTensor, u: &FlexTensor) -> (FlexTensor, FlexTensor) {
    let [b, t, g3] = x.layout().shape().dims::<3>();
    let g = g3 / 3;
    assert!(
        g3 == 3 * g && extra.layout().shape().dims::<3>() == [b, t, g],
        "gru_sequence: x [B, T, 3g], extra [B, T, g]"
    );
    let (xv, ev) =
        (values(x).expect("gru_sequence: x must be f32"), values(extra).expect("gru_sequence: extra must be f32"));
    let mut states = vec![0f32; b * t * g];
    let mut recs = vec![0f32; b * t * g3];
    let mut h = vec![0f32; b * g];
    let per = rows_per_task(g3);
    for step in 0..t {
        let rec = Flex::float_matmul(flex_tensor(h.clone(), &[b, g]), u.clone());
        let rec = values(&rec).expect("f32");
        let mut next = vec![0f32; b * g];
        next.par_chunks_mut(per * g).enumerate().for_each(|(task, chunk)| {
            for (k, out) in chunk.chunks_mut(g).enumerate() {
                let row = task * per + k;
                pulp::Arch::new().dispatch(GruRow {
                    x: &xv[at(t, g3, row, step)],
                    extra: &ev[at(t, g, row, step)],
                    rec: &rec[row * g3..(row + 1) * g3],
                    h: &h[row * g..(row + 1) * g],
                    grad: &[],
                    out: [out, &mut [], &mut []],
                });
            }
        });
        for row in 0..b {
            states[at(t, g, row, step)].copy_from_slice(&next[row * g..(row + 1) * g]);
            recs[at(t, g3, row, step)].copy_from_slice(&rec[row * g3..(row + 1) * g3]);
        }
        h = next;
    }
    (flex_tensor(states, &[b, t, g]), flex_tensor(recs, &[b, t, g3]))
}

/// The gradients of `x`, `extra` and `u` from the states' gradient `grad` `[B, T, g]`.
fn gru_sequence_backward(state: &GruSequenceState, grad: &FlexTensor) -> [FlexTensor; 3] {
    let [b, t, g3] = state.x.layout().shape().dims::<3>();
    let g = g3 / 3;
    let xv = values(&state.x).expect("f32");
    let ev = values(&state.extra).expect("f32");
    let hv = values(&state.states).expect("f32");
    let rv = values(&state.recs).expect("f32");
    let gv = values(grad).expect("gru_sequence: the gradient must be f32");
    let u_t = Flex::float_transpose(state.u.clone());
    let mut dx = vec![0f32; b * t * g3];
    let mut drecs = vec![0f32; b * t * g3];
    let mut dh = vec![0f32; b * g];
    let zeros = vec![0f32; g];
    let per = rows_per_task(g3);
    for step in (0..t).rev() {
        // The state's gradient: its own, and what the next step sent back.
        let mut gh = dh;
        for row in 0..b {
            gh[row * g..(row + 1) * g].iter_mut().zip(&gv[at(t, g, row, step)]).for_each(|(a, &v)| *a += v);
        }
        let mut dh_direct = vec![0f32; b * g];
        let mut dx_step = vec![0f32; b * g3];
        let mut drec = vec![0f32; b * g3];
        dh_direct
            .par_chunks_mut(per * g)
            .zip(dx_step.par_chunks_mut(per * g3))
            .zip(drec.par_chunks_mut(per * g3))
            .enumerate()
            .for_each(|(task, ((dh, dx), drec))| {
                for (k, ((dh, dx), drec)) in
                    dh.chunks_mut(g).zip(dx.chunks_mut(g3)).zip(drec.chunks_mut(g3)).enumerate()
                {
                    let row = task * per + k;
                    let h_prev = if step == 0 { &zeros[..] } else { &hv[at(t, g, row, step - 1)] };
                    pulp::Arch::new().dispatch(GruRow {
                        x: &xv[at(t, g3, row, step)],
                        extra: &ev[at(t, g, row, step)],
                        rec: &rv[at(t, g3, row, step)],
                        h: h_prev,
                        grad: &gh[row * g..(row + 1) * g],
                        out: [dh, dx, drec],
                    });
                }
            });
        // This step's gradients into the whole sequence's.
        for row in 0..b {
            dx[at(t, g3, row, step)].copy_from_slice(&dx_step[row * g3..(row + 1) * g3]);
            drecs[at(t, g3, row, step)].copy_from_slice(&drec[row * g3..(row + 1) * g3]);
        }
        // The previous state's gradient through this step's recurrent product.
        let through = Flex::float_matmul(flex_tensor(drec, &[b, g3]), u_t.clone());
        let through = values(&through).expect("f32");
        dh_direct.iter_mut().zip(through.iter()).for_each(|(a, &v)| *a += v);
        dh = dh_direct;
    }
    // dU = Σ_t h_{t−1}ᵀ drec_t: the states shifted one step (h_{−1} = 0), as one product.
    let mut prev = vec![0f32; b * t * g];
    for row in 0..b {
        for step in 1..t {
            prev[at(t, g, row, step)].copy_from_slice(&hv[at(t, g, row, step - 1)]);
        }
    }
    let prev_t = Flex::float_transpose(flex_tensor(prev, &[b * t, g]));
    let du = Flex::float_matmul(prev_t, flex_tensor(drecs, &[b * t, g3]));
    let dextra: Vec<f32> = dx.chunks(g3).flat_map(|c| c[..g].iter().copied()).collect();
    [flex_tensor(dx, &[b, t, g3]), flex_tensor(dextra, &[b, t, g]), du]
}

/// One row of one GRU step: forward (`grad` empty; `out[0]` the next state) or backward (`out`
/// the gradients of the previous state, of `x` and of the recurrent product).
struct GruRow<'a> {
    x: &'a [f32],
    extra: &'a [f32],
    rec: &'a [f32],
    h: &'a [f32],
    grad: &'a [f32],
    out: [&'a mut [f32]; 3],
}

impl pulp::WithSimd for GruRow<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let GruRow { x, extra, rec, h, grad, out: [first, dx, drec] } = self;
        let g = h.len();
        let (xu, xr, xn) = (&x[..g], &x[g..2 * g], &x[2 * g..3 * g]);
        let (ru, rr, rn) = (&rec[..g], &rec[g..2 * g], &rec[2 * g..3 * g]);
        if grad.is_empty() {
            for j in 0..g {
                let z = sigmoid1((xu[j] + extra[j]) + ru[j]);
                let r = sigmoid1(xr[j] + rr[j]);
                let n = tanh1(xn[j] + r * rn[j]);
                first[j] = h[j] + z * (n - h[j]);
            }
            return;
        }
        let (dxu, rest) = dx.split_at_mut(g);
        let (dxr, dxn) = rest.split_at_mut(g);
        let (dru, rest) = drec.split_at_mut(g);
        let (drr, drn) = rest.split_at_mut(g);
        for j in 0..g {
            let z = sigmoid1((xu[j] + extra[j]) + ru[j]);
            let r = sigmoid1(xr[j] + rr[j]);
            let n = tanh1(xn[j] + r * rn[j]);
            let dy = grad[j];
            first[j] = dy * (1.0 - z);
            let dpre_z = dy * (n - h[j]) * (z * (1.0 - z));
            let dpre_n = dy * z * (1.0 - n * n);
            let dpre_r = dpre_n * rn[j] * (r * (1.0 - r));
            dxu[j] = dpre_z;
            dru[j] = dpre_z;
            dxr[j] = dpre_r;
            drr[j] = dpre_r;
            dxn[j] = dpre_n;
            drn[j] = dpre_n * r;
        }
    }
}

/// The title TextCNN's convolutions, ReLU and max-pool over the real windows as one operation on
/// flex, from the words' products with the filters.
///
/// A window's convolution is a sum over its offsets `k` of `W_k · word_{p+k}`. The products
/// `Q_k = W_k · word` depend on the word alone, so they are computed once per distinct word of
/// the batch (one batched matrix product, by the caller: `q`), and each window's value is a sum
/// of `w` rows of `q`: 124 rows of `F` values per title (windows 2, 3, 4 over 16 words) instead of
/// a convolution over the 64-wide word vectors at every position (the products are 1/14 of the
/// convolution's at batch 1024). Only the maximum of each filter reaches the output, so the
/// backward pass adds each output's gradient to the `w` rows that made its maximum: `w` values
/// per pooled output, where the convolution's backward runs two more convolutions.
///
/// `q` is `[V + 1, blocks, F]`: for word `v` of the batch's distinct words, one block per
/// (window, offset) in the order of `windows` and then offsets, each the product with the word
/// plus, in each window's offset-0 block, the convolution's bias; word `V` is the padding word (a
/// zero vector: the bias alone where it has one). `tokens` `[n, L]` are rows of `q` (padding is `V`).
/// A window is real when its last word is (window 0 always counts, so a title shorter than the
/// window still yields one). Output `[n, windows.len() * F]`: `max(0, max over real windows)`,
/// each window's `F` filters together, in the order of `windows`.
#[backend_extension(Flex, LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait FusedTitlePool: Backend {
    /// See [`FusedTitlePool`].
    fn title_pool(q: FloatTensor<Self>, tokens: IntTensor<Self>, windows: Vec<usize>) -> FloatTensor<Self>;
}

impl FusedTitlePool for Flex {
    fn title_pool(q: FloatTensor<Self>, tokens: IntTensor<Self>, windows: Vec<usize>) -> FloatTensor<Self> {
        title_pool_forward(&q, &title_tokens(&tokens), &windows).0
    }
}

#[cfg(feature = "tch")]
impl FusedTitlePool for burn::backend::LibTorch {
    fn title_pool(q: FloatTensor<Self>, tokens: IntTensor<Self>, windows: Vec<usize>) -> FloatTensor<Self> {
        let device = q.device();
        let tokens = title_tokens(&Self::int_to_host(tokens));
        Self::from_host(title_pool_forward(&Self::to_host(q), &tokens, &windows).0, &device)
    }
}

/// What the backward pass of [`FusedTitlePool::title_pool`] keeps: the tokens, the window each
/// output's maximum came from (`u32::MAX` where the output is 0, which passes no gradient through
/// the ReLU) and `q`'s shape.
#[derive(Debug, Clone)]
struct TitlePoolState {
    tokens: std::sync::Arc<TitleTokens>,
    argmax: std::sync::Arc<[u32]>,
    windows: Vec<usize>,
    q_dims: [usize; 3],
}

impl HostGradient for TitlePoolState {
    fn input_gradient(&self, grad: &FlexTensor) -> FlexTensor {
        title_pool_backward(grad, self)
    }
}

impl<B: Backend + HostKernels + FusedTitlePool, C: CheckpointStrategy> FusedTitlePool for Autodiff<B, C> {
    fn title_pool(q: FloatTensor<Self>, tokens: IntTensor<Self>, windows: Vec<usize>) -> FloatTensor<Self> {
        let (q, node) = q.into_parts();
        let device = q.device();
        let q = B::to_host(q);
        let tokens = std::sync::Arc::new(title_tokens(&B::int_to_host(tokens)));
        let (out, argmax) = title_pool_forward(&q, &tokens, &windows);
        let q_dims = q.layout().shape().dims::<3>();
        host_unary::<B, C, _>(node, device, out, TitlePoolState { tokens, argmax: argmax.into(), windows, q_dims })
    }
}

/// `[n, L]` title tokens, row-major.
#[derive(Debug)]
struct TitleTokens {
    values: Vec<u32>,
    n: usize,
    len: usize,
}

fn title_tokens(t: &FlexTensor) -> TitleTokens {
    let t = t.to_contiguous();
    let [n, len] = t.layout().shape().dims::<2>();
    let values = match t.dtype() {
        DType::I64 => t.storage::<i64>()[..n * len].iter().map(|&v| v as u32).collect(),
        DType::I32 => t.storage::<i32>()[..n * len].iter().map(|&v| v as u32).collect(),
        other => panic!("title_pool: tokens must be i64 or i32, got {other:?}"),
    };
    TitleTokens { values, n, len }
}

/// The (window, offset) blocks of `q`: each window's first block.
fn first_blocks(windows: &[usize]) -> Vec<usize> {
    windows.iter().scan(0, |at, &w| Some(std::mem::replace(at, *at + w))).collect()
}

fn title_pool_forward(q: &FlexTensor, tokens: &TitleTokens, windows: &[usize]) -> (FlexTensor, Vec<u32>) {
    let q_values = values(q).expect("title_pool: q must be f32");
    let [rows, blocks, f] = q.layout().shape().dims::<3>();
    let firsts = first_blocks(windows);
    assert_eq!(blocks, windows.iter().sum::<usize>(), "title_pool: q needs one block per window offset");
    assert!(windows.iter().all(|&w| w >= 1 && w <= tokens.len), "title_pool: every window must fit the titles");
    assert!(tokens.values.iter().all(|&t| (t as usize) < rows), "title_pool: a token is outside q's rows");
    let pad = (rows - 1) as u32;
    let width = windows.len() * f;
    let mut out = vec![0f32; tokens.n * width];
    let mut argmax = vec![u32::MAX; tokens.n * width];
    let per = rows_per_task(width);
    out.par_chunks_mut(per * width.max(1)).zip(argmax.par_chunks_mut(per * width.max(1))).enumerate().for_each(
        |(task, (out, argmax))| {
            let mut acc = vec![0f32; f];
            for (k, (out, argmax)) in out.chunks_mut(width).zip(argmax.chunks_mut(width)).enumerate() {
                let i = task * per + k;
                let toks = &tokens.values[i * tokens.len..(i + 1) * tokens.len];
                for (wi, (&w, &first)) in windows.iter().zip(&firsts).enumerate() {
                    let (best, arg) = (&mut out[wi * f..(wi + 1) * f], &mut argmax[wi * f..(wi + 1) * f]);
                    best.fill(f32::NEG_INFINITY);
                    for p in 0..=tokens.len - w {
                        if p > 0 && toks[p + w - 1] == pad {
                            continue;
                        }
                        acc.fill(0.0);
                        for o in 0..w {
                            let row = toks[p + o] as usize * blocks + first + o;
                            let add = &q_values[row * f..(row + 1) * f];
                            acc.iter_mut().zip(add).for_each(|(a, &v)| *a += v);
                        }
                        for j in 0..f {
                            if acc[j] > best[j] {
                                best[j] = acc[j];
                                arg[j] = p as u32;
                            }
                        }
                    }
                    // ReLU: a maximum at or below zero is zero and passes no gradient.
                    for j in 0..f {
                        if best[j] <= 0.0 {
                            best[j] = 0.0;
                            arg[j] = u32::MAX;
                        }
                    }
                }
            }
        },
    );
    (FlexTensor::from_data(TensorData::new(out, [tokens.n, width])), argmax)
}

fn title_pool_backward(grad: &FlexTensor, state: &TitlePoolState) -> FlexTensor {
    let grad = values(grad).expect("title_pool: the gradient must be f32");
    let [rows, blocks, f] = state.q_dims;
    let (tokens, windows) = (&state.tokens, &state.windows);
    let firsts = first_blocks(windows);
    let width = windows.len() * f;
    // One pass, w additions per pooled output that passed the ReLU: few against the forward's.
    let mut dq = vec![0f32; rows * blocks * f];
    for i in 0..tokens.n {
        let toks = &tokens.values[i * tokens.len..(i + 1) * tokens.len];
        for (wi, (&w, &first)) in windows.iter().zip(&firsts).enumerate() {
            for j in 0..f {
                let at = i * width + wi * f + j;
                let p = state.argmax[at];
                if p == u32::MAX {
                    continue;
                }
                for o in 0..w {
                    dq[(toks[p as usize + o] as usize * blocks + first + o) * f + j] += grad[at];
                }
            }
        }
    }
    FlexTensor::from_data(TensorData::new(dq, [rows, blocks, f]))
}

/// [`FusedTitlePool::title_pool`] on tensors (on flex or LibTorch's CPU: check [`on_host`]; `q`
/// in f32).
///
/// # Shapes
/// - `q`: `[V + 1, blocks, F]`; `tokens`: `[n, L]`; output: `[n, windows.len() * F]`
pub fn title_pool(q: Tensor<3>, tokens: Tensor<2, Int>, windows: &[usize]) -> Tensor<2> {
    let out = <burn::backend::Dispatch as FusedTitlePool>::title_pool(
        q.into_dispatch(),
        tokens.into_dispatch(),
        windows.to_vec(),
    );
    Tensor::from_dispatch(out)
}

/// A `tanh` layer evaluated a second time on the same input, for a branch that must not send its
/// gradient into that input: MARN's discriminators read `tanh(I e)` and `tanh(S_m e_m)` with `e`
/// detached, where the model has just computed the same values with `e` attached. This returns
/// those values (`y`, without recomputing them) as a function of the layer's weight and bias
/// alone: the backward pass gives `w` the gradient `xᵀ δ` and `b` the sum of `δ`, with
/// `δ = grad ⊙ (1 − y²)`, and nothing to `x` or `y` — the gradients of `tanh(x.detach() w + b)`.
///
/// `y`, `x`: `[M, n, out]`, `[M, n, in]`; `w` `[in, out]` with `b` `[out]` (one layer for every
/// modality), or `w` `[M, in, out]` with `b` `[M, 1, out]` (one layer per modality).
#[backend_extension(Flex, LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait FusedTanhLayerAgain: Backend {
    /// See [`FusedTanhLayerAgain`].
    fn tanh_layer_again(
        y: FloatTensor<Self>,
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let _ = (x, w, b);
        y
    }
}

impl FusedTanhLayerAgain for Flex {}

#[cfg(feature = "tch")]
impl FusedTanhLayerAgain for burn::backend::LibTorch {}

/// The backward step of [`FusedTanhLayerAgain::tanh_layer_again`]: whether the weight is one per
/// modality (`[M, in, out]`) or shared (`[in, out]`).
#[derive(Debug)]
struct TanhLayerAgain {
    per_modality: bool,
}

impl<B: Backend + FusedActivations> Backward<B, 2> for TanhLayerAgain {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let (y, x) = ops.state;
        let grad = grads.consume::<B>(&ops.node);
        let delta = B::fused_tanh_backward(y, grad);
        let [m, n, d_in] = x.shape().dims::<3>();
        let d_out = delta.shape().dims::<3>()[2];
        let (dw, db) = if self.per_modality {
            // Per modality: dW_m = x_mᵀ δ_m, db_m = Σ_rows δ_m.
            let dw = B::float_matmul(B::float_swap_dims(x, 1, 2), delta.clone());
            (dw, B::float_sum_dim(delta, 1))
        } else {
            // Shared: the modalities' rows together.
            let x = B::float_reshape(x, [m * n, d_in].into());
            let delta = B::float_reshape(delta, [m * n, d_out].into());
            let dw = B::float_matmul(B::float_transpose(x), delta.clone());
            (dw, B::float_reshape(B::float_sum_dim(delta, 0), [d_out].into()))
        };
        let [w_parent, b_parent] = ops.parents;
        if let Some(parent) = w_parent {
            grads.register::<B>(parent.id, dw);
        }
        if let Some(parent) = b_parent {
            grads.register::<B>(parent.id, db);
        }
    }
}

impl<B: Backend + FusedActivations + FusedTanhLayerAgain, C: CheckpointStrategy> FusedTanhLayerAgain
    for Autodiff<B, C>
{
    fn tanh_layer_again(
        y: FloatTensor<Self>,
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (y, x) = (y.into_parts().0, x.into_parts().0);
        let (w, w_node) = w.into_parts();
        let (_, b_node) = b.into_parts();
        let step = TanhLayerAgain { per_modality: w.shape().num_dims() == 3 };
        match <TanhLayerAgain as Backward<B, 2>>::prepare::<C>(step, [w_node, b_node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((y.clone(), x), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}

/// `tanh(x.detach() w + b)` given its values `y` (see [`FusedTanhLayerAgain`]: `w` `[in, out]`
/// with `b` `[out]`, or `w` `[M, in, out]` with `b` `[M, 1, out]`): on flex and LibTorch; `None`
/// elsewhere (the caller computes the layer again).
pub fn tanh_layer_again<const DW: usize, const DB: usize>(
    y: Tensor<3>,
    x: Tensor<3>,
    w: Tensor<DW>,
    b: Tensor<DB>,
) -> Option<Tensor<3>> {
    if !fused_here(&y.device()) {
        return None;
    }
    let out = <burn::backend::Dispatch as FusedTanhLayerAgain>::tanh_layer_again(
        y.detach().into_dispatch(),
        x.detach().into_dispatch(),
        w.into_dispatch(),
        b.into_dispatch(),
    );
    Some(Tensor::from_dispatch(out))
}

/// The gradient reversal layer (Ganin and Lempitsky) as one operation: the identity forward
/// (no copy) and `−weight ·` the gradient backward, one pass. Composed from burn's operations it
/// was three passes each way over the `[M, n, 256]` invariant features.
#[backend_extension(Flex, LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait FusedReversal: Backend {
    /// `x`, with its gradient multiplied by `−weight`.
    fn reverse_gradient(x: FloatTensor<Self>, weight: f64) -> FloatTensor<Self> {
        let _ = weight;
        x
    }
}

impl FusedReversal for Flex {}

#[cfg(feature = "tch")]
impl FusedReversal for burn::backend::LibTorch {}

#[derive(Debug)]
struct Reverse {
    weight: f64,
}

impl<B: Backend> Backward<B, 1> for Reverse {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let weight = self.weight;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| B::float_mul_scalar(grad, (-weight).into()));
    }
}

impl<B: Backend + FusedReversal, C: CheckpointStrategy> FusedReversal for Autodiff<B, C> {
    fn reverse_gradient(x: FloatTensor<Self>, weight: f64) -> FloatTensor<Self> {
        let (primitive, node) = x.into_parts();
        <Reverse as Backward<B, 1>>::prepare::<C>(Reverse { weight }, [node]).compute_bound().stateless(primitive)
    }
}

/// [`FusedReversal::reverse_gradient`] on flex and LibTorch; `None` elsewhere (the caller
/// composes it).
pub fn reverse_gradient<const D: usize>(x: Tensor<D>, weight: f64) -> Option<Tensor<D>> {
    if !fused_here(&x.device()) {
        return None;
    }
    let out = <burn::backend::Dispatch as FusedReversal>::reverse_gradient(x.into_dispatch(), weight);
    Some(Tensor::from_dispatch(out))
}

/// DDMA's pooling `max_m(w_m ⊙ c_m)` over the modalities as one operation on flex: one pass
/// forward, keeping which modality gave each maximum, and one pass backward, which sends each
/// output's gradient (times that modality's weight) to that modality alone. Composed it was a
/// product, a sum and a maximum forward and a scatter into zeros and two products backward, each
/// over the `[M, n, 256]` features.
///
/// `c` `[M, n, d]`, `w` `[M, n, 1]` the modalities' weights (constants: no gradient reaches
/// them), `present` `[M, n, 1]` 1.0 where the item has the modality. A modality an item lacks
/// enters as `w c − 1e9`. Output `[n, d]`; the first modality wins a tie.
#[backend_extension(Flex, LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait FusedPool: Backend {
    /// See [`FusedPool`].
    fn weighted_max(c: FloatTensor<Self>, w: FloatTensor<Self>, present: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl FusedPool for Flex {
    fn weighted_max(c: FloatTensor<Self>, w: FloatTensor<Self>, present: FloatTensor<Self>) -> FloatTensor<Self> {
        weighted_max_forward(&c, &w, &present).0
    }
}

#[cfg(feature = "tch")]
impl FusedPool for burn::backend::LibTorch {
    fn weighted_max(c: FloatTensor<Self>, w: FloatTensor<Self>, present: FloatTensor<Self>) -> FloatTensor<Self> {
        let device = c.device();
        let out = weighted_max_forward(&Self::to_host(c), &Self::to_host(w), &Self::to_host(present)).0;
        Self::from_host(out, &device)
    }
}

/// What [`FusedPool`]'s backward keeps: the modality of each maximum, the weights, `c`'s shape.
#[derive(Debug, Clone)]
struct PoolState {
    argmax: std::sync::Arc<[u8]>,
    w: FlexTensor,
    dims: [usize; 3],
}

impl HostGradient for PoolState {
    fn input_gradient(&self, grad: &FlexTensor) -> FlexTensor {
        weighted_max_backward(grad, self)
    }
}

impl<B: Backend + HostKernels + FusedPool, C: CheckpointStrategy> FusedPool for Autodiff<B, C> {
    fn weighted_max(c: FloatTensor<Self>, w: FloatTensor<Self>, present: FloatTensor<Self>) -> FloatTensor<Self> {
        let (c, node) = c.into_parts();
        let device = c.device();
        let c = B::to_host(c);
        let (w, present) = (B::to_host(w.into_parts().0), B::to_host(present.into_parts().0));
        let (out, argmax) = weighted_max_forward(&c, &w, &present);
        let dims = c.layout().shape().dims::<3>();
        host_unary::<B, C, _>(node, device, out, PoolState { argmax: argmax.into(), w, dims })
    }
}

/// [`FusedPool::weighted_max`] on flex or LibTorch's CPU (`w` is detached here); `None` elsewhere
/// or where there are more than 255 modalities (the caller composes it).
///
/// # Shapes
/// - `c`: `[M, n, d]`; `w`, `present`: `[M, n, 1]`; output: `[n, d]`
pub fn weighted_max(c: Tensor<3>, w: Tensor<3>, present: Tensor<3>) -> Option<Tensor<2>> {
    if !on_host(&c.device())
        || c.dims()[0] > 255
        || [c.dtype(), w.dtype(), present.dtype()].iter().any(|&d| d != DType::F32)
    {
        return None;
    }
    let out = <burn::backend::Dispatch as FusedPool>::weighted_max(
        c.into_dispatch(),
        w.detach().into_dispatch(),
        present.detach().into_dispatch(),
    );
    Some(Tensor::from_dispatch(out))
}

fn weighted_max_forward(c: &FlexTensor, w: &FlexTensor, present: &FlexTensor) -> (FlexTensor, Vec<u8>) {
    let [m, n, d] = c.layout().shape().dims::<3>();
    assert!(
        w.layout().shape().dims::<3>() == [m, n, 1] && present.layout().shape().dims::<3>() == [m, n, 1],
        "weighted_max: w and present must be [M, n, 1]"
    );
    let (cv, wv, pv) = (values(c).expect("f32"), values(w).expect("f32"), values(present).expect("f32"));
    let mut out = vec![0f32; n * d];
    let mut argmax = vec![0u8; n * d];
    let per = rows_per_task(d);
    out.par_chunks_mut(per * d.max(1)).zip(argmax.par_chunks_mut(per * d.max(1))).enumerate().for_each(
        |(task, (out, arg))| {
            for (k, (out, arg)) in out.chunks_mut(d.max(1)).zip(arg.chunks_mut(d.max(1))).enumerate() {
                let i = task * per + k;
                for mi in 0..m {
                    let (wi, shift) = (wv[mi * n + i], (pv[mi * n + i] - 1.0) * 1e9);
                    let row = &cv[(mi * n + i) * d..(mi * n + i + 1) * d];
                    for j in 0..d {
                        let v = row[j] * wi + shift;
                        if mi == 0 || v > out[j] {
                            out[j] = v;
                            arg[j] = mi as u8;
                        }
                    }
                }
            }
        },
    );
    (flex_tensor(out, &[n, d]), argmax)
}

fn weighted_max_backward(grad: &FlexTensor, state: &PoolState) -> FlexTensor {
    let [m, n, d] = state.dims;
    let (gv, wv) = (values(grad).expect("f32"), values(&state.w).expect("f32"));
    let mut dc = vec![0f32; m * n * d];
    // Each modality's block written by one task.
    dc.par_chunks_mut((n * d).max(1)).enumerate().for_each(|(mi, block)| {
        for i in 0..n {
            let wi = wv[mi * n + i];
            for j in 0..d {
                if state.argmax[i * d + j] as usize == mi {
                    block[i * d + j] = gv[i * d + j] * wi;
                }
            }
        }
    });
    flex_tensor(dc, &[m, n, d])
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
pub(crate) mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tolerance};

    /// flex and, in a build with LibTorch, LibTorch's CPU: the devices the host kernels run on.
    pub(crate) fn host_devices() -> Vec<Device> {
        #[allow(unused_mut)]
        let mut devices = vec![Device::flex().autodiff()];
        #[cfg(feature = "tch")]
        devices.push(Device::libtorch().autodiff());
        devices
    }

    /// Bit-equal on flex, where the composed reference runs the same element-wise kernels; within
    /// rounding elsewhere (LibTorch's own `tanh` and sigmoid in the reference).
    fn same(got: &burn::tensor::TensorData, want: &burn::tensor::TensorData, device: &Device) {
        if on_flex_device(device) {
            got.assert_eq(want, true);
        } else {
            got.assert_approx_eq::<f32>(want, Tolerance::absolute(1e-6));
        }
    }

    fn on_flex_device(device: &Device) -> bool {
        matches!(device.clone().inner().as_dispatch(), burn::backend::DispatchDevice::Flex(_))
    }

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

    /// The GRU over a sequence as one operation gives the composed recurrence's states exactly,
    /// and the gradients of its inputs and recurrent weight to within rounding.
    #[test]
    fn the_fused_gru_sequence_equals_the_composed_recurrence() {
        for device in host_devices() {
            let (b, t, g) = (37, 5, 20);
            let x = Tensor::<3>::random([b, t, 3 * g], Distribution::Normal(0.0, 1.5), &device);
            let extra = Tensor::<3>::random([b, t, g], Distribution::Normal(0.0, 1.0), &device);
            let u = Tensor::<2>::random([g, 3 * g], Distribution::Normal(0.0, 0.3), &device);
            let weights = Tensor::<3>::random([b, t, g], Distribution::Normal(0.0, 1.0), &device);
            let composed = |x: Tensor<3>, extra: Tensor<3>, u: Tensor<2>| {
                let x = Tensor::cat(vec![x.clone().narrow(2, 0, g) + extra, x.narrow(2, g, 2 * g)], 2);
                let mut h = Tensor::<2>::zeros([b, g], &device);
                let mut states = Vec::new();
                for s in 0..t {
                    let xs = x.clone().narrow(1, s, 1).reshape([b, 3 * g]);
                    let rec = h.clone().matmul(u.clone());
                    let ur = sigmoid(xs.clone().narrow(1, 0, 2 * g) + rec.clone().narrow(1, 0, 2 * g));
                    let (z, r) = (ur.clone().narrow(1, 0, g), ur.narrow(1, g, g));
                    let n = tanh(xs.narrow(1, 2 * g, g) + r * rec.narrow(1, 2 * g, g));
                    h = h.clone() + z * (n - h);
                    states.push(h.clone());
                }
                Tensor::stack::<3>(states, 1)
            };
            let run = |f: &dyn Fn(Tensor<3>, Tensor<3>, Tensor<2>) -> Tensor<3>| {
                let (x, extra, u) = (
                    x.clone().detach().require_grad(),
                    extra.clone().detach().require_grad(),
                    u.clone().detach().require_grad(),
                );
                let states = f(x.clone(), extra.clone(), u.clone());
                let grads = (states.clone() * weights.clone()).sum().backward();
                [
                    states.into_data(),
                    x.grad(&grads).unwrap().into_data(),
                    extra.grad(&grads).unwrap().into_data(),
                    u.grad(&grads).unwrap().into_data(),
                ]
            };
            let fused = run(&gru_sequence);
            let reference = run(&composed);
            same(&fused[0], &reference[0], &device);
            for (got, want) in fused.iter().zip(&reference).skip(1) {
                assert_eq!(got.shape(), want.shape());
                got.assert_approx_eq::<f32>(want, Tolerance::absolute(1e-5));
            }
        }
    }

    /// DDMA's pooling as one operation gives the composed maximum exactly and the same gradient
    /// of the features, with modalities missing from some items; the reversal layer is the
    /// identity forward and `−weight ·` the gradient backward.
    #[test]
    fn the_fused_pool_and_reversal_equal_the_composed_ones() {
        for device in host_devices() {
            let (m, n, d) = (4, 53, 30);
            let c = Tensor::<3>::random([m, n, d], Distribution::Normal(0.0, 1.0), &device);
            let w = Tensor::<3>::random([m, n, 1], Distribution::Uniform(0.0, 1.0), &device);
            let present =
                Tensor::<3>::random([m, n, 1], Distribution::Uniform(0.0, 1.0), &device).greater_elem(0.3).float();
            let present = present.slice_fill([0..1, 0..n, 0..1], 1.0);
            let g = Tensor::<2>::random([n, d], Distribution::Normal(0.0, 1.0), &device);
            let run = |fused: bool| {
                let c = c.clone().detach().require_grad();
                let out = if fused {
                    weighted_max(c.clone(), w.clone(), present.clone()).expect("flex")
                } else {
                    (c.clone() * w.clone() + present.clone().sub_scalar(1.0).mul_scalar(1e9)).max_dim(0).reshape([n, d])
                };
                let grads = (out.clone() * g.clone()).sum().backward();
                (out.into_data(), c.grad(&grads).unwrap().into_data())
            };
            let ((y, dc), (y_ref, dc_ref)) = (run(true), run(false));
            same(&y, &y_ref, &device);
            dc.assert_approx_eq::<f32>(&dc_ref, Tolerance::absolute(1e-6));

            let x = c.clone().detach().require_grad();
            let reversed = reverse_gradient(x.clone(), 0.7).expect("flex");
            reversed.clone().into_data().assert_eq(&x.clone().into_data(), true);
            let grads = (reversed * c.clone()).sum().backward();
            x.grad(&grads)
                .unwrap()
                .into_data()
                .assert_approx_eq::<f32>(&c.mul_scalar(-0.7).into_data(), Tolerance::absolute(1e-6));
        }
    }
}
