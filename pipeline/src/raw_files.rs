//! One day of a raw log table, read file by file, so that every file of the partition is
//! accounted for and a bad file costs itself, not the day.
//!
//! The feature job used to read `raw/<table>/dt=D/` as one DataFusion listing table. That
//! ignored files of another format than the partition's first (a CSV beside Parquet files was
//! skipped without a word) and failed the whole day, without naming a file, on one unreadable
//! file or one file whose schema disagreed with the others. Here:
//!
//! * each file is read on its own in the format its extension names (`.parquet`, `.csv`,
//!   `.json`/`.ndjson`/`.jsonl`), or in `features.raw_format` when the extension names none:
//!   Parquet by DataFusion, CSV and JSON record by record ([`crate::raw_rows`]), so a record that
//!   cannot become a row (a short CSV row, a JSON line with a number for an id) is a
//!   [`LineFault`] with its line number, and costs itself, not the file;
//! * a file that cannot be read, has no usable format, or lacks a required column of the
//!   contract is a [`FileFault`]: it is quarantined whole with its path, size and reason (the
//!   caller copies it and counts it against `max_bad_share`);
//! * the readable files are projected onto the contract's columns (a missing optional column is
//!   null) and, where files disagree on a column's type, that column is read as text in every
//!   file: the clean SQL jobs parse text with `try_cast`, so a bad value quarantines its row.
//!
//! Names starting with `_` or `.` (`_SUCCESS` markers, hidden files) are not data, as in the
//! table discovery of [`crate::query`].

use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionContext};
use futures::StreamExt;
use serde::Serialize;

use crate::contract;
use crate::error::{PipelineError, Result};
use crate::lake::Lake;
pub use crate::raw_rows::LineFault;
use crate::raw_rows::{screen_csv, screen_json};

/// A raw file quarantined whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileFault {
    /// The file, relative to the lake root.
    pub path: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its rows, when it could be read.
    pub rows: Option<u64>,
    /// Why it was quarantined.
    pub reason: String,
}

/// The readable rows of one raw table and day, and the files that were not.
#[derive(Debug)]
pub struct RawDay {
    /// Contract columns plus `dt`; at least one (possibly empty) batch.
    pub batches: Vec<RecordBatch>,
    /// Data files in the partition.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Files quarantined whole.
    pub faults: Vec<FileFault>,
    /// Records of the readable CSV and JSON files that could not become rows.
    pub lines: Vec<LineFault>,
}

/// The contract schema of raw log table `table` (`exposures`, `clicks` or `behaviors`).
fn contract_schema(table: &str) -> Result<SchemaRef> {
    match table {
        "exposures" => Ok(contract::exposures_schema()),
        "clicks" => Ok(contract::clicks_schema()),
        "behaviors" => Ok(contract::behaviors_schema()),
        other => Err(PipelineError::Config(vec![format!("{other} is not a raw log table")])),
    }
}

/// A data file of a raw folder.
#[derive(Debug, Clone)]
pub(crate) struct DataFile {
    /// Relative to the lake root.
    pub rel: String,
    /// The file name.
    pub name: String,
    pub bytes: u64,
}

impl DataFile {
    /// The file quarantined whole.
    pub fn fault(&self, rows: Option<u64>, reason: String) -> FileFault {
        FileFault { path: self.rel.clone(), bytes: self.bytes, rows, reason }
    }

