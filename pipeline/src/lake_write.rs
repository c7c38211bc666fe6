//! Tables written by the query's own partitions: the rows of a day's big tables (samples, user
//! state) go from the query straight to the lake, one file per hash partition of a key column,
//! without passing through the job's process.
//!
//! [`write_partitioned`] plans the query itself (DataFusion's physical planner), takes its final
//! `ORDER BY` off, and puts in its place:
//!
//! ```text
//! LakeWriteExec               one task per partition k: writes <folder>/part-0000k.parquet
//!   SortExec (per partition)  the query's ORDER BY, within each partition
//!     RepartitionExec         Hash(key columns, n): DataFusion's repartition hash, modulo n
//!       (the query below its ORDER BY)
//! ```
//!
//! Embedded, the plan runs in this process. On a Ballista cluster it is submitted as a physical
//! plan: the hash repartition becomes a shuffle, and each of the `n` tasks of the last stage runs
//! on an executor and writes its file there. [`LakeCodec`] is what lets the client, the scheduler
//! and the executors send and receive [`LakeWriteExec`]; `marnflow cluster` installs it.
//!
//! Each file's rows are the rows whose key hashes to its partition, in the query's order, written
//! in the fixed chunks of [`PartitionWriter`]: the same rows make the same bytes wherever the plan
//! runs, and a partition of users is the same set of users every day (the sequences' state and
//! the day's samples of a user sit in files of the same index).

use std::fmt;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, SendableRecordBatchStream,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion::prelude::SessionContext;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::{PipelineError, Result};
use crate::lake::{Lake, PartitionWriter};

/// Rows per row group of the written files (as the job's other tables).
pub const ROW_GROUP_ROWS: usize = 65_536;

/// What a [`LakeWriteExec`] writes, and where: everything an executor needs, serialized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct WriteSpec {
    /// The lake's URI, opened by whoever runs the task (an `s3://` lake from its environment).
    lake: String,
    /// The folder, relative to the lake root, that receives `part-NNNNN.parquet` per partition.
    folder: String,
    row_group_rows: usize,
}

/// The file of partition `k` in `folder`.
pub fn part_file(folder: &str, k: usize) -> String {
    format!("{folder}/part-{k:05}.parquet")
}

/// Writes each partition of its input as one Parquet file; yields `(partition, rows)` per
/// partition.
#[derive(Debug)]
pub struct LakeWriteExec {
    input: Arc<dyn ExecutionPlan>,
    spec: WriteSpec,
    properties: Arc<PlanProperties>,
}

fn counts_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("partition", DataType::Int64, false),
        Field::new("rows", DataType::Int64, false),
    ]))
}

impl LakeWriteExec {
    fn new(input: Arc<dyn ExecutionPlan>, spec: WriteSpec) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(counts_schema()),
            Partitioning::UnknownPartitioning(input.properties().output_partitioning().partition_count()),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self { input, spec, properties: Arc::new(properties) }
    }
}

impl DisplayAs for LakeWriteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "LakeWriteExec: folder={}", self.spec.folder)
    }
}

impl ExecutionPlan for LakeWriteExec {
    fn name(&self) -> &str {
        "LakeWriteExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::error::Result<TreeNodeRecursion>,
    ) -> datafusion::error::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let [input] = <[Arc<dyn ExecutionPlan>; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("LakeWriteExec takes one input".into()))?;
        Ok(Arc::new(LakeWriteExec::new(input, self.spec.clone())))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let spec = self.spec.clone();
        let written = async move {
            let rows =
                write_stream(&spec, partition, input).await.map_err(|e| DataFusionError::External(Box::new(e)))?;
            let partition = i64::try_from(partition).unwrap_or(i64::MAX);
            RecordBatch::try_new(
                counts_schema(),
                vec![Arc::new(Int64Array::from(vec![partition])), Arc::new(Int64Array::from(vec![rows]))],
            )
            .map_err(DataFusionError::from)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(counts_schema(), futures::stream::once(written))))
    }
}

