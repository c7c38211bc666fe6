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
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{backend_extension, Autodiff, Backend, Flex};
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

/// One GRU step as one operation on flex: the gates, the candidate and the new state in one pass
/// over the step's values, and in the backward pass the gradients of its three inputs in one
/// pass (recomputing the gates from the inputs, which it keeps). The composed step it replaces
/// is a dozen operations (slices, sums, products, the two activations) per time step, each with
/// its own pass, allocation and autodiff node, and each slice's gradient a zero-filled copy of its
/// input; for 50 steps that was most of the recurrence's time.
#[backend_extension(Flex, Autodiff)]
pub trait FusedGru: Backend {
    /// The next state of a GRU whose gate pre-activations are `x + rec` (see [`gru_cell`]).
    fn gru_cell(x: FloatTensor<Self>, rec: FloatTensor<Self>, h: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl FusedGru for Flex {
    fn gru_cell(x: FloatTensor<Self>, rec: FloatTensor<Self>, h: FloatTensor<Self>) -> FloatTensor<Self> {
        gru_forward(&x, &rec, &h)
    }
}

/// The backward step of [`FusedGru::gru_cell`]; the state is the three inputs.
#[derive(Debug)]
struct GruCellStep;

impl Backward<Flex, 3> for GruCellStep {
    type State = (FlexTensor, FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let (x, rec, h) = ops.state;
        let [dx, drec, dh] = gru_backward(&x, &rec, &h, &grad);
        for (parent, g) in ops.parents.into_iter().zip([dx, drec, dh]) {
            if let Some(parent) = parent {
                grads.register::<Flex>(parent.id, g);
            }
        }
    }
}

impl<C: CheckpointStrategy> FusedGru for Autodiff<Flex, C> {
    fn gru_cell(x: FloatTensor<Self>, rec: FloatTensor<Self>, h: FloatTensor<Self>) -> FloatTensor<Self> {
        let (x, x_node) = x.into_parts();
        let (rec, rec_node) = rec.into_parts();
        let (h, h_node) = h.into_parts();
        let prep = <GruCellStep as Backward<Flex, 3>>::prepare::<C>(GruCellStep, [x_node, rec_node, h_node]);
        match prep.compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let out = gru_forward(&x, &rec, &h);
                prep.finish((x, rec, h), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(gru_forward(&x, &rec, &h)),
        }
    }
}

/// Whether `device` is burn's CPU backend, flex (with or without autodiff).
pub fn on_flex(device: &Device) -> bool {
    matches!(device.clone().inner().as_dispatch(), burn::backend::DispatchDevice::Flex(_))
}

/// Whether [`gru_cell`] runs as one operation for these tensors: on flex, in f32.
pub fn gru_cell_fused(x: &Tensor<2>) -> bool {
    on_flex(&x.device()) && x.dtype() == DType::F32
}

/// One GRU step from its gate pre-activations: with `x = [x_u, x_r, x_n]` (the input's share,
/// `W rep_t + b` and the property's `P^u p_t`) and `rec = [r_u, r_r, r_n] = U h` (each `g`
/// columns),
/// `u = σ(x_u + r_u)`, `r = σ(x_r + r_r)`, `n = tanh(x_n + r ⊙ r_n)`, and the next state
/// `h + u ⊙ (n − h)`. One operation on flex ([`FusedGru`]; check [`gru_cell_fused`] first),
/// burn's operations elsewhere.
///
/// # Shapes
/// - `x`, `rec`: `[B, 3g]`; `h`, output: `[B, g]`
pub fn gru_cell(x: Tensor<2>, rec: Tensor<2>, h: Tensor<2>) -> Tensor<2> {
    if gru_cell_fused(&x) && rec.dtype() == DType::F32 && h.dtype() == DType::F32 {
        let out = <burn::backend::Dispatch as FusedGru>::gru_cell(x.into_dispatch(), rec.into_dispatch(), h.into_dispatch());
        return Tensor::from_dispatch(out);
    }
    let g = h.dims()[1];
    let ur = sigmoid(x.clone().narrow(1, 0, 2 * g) + rec.clone().narrow(1, 0, 2 * g));
    let (u, r) = (ur.clone().narrow(1, 0, g), ur.narrow(1, g, g));
    let n = tanh(x.narrow(1, 2 * g, g) + r * rec.narrow(1, 2 * g, g));
    h.clone() + u * (n - h)
}

/// A 2-D f32 tensor's rows as slices of its storage: rows may lie apart (a slice of a wider
/// tensor) but each row's values must be adjacent. `None` otherwise.
#[derive(Debug)]
struct Rows<'a> {
    data: &'a [f32],
    start: usize,
    stride: usize,
    cols: usize,
    rows: usize,
}

impl<'a> Rows<'a> {
    fn of(t: &'a FlexTensor) -> Option<Self> {
        let layout = t.layout();
        let (shape, strides) = (layout.shape(), layout.strides());
        if t.dtype() != DType::F32 || shape.num_dims() != 2 || (shape[1] > 1 && strides[1] != 1) || strides[0] < 0 {
            return None;
        }
        Some(Rows { data: t.storage::<f32>(), start: layout.start_offset(), stride: strides[0] as usize, cols: shape[1], rows: shape[0] })
    }