    /// The format it is read in: its extension's (as the table discovery reads it), else
    /// `forced`; without either, the fault that says so.
    pub fn format(&self, forced: Option<&'static str>) -> std::result::Result<&'static str, FileFault> {
        crate::query::format_of(&self.name).or(forced).ok_or_else(|| {
            self.fault(
                None,
                "no known format: name it .parquet, .csv or .json, or give --format / features.raw_format".into(),
            )
        })
    }
}

/// The data files under `folder`: names starting with `_` or `.` (`_SUCCESS` markers, hidden
/// files) are not data.
pub(crate) async fn data_files(lake: &Lake, folder: &str) -> Result<Vec<DataFile>> {
    Ok(lake
        .list(folder)
        .await?
        .into_iter()
        .filter_map(|meta| {
            let rel = lake.relative(&meta.location)?;
            if rel.split('/').any(|s| s.starts_with('_') || s.starts_with('.')) {
                return None;
            }
            let name = rel.rsplit('/').next().unwrap_or(&rel).to_string();
            Some(DataFile { rel, name, bytes: meta.size })
        })
        .collect())
}

/// Reads one file with DataFusion in `format`; CSV columns are all text. The reason, on its
/// first line, when it cannot be read.
pub(crate) async fn read_with_datafusion(
    lake: &Lake,
    ctx: &SessionContext,
    file: &DataFile,
    format: &str,
) -> std::result::Result<Vec<RecordBatch>, String> {
    // The file's own suffix, so a forced format reads a file of any name.
    let ext = file.name.rsplit_once('.').map_or(String::new(), |(_, e)| format!(".{e}"));
    let url = lake.file_url(&file.rel);
    let read = async {
        let df = match format {
            "csv" => {
                let options = CsvReadOptions::new().has_header(true).schema_infer_max_records(0).file_extension(&ext);
                ctx.read_csv(url, options).await?
            }
            "json" => ctx.read_json(url, JsonReadOptions::default().file_extension(&ext)).await?,
            _ => ctx.read_parquet(url, ParquetReadOptions::default().file_extension(&ext)).await?,
        };
        df.collect().await
    };
    read.await.map_err(|e| first_line(&e.to_string()).to_string())
}

/// Reads one file in `format`: its rows, and the records that could not become rows (text
/// formats only); `Err` with the reason when the file cannot be read at all. CSV and JSON
/// columns are all text, as in the lake's tables: typing is the clean jobs' work.
async fn read_file(
    lake: &Lake,
    ctx: &SessionContext,
    file: &DataFile,
    format: &str,
    contract: &Schema,
) -> Result<std::result::Result<(Vec<RecordBatch>, Vec<LineFault>), String>> {
    let screened = match format {
        "csv" => match screen_csv(&lake.get(&file.rel).await?, contract, &file.rel) {
            Ok(s) => s,
            Err(reason) => return Ok(Err(reason)),
        },
        "json" => screen_json(&lake.get(&file.rel).await?, contract, &file.rel),
        _ => return Ok(read_with_datafusion(lake, ctx, file, format).await.map(|batches| (batches, Vec::new()))),
    };
    Ok(Ok((screened.batch.into_iter().collect(), screened.faults)))
}

/// `batches` projected onto `contract`'s columns, or the required columns it lacks.
fn project(batches: &[RecordBatch], contract: &Schema) -> std::result::Result<Vec<Vec<ArrayRef>>, String> {
    let Some(first) = batches.first() else { return Ok(Vec::new()) };
    let file_schema = first.schema();
    let missing: Vec<&str> = contract
        .fields()
        .iter()
        .filter(|f| !f.is_nullable() && file_schema.index_of(f.name()).is_err())
        .map(|f| f.name().as_str())
        .collect();
    if !missing.is_empty() {
        return Err(format!("missing column{} {}", if missing.len() == 1 { "" } else { "s" }, missing.join(", ")));
    }
    Ok(batches
        .iter()
        .map(|b| {
            contract
                .fields()
                .iter()
                .map(|f| match file_schema.index_of(f.name()) {
                    Ok(i) => Arc::clone(b.column(i)),
                    Err(_) => new_null_array(f.data_type(), b.num_rows()),
                })
                .collect()
        })
        .collect())
}

/// Reads `raw/<table>/dt=<dt>/` file by file (see the module docs).
pub async fn read_day(
    lake: &Lake,
    ctx: &SessionContext,
    table: &str,
    dt: &str,
    forced: Option<&'static str>,
) -> Result<RawDay> {
    let files = data_files(lake, &format!("raw/{table}/dt={dt}")).await?;
    read_files(lake, ctx, table, dt, &files, forced).await
}

/// [`read_day`] for some of the day's files only (`marnflow stream` reads a day's files as they
/// arrive): their readable rows in one schema, and the files or records that could not be read.
pub(crate) async fn read_files(
    lake: &Lake,
    ctx: &SessionContext,
    table: &str,
    dt: &str,
    files: &[DataFile],
    forced: Option<&'static str>,
) -> Result<RawDay> {
    let contract = contract_schema(table)?;
    let mut day = RawDay { batches: Vec::new(), files: 0, bytes: 0, faults: Vec::new(), lines: Vec::new() };
    // Per readable file: its columns, batch by batch.
    let mut read: Vec<Vec<Vec<ArrayRef>>> = Vec::new();
    for file in files {
        let one = read_one(lake, ctx, file, forced, &contract).await?;
        if let Some(columns) = day.record(file, one) {
            read.push(columns);
        }
    }
    let schema = unified_schema(&contract, &column_types(&read));
    day.batches = unify(&schema, read, dt)?;
    Ok(day)
}

/// [`read_day`] with every readable file staged on its own under `folder` of the lake as it is
/// read (`part-NNNNN.parquet`, its columns as the file has them, with `dt`), so that no more
/// files are held in memory than are read at once (as many as this machine has cores). Returns
/// the day without batches and the schema the staged files are to be read with (the one
/// [`read_day`]'s batches have: a reader casts each file's columns to it).
pub async fn stage_day(
    lake: &Lake,
    ctx: &SessionContext,
    table: &str,
    dt: &str,
    forced: Option<&'static str>,
    folder: &str,
) -> Result<(RawDay, SchemaRef)> {
    let contract = contract_schema(table)?;
    let mut day = RawDay { batches: Vec::new(), files: 0, bytes: 0, faults: Vec::new(), lines: Vec::new() };
    // The column types of each staged file (the first batch's; every batch of a file has them).
    let mut types: Vec<Vec<DataType>> = Vec::new();
    let files = data_files(lake, &format!("raw/{table}/dt={dt}")).await?;
    let at_once = std::thread::available_parallelism().map_or(2, |n| n.get());
    let contract_ref = &contract;
    // Read, checked and staged `at_once` files at a time, accounted in the files' order.
    let mut staged = futures::stream::iter(files.iter().enumerate())
        .map(|(i, file)| async move {
            let mut one = read_one(lake, ctx, file, forced, contract_ref).await?;
            let Some(first) = one.columns.as_ref().and_then(|c| c.first()) else { return Ok((one, None)) };
            let file_types: Vec<DataType> = first.iter().map(|c| c.data_type().clone()).collect();
            let own = unified_schema(contract_ref, std::slice::from_ref(&file_types));
            let batches = unify(&own, one.columns.take().into_iter().collect(), dt)?;
            crate::lake::write_parquet(lake, format!("{folder}/part-{i:05}.parquet"), own, &batches, 1 << 20).await?;
            one.columns = Some(Vec::new());
            Ok::<_, PipelineError>((one, Some(file_types)))
        })
        .buffered(at_once);
    let mut files = files.iter();
    while let Some(done) = staged.next().await {
        let (one, file_types) = done?;
        let Some(file) = files.next() else { break };
        day.record(file, one);
        types.extend(file_types);
    }
    let schema = unified_schema(&contract, &types);
    Ok((day, schema))
}

/// What reading one data file of a raw day gave.
struct FileRead {
    /// Its columns projected onto the contract, batch by batch (`None`: quarantined whole).
    columns: Option<Vec<Vec<ArrayRef>>>,
    /// Why it is quarantined whole.
    fault: Option<FileFault>,
    /// Its records that could not become rows (text formats).
    lines: Vec<LineFault>,
}

impl RawDay {
    /// Accounts for one file read; returns its columns when it is not quarantined whole.
    fn record(&mut self, file: &DataFile, read: FileRead) -> Option<Vec<Vec<ArrayRef>>> {
        self.files += 1;
        self.bytes += file.bytes;
        self.faults.extend(read.fault);
        self.lines.extend(read.lines);
        read.columns
    }
}

/// Reads one data file of a raw day (see the module docs).
async fn read_one(
    lake: &Lake,
    ctx: &SessionContext,
    file: &DataFile,
    forced: Option<&'static str>,
    contract: &Schema,
) -> Result<FileRead> {
    let quarantined = |fault| FileRead { columns: None, fault: Some(fault), lines: Vec::new() };
    let format = match file.format(forced) {
        Ok(format) => format,
        Err(fault) => return Ok(quarantined(fault)),
    };
    Ok(match read_file(lake, ctx, file, format, contract).await? {
        Err(reason) => quarantined(file.fault(None, format!("unreadable as {format}: {reason}"))),
        Ok((batches, lines)) => {
            let rows = batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
            match project(&batches, contract) {
                Ok(columns) => FileRead { columns: Some(columns), fault: None, lines },
                // Quarantined whole: its faulty records go with it.
                Err(reason) => quarantined(file.fault(Some(rows + lines.len() as u64), reason)),
            }
        }
    })
}

/// One schema for every file's columns (`columns`: one slice per batch of every readable file):
/// the contract's types where every file agrees on a column, text where they do not; with the
/// `dt` column.
fn unified_schema(contract: &Schema, types: &[Vec<DataType>]) -> SchemaRef {
    let first = types.first();
    let mut fields: Vec<Field> = contract
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let data_type = match first {
                Some(first) if types.iter().all(|t| t[i] == first[i]) => first[i].clone(),
                Some(_) => DataType::Utf8,
                None => f.data_type().clone(),
            };
            Field::new(f.name(), data_type, true)
        })
        .collect();
    fields.push(Field::new("dt", DataType::Utf8, true));
    Arc::new(Schema::new(fields))
}