/// Writes one partition's stream to its file; returns its rows. Strings are written as `Utf8`,
/// the contract's type, as every other table of the job.
async fn write_stream(spec: &WriteSpec, partition: usize, mut input: SendableRecordBatchStream) -> Result<i64> {
    let lake = Lake::open(&spec.lake)?;
    let schema = crate::features::plain_schema(&input.schema());
    let mut writer =
        PartitionWriter::create(&lake, part_file(&spec.folder, partition), Arc::clone(&schema), spec.row_group_rows)?;
    while let Some(batch) = input.next().await {
        let written = match batch {
            Ok(b) => match crate::features::plain_batch(&b, &schema) {
                Ok(b) => writer.write(&b).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(PipelineError::Sql(e)),
        };
        if let Err(e) = written {
            writer.abort().await;
            return Err(e);
        }
    }
    let rows = writer.finish().await?;
    Ok(i64::try_from(rows).unwrap_or(i64::MAX))
}

/// The query's plan with its final sort replaced by a hash repartition on `keys` into `n`
/// partitions, each sorted in the query's order, each written by a [`LakeWriteExec`]. Projections
/// above the sort (columns the ORDER BY used but the query does not return) stay above it.
fn partitioned_plan(
    plan: Arc<dyn ExecutionPlan>,
    keys: &[&str],
    n: usize,
    spec: WriteSpec,
) -> Result<Arc<dyn ExecutionPlan>> {
    let no_order = || {
        PipelineError::Config(vec![format!(
            "the query written to {} has no final ORDER BY: a table written by partitions needs one, so that the \
             same rows make the same files",
            spec.folder
        )])
    };
    let mut projections = Vec::new();
    let mut top = plan;
    while top.is::<ProjectionExec>() {
        let child = Arc::clone(top.children()[0]);
        projections.push(top);
        top = child;
    }
    let (below, ordering) = if let Some(merge) = top.downcast_ref::<SortPreservingMergeExec>() {
        if merge.fetch().is_some() {
            return Err(no_order());
        }
        let below = merge.input();
        let below = match below.downcast_ref::<SortExec>() {
            Some(sort) => Arc::clone(sort.input()),
            None => Arc::clone(below),
        };
        (below, merge.expr().clone())
    } else if let Some(sort) = top.downcast_ref::<SortExec>() {
        if sort.fetch().is_some() {
            return Err(no_order());
        }
        (Arc::clone(sort.input()), sort.expr().clone())
    } else {
        return Err(no_order());
    };
    let schema = below.schema();
    let exprs = keys
        .iter()
        .map(|k| datafusion::physical_expr::expressions::col(k, &schema))
        .collect::<datafusion::error::Result<Vec<_>>>()?;
    let repartitioned = Arc::new(RepartitionExec::try_new(below, Partitioning::Hash(exprs, n.max(1)))?);
    let mut sorted: Arc<dyn ExecutionPlan> =
        Arc::new(SortExec::new(ordering, repartitioned).with_preserve_partitioning(true));
    #[allow(deprecated)] // replace_children's options add nothing for a projection's one child
    for projection in projections.into_iter().rev() {
        sorted = projection.with_new_children(vec![sorted])?;
    }
    Ok(Arc::new(LakeWriteExec::new(sorted, spec)))
}

/// Writes the result of `df` to `folder` of `lake` as `n` files, `part-00000.parquet` to
/// `part-{n-1}`, hash-partitioned on `keys` (see the module's text); returns the rows per
/// partition. `df`'s query must end in an `ORDER BY`. On a Ballista session the partitions are
/// written by the executors.
pub async fn write_partitioned(
    ctx: &SessionContext,
    df: DataFrame,
    lake: &Lake,
    folder: &str,
    keys: &[&str],
    n: usize,
) -> Result<Vec<u64>> {
    let physical = physical_plan(ctx, df).await?;
    let plan = partitioned_plan(physical, keys, n, spec(lake, folder))?;
    run(ctx, plan, n.max(1)).await
}

/// Writes the result of `df` to `folder` one file per partition of its plan, in whatever order
/// they come: for tables in between, read back by the same job, where no byte needs to repeat.
/// On a Ballista session the executors write them, and only the counts come back. Returns the
/// rows per file.
pub async fn write_unordered(ctx: &SessionContext, df: DataFrame, lake: &Lake, folder: &str) -> Result<Vec<u64>> {
    let physical = physical_plan(ctx, df).await?;
    let n = physical.properties().output_partitioning().partition_count();
    run(ctx, Arc::new(LakeWriteExec::new(physical, spec(lake, folder))), n).await
}

fn spec(lake: &Lake, folder: &str) -> WriteSpec {
    WriteSpec { lake: lake.uri().to_string(), folder: folder.to_string(), row_group_rows: ROW_GROUP_ROWS }
}

/// `df` planned by DataFusion's own planner, also on a Ballista session (whose planner would send
/// the logical plan away): the plan is changed here, then sent as a physical plan.
async fn physical_plan(ctx: &SessionContext, df: DataFrame) -> Result<Arc<dyn ExecutionPlan>> {
    let state = ctx.state();
    let logical = state.optimize(df.logical_plan())?;
    Ok(DefaultPhysicalPlanner::default().create_physical_plan(&logical, &state).await?)
}

/// Runs a write plan of `n` partitions here or on the session's cluster; the rows per partition.
async fn run(ctx: &SessionContext, plan: Arc<dyn ExecutionPlan>, n: usize) -> Result<Vec<u64>> {
    let batches = match crate::cluster::scheduler_of(ctx) {
        None => datafusion::physical_plan::collect(plan, ctx.task_ctx()).await?,
        Some(url) => crate::cluster::run_physical(ctx, &url, plan).await?,
    };
    let mut rows = vec![0u64; n];
    for b in &batches {
        let (Some(part), Some(count)) =
            (b.column(0).as_any().downcast_ref::<Int64Array>(), b.column(1).as_any().downcast_ref::<Int64Array>())
        else {
            continue;
        };
        for (p, c) in part.values().iter().zip(count.values()) {
            if let Some(slot) = usize::try_from(*p).ok().and_then(|p| rows.get_mut(p)) {
                *slot = u64::try_from(*c).unwrap_or(0);
            }
        }
    }
    Ok(rows)
}

/// Ballista's codec with [`LakeWriteExec`] added: installed in the client's session, the
/// scheduler and the executors.
#[derive(Debug, Default)]
pub struct LakeCodec {
    ballista: ballista_core::serde::BallistaPhysicalExtensionCodec,
}

/// Marks a [`LakeWriteExec`] in the codec's bytes (Ballista's own nodes are protobuf messages,
/// which never start with it).
const LAKE_WRITE_TAG: &[u8] = b"marnflow.LakeWriteExec\0";

impl PhysicalExtensionCodec for LakeCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let Some(spec) = buf.strip_prefix(LAKE_WRITE_TAG) else {
            return self.ballista.try_decode(buf, inputs, ctx, converter);
        };
        let spec: WriteSpec = serde_json::from_slice(spec)
            .map_err(|e| DataFusionError::Internal(format!("LakeWriteExec: cannot decode its settings: {e}")))?;
        let [input] = inputs else {
            return Err(DataFusionError::Internal(format!("LakeWriteExec: {} inputs, expected 1", inputs.len())));
        };
        Ok(Arc::new(LakeWriteExec::new(Arc::clone(input), spec)))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> datafusion::error::Result<()> {
        let Some(write) = node.downcast_ref::<LakeWriteExec>() else {
            return self.ballista.try_encode(node, buf, converter);
        };
        buf.extend_from_slice(LAKE_WRITE_TAG);
        serde_json::to_writer(&mut *buf, &write.spec)
            .map_err(|e| DataFusionError::Internal(format!("LakeWriteExec: cannot encode its settings: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, StringArray};
    use arrow::datatypes::Int64Type;
    use datafusion::datasource::MemTable;

    async fn session(dir: &std::path::Path) -> (Lake, SessionContext) {
        let lake = Lake::open(dir.to_str().unwrap()).unwrap();
        let ctx = crate::query::new_context(&lake);
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
        ]));
        let users: Vec<String> = (0..200).map(|i| format!("u{}", i % 37)).collect();
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(StringArray::from(users)), Arc::new(Int64Array::from_iter_values((0..200).rev()))],
        )
        .unwrap();
        ctx.register_table("t", Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap())).unwrap();
        (lake, ctx)
    }

    fn read(dir: &std::path::Path, rel: &str) -> Vec<(String, i64)> {
        let file = std::fs::File::open(dir.join(rel)).unwrap();
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
        let mut rows = Vec::new();
        for b in reader.map(|b| b.unwrap()) {
            let (u, v) = (b.column(0).as_string::<i32>(), b.column(1).as_primitive::<Int64Type>());
            rows.extend((0..b.num_rows()).map(|r| (u.value(r).to_string(), v.value(r))));
        }
        rows
    }

    #[tokio::test]
    async fn each_file_holds_its_hash_partition_of_users_in_the_query_order() {
        let dir = tempfile::tempdir().unwrap();
        let (lake, ctx) = session(dir.path()).await;
        let df = ctx.sql("SELECT user_id, v FROM t ORDER BY v").await.unwrap();
        let rows = write_partitioned(&ctx, df, &lake, "out", &["user_id"], 3).await.unwrap();
        assert_eq!(rows.iter().sum::<u64>(), 200);
        let mut all = Vec::new();
        assert_eq!(rows.len(), 3);
        for (k, count) in rows.iter().enumerate() {
            let file = read(dir.path(), &part_file("out", k));
            assert_eq!(file.len() as u64, *count, "partition {k}: the count is not the file's");
            assert!(file.windows(2).all(|w| w[0].1 < w[1].1), "partition {k} is not in the query's order");
            let users: Vec<String> = file.iter().map(|(u, _)| u.clone()).collect();
            let parts = crate::windows::item_partitions(&users, 3).unwrap();
            assert!(parts.iter().all(|p| *p == k), "partition {k} holds users of another partition");
            all.extend(file);
        }
        all.sort();
        let mut want: Vec<(String, i64)> = (0..200).map(|i| (format!("u{}", i % 37), 199 - i)).collect();
        want.sort();
        assert_eq!(all, want);
    }

    #[tokio::test]
    async fn a_query_without_an_order_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (lake, ctx) = session(dir.path()).await;
        let df = ctx.sql("SELECT user_id, v FROM t").await.unwrap();
        let err = write_partitioned(&ctx, df, &lake, "out", &["user_id"], 2).await.unwrap_err().to_string();
        assert!(err.contains("no final ORDER BY"), "{err}");
        assert!(!dir.path().join("out").exists());
    }
}
