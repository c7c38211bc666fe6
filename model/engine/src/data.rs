//! From the lake to the model's batch contract.
//!
//! - [`Vocab`]: the append-only dictionaries of `features/dictionaries/` (value → index, 0 is
//!   padding, 1 unknown). An index a model was not built for (the dictionaries grew since) reads
//!   as unknown.
//! - [`DataSpec`]: what the data provides ([`ModelInputs`]): vocabulary sizes from the
//!   dictionaries, statistics from the `<stat>_b10` / `<stat>_b100` columns of `features/items`,
//!   the image width from the `image_embedding` column of its content, word vectors from
//!   `raw/word_vectors`.
//! - [`item_side`]: the day's item table (`features/items/dt=D`: ids, buckets, `content_dt`)
//!   joined with each item's content where it was stored (`features/item_content/dt=<content_dt>`).
//! - [`ItemStore`]: the day's item side, looked up by item index.
//! - [`ImageTable`]: the images of a run's days, each content version once, for a table kept on
//!   the model's device (`train.images_on_device`): batches then carry row indices.
//! - [`Row`]: one sample row of `features/samples/dt=D`, ids already mapped.
//! - [`spawn_stream`]: a producer thread that reads the days in order, shuffles rows within a
//!   bounded buffer, builds [`Batch`]es (distinct items once per batch) and hands them over a
//!   bounded channel, so the trainer never waits on I/O and memory stays bounded whatever the
//!   range's size: one day file, the shuffle buffer and the prefetched batches.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use arrow::array::{Array, ArrayRef, AsArray, FixedSizeListArray, ListArray, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, FieldRef, Float32Type, Int32Type, Int64Type, Schema};
use burn::tensor::Device;
use chrono::NaiveDate;
use marnflow_model::{Batch, BatchTensors, ItemTable, ModelInputs, ResidentImages, Samples, Titles};
use marnflow_pipeline::features::{DICTIONARIES, ITEMS, ITEM_CONTENT, SAMPLES, UNKNOWN};
use marnflow_pipeline::lake::{partition, Lake};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Behavior types, in the order of their ids.
pub const BEHAVIORS: [&str; 3] = ["click", "cart", "purchase"];
/// Buckets of the time between a behavior and the exposure: `< 1 min`, then one per doubling of
/// the minutes, the last open-ended (≥ 2^14 minutes ≈ 11 days).
pub const TIME_BUCKETS: usize = 16;
/// Title words kept per item.
pub const TITLE_MAX_LEN: usize = marnflow_pipeline::contract::TITLE_TOKENS;
/// Rows per Arrow batch when reading Parquet.
const READ_ROWS: usize = 8192;

/// Bucket of `seconds` before the exposure.
pub fn time_bucket(seconds: i64) -> u32 {
    if seconds < 60 {
        0
    } else {
        let minutes = (seconds / 60) as u64;
        (1 + minutes.ilog2()).min(TIME_BUCKETS as u32 - 1)
    }
}

/// `YYYY-MM-DD`.
pub fn day_string(day: NaiveDate) -> String {
    day.format("%Y-%m-%d").to_string()
}

/// Every day of `from..=to`.
pub fn days(from: NaiveDate, to: NaiveDate) -> Vec<NaiveDate> {
    from.iter_days().take_while(|d| *d <= to).collect()
}

pub fn parquet_batches(bytes: bytes::Bytes, what: &str) -> Result<Vec<RecordBatch>> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.with_batch_size(READ_ROWS).build())
        .with_context(|| format!("reading {what}: not a Parquet file"))?;
    reader.map(|b| b.with_context(|| format!("reading {what}"))).collect()
}

pub fn column(batch: &RecordBatch, name: &str, to: &DataType, what: &str) -> Result<ArrayRef> {
    let col = batch.column_by_name(name).ok_or_else(|| anyhow!("{what} has no column {name}"))?;
    arrow::compute::cast(col, to).with_context(|| format!("{what}: column {name} is not {to}"))
}

fn utf8_list() -> DataType {
    DataType::List(Arc::new(arrow::datatypes::Field::new("item", DataType::Utf8, true)))
}

fn i64_list() -> DataType {
    DataType::List(Arc::new(arrow::datatypes::Field::new("item", DataType::Int64, true)))
}

/// Files of one day partition of a `features/` table, sorted.
pub async fn partition_files(lake: &Lake, table: &str, day: NaiveDate) -> Result<Vec<String>> {
    parquet_files(lake, &partition(table, &day_string(day))).await
}

/// Every batch of every Parquet file under `folder` (empty when there is none).
pub async fn read_folder(lake: &Lake, folder: &str) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for file in parquet_files(lake, folder).await? {
        out.extend(parquet_batches(lake.get(&file).await?, &file)?);
    }
    Ok(out)
}

/// The Parquet files under `folder`, sorted.
async fn parquet_files(lake: &Lake, folder: &str) -> Result<Vec<String>> {
    let mut files: Vec<String> = lake
        .list(folder)
        .await?
        .into_iter()
        .filter_map(|m| lake.relative(&m.location))
        .filter(|p| p.ends_with(".parquet"))
        .collect();
    files.sort();
    Ok(files)
}

fn text_at(a: &arrow::array::StringArray, r: usize) -> &str {
    if a.is_null(r) {
        ""
    } else {
        a.value(r)
    }
}

