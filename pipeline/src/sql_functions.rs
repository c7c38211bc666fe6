//! SQL functions marnflow adds to DataFusion, registered in every session ([`register`]).
//!
//! `ordered_list(value, key)` is an aggregate: the group's values as a list, in ascending order
//! of the integer `key`; rows with equal keys keep an unspecified order, so use a key that is
//! unique within a group (a `row_number`, say). It is what `array_agg(value ORDER BY key)`
//! returns, without converting every value to a `ScalarValue`: DataFusion 55's order-sensitive
//! `array_agg` does, which made it most of the time of `samples.sql`. The values are kept as
//! the Arrow slices they arrive in and taken in key order once per group.
//!
//! Grouped (`GROUP BY`), it runs as a [`GroupsAccumulator`]: every group's rows are kept as
//! (key, batch, row) references into the batches they arrived in, and the emitted groups' lists
//! are gathered in one `interleave` into one list array, where the per-group accumulator costs a
//! `take`, a sort and a `ScalarValue` per group and aggregate.
//!
//! ```sql
//! SELECT user_id, ordered_list(item_id, recency) FROM history GROUP BY user_id
//! ```
//!
//! `list_from_view(view)` is a scalar function: the `ListView` `view` as a `List` that is never
//! null: a null row becomes the empty list, as `coalesce(list, make_array())` gives (a `CASE`
//! that would copy every list of a batch holding one null once more). A list view's rows point
//! into its values, so a join that repeats a row (one
//! user's history for each item of a slate) copies an offset and a size, not the list; this turns
//! the result back into the `List` the tables store, copying each row's values as one range into
//! buffers sized beforehand. Arrow's `take` of a `List` (what a join does) and its cast from a
//! view copy the same values element by element into buffers that grow as they fill.
//!
//! ```sql
//! SELECT list_from_view(h.items) FROM slates s LEFT JOIN
//!   (SELECT user_id, arrow_cast(ordered_list(item_id, age), 'ListView(Utf8)') AS items ...) h ...
//! ```

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Capacities, Int64Array, ListArray, MutableArrayData, UInt32Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::compute::{concat, interleave, sort_to_indices, take, SortOptions};
use arrow::datatypes::{DataType, Field, FieldRef, Int64Type};
use datafusion::common::utils::SingleRowListArrayBuilder;
use datafusion::common::{exec_err, Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, EmitTo, GroupsAccumulator, ReturnFieldArgs,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

/// Registers marnflow's SQL functions in `ctx`.
pub fn register(ctx: &SessionContext) {
    for f in aggregate_functions() {
        ctx.register_udaf(f);
    }
    for f in scalar_functions() {
        ctx.register_udf(f);
    }
}

/// marnflow's scalar functions (registered on a cluster like [`aggregate_functions`]).
pub fn scalar_functions() -> Vec<ScalarUDF> {
    vec![ScalarUDF::from(ListFromView::new())]
}

/// marnflow's aggregate functions (a Ballista cluster's scheduler and executors register them
/// too: [`crate::cluster`]).
pub fn aggregate_functions() -> Vec<AggregateUDF> {
    vec![AggregateUDF::from(OrderedList::new())]
}

/// `ordered_list(value, key)`: see the module documentation.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct OrderedList {
    signature: Signature,
}

impl OrderedList {
    fn new() -> Self {
        Self { signature: Signature::any(2, Volatility::Immutable) }
    }
}

impl Default for OrderedList {
    fn default() -> Self {
        Self::new()
    }
}

/// The element field of the result, as `array_agg` names it.
fn item(value: &DataType) -> FieldRef {
    Arc::new(Field::new("item", value.clone(), true))
}

impl AggregateUDFImpl for OrderedList {
    fn name(&self) -> &str {
        "ordered_list"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args {
            [value, key] if key.is_integer() => Ok(DataType::List(item(value))),
            [_, key] => exec_err!("ordered_list(value, key): the key must be an integer, not {key}"),
            _ => exec_err!("ordered_list takes two arguments: a value and an integer key"),
        }
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let DataType::List(field) = args.return_field.data_type() else {
            return exec_err!("ordered_list returns a list");
        };
        Ok(Box::new(OrderedListAccumulator { value_type: field.data_type().clone(), parts: Vec::new() }))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        let DataType::List(field) = args.return_field.data_type() else {
            return exec_err!("ordered_list returns a list");
        };
        Ok(Box::new(OrderedListGroups::new(field.data_type().clone())))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let DataType::List(field) = args.return_field.data_type() else {
            return exec_err!("ordered_list returns a list");
        };
        Ok(vec![
            Arc::new(Field::new(format!("{}[values]", args.name), DataType::List(Arc::clone(field)), true)),
            Arc::new(Field::new(format!("{}[keys]", args.name), DataType::List(item(&DataType::Int64)), true)),
        ])
    }
}