    fn row(&self, i: usize) -> &'a [f32] {
        let begin = self.start + i * self.stride;
        &self.data[begin..begin + self.cols]
    }
}

/// `t` itself, or a contiguous copy when its rows are not adjacent values.
fn row_major(t: &FlexTensor) -> std::borrow::Cow<'_, FlexTensor> {
    match Rows::of(t) {
        Some(_) => std::borrow::Cow::Borrowed(t),
        None => std::borrow::Cow::Owned(t.to_contiguous()),
    }
}

/// The rows of a tensor [`row_major`] returned.
fn rows(t: &FlexTensor) -> Rows<'_> {
    Rows::of(t).expect("row_major gives adjacent row values")
}

/// Rows per task of the GRU kernels: about [`CHUNK`] values.
fn rows_per_task(cols: usize) -> usize {
    (CHUNK / cols.max(1)).max(1)
}

fn gru_forward(x: &FlexTensor, rec: &FlexTensor, h: &FlexTensor) -> FlexTensor {
    let (x, rec, h) = (row_major(x), row_major(rec), row_major(h));
    let (x, rec, h) = (rows(&x), rows(&rec), rows(&h));
    let (b, g) = (h.rows, h.cols);
    assert!(x.rows == b && rec.rows == b && x.cols == 3 * g && rec.cols == 3 * g, "gru_cell: x and rec must be [B, 3g] for h [B, g]");
    let mut out = vec![0f32; b * g];
    let per = rows_per_task(g);
    out.par_chunks_mut(per * g.max(1)).enumerate().for_each(|(task, chunk)| {
        for (k, o) in chunk.chunks_mut(g.max(1)).enumerate() {
            let i = task * per + k;
            pulp::Arch::new().dispatch(GruRow { x: x.row(i), rec: rec.row(i), h: h.row(i), grad: &[], out: [o, &mut [], &mut []] });
        }
    });
    FlexTensor::from_data(TensorData::new(out, [b, g]))
}

fn gru_backward(x: &FlexTensor, rec: &FlexTensor, h: &FlexTensor, grad: &FlexTensor) -> [FlexTensor; 3] {
    let (x, rec, h, grad) = (row_major(x), row_major(rec), row_major(h), row_major(grad));
    let (x, rec, h, grad) = (rows(&x), rows(&rec), rows(&h), rows(&grad));
    let (b, g) = (h.rows, h.cols);
    let (mut dx, mut drec, mut dh) = (vec![0f32; b * 3 * g], vec![0f32; b * 3 * g], vec![0f32; b * g]);
    let per = rows_per_task(3 * g);
    let w = g.max(1);
    dx.par_chunks_mut(per * 3 * w)
        .zip(drec.par_chunks_mut(per * 3 * w))
        .zip(dh.par_chunks_mut(per * w))
        .enumerate()
        .for_each(|(task, ((dx, drec), dh))| {
            for (k, ((dx, drec), dh)) in dx.chunks_mut(3 * w).zip(drec.chunks_mut(3 * w)).zip(dh.chunks_mut(w)).enumerate() {
                let i = task * per + k;
                pulp::Arch::new().dispatch(GruRow { x: x.row(i), rec: rec.row(i), h: h.row(i), grad: grad.row(i), out: [dh, dx, drec] });
            }
        });
    [
        FlexTensor::from_data(TensorData::new(dx, [b, 3 * g])),
        FlexTensor::from_data(TensorData::new(drec, [b, 3 * g])),
        FlexTensor::from_data(TensorData::new(dh, [b, g])),
    ]
}