/// The day's item side: the rows of `features/items/dt=day` joined, by `(item_id, content_dt)`,
/// with their content in `features/item_content/dt=<content_dt>`; one batch per content file,
/// its columns then the item table's other columns (the buckets, `content_dt`). An item table without
/// `content_dt` (written before the content was stored once per change) holds its content
/// itself and is returned as it is. Also returns the item table's first file, for messages.
pub async fn item_side(lake: &Lake, day: NaiveDate) -> Result<(Vec<RecordBatch>, String)> {
    let files = partition_files(lake, ITEMS, day).await?;
    let first = files.first().ok_or_else(|| missing_partition(lake, ITEMS, day))?.clone();
    let mut tables = Vec::new();
    for f in &files {
        tables.extend(parquet_batches(lake.get(f).await?, f)?);
    }
    let Some(schema) = tables.first().map(RecordBatch::schema) else { return Ok((tables, first)) };
    if schema.column_with_name("content_dt").is_none() {
        return Ok((tables, first));
    }
    let items = arrow::compute::concat_batches(&schema, &tables)?;
    let (ids, dts) =
        (column(&items, "item_id", &DataType::Utf8, &first)?, column(&items, "content_dt", &DataType::Utf8, &first)?);
    let (ids, dts) = (ids.as_string::<i32>(), dts.as_string::<i32>());
    // content_dt → item_id → row of the item table.
    let mut wanted: BTreeMap<&str, HashMap<&str, u32>> = BTreeMap::new();
    for r in 0..items.num_rows() {
        if ids.is_null(r) || dts.is_null(r) {
            bail!("{first} row {r}: item_id or content_dt is missing");
        }
        wanted.entry(dts.value(r)).or_default().insert(ids.value(r), r as u32);
    }
    let own: Vec<usize> = (0..schema.fields().len())
        .filter(|&i| !["item_id", "content_digest"].contains(&schema.field(i).name().as_str()))
        .collect();
    let mut joined = vec![false; items.num_rows()];
    let mut out = Vec::new();
    for (dt, rows) in &wanted {
        for f in parquet_files(lake, &partition(ITEM_CONTENT, dt)).await? {
            for b in parquet_batches(lake.get(&f).await?, &f)? {
                let content_ids = column(&b, "item_id", &DataType::Utf8, &f)?;
                let content_ids = content_ids.as_string::<i32>();
                let (mut at_content, mut at_items) = (Vec::new(), Vec::new());
                for r in 0..b.num_rows() {
                    if content_ids.is_null(r) {
                        continue;
                    }
                    if let Some(&i) = rows.get(content_ids.value(r)) {
                        if !joined[i as usize] {
                            joined[i as usize] = true;
                            at_content.push(r as u32);
                            at_items.push(i);
                        }
                    }
                }
                if at_content.is_empty() {
                    continue;
                }
                let (at_content, at_items) = (UInt32Array::from(at_content), UInt32Array::from(at_items));
                let mut fields: Vec<FieldRef> = b.schema().fields().iter().cloned().collect();
                let mut cols = b
                    .columns()
                    .iter()
                    .map(|c| arrow::compute::take(c, &at_content, None))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                for &i in &own {
                    fields.push(Arc::clone(&schema.fields()[i]));
                    cols.push(arrow::compute::take(items.column(i), &at_items, None)?);
                }
                out.push(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?);
            }
        }
    }
    if let Some(r) = joined.iter().position(|j| !j) {
        let missing = joined.iter().filter(|j| !**j).count();
        bail!(
            "{first}: {missing} of its {} items have no content where they point (first: item {} in {}): \
             the content of that day was rewritten since; rerun `marnflow features` from {} on",
            items.num_rows(),
            ids.value(r),
            lake.folder_url(&partition(ITEM_CONTENT, dts.value(r))),
            dts.value(r)
        );
    }
    Ok((out, first))
}

/// The error for a day partition that `marnflow features` has not built yet.
fn missing_partition(lake: &Lake, table: &str, day: NaiveDate) -> anyhow::Error {
    anyhow!(
        "{} is missing: run `marnflow features --date {}` first",
        lake.folder_url(&partition(table, &day_string(day))),
        day_string(day)
    )
}

/// The dictionaries, value → index.
#[derive(Debug, Default)]
pub struct Vocab {
    pub item: HashMap<String, u32>,
    pub shop: HashMap<String, u32>,
    pub brand: HashMap<String, u32>,
    pub category: HashMap<String, u32>,
    pub user: HashMap<String, u32>,
    pub token: HashMap<String, u32>,
}

/// Vocabulary size of a dictionary: largest index + 1 (at least the two reserved ones).
fn size(map: &HashMap<String, u32>) -> usize {
    map.values().copied().max().map_or(2, |m| m as usize + 1).max(2)
}

/// `map[value]` when below `bound`, else unknown.
pub fn lookup(map: &HashMap<String, u32>, value: &str, bound: usize) -> u32 {
    match map.get(value) {
        Some(&i) if (i as usize) < bound => i,
        _ => UNKNOWN as u32,
    }
}

impl Vocab {
    /// Reads `features/dictionaries/*.parquet`.
    pub async fn load(lake: &Lake) -> Result<Self> {
        let read = |name: &'static str| {
            let lake = lake.clone();
            async move {
                let rel = format!("{DICTIONARIES}/{name}.parquet");
                let map = marnflow_pipeline::features::read_dictionary(&lake, &rel).await?;
                let mut out = HashMap::with_capacity(map.len());
                for (k, v) in map {
                    let v = u32::try_from(v).map_err(|_| anyhow!("{rel}: index {v} of {k:?} is out of range"))?;
                    out.insert(k, v);
                }
                anyhow::Ok(out)
            }
        };
        let item = read("item").await?;
        if item.is_empty() {
            bail!(
                "{} holds no item dictionary: run `marnflow features` for the training days first",
                lake.folder_url(DICTIONARIES)
            );
        }
        Ok(Self {
            item,
            shop: read("shop").await?,
            brand: read("brand").await?,
            category: read("category").await?,
            user: read("user").await?,
            token: read("token").await?,
        })
    }
}

/// What the data provides and how to read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    /// Vocabulary sizes and dense widths.
    pub inputs: ModelInputs,
    /// The statistics, in model order (their `_b10` and `_b100` columns).
    pub stat_columns: Vec<String>,
}

