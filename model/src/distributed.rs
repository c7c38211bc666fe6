//! Data-parallel training: N replicas of one model, each stepping on its own shard of every
//! global batch, their gradients combined every step so that every replica applies the same
//! update — the update one replica would make on the whole global batch.
//!
//! The exchange goes through a [`Collective`] (MPI in `marnflow-engine`, feature `mpi`). Each
//! replica weighs its gradients by its share of the global batch's samples (its losses are means
//! over its own samples), so their sum is the gradient of the mean over the global batch:
//! * dense parameters travel in one element-wise sum (`all_reduce_sum`), with a flag per
//!   parameter saying whether any replica had a gradient for it (a parameter no replica touched
//!   stays out of the update, as on one replica);
//! * the embedding tables updated row-wise travel as rows: each replica sends the rows its shard
//!   read and their gradient rows (`all_gather`), and every replica sums them per row, updates
//!   the union of those rows and leaves every other row alone.

use std::collections::BTreeMap;
use std::sync::Arc;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, IndexingUpdateOp, Int, Shape, Tensor, TensorData};

use crate::error::{Error, Result};

/// The collective operations data-parallel training needs, over the replicas of one run (MPI's
/// `MPI_Allreduce`, `MPI_Allgatherv` and `MPI_Bcast` in `marnflow-engine`). Every replica calls
/// the same operations in the same order.
pub trait Collective: Send + Sync + std::fmt::Debug {
    /// This replica's index, `0..size()`.
    fn rank(&self) -> usize;
    /// The number of replicas.
    fn size(&self) -> usize;
    /// The element-wise sum of every replica's `local` (all of the same length).
    fn all_reduce_sum(&self, local: &[f32]) -> Result<Vec<f32>>;
    /// Every replica's `local` (lengths may differ), in rank order.
    fn all_gather_i64(&self, local: &[i64]) -> Result<Vec<Vec<i64>>>;
    /// Every replica's `local` (lengths may differ), in rank order.
    fn all_gather_f32(&self, local: &[f32]) -> Result<Vec<Vec<f32>>>;
    /// Rank 0's `bytes`, on every replica (the others' `bytes` are ignored).
    fn broadcast(&self, bytes: Vec<u8>) -> Result<Vec<u8>>;
    /// Ends every replica with exit status `code`: a replica that fails must not leave the
    /// others waiting in a collective operation.
    fn abort(&self, code: i32) -> !;
}

/// An embedding table updated row-wise: its parameter, and the rows this replica's shard read
/// (`None`: the shard does not say, and every row of a gradient it has travels, as the
/// single-process update then updates the table densely).
#[derive(Debug, Clone)]
pub(crate) struct RowTable {
    pub id: ParamId,
    pub rows: Option<Arc<[i64]>>,
}

/// What [`combine`] gives back: the gradients to apply, and the union of the rows of each row
/// table (in the order of the `tables` passed), for the row-wise optimizer.
pub(crate) struct Combined {
    pub grads: GradientsParams,
    pub rows: Vec<Option<Arc<[i64]>>>,
}

/// Combines this replica's gradients of `module` (`weight` = its share of the global batch's
/// samples; 0 for a replica without a batch this step) with every other replica's.
pub(crate) fn combine<M: Module>(
    collective: &dyn Collective,
    module: &M,
    mut grads: GradientsParams,
    weight: f32,
    tables: &[RowTable],
) -> Result<Combined> {
    let mut gather = Gather {
        grads: &mut grads,
        weight,
        tables,
        dense: Vec::new(),
        flags: Vec::new(),
        slots: Vec::new(),
        sparse: Vec::new(),
        error: None,
    };
    module.visit(&mut gather);
    let Gather { dense, flags, slots, sparse, error, .. } = gather;
    if let Some(e) = error {
        return Err(Error::Batch(format!("reading a gradient to exchange: {e}")));
    }

    // Dense: one sum, the presence flags after the values.
    let n_dense = dense.len();
    let mut message = dense;
    message.extend_from_slice(&flags);
    let summed = collective.all_reduce_sum(&message)?;
    if summed.len() != message.len() {
        return Err(Error::Config(format!(
            "the replicas' gradients differ in size: {} here, {} summed",
            message.len(),
            summed.len()
        )));
    }
    let (values, present) = summed.split_at(n_dense);

    // Row tables: every replica's rows and gradient rows, summed per row.
    let mut rows_out = vec![None; tables.len()];
    let mut sparse_grads = Vec::new();
    for part in sparse {
        let all_rows = collective.all_gather_i64(&part.rows)?;
        let all_values = collective.all_gather_f32(&part.values)?;
        let mut sums: BTreeMap<i64, Vec<f32>> = BTreeMap::new();
        for (rows, values) in all_rows.iter().zip(&all_values) {
            if values.len() != rows.len() * part.width {
                return Err(Error::Config(format!(
                    "a replica sent {} gradient values for {} rows of width {}",
                    values.len(),
                    rows.len(),
                    part.width
                )));
            }
            for (row, chunk) in rows.iter().zip(values.chunks_exact(part.width.max(1))) {
                let sum = sums.entry(*row).or_insert_with(|| vec![0.0; part.width]);
                for (s, v) in sum.iter_mut().zip(chunk) {
                    *s += v;
                }
            }
        }
        if sums.is_empty() {
            continue;
        }
        let union: Vec<i64> = sums.keys().copied().collect();
        let flat: Vec<f32> = sums.into_values().flatten().collect();
        rows_out[part.table] = Some(Arc::from(union.clone()));
        sparse_grads.push(SparseGrad { id: part.id, union, flat, shape: part.shape, device: part.device });
    }

    let mut restore =
        Restore { grads: &mut grads, values, present, slots: slots.into_iter(), next: 0, tables, sparse: sparse_grads };
    module.visit(&mut restore);
    Ok(Combined { grads, rows: rows_out })
}