/// One row of the GRU step: forward (`grad` empty; `out[0]` the next state) or backward
/// (`out` = the gradients of `h`, `x` and `rec`).
struct GruRow<'a> {
    x: &'a [f32],
    rec: &'a [f32],
    h: &'a [f32],
    grad: &'a [f32],
    out: [&'a mut [f32]; 3],
}

impl pulp::WithSimd for GruRow<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let GruRow { x, rec, h, grad, out: [first, dx, drec] } = self;
        let g = h.len();
        let (xu, xr, xn) = (&x[..g], &x[g..2 * g], &x[2 * g..3 * g]);
        let (ru, rr, rn) = (&rec[..g], &rec[g..2 * g], &rec[2 * g..3 * g]);
        if grad.is_empty() {
            for j in 0..g {
                let u = sigmoid1(xu[j] + ru[j]);
                let r = sigmoid1(xr[j] + rr[j]);
                let n = tanh1(xn[j] + r * rn[j]);
                first[j] = h[j] + u * (n - h[j]);
            }
            return;
        }
        let (dxu, rest) = dx.split_at_mut(g);
        let (dxr, dxn) = rest.split_at_mut(g);
        let (dru, rest) = drec.split_at_mut(g);
        let (drr, drn) = rest.split_at_mut(g);
        for j in 0..g {
            let u = sigmoid1(xu[j] + ru[j]);
            let r = sigmoid1(xr[j] + rr[j]);
            let n = tanh1(xn[j] + r * rn[j]);
            let dy = grad[j];
            first[j] = dy * (1.0 - u);
            let dpre_u = dy * (n - h[j]) * (u * (1.0 - u));
            let dpre_n = dy * u * (1.0 - n * n);
            let dpre_r = dpre_n * rn[j] * (r * (1.0 - r));
            dxu[j] = dpre_u;
            dru[j] = dpre_u;
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
/// `q` is `[blocks, V + 1, F]`: one block per (window, offset) in the order of `windows` and then
/// offsets, row `v` of a block the product with word `v` of the batch's distinct words plus, in
/// each window's offset-0 block, the convolution's bias; row `V` is the padding word (a zero
/// vector: the bias alone where it has one). `tokens` `[n, L]` are rows of `q` (padding is `V`).
/// A window is real when its last word is (window 0 always counts, so a title shorter than the
/// window still yields one). Output `[n, windows.len() * F]`: `max(0, max over real windows)`,
/// each window's `F` filters together, in the order of `windows`.
#[backend_extension(Flex, Autodiff)]
pub trait FusedTitlePool: Backend {
    /// See [`FusedTitlePool`].
    fn title_pool(q: FloatTensor<Self>, tokens: IntTensor<Self>, windows: Vec<usize>) -> FloatTensor<Self>;
}

impl FusedTitlePool for Flex {
    fn title_pool(q: FloatTensor<Self>, tokens: IntTensor<Self>, windows: Vec<usize>) -> FloatTensor<Self> {
        title_pool_forward(&q, &title_tokens(&tokens), &windows).0
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

#[derive(Debug)]
struct TitlePoolStep;

impl Backward<Flex, 1> for TitlePoolStep {
    type State = TitlePoolState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let state = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| title_pool_backward(&grad, &state));
    }
}

impl<C: CheckpointStrategy> FusedTitlePool for Autodiff<Flex, C> {
    fn title_pool(q: FloatTensor<Self>, tokens: IntTensor<Self>, windows: Vec<usize>) -> FloatTensor<Self> {
        let (q, node) = q.into_parts();
        let tokens = std::sync::Arc::new(title_tokens(&tokens));
        match <TitlePoolStep as Backward<Flex, 1>>::prepare::<C>(TitlePoolStep, [node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (out, argmax) = title_pool_forward(&q, &tokens, &windows);
                let q_dims = q.layout().shape().dims::<3>();
                prep.finish(TitlePoolState { tokens, argmax: argmax.into(), windows, q_dims }, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(title_pool_forward(&q, &tokens, &windows).0),
        }
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
    let [blocks, rows, f] = q.layout().shape().dims::<3>();
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
                            let row = (first + o) * rows + toks[p + o] as usize;
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
    let [blocks, rows, f] = state.q_dims;
    let (tokens, windows) = (&state.tokens, &state.windows);
    let width = windows.len() * f;
    // (window index, offset) of every block, so that each block's rows are written by one task.
    let owners: Vec<(usize, usize)> = windows.iter().enumerate().flat_map(|(wi, &w)| (0..w).map(move |o| (wi, o))).collect();
    let mut dq = vec![0f32; blocks * rows * f];
    dq.par_chunks_mut(rows * f).zip(owners.par_iter()).for_each(|(block, &(wi, o))| {
        for i in 0..tokens.n {
            let toks = &tokens.values[i * tokens.len..(i + 1) * tokens.len];
            for j in 0..f {
                let at = i * width + wi * f + j;
                let p = state.argmax[at];
                if p != u32::MAX {
                    block[toks[p as usize + o] as usize * f + j] += grad[at];
                }
            }
        }
    });
    FlexTensor::from_data(TensorData::new(dq, [blocks, rows, f]))
}

/// [`FusedTitlePool::title_pool`] on tensors (flex only: check [`on_flex`]; `q` in f32).
///
/// # Shapes
/// - `q`: `[blocks, V + 1, F]`; `tokens`: `[n, L]`; output: `[n, windows.len() * F]`
pub fn title_pool(q: Tensor<3>, tokens: Tensor<2, Int>, windows: &[usize]) -> Tensor<2> {
    let out = <burn::backend::Dispatch as FusedTitlePool>::title_pool(q.into_dispatch(), tokens.into_dispatch(), windows.to_vec());
    Tensor::from_dispatch(out)
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
    /// The GRU step as one operation gives the composed step's state exactly, and its
    /// gradients to within rounding: for a step slice of a sequence (rows apart in memory), a
    /// first state of zeros that tracks nothing, and two steps chained.
    #[test]
    fn the_fused_gru_step_equals_the_composed_one() {
        let device = Device::flex().autodiff();
        let (b, t, g) = (37, 3, 20);
        let seq = Tensor::<3>::random([b, t, 3 * g], Distribution::Normal(0.0, 1.5), &device);
        let u = Tensor::<2>::random([g, 3 * g], Distribution::Normal(0.0, 0.3), &device);
        let weights = Tensor::<2>::random([b, g], Distribution::Normal(0.0, 1.0), &device);
        let composed = |x: Tensor<2>, rec: Tensor<2>, h: Tensor<2>| {
            let ur = sigmoid(x.clone().narrow(1, 0, 2 * g) + rec.clone().narrow(1, 0, 2 * g));
            let (gate, reset) = (ur.clone().narrow(1, 0, g), ur.narrow(1, g, g));
            let n = tanh(x.narrow(1, 2 * g, g) + reset * rec.narrow(1, 2 * g, g));
            h.clone() + gate * (n - h)
        };
        let run = |step: &dyn Fn(Tensor<2>, Tensor<2>, Tensor<2>) -> Tensor<2>| {
            let (seq, u) = (seq.clone().detach().require_grad(), u.clone().detach().require_grad());
            let mut h = Tensor::<2>::zeros([b, g], &device);
            for s in 0..2 {
                let x = seq.clone().narrow(1, s, 1).reshape([b, 3 * g]);
                let rec = h.clone().matmul(u.clone());
                h = step(x, rec, h);
            }
            let grads = (h.clone() * weights.clone()).sum().backward();
            (h.into_data(), seq.grad(&grads).expect("seq").into_data(), u.grad(&grads).expect("U").into_data())
        };
        assert!(gru_cell_fused(&seq.clone().narrow(1, 0, 1).reshape([b, 3 * g])));
        let (h, dseq, du) = run(&|x, rec, h| gru_cell(x, rec, h));
        let (h_ref, dseq_ref, du_ref) = run(&composed);
        h.assert_eq(&h_ref, true);
        dseq.assert_approx_eq::<f32>(&dseq_ref, Tolerance::absolute(1e-5));
        du.assert_approx_eq::<f32>(&du_ref, Tolerance::absolute(1e-5));
        // The third step of the sequence had no part in the state: its gradient is zero.
        let third = Tensor::<3>::from_data(dseq, &Device::flex()).narrow(1, 2, 1);
        assert_eq!(third.abs().max().into_scalar::<f32>(), 0.0);
    }
}