impl DataSpec {
    /// Describes the data of `day` (its `features/items` partition) with the dictionaries `vocab`.
    pub async fn discover(lake: &Lake, vocab: &Vocab, day: NaiveDate) -> Result<Self> {
        let (batches, first) = item_side(lake, day).await?;
        let schema = batches.first().map(|b| b.schema()).ok_or_else(|| anyhow!("{first} is empty"))?;
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let stat_columns: Vec<String> = names
            .iter()
            .filter_map(|n| n.strip_suffix("_b10"))
            .filter(|s| names.contains(&format!("{s}_b100").as_str()))
            .map(str::to_string)
            .collect();
        let has_image =
            batches.iter().any(|b| b.column_by_name("image_embedding").is_some_and(|c| c.null_count() < c.len()));
        let image_dim = match schema.field_with_name("image_embedding").map(|f| f.data_type().clone()) {
            Ok(DataType::FixedSizeList(_, w)) if has_image => w as usize,
            _ => 0,
        };
        let word_dim = word_vector_width(lake).await?;
        let inputs = ModelInputs {
            n_items: size(&vocab.item),
            n_shops: size(&vocab.shop),
            n_brands: size(&vocab.brand),
            n_categories: size(&vocab.category),
            n_stats: stat_columns.len(),
            stat_coarse_buckets: 10,
            stat_fine_buckets: 100,
            n_behavior_types: BEHAVIORS.len(),
            n_time_buckets: TIME_BUCKETS,
            image_dim,
            title_vocab: if word_dim > 0 && !vocab.token.is_empty() { size(&vocab.token) } else { 0 },
            word_dim,
        };
        inputs.validate()?;
        Ok(Self { inputs, stat_columns })
    }
}

async fn word_vector_files(lake: &Lake) -> Result<Vec<String>> {
    parquet_files(lake, marnflow_pipeline::contract::WORD_VECTORS).await
}

async fn word_vector_width(lake: &Lake) -> Result<usize> {
    let Some(first) = word_vector_files(lake).await?.into_iter().next() else { return Ok(0) };
    let batches = parquet_batches(lake.get(&first).await?, &first)?;
    match batches.first().and_then(|b| b.column_by_name("vector")).map(|c| c.data_type().clone()) {
        Some(DataType::FixedSizeList(_, w)) => Ok(w as usize),
        _ => Ok(0),
    }
}

/// The `[title_vocab, word_dim]` table of word vectors, rows by token index: the vectors of
/// `raw/word_vectors`, zeros for padding, unknown and tokens without a vector.
pub async fn word_vector_table(lake: &Lake, vocab: &Vocab, inputs: &ModelInputs) -> Result<Vec<f32>> {
    let (rows, dim) = (inputs.title_vocab, inputs.word_dim);
    let mut table = vec![0.0f32; rows * dim];
    for file in word_vector_files(lake).await? {
        for b in parquet_batches(lake.get(&file).await?, &file)? {
            let tokens = column(&b, "token", &DataType::Utf8, &file)?;
            let tokens = tokens.as_string::<i32>();
            let vectors = b.column_by_name("vector").ok_or_else(|| anyhow!("{file} has no column vector"))?;
            let vectors = vectors
                .as_any()
                .downcast_ref::<FixedSizeListArray>()
                .ok_or_else(|| anyhow!("{file}: vector is not a fixed-size list"))?;
            let values = arrow::compute::cast(vectors.values(), &DataType::Float32)?;
            let values = values.as_primitive::<Float32Type>().values();
            for r in 0..b.num_rows() {
                let i = lookup(&vocab.token, tokens.value(r), rows) as usize;
                if i as i64 == UNKNOWN || vectors.is_null(r) {
                    continue;
                }
                table[i * dim..(i + 1) * dim].copy_from_slice(&values[r * dim..(r + 1) * dim]);
            }
        }
    }
    Ok(table)
}

/// Which version of an item's content a row holds: the day it was stored (`content_dt`, days
/// since 1970; the item table's own day where it holds its content itself) and the item index.
type ContentKey = (i32, u32);

fn epoch_days(day: NaiveDate) -> i32 {
    (day - NaiveDate::default()).num_days() as i32
}

/// The images of a run's days, each version of an item's content once (an item whose image did
/// not change is stored once for the whole range, however many days read it): the table that
/// `train.images_on_device` keeps on the model's device. Row 0 is the empty image of an item a
/// day's item table does not list.
#[derive(Debug, Default)]
pub struct ImageTable {
    /// `[rows, image_dim]`.
    pub values: Vec<f32>,
    /// `[rows]`.
    pub present: Vec<bool>,
    /// Where each content version is.
    pub index: Arc<ImageIndex>,
}

/// The row of each content version in an [`ImageTable`].
#[derive(Debug, Default)]
pub struct ImageIndex {
    rows: HashMap<ContentKey, u32>,
}

impl ImageTable {
    /// Reads the item side of every day of `days`.
    pub async fn load(lake: &Lake, days: &[NaiveDate], spec: &DataSpec, vocab: &Vocab) -> Result<Self> {
        let d = spec.inputs.image_dim;
        let mut index = ImageIndex::default();
        let (mut values, mut present) = (vec![0.0; d], vec![false]);
        for &day in days {
            let store = ItemStore::load(lake, day, spec, vocab, None).await?;
            for (r, key) in store.content.iter().enumerate() {
                if let std::collections::hash_map::Entry::Vacant(e) = index.rows.entry(*key) {
                    e.insert(present.len() as u32);
                    values.extend_from_slice(&store.images[r * d..(r + 1) * d]);
                    present.push(store.image_present[r]);
                }
            }
        }
        Ok(Self { values, present, index: Arc::new(index) })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.present.len()
    }

    /// Whether the table has no row (never: row 0 is the empty image).
    pub fn is_empty(&self) -> bool {
        self.present.is_empty()
    }
}

