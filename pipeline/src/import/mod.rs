//! Importers of public datasets into the raw-log contract (`raw/exposures`, `raw/clicks`,
//! `raw/behaviors`, `raw/items`, `raw/word_vectors`), so the whole chain (features, train,
//! evaluate) runs on data nobody here made.
//!
//! - [`movielens`]: MovieLens-100K, in the GroupLens layout (`u.data`, `u.item`, `u.user`) or the
//!   RecBole atomic-file layout (`*.inter`, `*.item`, `*.user`).
//! - [`amazon`]: the Amazon product data of the DIN and MARN papers (reviews, metadata, image
//!   features), JSON or Python-literal lines, plain or gzipped.
//!
//! Each importer turns its files into [`Interaction`]s and [`ItemRecord`]s; [`write`] lays them
//! out by UTC day. A line that cannot be read is not dropped: it goes to
//! `quarantine/import_<source>/` with its file, line number, text and reason, and is counted;
//! past `max_bad_share` of the lines read, the import fails and shows the first ones.
//!
//! Titles are tokenized as `sql/items.sql` does (`lower(trim(title))`, split on single spaces),
//! so the tokens of `raw/word_vectors` are exactly those the feature job produces. Neither
//! dataset ships word vectors: `--word-vectors FILE` reads pretrained ones (GloVe text format:
//! a token, then its floats, space-separated; plain or gzipped); tokens without one, or every
//! token when no file is given, get a fixed random vector drawn from a seeded stream per token
//! (a random projection of the token's one-hot), for the trainer to fine-tune.

pub mod amazon;
pub mod movielens;
pub mod pylit;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, StringBuilder, UInt64Builder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, NaiveDate};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;

use crate::contract;
use crate::error::{PipelineError, Result};
use crate::lake::{data_file, partition, write_parquet, Lake};
use crate::world::writer::{vector_builder, BehaviorRows, ClickRows, ExposureRows, ItemRows};

/// The shop and brand of items whose source has none (one shared value, so the id embeddings of
/// these fields carry nothing and the model leans on the others).
pub const NONE_ID: &str = "none";

/// One exposure of an item to a user; `clicked` ones are also a click and a `click` behavior.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Interaction {
    pub time_ms: i64,
    pub user: String,
    pub item: String,
    pub request: String,
    pub clicked: bool,
}

/// One catalogue row of `raw/items`.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemRecord {
    pub item: String,
    pub shop: String,
    pub brand: String,
    pub category: String,
    pub title: String,
    pub image: Option<Vec<f32>>,
    pub price: Option<f64>,
}

/// A line that could not be imported, kept with where it came from and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub file: String,
    pub line: u64,
    pub text: String,
    pub reason: String,
}

/// Accepted and rejected line counts of an import, with the rejects themselves.
#[derive(Debug, Default)]
pub struct Lines {
    pub read: u64,
    pub rejects: Vec<Reject>,
}

impl Lines {
    /// Records a bad line (the text is cut to 500 characters).
    pub fn reject(&mut self, file: &Path, line: u64, text: &str, reason: impl Into<String>) {
        let text: String = text.chars().take(500).collect();
        self.rejects.push(Reject { file: file.display().to_string(), line, text, reason: reason.into() });
    }
}

/// Width of the random word vectors when no file gives one.
pub const DEFAULT_WORD_DIM: usize = 32;
/// Seed of the random word vectors (and of Amazon's negative sampling) without `--seed`.
pub const DEFAULT_SEED: u64 = 1;
/// Share of unreadable input lines above which an import fails, without `--max-bad-share`.
pub const DEFAULT_MAX_BAD_SHARE: f64 = 0.01;

/// Where the word vectors of the titles come from.
#[derive(Debug, Clone)]
pub struct WordVectorSource {
    /// A GloVe-format text file (plain or gzipped); `None`: seeded random vectors only.
    pub file: Option<std::path::PathBuf>,
    /// Width of the random vectors; a file's own width wins.
    pub dim: usize,
    pub seed: u64,
}

