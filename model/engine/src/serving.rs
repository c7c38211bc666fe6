//! Serving outputs: every item's representation (paper §4.9.2: `rep_i` depends on the item
//! alone, so it is precomputed once per item and looked up at request time) and a click
//! probability per sample row.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use chrono::NaiveDate;
use marnflow_model::device::DeviceSpec;
use marnflow_pipeline::features::ITEMS;
use marnflow_pipeline::lake::{write_parquet, Lake};

use crate::data::{self, day_string, Slice};
use crate::training;

const CHUNK: usize = 1024;

/// Splits an output URI into the folder (opened as a lake) and the file name.
fn output(uri: &str) -> Result<(Lake, String)> {
    let (folder, name) = match uri.rsplit_once('/') {
        Some((folder, name)) if !folder.is_empty() && !folder.ends_with(':') && !folder.ends_with("//") => {
            (folder.to_string(), name.to_string())
        }
        Some(("", name)) => ("/".to_string(), name.to_string()),
        None => (".".to_string(), uri.to_string()),
        Some(_) => bail!("--out {uri:?}: give a file, e.g. out/embeddings.parquet or s3://bucket/embeddings.parquet"),
    };
    if name.is_empty() {
        bail!("--out {uri:?} names a folder: give a file, e.g. {uri}embeddings.parquet");
    }
    Ok((Lake::open(&folder)?, name))
}

/// The last day with an item table in `features/items`.
async fn last_feature_day(lake: &Lake) -> Result<NaiveDate> {
    let mut days: Vec<NaiveDate> = lake
        .list(ITEMS)
        .await?
        .into_iter()
        .filter_map(|m| lake.relative(&m.location))
        .filter_map(|p| marnflow_pipeline::lake::partition_day(&p))
        .collect();
    days.sort();
    days.last()
        .copied()
        .with_context(|| format!("{} holds no day: run `marnflow features` first", lake.folder_url(ITEMS)))
}

/// Writes `item_id`, `category_id` and `embedding` (fixed-size list of float32) for every item of
/// the day's item table. Returns (rows, width).
pub async fn export_item_embeddings(
    lake: &Lake,
    spec: &str,
    date: Option<NaiveDate>,
    out: &str,
    device: DeviceSpec,
) -> Result<(usize, usize)> {
    let day = match date {
        Some(d) => d,
        None => last_feature_day(lake).await?,
    };
    let scorer = training::Scorer::open(lake, spec, &[day], device).await?;
    let (manifest, model, (index, store)) = (&scorer.manifest, &scorer.model, scorer.last());
    let builder = scorer.builder();
    let (mut ids, mut categories, mut values) = (Vec::new(), Vec::new(), Vec::new());
    let mut width = 0;
    let table_rows: Vec<usize> = (0..store.len()).collect();
    for chunk in table_rows.chunks(CHUNK) {
        let items: Vec<u32> = chunk.iter().map(|&r| store.item_index[r]).collect();
        let batch = builder.items(index, &items)?;
        let x = model.tensors(&batch)?;
        let (rep, _) = model
            .item_representations(&x, marnflow_model::Pass::Score)
            .with_context(|| format!("{}@v{} has no item representation", manifest.model, manifest.version))?;
        width = rep.dims()[1];
        let rep: Vec<f32> =
            rep.into_data().try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("reading representations: {e:?}"))?;
        // The batch dedups items: map each table row back to its item's row.
        let position: HashMap<u32, usize> = batch.items().item.iter().enumerate().map(|(k, &i)| (i, k)).collect();
        for &r in chunk {
            let Some(&k) = position.get(&store.item_index[r]) else { continue };
            ids.push(store.item_ids[r].clone());
            categories.push(store.category_ids[r].clone());
            values.extend_from_slice(&rep[k * width..(k + 1) * width]);
        }
    }
    let item_field = Arc::new(Field::new("item", DataType::Float32, false));
    let schema = Arc::new(Schema::new(vec![
        Field::new("item_id", DataType::Utf8, false),
        Field::new("category_id", DataType::Utf8, false),
        Field::new("embedding", DataType::FixedSizeList(item_field.clone(), width as i32), false),
    ]));
    let embedding = FixedSizeListArray::try_new(item_field, width as i32, Arc::new(Float32Array::from(values)), None)?;
    let columns: Vec<ArrayRef> =
        vec![Arc::new(StringArray::from(ids)), Arc::new(StringArray::from(categories)), Arc::new(embedding)];
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    let (target, name) = output(out)?;
    let rows = write_parquet(&target, name, schema, &[batch], 65536).await? as usize;
    tracing::info!(day = %day_string(day), rows, width, "item embeddings written");
    Ok((rows, width))
}

/// Writes `request_id`, `user_id`, `item_id`, `probability` for every sample row of `date`.
pub async fn score(lake: &Lake, spec: &str, date: NaiveDate, out: &str, device: DeviceSpec) -> Result<usize> {
    let scorer = training::Scorer::open(lake, spec, &[date], device).await?;
    let rows = scorer.rows(lake, Slice::All).await?;
    let probability = scorer.predict(&rows)?;
    let key = |f: fn(&data::RowKey) -> &str| -> StringArray {
        rows.iter().map(|r| Some(r.key.as_deref().map_or("", f))).collect()
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("request_id", DataType::Utf8, false),
        Field::new("user_id", DataType::Utf8, false),
        Field::new("item_id", DataType::Utf8, false),
        Field::new("probability", DataType::Float32, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(key(|k| &k.request_id)),
            Arc::new(key(|k| &k.user_id)),
            Arc::new(key(|k| &k.item_id)),
            Arc::new(Float32Array::from(probability)),
        ],
    )?;
    let (target, name) = output(out)?;
    Ok(write_parquet(&target, name, schema, &[batch], 65536).await? as usize)
}