/// The day's item side table, rows looked up by item index.
#[derive(Debug, Default)]
pub struct ItemStore {
    rows: HashMap<u32, usize>,
    shop: Vec<u32>,
    brand: Vec<u32>,
    category: Vec<u32>,
    /// `[n, 2 * n_stats]`.
    stats: Vec<u32>,
    /// `[n, image_dim]`; empty where the images are on the device (`image_row`).
    images: Vec<f32>,
    /// Whether each row has a (valid) image; empty where the images are on the device.
    image_present: Vec<bool>,
    /// Each row's content version.
    content: Vec<ContentKey>,
    /// Each row's row of the run's [`ImageTable`], where the images are on the device.
    image_row: Vec<u32>,
    titles: Vec<Vec<u32>>,
    /// Item id and category id strings (reports, embeddings export).
    pub item_ids: Vec<String>,
    pub category_ids: Vec<String>,
    /// Item index of every row.
    pub item_index: Vec<u32>,
}

impl ItemStore {
    /// Reads the item side of `day` ([`item_side`]). With `image_index`, each row's image is a row of
    /// that index's [`ImageTable`] (kept on the device), and the store holds no image itself.
    pub async fn load(
        lake: &Lake,
        day: NaiveDate,
        spec: &DataSpec,
        vocab: &Vocab,
        image_index: Option<&ImageIndex>,
    ) -> Result<Self> {
        let inputs = &spec.inputs;
        let s = spec.stat_columns.len();
        let mut out = Self::default();
        let (batches, file) = item_side(lake, day).await?;
        let own_day = epoch_days(day);
        // A day's items point at a handful of content days: each date is parsed once.
        let mut content_days: HashMap<String, i32> = HashMap::new();
        for b in batches {
            let content_dt = match b.column_by_name("content_dt") {
                Some(_) => Some(column(&b, "content_dt", &DataType::Utf8, &file)?),
                None => None,
            };
            let content_dt = content_dt.as_ref().map(|c| c.as_string::<i32>());
            let text = |name: &str| column(&b, name, &DataType::Utf8, &file);
            let (item, shop, brand, category) =
                (text("item_id")?, text("shop_id")?, text("brand_id")?, text("category_id")?);
            let (item, shop, brand, category) = (
                item.as_string::<i32>(),
                shop.as_string::<i32>(),
                brand.as_string::<i32>(),
                category.as_string::<i32>(),
            );
            let mut stat_cols = Vec::with_capacity(2 * s);
            for suffix in ["_b10", "_b100"] {
                for stat in &spec.stat_columns {
                    stat_cols.push(column(&b, &format!("{stat}{suffix}"), &DataType::Int32, &file)?);
                }
            }
            let titles = match b.column_by_name("title_tokens") {
                Some(_) => Some(column(&b, "title_tokens", &utf8_list(), &file)?),
                None => None,
            };
            let images = match (inputs.image_dim, b.column_by_name("image_embedding")) {
                (0, _) | (_, None) => None,
                _ if image_index.is_some() => None,
                (_, Some(c)) => Some(
                    c.as_any()
                        .downcast_ref::<FixedSizeListArray>()
                        .ok_or_else(|| anyhow!("{file}: image_embedding is not a fixed-size list"))?
                        .clone(),
                ),
            };
            let image_values = match &images {
                Some(a) => Some(arrow::compute::cast(a.values(), &DataType::Float32)?),
                None => None,
            };
            for r in 0..b.num_rows() {
                if item.is_null(r) {
                    continue;
                }
                let index = lookup(&vocab.item, item.value(r), inputs.n_items);
                let content_day = match content_dt {
                    Some(c) => {
                        let dt = text_at(c, r);
                        match content_days.get(dt) {
                            Some(&d) => d,
                            None => {
                                let parsed = NaiveDate::parse_from_str(dt, "%Y-%m-%d")
                                    .with_context(|| format!("{file} row {r}: content_dt {dt:?} is not a date"))?;
                                content_days.insert(dt.to_string(), epoch_days(parsed));
                                epoch_days(parsed)
                            }
                        }
                    }
                    None => own_day,
                };
                out.content.push((content_day, index));
                let row = out.item_ids.len();
                out.rows.insert(index, row);
                out.item_index.push(index);
                out.item_ids.push(item.value(r).to_string());
                out.category_ids.push(text_at(category, r).to_string());
                out.shop.push(lookup(&vocab.shop, text_at(shop, r), inputs.n_shops));
                out.brand.push(lookup(&vocab.brand, text_at(brand, r), inputs.n_brands));
                out.category.push(lookup(&vocab.category, text_at(category, r), inputs.n_categories));
                for (k, c) in stat_cols.iter().enumerate() {
                    let c = c.as_primitive::<Int32Type>();
                    let bound = if k < s { inputs.stat_coarse_buckets } else { inputs.stat_fine_buckets };
                    let v = if c.is_null(r) { 0 } else { c.value(r).clamp(0, bound as i32 - 1) as u32 };
                    out.stats.push(v);
                }
                let d = inputs.image_dim;
                if let (true, Some(table)) = (d > 0, image_index) {
                    let at = table.rows.get(&(content_day, index)).ok_or_else(|| {
                        anyhow!(
                            "{file}: item {} points at content that is not in the run's image table \
                             (it changed after the run started?)",
                            item.value(r)
                        )
                    })?;
                    out.image_row.push(*at);
                } else if d > 0 {
                    match (&images, &image_values) {
                        (Some(a), Some(v)) if !a.is_null(r) => {
                            let v = v.as_primitive::<Float32Type>().values();
                            let row_values = &v[r * d..(r + 1) * d];
                            if row_values.iter().all(|x| x.is_finite()) {
                                out.images.extend_from_slice(row_values);
                                out.image_present.push(true);
                            } else {
                                out.images.extend(std::iter::repeat_n(0.0, d));
                                out.image_present.push(false);
                            }
                        }
                        _ => {
                            out.images.extend(std::iter::repeat_n(0.0, d));
                            out.image_present.push(false);
                        }
                    }
                }
                let mut words = Vec::new();
                if let (Some(t), true) = (&titles, inputs.has_titles()) {
                    let list = t.as_list::<i32>();
                    if !list.is_null(r) {
                        let tokens = list.value(r);
                        let tokens = tokens.as_string::<i32>();
                        for w in tokens.iter().flatten().filter(|w| !w.is_empty()).take(TITLE_MAX_LEN) {
                            words.push(lookup(&vocab.token, w, inputs.title_vocab));
                        }
                    }
                }
                out.titles.push(words);
            }
        }
        Ok(out)
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.item_ids.len()
    }

