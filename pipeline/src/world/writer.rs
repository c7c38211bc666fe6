//! The row builders of each raw table (files are written by [`crate::lake::PartitionWriter`]).

use std::sync::Arc;

use crate::error::{PipelineError, Result};
use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Date32Builder, FixedSizeListBuilder, Float32Builder, Float64Builder,
    Int32Builder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow::datatypes::{Field, SchemaRef};
use arrow::record_batch::RecordBatch;

fn batch(schema: &SchemaRef, columns: Vec<ArrayRef>, table: &str) -> Result<RecordBatch> {
    RecordBatch::try_new(Arc::clone(schema), columns)
        .map_err(|e| PipelineError::arrow(format!("building a batch of {table}"), e))
}

fn ts_builder() -> TimestampMillisecondBuilder {
    TimestampMillisecondBuilder::new().with_timezone("UTC")
}

/// Rows of `raw/exposures`.
#[derive(Debug)]
pub struct ExposureRows {
    schema: SchemaRef,
    time: TimestampMillisecondBuilder,
    request: StringBuilder,
    user: StringBuilder,
    item: StringBuilder,
    position: Int32Builder,
}

impl Default for ExposureRows {
    fn default() -> Self {
        Self::new()
    }
}

impl ExposureRows {
    pub fn new() -> Self {
        Self {
            schema: crate::contract::exposures_schema(),
            time: ts_builder(),
            request: StringBuilder::new(),
            user: StringBuilder::new(),
            item: StringBuilder::new(),
            position: Int32Builder::new(),
        }
    }
    /// One exposure; `position` is `None` for sources that do not record a slate position.
    pub fn push(&mut self, time_ms: i64, request: &str, user: &str, item: &str, position: Option<i32>) {
        self.time.append_value(time_ms);
        self.request.append_value(request);
        self.user.append_value(user);
        self.item.append_value(item);
        self.position.append_option(position);
    }
    pub fn len(&self) -> usize {
        self.time.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn take(&mut self) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.time.finish()),
            Arc::new(self.request.finish()),
            Arc::new(self.user.finish()),
            Arc::new(self.item.finish()),
            Arc::new(self.position.finish()),
        ];
        batch(&self.schema, cols, "raw/exposures")
    }
}

/// Rows of `raw/clicks`.
#[derive(Debug)]
pub struct ClickRows {
    schema: SchemaRef,
    time: TimestampMillisecondBuilder,
    request: StringBuilder,
    user: StringBuilder,
    item: StringBuilder,
}

impl Default for ClickRows {
    fn default() -> Self {
        Self::new()
    }
}

impl ClickRows {
    pub fn new() -> Self {
        Self {
            schema: crate::contract::clicks_schema(),
            time: ts_builder(),
            request: StringBuilder::new(),
            user: StringBuilder::new(),
            item: StringBuilder::new(),
        }
    }
    pub fn push(&mut self, time_ms: i64, request: &str, user: &str, item: &str) {
        self.time.append_value(time_ms);
        self.request.append_value(request);
        self.user.append_value(user);
        self.item.append_value(item);
    }
    pub fn len(&self) -> usize {
        self.time.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn take(&mut self) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.time.finish()),
            Arc::new(self.request.finish()),
            Arc::new(self.user.finish()),
            Arc::new(self.item.finish()),
        ];
        batch(&self.schema, cols, "raw/clicks")
    }
}

/// Rows of `raw/behaviors`.
#[derive(Debug)]
pub struct BehaviorRows {
    schema: SchemaRef,
    time: TimestampMillisecondBuilder,
    user: StringBuilder,
    item: StringBuilder,
    behavior: StringBuilder,
}

impl Default for BehaviorRows {
    fn default() -> Self {
        Self::new()
    }
}

impl BehaviorRows {
    pub fn new() -> Self {
        Self {
            schema: crate::contract::behaviors_schema(),
            time: ts_builder(),
            user: StringBuilder::new(),
            item: StringBuilder::new(),
            behavior: StringBuilder::new(),
        }
    }
    pub fn push(&mut self, time_ms: i64, user: &str, item: &str, behavior: &str) {
        self.time.append_value(time_ms);
        self.user.append_value(user);
        self.item.append_value(item);
        self.behavior.append_value(behavior);
    }
    pub fn len(&self) -> usize {
        self.time.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn take(&mut self) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.time.finish()),
            Arc::new(self.user.finish()),
            Arc::new(self.item.finish()),
            Arc::new(self.behavior.finish()),
        ];
        batch(&self.schema, cols, "raw/behaviors")
    }
}

/// Rows of `truth/exposures`.
#[derive(Debug)]
pub struct TruthRows {
    schema: SchemaRef,
    request: StringBuilder,
    user: StringBuilder,
    item: StringBuilder,
    p_click: Float64Builder,
}