/// One group's rows: the value and key slices as they arrived.
#[derive(Debug)]
struct OrderedListAccumulator {
    value_type: DataType,
    parts: Vec<(ArrayRef, ArrayRef)>,
}

impl OrderedListAccumulator {
    /// The group's values and keys in key order.
    fn sorted(&mut self) -> Result<(ArrayRef, ArrayRef)> {
        if self.parts.is_empty() {
            let empty = arrow::array::new_empty_array(&self.value_type);
            return Ok((empty, Arc::new(Int64Array::from(Vec::<i64>::new()))));
        }
        let values: Vec<&dyn Array> = self.parts.iter().map(|(v, _)| v.as_ref()).collect();
        let keys: Vec<&dyn Array> = self.parts.iter().map(|(_, k)| k.as_ref()).collect();
        let (values, keys) = (concat(&values)?, concat(&keys)?);
        let order: UInt32Array = sort_to_indices(&keys, Some(SortOptions::default()), None)?;
        let (values, keys) = (take(&values, &order, None)?, take(&keys, &order, None)?);
        // Keep one sorted part, so evaluating twice (state, then evaluate) sorts once.
        self.parts = vec![(Arc::clone(&values), Arc::clone(&keys))];
        Ok((values, keys))
    }
}

impl Accumulator for OrderedListAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let [value, key] = values else {
            return exec_err!("ordered_list takes two arguments");
        };
        if !value.is_empty() {
            let key = arrow::compute::cast(key, &DataType::Int64)?;
            self.parts.push((Arc::clone(value), key));
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let (values, _) = self.sorted()?;
        Ok(SingleRowListArrayBuilder::new(values).with_field(&item(&self.value_type)).build_list_scalar())
    }

    fn size(&self) -> usize {
        size_of_val(self)
            + self.parts.iter().map(|(v, k)| v.get_array_memory_size() + k.get_array_memory_size()).sum::<usize>()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let (values, keys) = self.sorted()?;
        Ok(vec![
            SingleRowListArrayBuilder::new(values).with_field(&item(&self.value_type)).build_list_scalar(),
            SingleRowListArrayBuilder::new(keys).with_field(&item(&DataType::Int64)).build_list_scalar(),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let [values, keys] = states else {
            return exec_err!("ordered_list: a state has two lists");
        };
        let (values, keys) = (values.as_list::<i32>(), keys.as_list::<i32>());
        for row in 0..values.len() {
            if values.is_valid(row) && keys.is_valid(row) {
                let key = keys.value(row);
                if key.as_primitive_opt::<Int64Type>().is_none() {
                    return exec_err!("ordered_list: a state's keys are not int64");
                }
                self.parts.push((values.value(row), key));
            }
        }
        Ok(())
    }
}

/// One row of a group: its key and where its value is (a stored array and a row in it).
#[derive(Debug, Clone, Copy)]
struct Entry {
    key: i64,
    array: u32,
    row: u32,
}

/// `ordered_list` for all the groups of a grouped aggregate: the arrays the values came in, and
/// each group's entries into them.
#[derive(Debug)]
struct OrderedListGroups {
    value_type: DataType,
    arrays: Vec<ArrayRef>,
    groups: Vec<Vec<Entry>>,
    /// Rows that live groups still refer to.
    live: usize,
}

/// Whether `opt_filter` keeps `row` (an aggregate's `FILTER (WHERE …)`; a null drops it).
fn kept(opt_filter: Option<&BooleanArray>, row: usize) -> bool {
    opt_filter.is_none_or(|f| f.is_valid(row) && f.value(row))
}

/// The two lists of a state (or of a result, the values alone): `values` and their `keys`, cut
/// into groups at `ends` (each group's end, in elements).
fn value_and_key_lists(
    value_type: &DataType,
    ends: Vec<usize>,
    values: ArrayRef,
    keys: ArrayRef,
) -> Result<(ListArray, ListArray)> {
    let mut offsets = Vec::with_capacity(ends.len() + 1);
    offsets.push(0i32);
    for end in ends {
        let Ok(end) = i32::try_from(end) else {
            return exec_err!("ordered_list: more than 2^31 values in one batch of lists");
        };
        offsets.push(end);
    }
    let offsets = OffsetBuffer::new(offsets.into());
    Ok((
        ListArray::try_new(item(value_type), offsets.clone(), values, None)?,
        ListArray::try_new(item(&DataType::Int64), offsets, keys, None)?,
    ))
}

impl OrderedListGroups {
    fn new(value_type: DataType) -> Self {
        Self { value_type, arrays: Vec::new(), groups: Vec::new(), live: 0 }
    }

    /// Rows held by the stored arrays.
    fn stored(&self) -> usize {
        self.arrays.iter().map(|a| a.len()).sum()
    }

    /// Keeps `values` and adds its rows to their groups (`group_of` a row; `None`: left out) with
    /// their keys.
    fn add(
        &mut self,
        values: &ArrayRef,
        keys: &Int64Array,
        group_of: impl Fn(usize) -> Option<usize>,
        total_num_groups: usize,
    ) -> Result<()> {
        if self.groups.len() < total_num_groups {
            self.groups.resize_with(total_num_groups, Vec::new);
        }
        if values.is_empty() {
            return Ok(());
        }
        let Ok(array) = u32::try_from(self.arrays.len()) else {
            return exec_err!("ordered_list: more than 2^32 input arrays in one aggregate");
        };
        let mut added = 0;
        for row in 0..values.len() {
            let Some(group) = group_of(row) else { continue };
            // A null key sorts first, as `sort_to_indices` puts it by default.
            let key = if keys.is_valid(row) { keys.value(row) } else { i64::MIN };
            let Ok(row) = u32::try_from(row) else {
                return exec_err!("ordered_list: an input array of more than 2^32 rows");
            };
            self.groups[group].push(Entry { key, array, row });
            added += 1;
        }
        if added > 0 {
            self.arrays.push(Arc::clone(values));
            self.live += added;
        }
        Ok(())
    }

    /// The emitted groups' values and keys in key order, as two list arrays with the same offsets.
    fn emit(&mut self, emit_to: EmitTo) -> Result<(ListArray, ListArray)> {
        let mut emitted = emit_to.take_needed(&mut self.groups);
        let mut ends = Vec::with_capacity(emitted.len());
        let mut indices = Vec::new();
        let mut keys = Vec::new();
        for entries in &mut emitted {
            entries.sort_by_key(|e| e.key);
            indices.extend(entries.iter().map(|e| (e.array as usize, e.row as usize)));
            keys.extend(entries.iter().map(|e| e.key));
            ends.push(indices.len());
        }
        let values = if indices.is_empty() {
            arrow::array::new_empty_array(&self.value_type)
        } else {
            let arrays: Vec<&dyn Array> = self.arrays.iter().map(|a| a.as_ref()).collect();
            interleave(&arrays, &indices)?
        };
        self.live -= indices.len();
        self.compact()?;
        value_and_key_lists(&self.value_type, ends, values, Arc::new(Int64Array::from(keys)))
    }

    /// Drops the stored arrays once no group refers to them, or copies the rows still referred
    /// to into one array when they are less than half of what is held (groups emitted early, in
    /// input order, would otherwise keep every array to the end).
    fn compact(&mut self) -> Result<()> {
        if self.live == 0 {
            self.arrays.clear();
        } else if self.stored() > 2 * self.live + 65_536 {
            let mut indices = Vec::with_capacity(self.live);
            for entries in &mut self.groups {
                for e in entries.iter_mut() {
                    indices.push((e.array as usize, e.row as usize));
                    let Ok(row) = u32::try_from(indices.len() - 1) else {
                        return exec_err!("ordered_list: more than 2^32 rows held");
                    };
                    (e.array, e.row) = (0, row);
                }
            }
            let arrays: Vec<&dyn Array> = self.arrays.iter().map(|a| a.as_ref()).collect();
            self.arrays = vec![interleave(&arrays, &indices)?];
        }
        Ok(())
    }
}

impl GroupsAccumulator for OrderedListGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        let [value, key] = values else {
            return exec_err!("ordered_list takes two arguments");
        };
        let key = arrow::compute::cast(key, &DataType::Int64)?;
        let keys = key.as_primitive::<Int64Type>();
        self.add(value, keys, |row| kept(opt_filter, row).then(|| group_indices[row]), total_num_groups)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        Ok(Arc::new(self.emit(emit_to)?.0))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let (values, keys) = self.emit(emit_to)?;
        Ok(vec![Arc::new(values), Arc::new(keys)])
    }

    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> Result<()> {
        let [values, keys] = values else {
            return exec_err!("ordered_list: a state has two lists");
        };
        let (values, keys) = (values.as_list::<i32>(), keys.as_list::<i32>());
        if values.offsets() != keys.offsets() {
            return exec_err!("ordered_list: a state's values and keys differ in length");
        }
        let Some(key_values) = keys.values().as_primitive_opt::<Int64Type>() else {
            return exec_err!("ordered_list: a state's keys are not int64");
        };
        // Each state row is a group's list: its elements join that group.
        let mut group_of_element = vec![None; values.values().len()];
        for (row, &group) in group_indices.iter().enumerate() {
            if values.is_valid(row) && keys.is_valid(row) {
                let (start, end) = (values.offsets()[row] as usize, values.offsets()[row + 1] as usize);
                group_of_element[start..end].fill(Some(group));
            }
        }
        self.add(values.values(), key_values, |e| group_of_element[e], total_num_groups)
    }

    /// Each row as a group of its own: one-element lists (empty where the filter drops the row).
    fn convert_to_state(&self, values: &[ArrayRef], opt_filter: Option<&BooleanArray>) -> Result<Vec<ArrayRef>> {
        let [value, key] = values else {
            return exec_err!("ordered_list takes two arguments");
        };
        let keys = arrow::compute::cast(key, &DataType::Int64)?;
        let mut ends = Vec::with_capacity(value.len());
        let mut rows = Vec::with_capacity(value.len());
        for row in 0..value.len() {
            if kept(opt_filter, row) {
                rows.push(row as u32);
            }
            ends.push(rows.len());
        }
        let rows = UInt32Array::from(rows);
        let (value, keys) = (take(value, &rows, None)?, take(&keys, &rows, None)?);
        let (values, keys) = value_and_key_lists(&self.value_type, ends, value, keys)?;
        Ok(vec![Arc::new(values), Arc::new(keys)])
    }

    fn size(&self) -> usize {
        size_of_val(self)
            + self.arrays.iter().map(|a| a.get_array_memory_size()).sum::<usize>()
            + self.groups.capacity() * size_of::<Vec<Entry>>()
            + self.live * size_of::<Entry>()
    }
}