    /// Whether the table has no items.
    pub fn is_empty(&self) -> bool {
        self.item_ids.is_empty()
    }

    /// Row of an item index.
    pub fn row(&self, item: u32) -> Option<usize> {
        self.rows.get(&item).copied()
    }
}

/// One sample row, ids mapped.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Index of its day in the stream's day list.
    pub day: u16,
    pub user: u32,
    pub candidate: u32,
    pub label: f32,
    pub history: Vec<u32>,
    pub behavior: Vec<u8>,
    pub bucket: Vec<u8>,
    /// Kept for evaluation and scoring only.
    pub key: Option<Box<RowKey>>,
}

/// The identifying strings of a row.
#[derive(Debug, Clone, PartialEq)]
pub struct RowKey {
    pub request_id: String,
    pub user_id: String,
    pub item_id: String,
}

/// A deterministic per-user draw in `[0, 1)` (FNV-1a, then mixed), for held-out slices.
pub fn user_share(user_id: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV's high bits barely move with the last bytes: mix them (murmur3's finalizer).
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Which rows of a day to keep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Slice {
    /// Every row.
    All,
    /// Rows of users whose [`user_share`] is below the share (the held-out slice).
    HeldOut(f64),
    /// The other rows.
    Rest(f64),
}

impl Slice {
    fn keeps(self, user_id: &str) -> bool {
        match self {
            Slice::All => true,
            Slice::HeldOut(s) => user_share(user_id) < s,
            Slice::Rest(s) => user_share(user_id) >= s,
        }
    }
}

/// A samples file and its content digest (the registry's record of the training data).
pub use marnflow_registry::PartitionDigest as FileDigest;

/// How `features/samples` batches become rows: the vocabularies and model inputs that index
/// them, the slice kept, and whether request keys are kept (evaluation) or dropped (training).
#[derive(Debug, Clone, Copy)]
pub struct RowReader<'a> {
    pub vocab: &'a Vocab,
    pub inputs: &'a ModelInputs,
    pub slice: Slice,
    pub keep_keys: bool,
}

/// Converts one Arrow batch of `features/samples` (`what`: its file, for errors) into rows of
/// day index `day`, appended to `out`.
pub fn rows_of(reader: RowReader<'_>, b: &RecordBatch, day: u16, what: &str, out: &mut Vec<Row>) -> Result<()> {
    let RowReader { vocab, inputs, slice, keep_keys } = reader;
    let text = |name: &str| column(b, name, &DataType::Utf8, what);
    let (user, item) = (text("user_id")?, text("item_id")?);
    let (user, item) = (user.as_string::<i32>(), item.as_string::<i32>());
    let request = if keep_keys { Some(text("request_id")?) } else { None };
    let label = column(b, "label", &DataType::Float32, what)?;
    let label = label.as_primitive::<Float32Type>();
    let hist_items = column(b, "hist_item_ids", &utf8_list(), what)?;
    let hist_behaviors = column(b, "hist_behaviors", &utf8_list(), what)?;
    let hist_seconds = column(b, "hist_seconds_before", &i64_list(), what)?;
    let (hist_items, hist_behaviors, hist_seconds): (&ListArray, &ListArray, &ListArray) =
        (hist_items.as_list(), hist_behaviors.as_list(), hist_seconds.as_list());
    for r in 0..b.num_rows() {
        if user.is_null(r) || item.is_null(r) || label.is_null(r) {
            bail!("{what}: row {r} has a null user_id, item_id or label");
        }
        let l = label.value(r);
        if l != 0.0 && l != 1.0 {
            bail!("{what}: row {r} has label {l}, not 0 or 1");
        }
        if !slice.keeps(user.value(r)) {
            continue;
        }
        let items = hist_items.value(r);
        let items = items.as_string::<i32>();
        let behaviors = hist_behaviors.value(r);
        let behaviors = behaviors.as_string::<i32>();
        let seconds = hist_seconds.value(r);
        let seconds = seconds.as_primitive::<Int64Type>();
        let n = items.len().min(behaviors.len()).min(seconds.len());
        if items.len() != n || behaviors.len() != n || seconds.len() != n {
            bail!("{what}: row {r} has history lists of different lengths");
        }
        let mut row = Row {
            day,
            user: lookup(&vocab.user, user.value(r), usize::MAX),
            candidate: lookup(&vocab.item, item.value(r), inputs.n_items),
            label: l,
            history: Vec::with_capacity(n),
            behavior: Vec::with_capacity(n),
            bucket: Vec::with_capacity(n),
            key: None,
        };
        for k in 0..n {
            row.history.push(lookup(&vocab.item, items.value(k), inputs.n_items));
            let b = behaviors.value(k);
            let kind = BEHAVIORS.iter().position(|x| *x == b).ok_or_else(|| {
                anyhow!("{what}: row {r} has behavior {b:?} in its history; expected one of {}", BEHAVIORS.join(", "))
            })?;
            row.behavior.push(kind as u8);
            row.bucket.push(time_bucket(seconds.value(k)) as u8);
        }
        if let Some(req) = &request {
            let req = req.as_string::<i32>();
            row.key = Some(Box::new(RowKey {
                request_id: req.value(r).to_string(),
                user_id: user.value(r).to_string(),
                item_id: item.value(r).to_string(),
            }));
        }
        out.push(row);
    }
    Ok(())
}

