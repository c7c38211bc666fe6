//! The data contract of DESIGN.md ("Raw logs"): table locations and their Arrow schemas.
//!
//! Every writer in marnflow builds its batches against these schemas, and every reader checks
//! what it finds against them, so the column names that analysts and the trainer rely on are
//! written down once.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::NaiveDate;

/// `raw/exposures/dt=D/`: one row per item shown to a user in a request.
pub const EXPOSURES: &str = "raw/exposures";
/// `raw/clicks/dt=D/`: one row per clicked exposure.
pub const CLICKS: &str = "raw/clicks";
/// `raw/behaviors/dt=D/`: click, cart and purchase events, in and outside the exposures.
pub const BEHAVIORS: &str = "raw/behaviors";
/// `raw/items/`: the item catalogue with every modality.
pub const ITEMS: &str = "raw/items";
/// `raw/word_vectors/`: one vector per title token.
pub const WORD_VECTORS: &str = "raw/word_vectors";
/// `truth/exposures/dt=D/`: the true click probability of every generated exposure.
pub const TRUTH_EXPOSURES: &str = "truth/exposures";
/// `truth/items/`: what the generator planted per item (launch day, quality, popularity).
pub const TRUTH_ITEMS: &str = "truth/items";
/// `truth/categories/`: the planted weight of each modality in the click, per category.
pub const TRUTH_CATEGORIES: &str = "truth/categories";
/// `truth/world.json`: the resolved generator parameters and the summary of the run.
pub const TRUTH_WORLD: &str = "truth/world.json";

/// Longest id the contract accepts by default, in bytes (`features.max_id_bytes`; the clean SQL
/// jobs and the catalogue check it).
pub const DEFAULT_MAX_ID_BYTES: u32 = 256;
/// Title words the model reads; the feature job cuts a longer title to this many.
pub const TITLE_TOKENS: usize = 32;

/// The three behavior types of the contract.
pub const BEHAVIOR_TYPES: [&str; 3] = ["click", "cart", "purchase"];

/// A date as days since 1970-01-01 (Arrow's `Date32`; also the timestamps of the window dataflow).
pub fn epoch_day(date: NaiveDate) -> i32 {
    (date - NaiveDate::default()).num_days() as i32
}

/// Event times: milliseconds since the epoch, UTC.
pub fn event_time_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

fn event_time() -> Field {
    Field::new("event_time", event_time_type(), false)
}

/// A fixed-width float32 vector column (image embeddings, word vectors).
pub fn vector_type(width: i32) -> DataType {
    DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, false)), width)
}

/// Schema of `raw/exposures`.
pub fn exposures_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        event_time(),
        utf8("request_id"),
        utf8("user_id"),
        utf8("item_id"),
        Field::new("position", DataType::Int32, true),
    ]))
}

/// Schema of `raw/clicks`.
pub fn clicks_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![event_time(), utf8("request_id"), utf8("user_id"), utf8("item_id")]))
}

/// Schema of `raw/behaviors`.
pub fn behaviors_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![event_time(), utf8("user_id"), utf8("item_id"), utf8("behavior")]))
}

/// Schema of `raw/items` with image embeddings `image_dim` wide.
pub fn items_schema(image_dim: i32) -> SchemaRef {
    Arc::new(Schema::new(vec![
        utf8("item_id"),
        utf8("shop_id"),
        utf8("brand_id"),
        utf8("category_id"),
        utf8("title"),
        Field::new("image_embedding", vector_type(image_dim), true),
        Field::new("price", DataType::Float64, true),
    ]))
}

/// Schema of `raw/word_vectors` with vectors `dim` wide.
pub fn word_vectors_schema(dim: i32) -> SchemaRef {
    Arc::new(Schema::new(vec![utf8("token"), Field::new("vector", vector_type(dim), false)]))
}

/// Schema of `truth/exposures`.
pub fn truth_exposures_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        utf8("request_id"),
        utf8("user_id"),
        utf8("item_id"),
        Field::new("p_click", DataType::Float64, false),
    ]))
}

/// Schema of `truth/items`.
pub fn truth_items_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        utf8("item_id"),
        utf8("category_id"),
        Field::new("launch_date", DataType::Date32, false),
        Field::new("quality", DataType::Float64, false),
        Field::new("popularity_weight", DataType::Float64, false),
        Field::new("has_image", DataType::Boolean, false),
    ]))
}

/// Schema of `truth/categories`: the weight of each modality's factor in the click logit.
pub fn truth_categories_schema() -> SchemaRef {
    let w = |name: &str| Field::new(name, DataType::Float64, false);
    Arc::new(Schema::new(vec![
        utf8("category_id"),
        utf8("profile"),
        w("w_image"),
        w("w_title"),
        w("w_shared"),
        w("w_statistics"),
        w("w_id"),
        w("logit_offset"),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_days_count_from_1970() {
        assert_eq!(epoch_day(NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()), 0);
        assert_eq!(epoch_day(NaiveDate::from_ymd_opt(2026, 1, 1).unwrap()), 20454);
    }
}