/// `list_from_view(view)`: see the module documentation.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ListFromView {
    signature: Signature,
}

impl ListFromView {
    fn new() -> Self {
        Self { signature: Signature::any(1, Volatility::Immutable) }
    }
}

impl Default for ListFromView {
    fn default() -> Self {
        Self::new()
    }
}

impl ScalarUDFImpl for ListFromView {
    fn name(&self) -> &str {
        "list_from_view"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args {
            [DataType::ListView(field)] => Ok(DataType::List(Arc::clone(field))),
            [other] => exec_err!("list_from_view(view) takes a ListView, not {other}"),
            _ => exec_err!("list_from_view takes one argument: a ListView"),
        }
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let types: Vec<DataType> = args.arg_fields.iter().map(|f| f.data_type().clone()).collect();
        Ok(Arc::new(Field::new(self.name(), self.return_type(&types)?, false)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return exec_err!("list_from_view takes one argument: a ListView");
        };
        match arg {
            ColumnarValue::Array(array) => Ok(ColumnarValue::Array(Arc::new(list_from_view(array.as_ref())?))),
            ColumnarValue::Scalar(scalar) => {
                let list = list_from_view(scalar.to_array()?.as_ref())?;
                Ok(ColumnarValue::Scalar(ScalarValue::List(Arc::new(list))))
            }
        }
    }
}

/// The rows of a `ListView` array as a `List` array without nulls (a null row is the empty list):
/// each row's values copied as one range into buffers sized for all of them (see the module
/// documentation).
pub fn list_from_view(array: &dyn Array) -> Result<ListArray> {
    let DataType::ListView(field) = array.data_type() else {
        return exec_err!("list_from_view(view) takes a ListView, not {}", array.data_type());
    };
    let view = array.as_list_view::<i32>();
    let (starts, sizes) = (view.offsets(), view.sizes());
    let values = view.values().to_data();
    // Of strings and bytes, the values' own offsets: the bytes to reserve are counted with them.
    let value_offsets =
        matches!(values.data_type(), DataType::Utf8 | DataType::Binary).then(|| values.buffer::<i32>(0));
    let mut offsets = Vec::with_capacity(view.len() + 1);
    offsets.push(0i32);
    let mut ranges = Vec::with_capacity(view.len());
    let (mut elements, mut bytes) = (0usize, 0usize);
    for row in 0..view.len() {
        if view.is_valid(row) && sizes[row] > 0 {
            let (start, end) = (starts[row] as usize, (starts[row] + sizes[row]) as usize);
            elements += end - start;
            if let Some(value_offsets) = value_offsets {
                bytes += (value_offsets[end] - value_offsets[start]) as usize;
            }
            ranges.push(start..end);
        }
        let Ok(end) = i32::try_from(elements) else {
            return exec_err!("list_from_view: {elements} values overflow a List's 32-bit offsets");
        };
        offsets.push(end);
    }
    let capacity = match value_offsets {
        Some(_) => Capacities::Binary(elements, Some(bytes)),
        None => Capacities::Array(elements),
    };
    let mut gathered = MutableArrayData::with_capacities(vec![&values], false, capacity);
    for range in ranges {
        gathered.try_extend(0, range.start, range.end)?;
    }
    let values = arrow::array::make_array(gathered.freeze());
    Ok(ListArray::try_new(Arc::clone(field), OffsetBuffer::new(offsets.into()), values, None)?)
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int32Array, StringArray};
    use arrow::record_batch::RecordBatch;
    use datafusion::datasource::MemTable;