/// Every row of `day` (in file order), for evaluation and scoring; `day_index` is the day's
/// position among the days scored together (its item table in the batch builder).
pub async fn read_day(
    lake: &Lake,
    vocab: &Vocab,
    inputs: &ModelInputs,
    day: NaiveDate,
    day_index: u16,
    slice: Slice,
) -> Result<Vec<Row>> {
    let files = partition_files(lake, SAMPLES, day).await?;
    if files.is_empty() {
        return Err(missing_partition(lake, SAMPLES, day));
    }
    let mut rows = Vec::new();
    for file in files {
        for b in parquet_batches(lake.get(&file).await?, &file)? {
            rows_of(RowReader { vocab, inputs, slice, keep_keys: true }, &b, day_index, &file, &mut rows)?;
        }
    }
    Ok(rows)
}

/// Digests and row counts of every samples file of `days` (read once, before training: they
/// identify the data in the registry and make a rerun recognisable).
pub async fn digest_days(lake: &Lake, days: &[NaiveDate]) -> Result<Vec<FileDigest>> {
    let mut out = Vec::new();
    for &day in days {
        let files = partition_files(lake, SAMPLES, day).await?;
        if files.is_empty() {
            return Err(missing_partition(lake, SAMPLES, day));
        }
        for path in files {
            let bytes = lake.get(&path).await?;
            let sha256 = marnflow_registry::sha256_hex(&bytes);
            let rows = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .with_context(|| format!("reading {path}: not a Parquet file"))?
                .metadata()
                .file_metadata()
                .num_rows() as u64;
            out.push(FileDigest { path, sha256, rows });
        }
    }
    Ok(out)
}

/// Builds [`Batch`]es from rows: each distinct (day, item) once. Where the stores were loaded
/// with an [`ImageIndex`], a batch gives its images as rows of that table.
#[derive(Debug)]
pub struct BatchBuilder<'a> {
    pub inputs: &'a ModelInputs,
    pub stores: &'a HashMap<u16, Arc<ItemStore>>,
}

impl BatchBuilder<'_> {
    /// A batch of just `items` (each once, no sequence), with their features from the item table
    /// of `day` (an index into `stores`): what item-only passes need (representations for
    /// export, MAF attention).
    pub fn items(&self, day: u16, items: &[u32]) -> Result<Batch> {
        let empty = Row {
            day,
            user: 0,
            candidate: 0,
            label: 0.0,
            history: Vec::new(),
            behavior: Vec::new(),
            bucket: Vec::new(),
            key: None,
        };
        self.build(&vec![&empty; items.len()], Some(items))
    }

    /// The batch of `rows`, with the candidate of row `i` overridden by `candidates[i]` when given.
    pub fn build(&self, rows: &[&Row], candidates: Option<&[u32]>) -> Result<Batch> {
        let inputs = self.inputs;
        let s = 2 * inputs.n_stats;
        let d = inputs.image_dim;
        let mut distinct: HashMap<(u16, u32), u32> = HashMap::new();
        let mut items = ItemTable::default();
        let mut images = Vec::new();
        let mut titles: Vec<&[u32]> = Vec::new();
        const NO_TITLE: &[u32] = &[];
        let resident = d > 0 && self.stores.values().any(|st| !st.image_row.is_empty());
        let mut add = |day: u16, item: u32, items: &mut ItemTable| -> u32 {
            *distinct.entry((day, item)).or_insert_with(|| {
                let store = self.stores.get(&day);
                let row = store.and_then(|st| st.row(item).map(|r| (st, r)));
                items.item.push(item);
                match row {
                    Some((st, r)) => {
                        items.shop.push(st.shop[r]);
                        items.brand.push(st.brand[r]);
                        items.category.push(st.category[r]);
                        items.stat_buckets.extend_from_slice(&st.stats[r * s..(r + 1) * s]);
                        match st.image_row.get(r) {
                            Some(&at) => items.image_rows.push(at),
                            None => {
                                images.extend_from_slice(st.images.get(r * d..(r + 1) * d).unwrap_or(&[]));
                                items.image_present.push(st.image_present.get(r).copied().unwrap_or(false));
                            }
                        }
                        titles.push(&st.titles[r]);
                    }
                    None => {
                        if resident {
                            items.image_rows.push(0);
                        } else {
                            items.image_present.push(false);
                        }
                        items.shop.push(UNKNOWN as u32);
                        items.brand.push(UNKNOWN as u32);
                        items.category.push(UNKNOWN as u32);
                        items.stat_buckets.extend(std::iter::repeat_n(0, s));
                        titles.push(NO_TITLE);
                    }
                }
                if !resident && images.len() < items.item.len() * d {
                    images.resize(items.item.len() * d, 0.0);
                }
                items.item.len() as u32 - 1
            })
        };
        let seq_len = rows.iter().map(|r| r.history.len()).max().unwrap_or(0);
        let mut samples = Samples { seq_len, ..Samples::default() };
        for (i, row) in rows.iter().enumerate() {
            let candidate = candidates.and_then(|c| c.get(i).copied()).unwrap_or(row.candidate);
            samples.candidate.push(add(row.day, candidate, &mut items));
            samples.label.push(row.label);
            samples.lengths.push(row.history.len() as u32);
            for k in 0..seq_len {
                match row.history.get(k) {
                    Some(&item) => {
                        samples.history.push(add(row.day, item, &mut items));
                        samples.behavior_type.push(u32::from(row.behavior[k]));
                        samples.time_bucket.push(u32::from(row.bucket[k]));
                    }
                    None => {
                        samples.history.push(0);
                        samples.behavior_type.push(0);
                        samples.time_bucket.push(0);
                    }
                }
            }
        }
        if d > 0 && !resident {
            items.images = Some(images);
        }
        if inputs.has_titles() {
            let max_len = titles.iter().map(|t| t.len()).max().unwrap_or(0);
            let mut t = Titles { max_len, ..Titles::default() };
            for words in &titles {
                t.lengths.push(words.len() as u32);
                t.tokens.extend_from_slice(words);
                t.tokens.extend(std::iter::repeat_n(0, max_len - words.len()));
            }
            items.titles = Some(t);
        }
        if inputs.n_stats == 0 {
            items.stat_buckets.clear();
        }
        Ok(Batch::new(items, samples)?)
    }
}

