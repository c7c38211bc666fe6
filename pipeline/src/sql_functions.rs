//! SQL functions marnflow adds to DataFusion, registered in every session ([`register`]).
//!
//! `ordered_list(value, key)` is an aggregate: the group's values as a list, in ascending order
//! of the integer `key`; rows with equal keys keep an unspecified order, so use a key that is
//! unique within a group (a `row_number`, say). It is what `array_agg(value ORDER BY key)`
//! returns, without converting every value to a `ScalarValue`: DataFusion 55's order-sensitive
//! `array_agg` does, which made it most of the time of `samples.sql`. The values are kept as
//! the Arrow slices they arrive in and taken in key order once per group.
//!
//! ```sql
//! SELECT user_id, ordered_list(item_id, recency) FROM history GROUP BY user_id
//! ```

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, UInt32Array};
use arrow::compute::{concat, sort_to_indices, take, SortOptions};
use arrow::datatypes::{DataType, Field, FieldRef, Int64Type};
use datafusion::common::utils::SingleRowListArrayBuilder;
use datafusion::common::{exec_err, Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility};
use datafusion::prelude::SessionContext;

/// Registers marnflow's SQL functions in `ctx`.
pub fn register(ctx: &SessionContext) {
    for f in aggregate_functions() {
        ctx.register_udaf(f);
    }
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
    async fn a_key_that_is_not_an_integer_is_refused_by_name() {
        let ctx = SessionContext::new();
        register(&ctx);
        let err = ctx.sql("SELECT ordered_list('x', 1.5)").await.unwrap_err().to_string();
        assert!(err.contains("the key must be an integer"), "{err}");
    }
}