impl Default for TruthRows {
    fn default() -> Self {
        Self::new()
    }
}

impl TruthRows {
    pub fn new() -> Self {
        Self {
            schema: crate::contract::truth_exposures_schema(),
            request: StringBuilder::new(),
            user: StringBuilder::new(),
            item: StringBuilder::new(),
            p_click: Float64Builder::new(),
        }
    }
    pub fn push(&mut self, request: &str, user: &str, item: &str, p: f64) {
        self.request.append_value(request);
        self.user.append_value(user);
        self.item.append_value(item);
        self.p_click.append_value(p);
    }
    pub fn take(&mut self) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.request.finish()),
            Arc::new(self.user.finish()),
            Arc::new(self.item.finish()),
            Arc::new(self.p_click.finish()),
        ];
        batch(&self.schema, cols, "truth/exposures")
    }
}

/// A builder for a non-null-element fixed-width float32 vector column.
pub fn vector_builder(width: i32, capacity: usize) -> FixedSizeListBuilder<Float32Builder> {
    FixedSizeListBuilder::with_capacity(Float32Builder::new(), width, capacity).with_field(Arc::new(Field::new(
        "item",
        arrow::datatypes::DataType::Float32,
        false,
    )))
}

/// Rows of `raw/items`.
#[derive(Debug)]
pub struct ItemRows {
    schema: SchemaRef,
    width: i32,
    item: StringBuilder,
    shop: StringBuilder,
    brand: StringBuilder,
    category: StringBuilder,
    title: StringBuilder,
    image: FixedSizeListBuilder<Float32Builder>,
    price: Float64Builder,
}

impl ItemRows {
    pub fn new(image_dim: i32) -> Self {
        Self {
            schema: crate::contract::items_schema(image_dim),
            width: image_dim,
            item: StringBuilder::new(),
            shop: StringBuilder::new(),
            brand: StringBuilder::new(),
            category: StringBuilder::new(),
            title: StringBuilder::new(),
            image: vector_builder(image_dim, 0),
            price: Float64Builder::new(),
        }
    }
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        item: &str,
        shop: &str,
        brand: &str,
        category: &str,
        title: &str,
        image: Option<&[f32]>,
        price: Option<f64>,
    ) {
        self.item.append_value(item);
        self.shop.append_value(shop);
        self.brand.append_value(brand);
        self.category.append_value(category);
        self.title.append_value(title);
        match image {
            Some(v) => {
                self.image.values().append_slice(v);
                self.image.append(true);
            }
            None => {
                for _ in 0..self.width {
                    self.image.values().append_value(0.0);
                }
                self.image.append(false);
            }
        }
        self.price.append_option(price);
    }
    pub fn len(&self) -> usize {
        self.item.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn take(&mut self) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.item.finish()),
            Arc::new(self.shop.finish()),
            Arc::new(self.brand.finish()),
            Arc::new(self.category.finish()),
            Arc::new(self.title.finish()),
            Arc::new(self.image.finish()),
            Arc::new(self.price.finish()),
        ];
        batch(&self.schema, cols, "raw/items")
    }
}

/// Rows of `truth/items`.
#[derive(Debug)]
pub struct TruthItemRows {
    schema: SchemaRef,
    item: StringBuilder,
    category: StringBuilder,
    launch: Date32Builder,
    quality: Float64Builder,
    popularity: Float64Builder,
    has_image: BooleanBuilder,
}

impl Default for TruthItemRows {
    fn default() -> Self {
        Self::new()
    }
}

impl TruthItemRows {
    pub fn new() -> Self {
        Self {
            schema: crate::contract::truth_items_schema(),
            item: StringBuilder::new(),
            category: StringBuilder::new(),
            launch: Date32Builder::new(),
            quality: Float64Builder::new(),
            popularity: Float64Builder::new(),
            has_image: BooleanBuilder::new(),
        }
    }
    pub fn push(
        &mut self,
        item: &str,
        category: &str,
        launch_days_since_epoch: i32,
        quality: f64,
        popularity: f64,
        has_image: bool,
    ) {
        self.item.append_value(item);
        self.category.append_value(category);
        self.launch.append_value(launch_days_since_epoch);
        self.quality.append_value(quality);
        self.popularity.append_value(popularity);
        self.has_image.append_value(has_image);
    }
    pub fn take(&mut self) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.item.finish()),
            Arc::new(self.category.finish()),
            Arc::new(self.launch.finish()),
            Arc::new(self.quality.finish()),
            Arc::new(self.popularity.finish()),
            Arc::new(self.has_image.finish()),
        ];
        batch(&self.schema, cols, "truth/items")
    }
}
