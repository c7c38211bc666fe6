//! The item catalogue (`raw/items/`), read file by file and checked item by item.
//!
//! A listing table over the catalogue failed the whole job, without naming a file, when one file
//! held its images as a plain list (as pandas writes them) or in another width, and it let NaN
//! images and ten-thousand-word titles through. Here:
//!
//! * each file is read on its own in its extension's format (or `features.raw_format`); a file
//!   that cannot be read, or lacks `item_id`, or has a column of a type the contract cannot take,
//!   is quarantined whole with its path and reason, like a raw log file;
//! * images may come as fixed-size or plain lists of any float or integer type: every image of
//!   the catalogue's width ([`image_width`]) whose values are finite in float32 is kept exactly
//!   (float64 values are narrowed to the model's float32); an image of another width, with a
//!   missing, NaN or infinite value, is quarantined and its item kept *without* an image (the
//!   model treats it as an item with no photo), so no item is lost for its image;
//! * an item without an id, with an id over `features.max_id_bytes` (256), or whose id an earlier
//!   row already had, is quarantined;
//! * a title of more than [`TITLE_TOKENS`] words is cut to that many (the model reads no more)
//!   and counted.
//!
//! Conservation: `input = accepted + quarantined` rows, per run, in the day reports.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, GenericListArray, OffsetSizeTrait, RecordBatch,
    StringArray, StringBuilder,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, Float32Type, Schema};
use datafusion::prelude::SessionContext;
use serde::Serialize;

use crate::contract::{ITEMS, TITLE_TOKENS};
use crate::error::{PipelineError, Result};
use crate::lake::Lake;
use crate::raw_files::{data_files, read_with_datafusion, FileFault};

/// The catalogue's text columns, in contract order.
const TEXT_COLUMNS: [&str; 5] = ["item_id", "shop_id", "brand_id", "category_id", "title"];
/// Of them, the ids bounded by `features.max_id_bytes`.
const ID_COLUMNS: [&str; 4] = ["item_id", "shop_id", "brand_id", "category_id"];

/// An item quarantined, or kept without its image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemFault {
    /// The file, relative to the lake root.
    pub path: String,
    /// 0-based row in the file.
    pub row: u64,
    /// The item's id, when it has one.
    pub item_id: Option<String>,
    /// Whether the item was kept (without its image).
    pub kept: bool,
    pub reason: String,
}

/// What the catalogue gave.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CatalogueAccounting {
    /// Item rows read, with those of files quarantined whole when they could be counted.
    pub input: u64,
    pub accepted: u64,
    pub quarantined: u64,
    /// Accepted items whose image was quarantined (kept without an image).
    pub images_quarantined: u64,
    /// Accepted items whose title was cut to the model's title length.
    pub titles_cut: u64,
    pub files: u64,
    pub files_quarantined: u64,
    /// Width of the catalogue's images (0: none).
    pub image_width: u64,
}

/// The checked catalogue: the `raw.items` table the item SQL reads, and what was quarantined.
#[derive(Debug)]
pub struct Catalogue {
    pub batch: RecordBatch,
    pub files: Vec<FileFault>,
    pub items: Vec<ItemFault>,
    pub accounting: CatalogueAccounting,
}

/// A float view of an image column: per row, its values (`None`: no image).
#[derive(Debug)]
struct Images {
    values: Float32Array,
    /// Per row: `(start, len)` into `values`, `None` where the row has no image.
    rows: Vec<Option<(usize, usize)>>,
    /// The width a fixed-size list column declares.
    declared: Option<usize>,
}

/// Per row of a list column: `(start, len)` of its values, `None` where it is null.
fn list_rows<O: OffsetSizeTrait>(list: &GenericListArray<O>) -> Vec<Option<(usize, usize)>> {
    let o = list.value_offsets();
    (0..list.len()).map(|r| list.is_valid(r).then(|| (o[r].as_usize(), (o[r + 1] - o[r]).as_usize()))).collect()
}