/// What the producer thread hands over.
#[derive(Debug)]
pub enum Msg {
    /// Batch `index` of `epoch` (indices count from 0 within each epoch), with its tensors
    /// already on the model's device when [`StreamConfig::upload`] asked for them.
    Batch { epoch: u32, index: u64, batch: Box<Batch>, tensors: Option<Box<BatchTensors>> },
    /// A batch that was skipped (resuming): the shuffle advanced but nothing was built.
    Skipped,
    /// Data-parallel: this replica has no shard in the epoch's last global batch (`index` is the
    /// shard it would have had); it still takes part in that step.
    Empty { epoch: u32, index: u64 },
    /// The producer failed.
    Failed(String),
}

/// How to stream.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub days: Vec<NaiveDate>,
    /// Per-day slice (held-out days).
    pub slices: BTreeMap<NaiveDate, Slice>,
    pub epochs: u32,
    pub batch_size: usize,
    pub shuffle_buffer: usize,
    pub prefetch: usize,
    pub seed: u64,
    /// First epoch to stream (resuming).
    pub start_epoch: u32,
    /// Batches of `start_epoch` to skip (resuming): the shuffle runs, no batch is built.
    pub skip: u64,
    /// Move each batch to the model's device on the producer thread, ahead of the step
    /// (`train.upload_ahead`): the copy to a GPU overlaps the previous step.
    pub upload: Option<Upload>,
    /// Where each batch's images are in the run's image table, kept on the model's device
    /// (`train.images_on_device`): batches then carry row indices instead of images.
    pub images: Option<Arc<ImageIndex>>,
    /// Data-parallel: `(rank, replicas)`. The stream is cut into shards of `batch_size` rows,
    /// numbered in order; replica `rank` gets shards `rank`, `rank + replicas`, … (`batch_size`
    /// is then the global batch divided by the replicas, so global batch `s` is shards
    /// `s·replicas ..`): every replica reads the whole stream and builds only its shards.
    /// `(0, 1)`: one replica, every batch.
    pub shard: (usize, usize),
}

/// Where the producer thread puts each batch's tensors: the model's inputs and device, and the
/// image table on it where there is one.
#[derive(Debug, Clone)]
pub struct Upload {
    pub inputs: ModelInputs,
    pub device: Device,
    pub images: Option<ResidentImages>,
}

/// Starts the producer thread. Batches arrive in a deterministic order for a given config.
pub fn spawn_stream(
    lake: Lake,
    vocab: Arc<Vocab>,
    spec: Arc<DataSpec>,
    cfg: StreamConfig,
) -> Result<(Receiver<Msg>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = sync_channel(cfg.prefetch.max(1));
    let handle = std::thread::Builder::new().name("marnflow-batches".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Msg::Failed(format!("starting the reader: {e}")));
                return;
            }
        };
        let result = runtime.block_on(produce(&lake, &vocab, &spec, &cfg, &tx));
        if let Err(e) = result {
            let _ = tx.send(Msg::Failed(format!("{e:#}")));
        }
    })?;
    Ok((rx, handle))
}

struct Producer<'a> {
    spec: &'a DataSpec,
    stores: HashMap<u16, Arc<ItemStore>>,
    pending: HashMap<u16, usize>,
    /// The day being read: its store stays even when none of its rows is pending yet.
    reading: Option<u16>,
    index: u64,
    skip: u64,
    batch: Vec<Row>,
    batch_size: usize,
    upload: Option<&'a Upload>,
    shard: (u64, u64),
}

impl Producer<'_> {
    /// Adds a row to the current batch; sends the batch when full. `false` when the receiver left.
    fn push(&mut self, row: Row, epoch: u32, tx: &std::sync::mpsc::SyncSender<Msg>) -> Result<bool> {
        self.batch.push(row);
        if self.batch.len() < self.batch_size {
            return Ok(true);
        }
        self.flush(epoch, tx)
    }

    fn flush(&mut self, epoch: u32, tx: &std::sync::mpsc::SyncSender<Msg>) -> Result<bool> {
        if self.batch.is_empty() {
            return Ok(true);
        }
        let rows = std::mem::take(&mut self.batch);
        let index = self.index;
        self.index += 1;
        let (rank, replicas) = self.shard;
        let mine = index % replicas == rank;
        let msg = if !mine {
            None
        } else if index < self.skip {
            Some(Msg::Skipped)
        } else {
            let refs: Vec<&Row> = rows.iter().collect();
            let batch = BatchBuilder { inputs: &self.spec.inputs, stores: &self.stores }.build(&refs, None)?;
            let tensors = self
                .upload
                .map(|u| BatchTensors::with_images(&batch, &u.inputs, &u.device, u.images.as_ref()).map(Box::new))
                .transpose()?;
            Some(Msg::Batch { epoch, index, batch: Box::new(batch), tensors })
        };
        for r in &rows {
            if let Some(n) = self.pending.get_mut(&r.day) {
                *n -= 1;
                if *n == 0 && self.reading != Some(r.day) {
                    self.pending.remove(&r.day);
                    self.stores.remove(&r.day);
                }
            }
        }
        Ok(msg.is_none_or(|m| tx.send(m).is_ok()))
    }

    /// At the end of an epoch: a replica without a shard in the last global batch gets an
    /// [`Msg::Empty`] for it, so every replica takes the same number of steps.
    fn finish_epoch(&self, epoch: u32, tx: &std::sync::mpsc::SyncSender<Msg>) -> bool {
        let (rank, replicas) = self.shard;
        let in_last = self.index % replicas;
        if in_last == 0 || rank < in_last {
            return true;
        }
        let index = self.index - in_last + rank;
        let msg = if index < self.skip { Msg::Skipped } else { Msg::Empty { epoch, index } };
        tx.send(msg).is_ok()
    }
}