/// A dense parameter's place in the summed message.
struct Slot {
    offset: usize,
    shape: Shape,
    device: Device,
}

/// A row table's contribution: its rows and their gradient rows (weighted), row-major.
struct SparsePart {
    table: usize,
    id: ParamId,
    rows: Vec<i64>,
    values: Vec<f32>,
    width: usize,
    shape: Shape,
    device: Device,
}

/// First walk: takes each parameter's gradient out of `grads`, weighted, into the messages.
struct Gather<'a> {
    grads: &'a mut GradientsParams,
    weight: f32,
    tables: &'a [RowTable],
    dense: Vec<f32>,
    flags: Vec<f32>,
    slots: Vec<Slot>,
    sparse: Vec<SparsePart>,
    /// The first gradient that could not be read as f32.
    error: Option<String>,
}

impl Gather<'_> {
    fn read<const D: usize>(&mut self, t: Tensor<D>) -> Vec<f32> {
        match t.into_data().try_into_vec_as::<f32>() {
            Ok(v) => v,
            Err(e) => {
                self.error.get_or_insert_with(|| format!("{e:?}"));
                Vec::new()
            }
        }
    }
}

impl ModuleVisitor for Gather<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !param.is_require_grad() {
            return;
        }
        let value = param.val().inner();
        let (shape, device) = (value.shape(), value.device());
        let grad = self.grads.remove::<D>(param.id);
        if let Some(table) = self.tables.iter().position(|t| t.id == param.id) {
            let width = if D >= 2 { shape.as_slice()[1..].iter().product() } else { 1 };
            let rows: Vec<i64> = match (&self.tables[table].rows, &grad) {
                (Some(rows), _) => rows.to_vec(),
                (None, Some(_)) => (0..shape.as_slice()[0] as i64).collect(),
                (None, None) => Vec::new(),
            };
            let values = match (&grad, rows.is_empty()) {
                (Some(g), false) => {
                    let index = Tensor::<1, Int>::from_data(TensorData::new(rows.clone(), [rows.len()]), &g.device());
                    let rows = g.clone().select(0, index).mul_scalar(self.weight);
                    self.read(rows)
                }
                _ => Vec::new(),
            };
            let rows = if values.is_empty() { Vec::new() } else { rows };
            self.sparse.push(SparsePart { table, id: param.id, rows, values, width, shape, device });
            return;
        }
        let n = shape.num_elements();
        self.slots.push(Slot { offset: self.dense.len(), shape, device });
        match grad {
            Some(g) => {
                let values = self.read(g.mul_scalar(self.weight));
                if values.len() != n {
                    self.error.get_or_insert_with(|| format!("{} values for a gradient of {n}", values.len()));
                }
                self.dense.extend(values);
                self.dense.resize(self.slots.last().map_or(0, |s| s.offset) + n, 0.0);
                self.flags.push(1.0);
            }
            None => {
                self.dense.extend(std::iter::repeat_n(0.0, n));
                self.flags.push(0.0);
            }
        }
    }
}

/// Second walk: registers the combined gradients, in the same order.
struct Restore<'a> {
    grads: &'a mut GradientsParams,
    values: &'a [f32],
    present: &'a [f32],
    slots: std::vec::IntoIter<Slot>,
    /// Index of the next dense slot (and of its presence flag).
    next: usize,
    tables: &'a [RowTable],
    sparse: Vec<SparseGrad>,
}

/// A row table's combined gradient: the union of the replicas' rows and their summed gradient
/// rows, row-major.
struct SparseGrad {
    id: ParamId,
    union: Vec<i64>,
    flat: Vec<f32>,
    shape: Shape,
    device: Device,
}

impl ModuleVisitor for Restore<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !param.is_require_grad() {
            return;
        }
        if let Some(k) = self.sparse.iter().position(|s| s.id == param.id) {
            let SparseGrad { id, union, flat, shape, device } = self.sparse.swap_remove(k);
            let mut row_shape = shape.to_vec();
            row_shape[0] = union.len();
            let index = Tensor::<1, Int>::from_data(TensorData::new(union.clone(), [union.len()]), &device);
            let rows = Tensor::<D>::from_data(TensorData::new(flat, row_shape), &device);
            let grad = Tensor::<D>::zeros(shape, &device).select_assign(0, index, rows, IndexingUpdateOp::Add);
            self.grads.register::<D>(id, grad);
            return;
        }
        // A row table no replica read this step: no gradient, as on one replica.
        if self.tables.iter().any(|t| t.id == param.id) {
            return;
        }
        let Some(slot) = self.slots.next() else { return };
        let k = self.next;
        self.next += 1;
        if self.present.get(k).copied().unwrap_or(0.0) == 0.0 {
            return;
        }
        let n = slot.shape.num_elements();
        let values = self.values[slot.offset..slot.offset + n].to_vec();
        self.grads.register::<D>(param.id, Tensor::<D>::from_data(TensorData::new(values, slot.shape), &slot.device));
    }
}