impl Default for WordVectorSource {
    /// Random vectors of [`DEFAULT_WORD_DIM`] and [`DEFAULT_SEED`]: what `marnflow import` uses
    /// without flags.
    fn default() -> Self {
        Self { file: None, dim: DEFAULT_WORD_DIM, seed: DEFAULT_SEED }
    }
}

/// What an import wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ImportSummary {
    pub source: String,
    pub lake: String,
    pub first_day: String,
    pub last_day: String,
    pub days: usize,
    pub users: usize,
    pub items: usize,
    pub exposures: u64,
    pub clicks: u64,
    pub click_rate: f64,
    pub categories: usize,
    pub items_with_image: usize,
    pub image_dim: usize,
    pub tokens: usize,
    pub word_dim: usize,
    /// Tokens whose vector came from the word-vector file (0 without one).
    pub tokens_pretrained: usize,
    pub lines_read: u64,
    pub lines_quarantined: u64,
    /// Quarantined lines per reason.
    pub quarantine_reasons: BTreeMap<String, u64>,
    /// Where the quarantined lines went, when there were any.
    pub quarantine: Option<String>,
    /// Anything the importer adds (e.g. the negatives it sampled).
    pub notes: BTreeMap<String, serde_json::Value>,
}

/// Everything an importer produced, ready to be written.
#[derive(Debug, Default)]
pub struct Dataset {
    pub interactions: Vec<Interaction>,
    pub items: Vec<ItemRecord>,
    pub image_dim: usize,
    pub lines: Lines,
    pub notes: BTreeMap<String, serde_json::Value>,
}

/// The input error of a file: what and where.
pub fn input_error(path: &Path, reason: impl std::fmt::Display) -> PipelineError {
    PipelineError::Input { path: path.display().to_string(), reason: reason.to_string() }
}

/// Opens a text file, gunzipping it when it starts with the gzip magic bytes.
pub fn open_text(path: &Path) -> Result<Box<dyn BufRead>> {
    let mut file = std::fs::File::open(path).map_err(|e| input_error(path, format!("cannot open: {e}")))?;
    let mut magic = [0u8; 2];
    let n = read_up_to(&mut file, &mut magic).map_err(|e| input_error(path, format!("cannot read: {e}")))?;
    let head = std::io::Cursor::new(magic[..n].to_vec());
    let reader = head.chain(file);
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(BufReader::with_capacity(1 << 16, flate2::read::MultiGzDecoder::new(reader))))
    } else {
        Ok(Box::new(BufReader::with_capacity(1 << 16, reader)))
    }
}

/// Reads until `buf` is full or the input ends; returns how many bytes it read.
pub(super) fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Every line of a text file as `(line number from 1, text)`; bytes that are not UTF-8 are read
/// as Latin-1 (GroupLens ships `u.item` in Latin-1). A read error mid-file is an error, not EOF.
pub fn for_each_line(path: &Path, mut f: impl FnMut(u64, &str) -> Result<()>) -> Result<()> {
    let mut reader = open_text(path)?;
    let mut buf = Vec::new();
    let mut line = 0u64;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(|e| input_error(path, format!("line {}: {e}", line + 1)))?;
        if n == 0 {
            return Ok(());
        }
        line += 1;
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        match std::str::from_utf8(&buf) {
            Ok(s) => f(line, s)?,
            Err(_) => {
                let s: String = buf.iter().map(|&b| b as char).collect();
                f(line, &s)?
            }
        }
    }
}

/// The tokens `sql/items.sql` makes of a title: `lower(trim(title))` split on single spaces.
pub fn title_tokens(title: &str) -> Vec<String> {
    title.trim().to_lowercase().split(' ').map(str::to_string).collect()
}

/// A title with runs of whitespace made single spaces, so no token is empty.
pub fn clean_title(title: &str) -> String {
    title.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The UTC day of a time in milliseconds, or `None` outside chrono's range.
pub fn utc_day(time_ms: i64) -> Option<NaiveDate> {
    DateTime::from_timestamp_millis(time_ms).map(|t| t.date_naive())
}

fn quarantine_folder(source: &str) -> String {
    format!("quarantine/import_{source}")
}

fn quarantine_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("file", DataType::Utf8, false),
        Field::new("line", DataType::UInt64, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
    ]))
}