async fn produce(
    lake: &Lake,
    vocab: &Vocab,
    spec: &DataSpec,
    cfg: &StreamConfig,
    tx: &std::sync::mpsc::SyncSender<Msg>,
) -> Result<()> {
    let capacity = cfg.shuffle_buffer.max(1);
    for epoch in cfg.start_epoch..cfg.epochs {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ (u64::from(epoch) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut buffer: Vec<Row> = Vec::with_capacity(capacity.min(1 << 20));
        let mut p = Producer {
            spec,
            stores: HashMap::new(),
            pending: HashMap::new(),
            reading: None,
            index: 0,
            skip: if epoch == cfg.start_epoch { cfg.skip } else { 0 },
            batch: Vec::new(),
            batch_size: cfg.batch_size.max(1),
            upload: cfg.upload.as_ref(),
            shard: (cfg.shard.0 as u64, cfg.shard.1.max(1) as u64),
        };
        for (d, &day) in cfg.days.iter().enumerate() {
            let d = d as u16;
            let slice = cfg.slices.get(&day).copied().unwrap_or(Slice::All);
            let store = Arc::new(ItemStore::load(lake, day, spec, vocab, cfg.images.as_deref()).await?);
            p.stores.insert(d, store);
            p.reading = Some(d);
            for file in partition_files(lake, SAMPLES, day).await? {
                for b in parquet_batches(lake.get(&file).await?, &file)? {
                    let mut rows = Vec::with_capacity(b.num_rows());
                    let reader = RowReader { vocab, inputs: &spec.inputs, slice, keep_keys: false };
                    rows_of(reader, &b, d, &file, &mut rows)?;
                    *p.pending.entry(d).or_insert(0) += rows.len();
                    for row in rows {
                        if buffer.len() < capacity {
                            buffer.push(row);
                            continue;
                        }
                        let k = rng.random_range(0..buffer.len());
                        let out = std::mem::replace(&mut buffer[k], row);
                        if !p.push(out, epoch, tx)? {
                            return Ok(());
                        }
                    }
                }
            }
            p.reading = None;
            if p.pending.get(&d).copied().unwrap_or(0) == 0 {
                p.stores.remove(&d);
                p.pending.remove(&d);
            }
        }
        while !buffer.is_empty() {
            let k = rng.random_range(0..buffer.len());
            let out = buffer.swap_remove(k);
            if !p.push(out, epoch, tx)? {
                return Ok(());
            }
        }
        if !p.flush(epoch, tx)? || !p.finish_epoch(epoch, tx) {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_shares_spread_over_the_unit_interval() {
        let shares: Vec<f64> = (0..1000).map(|i| user_share(&format!("u{i:06}"))).collect();
        for k in 0..10 {
            let (lo, hi) = (k as f64 / 10.0, (k + 1) as f64 / 10.0);
            let n = shares.iter().filter(|&&s| s >= lo && s < hi).count();
            assert!((60..=140).contains(&n), "{n} of 1000 shares in [{lo}, {hi})");
        }
    }

    /// One samples row whose history holds `behavior`.
    fn samples_row(behavior: &str) -> RecordBatch {
        use arrow::array::{Float32Array, Int64Builder, ListBuilder, StringArray, StringBuilder};
        let mut items = ListBuilder::new(StringBuilder::new());
        items.values().append_value("i1");
        items.append(true);
        let mut behaviors = ListBuilder::new(StringBuilder::new());
        behaviors.values().append_value(behavior);
        behaviors.append(true);
        let mut seconds = ListBuilder::new(Int64Builder::new());
        seconds.values().append_value(30);
        seconds.append(true);
        RecordBatch::try_from_iter([
            ("user_id", Arc::new(StringArray::from(vec!["u1"])) as ArrayRef),
            ("item_id", Arc::new(StringArray::from(vec!["i2"])) as ArrayRef),
            ("label", Arc::new(Float32Array::from(vec![1.0f32])) as ArrayRef),
            ("hist_item_ids", Arc::new(items.finish()) as ArrayRef),
            ("hist_behaviors", Arc::new(behaviors.finish()) as ArrayRef),
            ("hist_seconds_before", Arc::new(seconds.finish()) as ArrayRef),
        ])
        .unwrap()
    }

    #[test]
    fn an_unknown_behavior_is_an_error_not_a_click() {
        let vocab = Vocab {
            item: HashMap::new(),
            shop: HashMap::new(),
            brand: HashMap::new(),
            category: HashMap::new(),
            user: HashMap::new(),
            token: HashMap::new(),
        };
        let inputs = ModelInputs::ids_only(10, 0);
        let read = |b: &str| {
            let mut out = Vec::new();
            let reader = RowReader { vocab: &vocab, inputs: &inputs, slice: Slice::All, keep_keys: false };
            rows_of(reader, &samples_row(b), 0, "samples/dt=2026-01-01/part-0.parquet", &mut out).map(|()| out)
        };
        let rows = read(BEHAVIORS[1]).unwrap();
        assert_eq!(rows[0].behavior, [1]);
        let err = format!("{:#}", read("wishlist").unwrap_err());
        assert!(
            err.contains("\"wishlist\"") && err.contains("samples/dt=2026-01-01") && err.contains("row 0"),
            "{err}"
        );
    }

    #[test]
    fn time_buckets_double() {
        assert_eq!(time_bucket(0), 0);
        assert_eq!(time_bucket(59), 0);
        assert_eq!(time_bucket(60), 1);
        assert_eq!(time_bucket(120), 2);
        assert_eq!(time_bucket(239), 2);
        assert_eq!(time_bucket(i64::MAX), TIME_BUCKETS as u32 - 1);
    }
}