/// The images of column `c`, or why the column cannot hold images.
fn images_of(c: &ArrayRef) -> std::result::Result<Images, String> {
    let float = |values: &ArrayRef| {
        if !(values.data_type().is_numeric()) {
            return Err(format!("image_embedding holds {}, not numbers", values.data_type()));
        }
        arrow::compute::cast(values, &DataType::Float32)
            .map(|v| v.as_primitive::<Float32Type>().clone())
            .map_err(|e| format!("image_embedding: {e}"))
    };
    match c.data_type() {
        DataType::Null => {
            Ok(Images { values: Float32Array::from(Vec::<f32>::new()), rows: vec![None; c.len()], declared: None })
        }
        DataType::FixedSizeList(_, w) => {
            let list = c.as_fixed_size_list();
            let w = usize::try_from(*w).unwrap_or(0);
            let rows = (0..c.len()).map(|r| c.is_valid(r).then_some((r * w, w))).collect();
            Ok(Images { values: float(list.values())?, rows, declared: Some(w) })
        }
        DataType::List(_) => {
            let list = c.as_list::<i32>();
            Ok(Images { values: float(list.values())?, rows: list_rows(list), declared: None })
        }
        DataType::LargeList(_) => {
            let list = c.as_list::<i64>();
            Ok(Images { values: float(list.values())?, rows: list_rows(list), declared: None })
        }
        other => Err(format!("image_embedding is {other}, not a list of numbers")),
    }
}

/// One file's columns in the catalogue's terms, or why the file cannot be used.
struct Columns {
    text: Vec<StringArray>,
    images: Option<Images>,
    price: ArrayRef,
}

fn columns_of(b: &RecordBatch) -> std::result::Result<Columns, String> {
    let schema = b.schema();
    let mut text = Vec::with_capacity(TEXT_COLUMNS.len());
    for name in TEXT_COLUMNS {
        let column = match schema.index_of(name) {
            Ok(i) => Arc::clone(b.column(i)),
            Err(_) if name == "item_id" => return Err("missing column item_id".into()),
            Err(_) => arrow::array::new_null_array(&DataType::Utf8, b.num_rows()),
        };
        if matches!(column.data_type(), DataType::List(_) | DataType::Struct(_) | DataType::Map(..)) {
            return Err(format!("{name} is {}, not text", column.data_type()));
        }
        let cast = arrow::compute::cast(&column, &DataType::Utf8).map_err(|e| format!("{name}: {e}"))?;
        text.push(cast.as_string::<i32>().clone());
    }
    let images = match schema.index_of("image_embedding") {
        Ok(i) => Some(images_of(b.column(i))?),
        Err(_) => None,
    };
    let price = match schema.index_of("price").map(|i| b.column(i)) {
        // Numbers, or text (CSV), where what does not parse is no price, as a missing one.
        Ok(p)
            if p.data_type().is_numeric()
                || matches!(
                    p.data_type(),
                    DataType::Null | DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                ) =>
        {
            arrow::compute::cast(p, &DataType::Float64).map_err(|e| format!("price: {e}"))?
        }
        Ok(p) => return Err(format!("price is {}, not a number", p.data_type())),
        Err(_) => arrow::array::new_null_array(&DataType::Float64, b.num_rows()),
    };
    Ok(Columns { text, images, price })
}

/// The catalogue's image width: the most common length among the images (the larger on a tie),
/// else the declared width of a fixed-size image column, else 0.
pub fn image_width(lengths: &BTreeMap<usize, u64>, declared: Option<usize>) -> usize {
    lengths.iter().max_by_key(|(len, n)| (**n, **len)).map_or(declared.unwrap_or(0), |(len, _)| *len)
}

/// `title` cut to its first [`TITLE_TOKENS`] words (split on single spaces, as `sql/items.sql`
/// splits it, empty words skipped as the trainer skips them), or `None` when it is not longer.
pub fn cut_title(title: &str) -> Option<String> {
    let mut words = title.split(' ').filter(|w| !w.is_empty());
    let kept: Vec<&str> = words.by_ref().take(TITLE_TOKENS).collect();
    words.next().map(|_| kept.join(" "))
}