/// The column types of every batch of `read` (per file, per batch, per column).
fn column_types(read: &[Vec<Vec<ArrayRef>>]) -> Vec<Vec<DataType>> {
    read.iter().flatten().map(|columns| columns.iter().map(|c| c.data_type().clone()).collect()).collect()
}

/// Every file's columns as batches of `schema` ([`unified_schema`]): a column of another type is
/// cast to the schema's; with the `dt` column.
fn unify(schema: &SchemaRef, read: Vec<Vec<Vec<ArrayRef>>>, dt: &str) -> Result<Vec<RecordBatch>> {
    let schema = Arc::clone(schema);
    let arrow_err = |e| PipelineError::arrow(format!("raw rows of dt={dt}"), e);
    let mut out = Vec::new();
    for cols in read.into_iter().flatten() {
        let rows = cols.first().map_or(0, |c| c.len());
        let mut arrays = Vec::with_capacity(cols.len() + 1);
        for (c, f) in cols.iter().zip(schema.fields()) {
            arrays.push(if c.data_type() == f.data_type() {
                Arc::clone(c)
            } else {
                arrow::compute::cast(c, f.data_type()).map_err(arrow_err)?
            });
        }
        arrays.push(Arc::new(StringArray::from(vec![dt; rows])) as ArrayRef);
        out.push(RecordBatch::try_new(Arc::clone(&schema), arrays).map_err(arrow_err)?);
    }
    if out.is_empty() {
        out.push(RecordBatch::new_empty(schema));
    }
    Ok(out)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format_of(name: &str, forced: Option<&'static str>) -> Option<&'static str> {
        let file = DataFile { rel: format!("raw/x/{name}"), name: name.to_string(), bytes: 0 };
        file.format(forced).ok()
    }

    #[test]
    fn extensions_win_and_the_forced_format_reads_the_rest() {
        assert_eq!(format_of("part-0.parquet", Some("csv")), Some("parquet"));
        assert_eq!(format_of("part-0.csv", None), Some("csv"));
        assert_eq!(format_of("events.jsonl", None), Some("json"));
        assert_eq!(format_of("part-0.txt", Some("csv")), Some("csv"));
        assert_eq!(format_of("part-0.txt", None), None);
        assert_eq!(format_of("README", None), None);
    }

    #[test]
    fn files_that_disagree_on_a_type_are_read_as_text_and_missing_required_columns_are_named() {
        let contract = contract::clicks_schema();
        let text = |v: &[&str]| Arc::new(StringArray::from(v.to_vec())) as ArrayRef;
        let typed = Schema::new(vec![
            Field::new("event_time", contract::event_time_type(), true),
            Field::new("request_id", DataType::Utf8, true),
            Field::new("user_id", DataType::Utf8, true),
            Field::new("item_id", DataType::Utf8, true),
        ]);
        let times = Arc::new(arrow::array::TimestampMillisecondArray::from(vec![86_400_000_i64]).with_timezone("UTC"))
            as ArrayRef;
        let a = RecordBatch::try_new(Arc::new(typed), vec![times, text(&["r"]), text(&["u"]), text(&["i"])]).unwrap();
        let b = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("item_id", DataType::Utf8, true),
                Field::new("user_id", DataType::Utf8, true),
                Field::new("request_id", DataType::Utf8, true),
                Field::new("event_time", DataType::Utf8, true),
            ])),
            vec![text(&["i2"]), text(&["u2"]), text(&["r2"]), text(&["1970-01-02T00:00:00Z"])],
        )
        .unwrap();
        let read = vec![project(&[a], &contract).unwrap(), project(&[b], &contract).unwrap()];
        let schema = unified_schema(&contract, &column_types(&read));
        let out = unify(&schema, read, "1970-01-02").unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].schema(), out[1].schema());
        assert_eq!(out[0].schema().field(0).data_type(), &DataType::Utf8, "event_time disagrees: text");
        assert_eq!(out[1].column(3).as_any().downcast_ref::<StringArray>().unwrap().value(0), "i2", "by name");
        assert_eq!(out[0].schema().field(4).name(), "dt");

        let short = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("user_id", DataType::Utf8, true)])),
            vec![text(&["u"])],
        )
        .unwrap();
        let err = project(&[short], &contract).unwrap_err();
        assert_eq!(err, "missing columns event_time, request_id, item_id");
        let none: Vec<Vec<Vec<ArrayRef>>> = Vec::new();
        let empty = unify(&unified_schema(&contract, &column_types(&none)), none, "1970-01-02").unwrap();
        assert_eq!((empty.len(), empty[0].num_rows(), empty[0].num_columns()), (1, 0, 5));
    }
}
