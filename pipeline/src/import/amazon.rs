//! Amazon product data (McAuley et al.; the datasets of the DIN and MARN papers) into the raw-log
//! contract.
//!
//! Inputs, each plain or gzipped, one record per line, strict JSON or the older Python-literal
//! lines (`{'asin': …}`, read by [`super::pylit`], never evaluated):
//! - reviews: `reviewerID`, `asin`, `unixReviewTime` (other fields are ignored);
//! - metadata: `asin`, `title`, `categories` (a list of category paths; 2018 files: `category`, one
//!   path), `brand`, `price` (a number, or text such as `"$12.99"`);
//! - image features (optional): binary records of a 10-byte ASIN then `image_dim` (4096)
//!   little-endian float32 values.
//!
//! The mapping:
//!
//! | Amazon | raw log |
//! |---|---|
//! | a review | a clicked exposure at `unixReviewTime` (`request_id` = `<reviewer>-<time>`), also a `click` behavior |
//! | — | one **negative** exposure per review, same time and request: an item drawn uniformly from the catalogue among those the reviewer never reviewed (the DIN/DIEN/MARN protocol), from a ChaCha8 stream seeded by `seed`, drawn in (reviewer, time, asin) order, so the same inputs and seed give the same lake |
//! | `title` | `title`; `brand` → `brand_id` (`none` when absent); `price` → `price` |
//! | last level of the first category path | `category_id` (`unknown` when absent) |
//! | image feature record | `image_embedding` |
//! | — | `shop_id` = `none` |
//!
//! Reviews of an ASIN that is not in the metadata, duplicate metadata records, and records that do
//! not parse are quarantined with their reason.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use super::{
    clean_title, for_each_line, input_error, open_text, pylit, read_up_to, Dataset, Interaction, ItemRecord, NONE_ID,
};
use crate::error::Result;

/// Draws before giving up on a negative for a reviewer who reviewed nearly the whole catalogue.
const NEGATIVE_TRIES: usize = 100;

/// Where the Amazon files are and how to read them.
#[derive(Debug, Clone)]
pub struct AmazonInput {
    pub reviews: PathBuf,
    pub meta: PathBuf,
    pub image_features: Option<PathBuf>,
    /// Floats per image record (4096 in the published files).
    pub image_dim: usize,
    /// Seed of the negative sampling.
    pub seed: u64,
}