/// Reads and checks the catalogue (see the module docs). `forced`: the format of files whose
/// extension names none; `max_id_bytes`: the longest id.
pub async fn read_catalogue(
    lake: &Lake,
    ctx: &SessionContext,
    forced: Option<&'static str>,
    max_id_bytes: u32,
) -> Result<Catalogue> {
    let max_id_bytes = max_id_bytes as usize;
    let mut acc = CatalogueAccounting::default();
    let mut files = Vec::new();
    // Each usable file's columns, and the lengths of its images (for the catalogue's width).
    let mut lengths: BTreeMap<usize, u64> = BTreeMap::new();
    let mut declared = None;
    let mut usable: Vec<(String, Vec<Columns>)> = Vec::new();
    for file in data_files(lake, ITEMS).await? {
        acc.files += 1;
        let read = match file.format(forced) {
            Ok(format) => read_with_datafusion(lake, ctx, &file, format).await.map_err(|e| (format, e)),
            Err(fault) => {
                files.push(fault);
                continue;
            }
        };
        let batches = match read {
            Ok(batches) => batches,
            Err((format, reason)) => {
                files.push(file.fault(None, format!("unreadable as {format}: {reason}")));
                continue;
            }
        };
        match batches.iter().map(columns_of).collect::<std::result::Result<Vec<_>, _>>() {
            Ok(columns) => {
                for images in columns.iter().filter_map(|c| c.images.as_ref()) {
                    declared = declared.or(images.declared);
                    for (_, len) in images.rows.iter().flatten() {
                        *lengths.entry(*len).or_default() += 1;
                    }
                }
                usable.push((file.rel, columns));
            }
            Err(reason) => {
                let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
                files.push(file.fault(Some(rows), reason));
            }
        }
    }
    let width = image_width(&lengths, declared);
    acc.image_width = width as u64;

    let mut out_text: Vec<StringBuilder> = TEXT_COLUMNS.iter().map(|_| StringBuilder::new()).collect();
    let mut out_images: Vec<f32> = Vec::new();
    let mut out_valid: Vec<bool> = Vec::new();
    let mut out_price: Vec<Option<f64>> = Vec::new();
    // Each accepted id, and the index in `usable` of the file it came from.
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut items = Vec::new();
    for (f, (path, batches)) in usable.iter().enumerate() {
        let mut row_in_file = 0u64;
        for c in batches {
            let price = c.price.as_primitive::<arrow::datatypes::Float64Type>();
            for r in 0..c.text[0].len() {
                let row = row_in_file;
                row_in_file += 1;
                acc.input += 1;
                let text = |k: usize| (!c.text[k].is_null(r)).then(|| c.text[k].value(r));
                let id = text(0).map(str::to_string);
                let mut fault = |kept: bool, reason: String| {
                    items.push(ItemFault { path: path.clone(), row, item_id: id.clone(), kept, reason });
                };
                // Row checks: the item is quarantined.
                let bad_id = match text(0) {
                    None => Some("empty item_id".to_string()),
                    Some(s) if s.trim().is_empty() => Some("empty item_id".to_string()),
                    _ => ID_COLUMNS.iter().enumerate().find_map(|(k, name)| {
                        text(k)
                            .filter(|s| s.len() > max_id_bytes)
                            .map(|_| format!("{name} longer than {max_id_bytes} bytes"))
                    }),
                };
                let duplicate = id
                    .as_ref()
                    .and_then(|i| seen.get(i))
                    .map(|&first| format!("duplicate item_id: first in {}", usable[first].0));
                if let Some(reason) = bad_id.or(duplicate) {
                    fault(false, reason);
                    acc.quarantined += 1;
                    continue;
                }
                if let Some(i) = &id {
                    seen.insert(i.clone(), f);
                }
                // Accepted: title cut, image checked.
                for (k, b) in out_text.iter_mut().enumerate() {
                    match (k, text(k)) {
                        (4, Some(t)) => match cut_title(t) {
                            Some(cut) => {
                                acc.titles_cut += 1;
                                b.append_value(cut);
                            }
                            None => b.append_value(t),
                        },
                        (_, v) => b.append_option(v),
                    }
                }
                out_price.push((!price.is_null(r)).then(|| price.value(r)));
                let image = c.images.as_ref().and_then(|im| im.rows[r].map(|(start, len)| (im, start, len)));
                let checked = image.map(|(im, start, len)| {
                    if len != width {
                        return Err(format!("image has {len} values; the catalogue's images have {width}"));
                    }
                    let slice = im.values.slice(start, len);
                    if slice.null_count() > 0 || slice.values().iter().any(|x| !x.is_finite()) {
                        return Err("image has a missing, NaN or infinite value (in float32)".to_string());
                    }
                    Ok(slice)
                });
                match checked {
                    Some(Ok(slice)) => {
                        out_images.extend_from_slice(slice.values());
                        out_valid.push(true);
                    }
                    other => {
                        if let Some(Err(reason)) = other {
                            fault(true, reason);
                            acc.images_quarantined += 1;
                        }
                        out_images.extend(std::iter::repeat_n(0.0, width));
                        out_valid.push(false);
                    }
                }
                acc.accepted += 1;
            }
        }
    }
    acc.files_quarantined = files.len() as u64;
    let whole: u64 = files.iter().filter_map(|f| f.rows).sum();
    acc.input += whole;
    acc.quarantined += whole;

    let item_field = Arc::new(Field::new("item", DataType::Float32, false));
    let image_type = DataType::FixedSizeList(Arc::clone(&item_field), i32::try_from(width).unwrap_or(i32::MAX));
    let mut fields: Vec<Field> = TEXT_COLUMNS.iter().map(|n| Field::new(*n, DataType::Utf8, true)).collect();
    fields.push(Field::new("image_embedding", image_type, true));
    fields.push(Field::new("price", DataType::Float64, true));
    let mut columns: Vec<ArrayRef> = out_text.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef).collect();
    let images = FixedSizeListArray::try_new(
        item_field,
        i32::try_from(width).unwrap_or(i32::MAX),
        Arc::new(Float32Array::from(out_images)),
        Some(NullBuffer::from(out_valid)),
    )
    .map_err(|e| PipelineError::arrow("the catalogue's images", e))?;
    columns.push(Arc::new(images));
    columns.push(Arc::new(arrow::array::Float64Array::from(out_price)));
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| PipelineError::arrow("the checked catalogue", e))?;
    Ok(Catalogue { batch, files, items, accounting: acc })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Builder, ListArray, ListBuilder};

    #[test]
    fn titles_are_cut_to_the_model_length_and_short_ones_kept() {
        let long: Vec<String> = (0..10_000).map(|i| format!("w{i}")).collect();
        let cut = cut_title(&long.join(" ")).unwrap();
        assert_eq!(cut.split(' ').count(), TITLE_TOKENS);
        assert!(cut.starts_with("w0 w1 ") && cut.ends_with(&format!("w{}", TITLE_TOKENS - 1)));
        let exact: Vec<String> = (0..TITLE_TOKENS).map(|i| format!("w{i}")).collect();
        assert_eq!(cut_title(&exact.join("  ")), None, "{TITLE_TOKENS} words with double spaces are not cut");
        assert_eq!(cut_title(""), None);
    }

    #[test]
    fn the_width_is_the_most_common_image_length() {
        let lengths: BTreeMap<usize, u64> = [(3, 1), (4, 10), (5, 10)].into_iter().collect();
        assert_eq!(image_width(&lengths, Some(4)), 5);
        assert_eq!(image_width(&BTreeMap::new(), Some(4)), 4);
        assert_eq!(image_width(&BTreeMap::new(), None), 0);
    }

    #[test]
    fn plain_lists_of_float64_are_images_and_other_types_are_not() {
        let mut b = ListBuilder::new(Float64Builder::new());
        b.append_value([Some(1.0), Some(2.0)]);
        b.append_null();
        b.append_value([Some(f64::NAN)]);
        let list: ListArray = b.finish();
        let images = images_of(&(Arc::new(list) as ArrayRef)).unwrap();
        assert_eq!(images.rows, [Some((0, 2)), None, Some((2, 1))]);
        assert!(images.values.value(2).is_nan());
        let text: ArrayRef = Arc::new(StringArray::from(vec!["[1, 2]"]));
        assert!(images_of(&text).unwrap_err().contains("not a list of numbers"));
    }
}