/// Checks the share of bad lines; past `max_bad_share` the import fails showing the first ones.
fn check_bad_share(source: &str, lines: &Lines, max_bad_share: f64) -> Result<()> {
    let bad = lines.rejects.len() as u64;
    if lines.read == 0 || bad as f64 <= max_bad_share * lines.read as f64 {
        return Ok(());
    }
    let mut problems = vec![format!(
        "{bad} of {} lines ({:.2}%) could not be imported, more than --max-bad-share {max_bad_share}; the first ones:",
        lines.read,
        100.0 * bad as f64 / lines.read as f64
    )];
    for r in lines.rejects.iter().take(5) {
        problems.push(format!(
            "{}:{}: {} ({:?})",
            r.file,
            r.line,
            r.reason,
            r.text.chars().take(120).collect::<String>()
        ));
    }
    Err(PipelineError::Input { path: source.to_string(), reason: problems.join("\n  ") })
}

/// Refuses a lake whose raw logs hold days this import would not rewrite: mixing two sources
/// in one lake would be silent and wrong.
async fn check_lake_is_ours(lake: &Lake, days: &BTreeSet<NaiveDate>) -> Result<()> {
    for table in [contract::EXPOSURES, contract::CLICKS, contract::BEHAVIORS] {
        for meta in lake.list(table).await? {
            let Some(rel) = lake.relative(&meta.location) else { continue };
            let Some(day) = crate::lake::partition_day(&rel) else { continue };
            if !days.contains(&day) {
                return Err(PipelineError::Input {
                    path: lake.uri().to_string(),
                    reason: format!(
                        "the lake already holds {rel}, a day this import does not cover: import into an empty lake \
                         (mixing sources in one lake would mix their logs)"
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Writes `dataset` into the raw tables of `lake`: one partition per UTC day, the catalogue, the
/// word vectors of its titles and the quarantine. Rerunning with the same input writes the same
/// bytes.
pub async fn write(
    lake: &Lake,
    source: &str,
    mut data: Dataset,
    words: &WordVectorSource,
    max_bad_share: f64,
) -> Result<ImportSummary> {
    check_bad_share(source, &data.lines, max_bad_share)?;
    if data.interactions.is_empty() {
        return Err(PipelineError::Input {
            path: source.to_string(),
            reason: "no interaction could be imported".to_string(),
        });
    }
    data.interactions.sort();
    let mut by_day: BTreeMap<NaiveDate, Vec<&Interaction>> = BTreeMap::new();
    for it in &data.interactions {
        // Importers only produce times in range; a time chrono cannot place is an importer bug.
        let day = utc_day(it.time_ms).ok_or_else(|| PipelineError::Input {
            path: source.to_string(),
            reason: format!("time {} ms is out of range", it.time_ms),
        })?;
        by_day.entry(day).or_default().push(it);
    }
    let days: BTreeSet<NaiveDate> = by_day.keys().copied().collect();
    lake.ensure_writable().await?;
    check_lake_is_ours(lake, &days).await?;

    for (day, rows) in &by_day {
        write_day(lake, *day, rows).await?;
    }
    let exposures = data.interactions.len() as u64;
    let clicks = data.interactions.iter().filter(|i| i.clicked).count() as u64;

    // The catalogue: every item, sorted by id.
    data.items.sort_by(|a, b| a.item.cmp(&b.item));
    let (width, items_with_image) = write_catalogue(lake, &data.items, data.image_dim).await?;

    let tokens: BTreeSet<String> = data.items.iter().flat_map(|it| title_tokens(&it.title)).collect();
    let (word_dim, tokens_pretrained) = write_word_vectors(lake, &tokens, words).await?;

    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    for r in &data.lines.rejects {
        *reasons.entry(r.reason.split(':').next().unwrap_or("").to_string()).or_default() += 1;
    }
    let quarantine = write_quarantine(lake, source, &data.lines.rejects).await?;

    let users: BTreeSet<&str> = data.interactions.iter().map(|i| i.user.as_str()).collect();
    let categories: BTreeSet<&str> = data.items.iter().map(|i| i.category.as_str()).collect();
    let day_string = |d: Option<&NaiveDate>| d.map(|d| d.to_string()).unwrap_or_default();
    Ok(ImportSummary {
        source: source.to_string(),
        lake: lake.uri().to_string(),
        first_day: day_string(days.first()),
        last_day: day_string(days.last()),
        days: days.len(),
        users: users.len(),
        items: data.items.len(),
        exposures,
        clicks,
        click_rate: clicks as f64 / exposures.max(1) as f64,
        categories: categories.len(),
        items_with_image,
        image_dim: if items_with_image > 0 { width } else { 0 },
        tokens: tokens.len(),
        word_dim,
        tokens_pretrained,
        lines_read: data.lines.read,
        lines_quarantined: data.lines.rejects.len() as u64,
        quarantine_reasons: reasons,
        quarantine,
        notes: data.notes,
    })
}

/// One day's raw partitions: every interaction an exposure, the clicked ones also a click and a
/// `click` behavior.
async fn write_day(lake: &Lake, day: NaiveDate, rows: &[&Interaction]) -> Result<()> {
    let dt = day.format("%Y-%m-%d").to_string();
    let (mut e, mut c, mut b) = (ExposureRows::new(), ClickRows::new(), BehaviorRows::new());
    for it in rows {
        e.push(it.time_ms, &it.request, &it.user, &it.item, None);
        if it.clicked {
            c.push(it.time_ms, &it.request, &it.user, &it.item);
            b.push(it.time_ms, &it.user, &it.item, "click");
        }
    }
    for (table, schema, batch) in [
        (contract::EXPOSURES, contract::exposures_schema(), e.take()?),
        (contract::CLICKS, contract::clicks_schema(), c.take()?),
        (contract::BEHAVIORS, contract::behaviors_schema(), b.take()?),
    ] {
        write_parquet(lake, data_file(&partition(table, &dt)), schema, &[batch], 1 << 16).await?;
    }
    Ok(())
}

/// `raw/items` from `items` (sorted by id); an image of another width than `image_dim` is left
/// out. Returns the image width written and how many items have an image.
async fn write_catalogue(lake: &Lake, items: &[ItemRecord], image_dim: usize) -> Result<(usize, usize)> {
    let width = image_dim.max(1) as i32;
    let mut rows = ItemRows::new(width);
    let mut items_with_image = 0;
    let mut item_batches = Vec::new();
    for it in items {
        let image = it.image.as_deref().filter(|v| v.len() == width as usize);
        items_with_image += usize::from(image.is_some());
        rows.push(&it.item, &it.shop, &it.brand, &it.category, &it.title, image, it.price);
        if rows.len() >= 1024 {
            item_batches.push(rows.take()?);
        }
    }
    item_batches.push(rows.take()?);
    write_parquet(lake, data_file(contract::ITEMS), contract::items_schema(width), &item_batches, 1024).await?;
    Ok((width as usize, items_with_image))
}

/// The import's quarantine: written when there is something to keep, removed when a rerun has
/// none. Returns its folder when written.
async fn write_quarantine(lake: &Lake, source: &str, rejects: &[Reject]) -> Result<Option<String>> {
    let folder = quarantine_folder(source);
    if rejects.is_empty() {
        use object_store::ObjectStoreExt;
        let stale = data_file(&folder);
        return match lake.store().delete(&lake.path(&stale)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(PipelineError::store("delete", stale, e)),
        };
    }
    let (mut file, mut line, mut text, mut reason) =
        (StringBuilder::new(), UInt64Builder::new(), StringBuilder::new(), StringBuilder::new());
    for r in rejects {
        file.append_value(&r.file);
        line.append_value(r.line);
        text.append_value(&r.text);
        reason.append_value(&r.reason);
    }
    let cols: Vec<ArrayRef> =
        vec![Arc::new(file.finish()), Arc::new(line.finish()), Arc::new(text.finish()), Arc::new(reason.finish())];
    let batch = RecordBatch::try_new(quarantine_schema(), cols)
        .map_err(|e| PipelineError::arrow("building the import quarantine", e))?;
    write_parquet(lake, data_file(&folder), quarantine_schema(), &[batch], 1 << 16).await?;
    Ok(Some(folder))
}

/// Writes `raw/word_vectors` for `tokens`; returns the width and how many came from the file.
async fn write_word_vectors(lake: &Lake, tokens: &BTreeSet<String>, src: &WordVectorSource) -> Result<(usize, usize)> {
    let mut found: HashMap<String, Vec<f32>> = HashMap::new();
    let mut dim = src.dim;
    if let Some(path) = &src.file {
        let mut width: Option<usize> = None;
        for_each_line(path, |line, text| {
            let mut parts = text.split(' ');
            let Some(token) = parts.next() else { return Ok(()) };
            if !tokens.contains(token) || found.contains_key(token) {
                return Ok(());
            }
            let v: std::result::Result<Vec<f32>, _> = parts.filter(|p| !p.is_empty()).map(str::parse).collect();
            let v = v.map_err(|e| input_error(path, format!("line {line}: a vector value is not a number: {e}")))?;
            match width {
                None => width = Some(v.len()),
                Some(w) if w != v.len() => {
                    return Err(input_error(path, format!("line {line}: {} values, the first vector had {w}", v.len())))
                }
                Some(_) => {}
            }
            found.insert(token.to_string(), v);
            Ok(())
        })?;
        if let Some(w) = width {
            dim = w;
        }
    }
    if dim == 0 {
        return Err(PipelineError::Config(vec!["the word vector width must be at least 1".into()]));
    }
    let schema = contract::word_vectors_schema(dim as i32);
    let mut names = StringBuilder::new();
    let mut vectors = vector_builder(dim as i32, tokens.len());
    let scale = 1.0 / (dim as f32).sqrt();
    for token in tokens {
        names.append_value(token);
        match found.get(token) {
            Some(v) => vectors.values().append_slice(v),
            None => {
                let mut rng = ChaCha8Rng::seed_from_u64(src.seed ^ fnv1a(token.as_bytes()));
                for _ in 0..dim {
                    let x: f32 = StandardNormal.sample(&mut rng);
                    vectors.values().append_value(x * scale);
                }
            }
        }
        vectors.append(true);
    }
    let cols: Vec<ArrayRef> = vec![Arc::new(names.finish()), Arc::new(vectors.finish())];
    let batch =
        RecordBatch::try_new(schema.clone(), cols).map_err(|e| PipelineError::arrow("building raw/word_vectors", e))?;
    write_parquet(lake, data_file(contract::WORD_VECTORS), schema, &[batch], 1 << 14).await?;
    Ok((dim, found.len()))
}

/// FNV-1a, 64 bits: a stable per-token seed (std's hasher is not stable across releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_the_feature_sql() {
        assert_eq!(title_tokens(" Toy Story (1995) "), ["toy", "story", "(1995)"]);
        assert_eq!(clean_title("a  b\tc "), "a b c");
    }

    #[test]
    fn gzip_and_latin1_lines_are_read() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("a.txt");
        std::fs::write(&plain, b"one\r\nMis\xe9rables\n").unwrap();
        let gz = dir.path().join("a.txt.gz");
        let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::fast());
        enc.write_all(b"one\r\nMis\xe9rables\n").unwrap();
        enc.finish().unwrap();
        for p in [&plain, &gz] {
            let mut lines = Vec::new();
            for_each_line(p, |n, s| {
                lines.push((n, s.to_string()));
                Ok(())
            })
            .unwrap();
            assert_eq!(lines, [(1, "one".to_string()), (2, "Misérables".to_string())]);
        }
        let err = open_text(&dir.path().join("missing")).err().unwrap().to_string();
        assert!(err.contains("missing") && err.contains("cannot open"), "{err}");
    }
}