    use super::*;

    async fn lists(sql: &str, batches: Vec<RecordBatch>) -> Vec<String> {
        let ctx = SessionContext::new_with_config(datafusion::prelude::SessionConfig::new().with_target_partitions(3));
        register(&ctx);
        // One partition per batch, so the groups are merged across partitions.
        let schema = batches[0].schema();
        let partitions = batches.into_iter().map(|b| vec![b]).collect();
        ctx.register_table("t", Arc::new(MemTable::try_new(schema, partitions).unwrap())).unwrap();
        let out = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        arrow::util::pretty::pretty_format_batches(&out).unwrap().to_string().lines().map(str::to_string).collect()
    }

    fn batch(groups: &[&str], keys: &[i32], values: &[Option<&str>]) -> RecordBatch {
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            Field::new("g", DataType::Utf8, false),
            Field::new("k", DataType::Int32, false),
            Field::new("v", DataType::Utf8, true),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(groups.to_vec())),
            Arc::new(Int32Array::from(keys.to_vec())),
            Arc::new(StringArray::from(values.to_vec())),
        ];
        RecordBatch::try_new(schema, columns).unwrap()
    }

    #[tokio::test]
    async fn ordered_list_equals_array_agg_ordered_by_the_key() {
        // Rows out of order, spread over batches (so over partitions), nulls kept.
        let batches = vec![
            batch(&["a", "b", "a"], &[3, 1, 1], &[Some("a3"), Some("b1"), Some("a1")]),
            batch(&["a", "b", "c"], &[2, 0, 5], &[None, Some("b0"), Some("c5")]),
            batch(&["b", "a"], &[7, -4], &[Some("b7"), Some("a-4")]),
        ];
        let ours = lists("SELECT g, ordered_list(v, k) AS l FROM t GROUP BY g ORDER BY g", batches.clone()).await;
        let reference = lists("SELECT g, array_agg(v ORDER BY k) AS l FROM t GROUP BY g ORDER BY g", batches).await;
        assert_eq!(ours, reference);
        assert!(ours.iter().any(|l| l.contains("[a-4, a1, , a3]")), "{ours:?}");
    }

    #[tokio::test]
    async fn a_filter_and_an_ordered_input_give_what_array_agg_gives() {
        let batches = vec![
            batch(&["a", "a", "b"], &[3, 1, 1], &[Some("a3"), Some("a1"), Some("b1")]),
            batch(&["b", "c", "c"], &[0, 5, 2], &[Some("b0"), Some("c5"), Some("c2")]),
        ];
        for filter in ["", "FILTER (WHERE v <> 'a1')"] {
            let ours = lists(
                &format!("SELECT g, ordered_list(v, k) {filter} AS l FROM (SELECT * FROM t ORDER BY g) GROUP BY g ORDER BY g"),
                batches.clone(),
            )
            .await;
            let reference = lists(
                &format!("SELECT g, array_agg(v ORDER BY k) {filter} AS l FROM t GROUP BY g ORDER BY g"),
                batches.clone(),
            )
            .await;
            assert_eq!(ours, reference, "{filter}");
        }
    }

    /// Groups emitted a few at a time (as an aggregate over sorted input emits them), with the
    /// held rows compacted on the way, give every group its rows in key order; a state merged
    /// into another accumulator gives the same lists.
    #[test]
    fn groups_emitted_in_parts_and_merged_states_keep_every_row_in_key_order() {
        let (groups, rows, batches) = (3_000usize, 200_000usize, 25usize);
        let mut acc = OrderedListGroups::new(DataType::Int64);
        let mut expected: Vec<Vec<(i64, i64)>> = vec![Vec::new(); groups];
        let mut state = 12345u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            state >> 33
        };
        for b in 0..batches {
            let n = rows / batches;
            let group_indices: Vec<usize> = (0..n).map(|_| (next() as usize) % groups).collect();
            let keys: Vec<i64> = (0..n).map(|i| (b * n + i) as i64 * 7919 % 1_000_003).collect();
            let values: Vec<i64> = keys.iter().map(|k| k * 10 + 1).collect();
            for i in 0..n {
                expected[group_indices[i]].push((keys[i], values[i]));
            }
            let values: ArrayRef = Arc::new(Int64Array::from(values));
            let keys: ArrayRef = Arc::new(Int64Array::from(keys));
            acc.update_batch(&[values, keys], &group_indices, None, groups).unwrap();
        }
        for e in &mut expected {
            e.sort();
        }
        // Half the groups go through a state into a second accumulator.
        let state = acc.state(EmitTo::First(groups / 2)).unwrap();
        let mut other = OrderedListGroups::new(DataType::Int64);
        let targets: Vec<usize> = (0..groups / 2).collect();
        other.merge_batch(&state, &targets, groups / 2).unwrap();
        let mut got: Vec<Vec<i64>> = Vec::new();
        let mut collect = |list: ArrayRef| {
            let list = list.as_list::<i32>();
            for row in 0..list.len() {
                got.push(list.value(row).as_primitive::<Int64Type>().values().to_vec());
            }
        };
        collect(other.evaluate(EmitTo::All).unwrap());
        // Rows passed on as states of their own (a partial aggregate that does not reduce) and
        // merged give the same lists, the filter's rows left out.
        let rows: ArrayRef = Arc::new(Int64Array::from(vec![5, 6, 7, 8]));
        let keys: ArrayRef = Arc::new(Int64Array::from(vec![4, 3, 2, 1]));
        let filter = BooleanArray::from(vec![Some(true), Some(true), None, Some(true)]);
        let states = acc.convert_to_state(&[rows, keys], Some(&filter)).unwrap();
        let mut single = OrderedListGroups::new(DataType::Int64);
        single.merge_batch(&states, &[0, 1, 0, 0], 2).unwrap();
        let lists = single.evaluate(EmitTo::All).unwrap();
        let lists = lists.as_list::<i32>();
        assert_eq!(lists.value(0).as_primitive::<Int64Type>().values().to_vec(), [8, 5]);
        assert_eq!(lists.value(1).as_primitive::<Int64Type>().values().to_vec(), [6]);
        while !acc.groups.is_empty() {
            let n = acc.groups.len().min(97);
            collect(acc.evaluate(EmitTo::First(n)).unwrap());
            assert!(
                acc.stored() <= 2 * acc.live + 65_536,
                "held rows not compacted: {} for {}",
                acc.stored(),
                acc.live
            );
        }
        assert_eq!(acc.live, 0);
        assert!(acc.arrays.is_empty(), "arrays held after the last group");
        let want: Vec<Vec<i64>> = expected.iter().map(|e| e.iter().map(|(_, v)| *v).collect()).collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn a_key_that_is_not_an_integer_is_refused_by_name() {
        let ctx = SessionContext::new();
        register(&ctx);
        let err = ctx.sql("SELECT ordered_list('x', 1.5)").await.unwrap_err().to_string();
        assert!(err.contains("the key must be an integer"), "{err}");
    }

    /// A view with repeated, overlapping, empty and null rows over values with a null among them.
    fn views() -> Vec<ArrayRef> {
        use arrow::array::{ListViewArray, StringArray};
        use arrow::buffer::{NullBuffer, ScalarBuffer};
        let starts = ScalarBuffer::from(vec![1, 1, 0, 3, 2, 0, 4, 1]);
        let sizes = ScalarBuffer::from(vec![3, 3, 2, 0, 3, 1, 1, 2]);
        let nulls = NullBuffer::from(vec![true, true, true, true, true, false, true, true]);
        let strings: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), Some("bb"), None, Some("dddd"), Some("e")]));
        let numbers: ArrayRef = Arc::new(Int64Array::from(vec![Some(10), Some(-2), None, Some(7), Some(0)]));
        [strings, numbers]
            .into_iter()
            .map(|values| {
                let field = item(values.data_type());
                let view = ListViewArray::try_new(field, starts.clone(), sizes.clone(), values, Some(nulls.clone()));
                let view: ArrayRef = Arc::new(view.unwrap());
                // A slice, so that the first row is not the values' first.
                view.slice(1, 7)
            })
            .collect()
    }

    #[test]
    fn a_view_becomes_the_list_arrow_casts_it_to() {
        for view in views() {
            let ours = list_from_view(view.as_ref()).unwrap();
            let DataType::ListView(field) = view.data_type() else { unreachable!() };
            let cast = arrow::compute::cast(&view, &DataType::List(Arc::clone(field))).unwrap();
            // The cast keeps the null row (the slice's fifth), where ours has the empty list.
            let cast = cast.as_list::<i32>();
            assert_eq!(ours.null_count(), 0);
            assert_eq!(ours.len(), cast.len());
            for row in 0..ours.len() {
                match row {
                    4 => assert!(cast.is_null(row) && ours.value(row).is_empty()),
                    _ => assert_eq!(ours.value(row).as_ref(), cast.value(row).as_ref(), "row {row} of {view:?}"),
                }
            }
            assert_eq!(ours.values().len(), 3 + 2 + 3 + 1 + 2);
        }
        let err = list_from_view(&Int64Array::from(vec![1])).unwrap_err().to_string();
        assert!(err.contains("takes a ListView"), "{err}");
    }

    #[tokio::test]
    async fn a_join_repeating_views_gives_the_lists_a_join_of_lists_gives() {
        let ctx = SessionContext::new();
        register(&ctx);
        let histories = batch(&["u", "u", "u", "w"], &[2, 1, 3, 1], &[Some("b"), Some("a"), None, Some("x")]);
        ctx.register_batch("h", histories).unwrap();
        let slates = "(VALUES ('u', 1), ('v', 2), ('u', 3), ('w', 4), ('u', 5)) AS s(g, n)";
        let lists = "SELECT g, ordered_list(v, k) AS l FROM h GROUP BY g";
        let plain = format!("SELECT s.n, coalesce(l.l, make_array()) AS l FROM {slates} LEFT JOIN ({lists}) l ON l.g = s.g ORDER BY s.n");
        let viewed = format!(
            "SELECT s.n, list_from_view(l.l) AS l FROM {slates} \
             LEFT JOIN (SELECT g, arrow_cast(l, 'ListView(Utf8)') AS l FROM ({lists})) l ON l.g = s.g ORDER BY s.n"
        );
        let plain = ctx.sql(&plain).await.unwrap().collect().await.unwrap();
        let viewed = ctx.sql(&viewed).await.unwrap().collect().await.unwrap();
        assert_eq!(plain[0].schema(), viewed[0].schema());
        let text = |b: &[RecordBatch]| arrow::util::pretty::pretty_format_batches(b).unwrap().to_string();
        assert_eq!(text(&plain), text(&viewed));
        assert!(text(&viewed).contains("| 3 | [a, b, ] |"), "{}", text(&viewed));
    }
}