/// One record line: strict JSON first, else a Python literal; it must be an object.
fn record(text: &str) -> std::result::Result<serde_json::Map<String, Value>, String> {
    let v = match serde_json::from_str::<Value>(text) {
        Ok(v) => v,
        Err(json) => pylit::parse(text).map_err(|py| format!("neither JSON ({json}) nor a Python literal ({py})"))?,
    };
    match v {
        Value::Object(m) => Ok(m),
        other => Err(format!("a record must be an object, not {}", kind(&other))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn text_field<'a>(m: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a str> {
    m.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

/// A price as a number, or text like `"$1,299.00"` (a range `"$1 - $2"` takes its low end).
fn price(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => {
            let low = s.split('-').next()?.trim().trim_start_matches('$').replace(',', "");
            low.parse::<f64>().ok()
        }
        _ => None,
    }
    .filter(|p| p.is_finite() && *p >= 0.0)
}

/// The category: the last level of the first path of `categories` (or of the 2018 `category`).
fn category(m: &serde_json::Map<String, Value>) -> String {
    let path = match (m.get("categories"), m.get("category")) {
        (Some(Value::Array(paths)), _) => paths.first().and_then(Value::as_array).cloned(),
        (_, Some(Value::Array(path))) => Some(path.clone()),
        _ => None,
    };
    path.and_then(|p| {
        p.iter().rev().filter_map(Value::as_str).map(str::trim).find(|s| !s.is_empty()).map(str::to_string)
    })
    .unwrap_or_else(|| "unknown".to_string())
}

/// A review: reviewer, asin, Unix seconds.
struct Review {
    user: String,
    asin: String,
    seconds: i64,
}

/// Calls `f` with every non-empty line of `path` read as a record; a line that is not one is
/// quarantined with the reason.
fn for_each_record(
    path: &Path,
    lines: &mut super::Lines,
    mut f: impl FnMut(&mut super::Lines, u64, &str, serde_json::Map<String, Value>),
) -> Result<()> {
    for_each_line(path, |line, text| {
        if text.trim().is_empty() {
            return Ok(());
        }
        lines.read += 1;
        match record(text) {
            Ok(m) => f(lines, line, text, m),
            Err(reason) => lines.reject(path, line, text, format!("unreadable record: {reason}")),
        }
        Ok(())
    })
}

/// Reads the three files and samples the negatives.
pub fn read(input: &AmazonInput) -> Result<Dataset> {
    let mut data = Dataset::default();
    let mut items: BTreeMap<String, ItemRecord> = BTreeMap::new();
    let meta = &input.meta;
    for_each_record(meta, &mut data.lines, |lines, line, text, m| {
        let Some(asin) = text_field(&m, "asin") else {
            lines.reject(meta, line, text, "no asin");
            return;
        };
        if items.contains_key(asin) {
            lines.reject(meta, line, text, format!("duplicate asin: {asin} is already in the metadata"));
            return;
        }
        items.insert(
            asin.to_string(),
            ItemRecord {
                item: asin.to_string(),
                shop: NONE_ID.to_string(),
                brand: text_field(&m, "brand").unwrap_or(NONE_ID).to_string(),
                category: category(&m),
                title: clean_title(text_field(&m, "title").unwrap_or("")),
                image: None,
                price: price(m.get("price")),
            },
        );
    })?;
    if items.is_empty() {
        return Err(input_error(meta, "no item could be read from the metadata"));
    }

    let mut reviews = Vec::new();
    let path = &input.reviews;
    for_each_record(path, &mut data.lines, |lines, line, text, m| {
        let (Some(user), Some(asin)) = (text_field(&m, "reviewerID"), text_field(&m, "asin")) else {
            lines.reject(path, line, text, "no reviewerID or asin");
            return;
        };
        let seconds = match m.get("unixReviewTime") {
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        let Some(seconds) = seconds.filter(|s| (0..7_300_000_000).contains(s)) else {
            lines.reject(path, line, text, "unixReviewTime is missing or not Unix seconds in 1970..2200");
            return;
        };
        if !items.contains_key(asin) {
            lines.reject(path, line, text, format!("unknown asin: {asin} is not in the metadata"));
            return;
        }
        reviews.push(Review { user: user.to_string(), asin: asin.to_string(), seconds });
    })?;

    if let Some(images) = &input.image_features {
        read_images(images, input.image_dim, &mut items, &mut data)?;
        data.image_dim = input.image_dim;
    }

    // Negatives: per review, an item the reviewer never reviewed, drawn in a fixed order.
    reviews.sort_by(|a, b| (&a.user, a.seconds, &a.asin).cmp(&(&b.user, b.seconds, &b.asin)));
    let mut reviewed: HashMap<&str, HashSet<&str>> = HashMap::new();
    for r in &reviews {
        reviewed.entry(r.user.as_str()).or_default().insert(r.asin.as_str());
    }
    let pool: Vec<&str> = items.keys().map(String::as_str).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(input.seed);
    let mut negatives = 0u64;
    let mut not_found = 0u64;
    let mut interactions = Vec::with_capacity(reviews.len() * 2);
    for r in &reviews {
        let request = format!("{}-{}", r.user, r.seconds);
        let time_ms = r.seconds * 1000;
        let seen = &reviewed[r.user.as_str()];
        let negative = (0..NEGATIVE_TRIES).map(|_| pool[rng.random_range(0..pool.len())]).find(|c| !seen.contains(c));
        match negative {
            Some(n) => {
                negatives += 1;
                interactions.push(Interaction {
                    time_ms,
                    user: r.user.clone(),
                    item: n.to_string(),
                    request: request.clone(),
                    clicked: false,
                });
            }
            None => not_found += 1,
        }
        interactions.push(Interaction { time_ms, user: r.user.clone(), item: r.asin.clone(), request, clicked: true });
    }
    data.interactions = interactions;
    data.items = items.into_values().collect();
    data.notes.insert("reviews".into(), serde_json::json!(reviews.len()));
    data.notes.insert("negatives_sampled".into(), serde_json::json!(negatives));
    data.notes.insert("negatives_not_found".into(), serde_json::json!(not_found));
    data.notes.insert("negative_seed".into(), serde_json::json!(input.seed));
    Ok(data)
}

/// Reads image feature records into the items they name.
fn read_images(path: &Path, dim: usize, items: &mut BTreeMap<String, ItemRecord>, data: &mut Dataset) -> Result<()> {
    if dim == 0 {
        return Err(input_error(path, "the image feature width must be at least 1"));
    }
    let mut reader = open_text(path)?;
    let record_bytes = 10 + 4 * dim;
    let mut buf = vec![0u8; record_bytes];
    let (mut unused, mut n) = (0u64, 0u64);
    loop {
        let got = read_up_to(&mut reader, &mut buf).map_err(|e| input_error(path, format!("record {}: {e}", n + 1)))?;
        if got == 0 {
            break;
        }
        n += 1;
        data.lines.read += 1;
        if got < record_bytes {
            return Err(input_error(
                path,
                format!(
                    "the file ends inside record {n} ({got} of {record_bytes} bytes): records are a 10-byte ASIN and \
                     {dim} float32 values; is --image-dim right?"
                ),
            ));
        }
        let asin =
            String::from_utf8_lossy(&buf[..10]).trim_matches(|c: char| c == '\0' || c.is_whitespace()).to_string();
        let values: Vec<f32> =
            buf[10..].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
            data.lines.reject(path, n, &asin, format!("non-finite value at position {bad}"));
            continue;
        }
        match items.get_mut(&asin) {
            Some(item) => item.image = Some(values),
            None => unused += 1,
        }
    }
    data.notes.insert("image_records".into(), serde_json::json!(n));
    data.notes.insert("image_records_without_item".into(), serde_json::json!(unused));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_and_categories() {
        assert_eq!(price(Some(&serde_json::json!(3.5))), Some(3.5));
        assert_eq!(price(Some(&serde_json::json!("$1,299.00"))), Some(1299.0));
        assert_eq!(price(Some(&serde_json::json!("$1.00 - $2.00"))), Some(1.0));
        assert_eq!(price(Some(&serde_json::json!("n/a"))), None);
        let m = record("{'categories': [['Books', 'Fiction'], ['Other']]}").unwrap();
        assert_eq!(category(&m), "Fiction");
        let m = record(r#"{"category": ["Electronics", "Cables", ""]}"#).unwrap();
        assert_eq!(category(&m), "Cables");
        assert_eq!(category(&record("{}").unwrap()), "unknown");
        assert!(record("[1, 2]").unwrap_err().contains("a list"));
    }
}
