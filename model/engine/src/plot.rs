//! Report plots of `marnflow evaluate --report` and of the demo, drawn with the `plotters` crate.
//!
//! Four chart kinds: [`LineChart`] (e.g. training losses per step), [`ScatterChart`] (e.g. points on two
//! principal components), grouped [`BarChart`] (e.g. AUC per popularity decile per model) and [`HeatMap`]
//! (e.g. modality attention per category). Every chart implements [`Chart`], which renders it either as a
//! standalone SVG document (text) or as PNG bytes.
//!
//! Design: each chart kind has one drawing routine, generic over plotters' `DrawingBackend`, so the SVG and
//! the PNG come from the same code. The SVG backend writes text as `<text>` elements (searchable, no font
//! needed to write them); the bitmap backend paints into an in-memory RGB buffer that the `png` crate
//! encodes (plotters' own encoder would add a second `image` crate to the tree). Text is measured and, in
//! PNGs, rasterized with DejaVu Sans, embedded in the binary (`assets/`) and registered once in plotters'
//! font table, so PNGs look the same on machines without any fonts installed.
//!
//! Layout on an 800×500 canvas (heat maps grow with their rows and columns): the title on top, always at
//! full length (its font shrinks when it is long), the plot below it, and, for two or more series or
//! groups, a legend column right of the plot with the full names (its font shrinks for very long names).
//! Numeric axes use "nice" ticks (steps of 1, 2 or 5 × 10^k) computed here, so tick labels stay compact and
//! a bar chart's value axis can start exactly at `y_min`.
//!
//! Bad data never panics: points with a non-finite coordinate are skipped (breaking their line), bars and
//! cells with non-finite values are left out (their labels stay; cells are drawn grey), degenerate ranges
//! (one point, all values equal, huge values) get a usable axis, and a chart without any data still shows
//! its axes and a "no data" note. Output is deterministic: the same input always gives identical bytes.

use std::fmt;
use std::sync::OnceLock;

use std::ops::Range;

use plotters::backend::RGBPixel;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

// ---------------------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------------------

/// One named line of a line chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Name shown in the legend (the legend appears when a chart has two or more series).
    pub name: String,
    /// `(x, y)` points in drawing order; a point with a non-finite coordinate is skipped and breaks the line.
    pub points: Vec<(f64, f64)>,
}

/// Lines over a shared x axis (e.g. training loss per step).
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    /// Title printed above the plot.
    pub title: String,
    /// Label of the horizontal axis.
    pub x_label: String,
    /// Label of the vertical axis.
    pub y_label: String,
    /// The lines, coloured from a cycling palette in this order.
    pub series: Vec<Series>,
}

/// Points over two axes, one colour per series, no lines (e.g. feature vectors projected on two
/// principal components).
#[derive(Debug, Clone, PartialEq)]
pub struct ScatterChart {
    /// Title printed above the plot.
    pub title: String,
    /// Label of the horizontal axis.
    pub x_label: String,
    /// Label of the vertical axis.
    pub y_label: String,
    /// The point sets, coloured from a cycling palette in this order.
    pub series: Vec<Series>,
}

/// One named group of bars (one value per category label).
#[derive(Debug, Clone, PartialEq)]
pub struct BarGroup {
    /// Name shown in the legend (the legend appears when a chart has two or more groups).
    pub name: String,
    /// One value per category label, in label order; a non-finite value draws no bar.
    pub values: Vec<f64>,
}

/// Grouped bars: for every label, one bar per group (e.g. AUC per popularity decile per model).
#[derive(Debug, Clone, PartialEq)]
pub struct BarChart {
    /// Title printed above the plot.
    pub title: String,
    /// Label of the vertical axis.
    pub y_label: String,
    /// Category labels along the horizontal axis.
    pub labels: Vec<String>,
    /// The groups, coloured from a cycling palette in this order.
    pub groups: Vec<BarGroup>,
    /// Bottom of the value axis, where bars start (e.g. `Some(0.5)` for AUC). `None` (or a non-finite value)
    /// means bars start at zero and the axis is chosen from the data, always including zero.
    pub y_min: Option<f64>,
}

/// A heat map: rows × columns of values, with the value printed in each cell (e.g. modality attention per
/// category).
#[derive(Debug, Clone, PartialEq)]
pub struct HeatMap {
    /// Title printed above the map.
    pub title: String,
    /// Label describing the rows (printed vertically on the left).
    pub row_label: String,
    /// Label describing the columns (printed under the map).
    pub col_label: String,
    /// Row names, top to bottom.
    pub rows: Vec<String>,
    /// Column names, left to right.
    pub cols: Vec<String>,
    /// `values[row][col]`; missing or non-finite cells are drawn grey without a colour.
    pub values: Vec<Vec<f64>>,
}

/// Anything drawable.
pub trait Chart {
    /// The chart as a standalone SVG document.
    fn svg(&self) -> String;
    /// The chart as PNG bytes.
    fn png(&self) -> Result<Vec<u8>, PlotError>;
}

/// An error while rendering a chart (only PNG rendering can fail).
#[derive(Debug)]
pub struct PlotError(pub String);

impl fmt::Display for PlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "plot error: {}", self.0)
    }
}

impl std::error::Error for PlotError {}

impl Chart for LineChart {
    fn svg(&self) -> String {
        render_svg(&self.xy())
    }
    fn png(&self) -> Result<Vec<u8>, PlotError> {
        render_png(&self.xy())
    }
}

impl Chart for ScatterChart {
    fn svg(&self) -> String {
        render_svg(&self.xy())
    }
    fn png(&self) -> Result<Vec<u8>, PlotError> {
        render_png(&self.xy())
    }
}

impl Chart for BarChart {
    fn svg(&self) -> String {
        render_svg(self)
    }
    fn png(&self) -> Result<Vec<u8>, PlotError> {
        render_png(self)
    }
}

impl Chart for HeatMap {
    fn svg(&self) -> String {
        render_svg(self)
    }
    fn png(&self) -> Result<Vec<u8>, PlotError> {
        render_png(self)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Rendering: one drawing routine per chart kind, two backends
// ---------------------------------------------------------------------------------------------------------

/// A drawing area in pixel coordinates.
type Area<DB> = DrawingArea<DB, Shift>;
/// A chart with two numeric axes.
type Plane<'a, DB> = ChartContext<'a, DB, Cartesian2d<Ticked, Ticked>>;

/// A numeric coordinate whose key points (ticks and grid lines) are chosen here rather than by plotters;
/// tick labels come from the mesh's label formatters.
#[derive(Debug, Clone, PartialEq)]
struct Ticked {
    range: Range<f64>,
    ticks: Vec<f64>,
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        RangedCoordf64::from(self.range.clone()).map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Only bold grid lines: the ticks. No light lines in between.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.range.clone()
    }
}

/// What every chart kind provides: its canvas size and one drawing routine for any backend.
trait Draw {
    /// Canvas size in pixels.
    fn size(&self) -> (u32, u32) {
        (CANVAS_W, CANVAS_H)
    }
    /// Draws the whole chart onto `root`, which has [`Draw::size`].
    fn draw<DB: DrawingBackend>(&self, root: &Area<DB>) -> Result<(), PlotError>;
}

/// Any plotters error as a [`PlotError`] carrying the cause's text.
fn plot_error(e: impl fmt::Display) -> PlotError {
    PlotError(e.to_string())
}

/// The family name the embedded font is registered under (also written into SVG text elements).
const FONT_FAMILY: &str = "sans-serif";
/// DejaVu Sans (license in `assets/DejaVuSans-LICENSE.txt`).
static DEJAVU_SANS: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Registers the embedded font with plotters, once per process. Text layout (SVG and PNG) and PNG text
/// rasterization both need it.
fn ensure_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok =
        *REGISTERED.get_or_init(|| plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, DEJAVU_SANS).is_ok());
    if ok {
        Ok(())
    } else {
        Err(PlotError("the embedded DejaVu Sans font could not be read".to_string()))
    }
}

/// The chart as an SVG document; if drawing fails, a document that says why.
fn render_svg(chart: &impl Draw) -> String {
    let size = chart.size();
    let mut out = String::new();
    let drawn = ensure_font().and_then(|()| {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        chart.draw(&root)?;
        root.present().map_err(plot_error)
    });
    match drawn {
        Ok(()) => out,
        Err(e) => error_svg(size, &e),
    }
}

/// The chart painted into an RGB buffer and encoded as PNG.
fn render_png(chart: &impl Draw) -> Result<Vec<u8>, PlotError> {
    ensure_font()?;
    let (w, h) = chart.size();
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let backend = BitMapBackend::<RGBPixel>::with_buffer_and_format(&mut rgb, (w, h)).map_err(plot_error)?;
        let root = backend.into_drawing_area();
        chart.draw(&root)?;
        root.present().map_err(plot_error)?;
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| PlotError(format!("png header: {e}")))?;
    writer.write_image_data(&rgb).map_err(|e| PlotError(format!("png data: {e}")))?;
    writer.finish().map_err(|e| PlotError(format!("png finish: {e}")))?;
    Ok(out)
}

/// A minimal SVG document carrying an error message (rendering SVG cannot fail otherwise).
fn error_svg((w, h): (u32, u32), e: &PlotError) -> String {
    let mut text = String::new();
    for ch in clean(&e.to_string()).chars() {
        match ch {
            '&' => text.push_str("&amp;"),
            '<' => text.push_str("&lt;"),
            '>' => text.push_str("&gt;"),
            c => text.push(c),
        }
    }
    format!(
        "<svg width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" xmlns=\"http://www.w3.org/2000/svg\">\n\
         <text x=\"10\" y=\"24\" font-family=\"{FONT_FAMILY}\">{text}</text>\n</svg>\n"
    )
}

// ---------------------------------------------------------------------------------------------------------
// Colours, fonts, text
// ---------------------------------------------------------------------------------------------------------

const INK: RGBColor = RGBColor(34, 34, 34);
const AXIS: RGBColor = RGBColor(68, 68, 68);
const GRID: RGBColor = RGBColor(225, 225, 225);
const FRAME: RGBColor = RGBColor(200, 200, 200);
const MUTED: RGBColor = RGBColor(150, 150, 150);
const MISSING: RGBColor = RGBColor(215, 215, 215);

/// Categorical palette (cycled): blue, orange, green, red, purple, brown, pink, grey, olive, cyan.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn palette(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Sequential scale for heat maps: white (t = 0) through mid blue to dark blue (t = 1).
fn heat_color(t: f64) -> RGBColor {
    const STOPS: [(f64, RGBColor); 3] =
        [(0.0, RGBColor(255, 255, 255)), (0.5, RGBColor(107, 174, 214)), (1.0, RGBColor(8, 48, 107))];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let (lo, hi) = if t <= STOPS[1].0 { (STOPS[0], STOPS[1]) } else { (STOPS[1], STOPS[2]) };
    let f = (t - lo.0) / (hi.0 - lo.0);
    let mix = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * f).round().clamp(0.0, 255.0) as u8;
    RGBColor(mix(lo.1 .0, hi.1 .0), mix(lo.1 .1, hi.1 .1), mix(lo.1 .2, hi.1 .2))
}

fn luminance(c: RGBColor) -> f64 {
    0.299 * f64::from(c.0) + 0.587 * f64::from(c.1) + 0.114 * f64::from(c.2)
}

/// Dark text on light fills, white text on dark fills.
fn contrast_text(fill: RGBColor) -> RGBColor {
    if luminance(fill) > 150.0 {
        INK
    } else {
        WHITE
    }
}

// Text sizes in plotters' units: the font's full height in PNG pixels; SVG font-size is size / 1.24.
const TITLE_SIZE: f64 = 26.0;
const DESC_SIZE: f64 = 18.0;
const TICK_SIZE: f64 = 16.0;
const LEGEND_SIZE: f64 = 16.0;
const VALUE_SIZE: f64 = 15.0;
const NOTE_SIZE: f64 = 26.0;
/// Smallest size a long title or legend shrinks to.
const MIN_TEXT_SIZE: f64 = 9.0;

/// A text style in the embedded font.
fn font<'a>(size: f64) -> TextStyle<'a> {
    (FONT_FAMILY, size).into_font().color(&INK)
}

/// The same style anchored at a horizontal and vertical position.
fn anchored<'a>(size: f64, h: HPos, v: VPos) -> TextStyle<'a> {
    font(size).pos(Pos::new(h, v))
}

/// Width of `text` in pixels at `size`, measured with the embedded font (a rough estimate if unavailable).
fn text_width(text: &str, size: f64) -> f64 {
    let measured = ensure_font().ok().and_then(|()| (FONT_FAMILY, size).into_font().box_size(text).ok());
    match measured {
        Some((w, _)) => f64::from(w),
        None => 0.6 * size * text.chars().count() as f64,
    }
}

/// The largest size, from `max` down to [`MIN_TEXT_SIZE`] in half steps, at which `text` fits `width` pixels.
fn fitted_size(text: &str, max: f64, width: f64) -> f64 {
    let full = text_width(text, max);
    if full <= width || full <= 0.0 {
        return max;
    }
    // Width grows about linearly with size: start at the proportional guess, then step down until it fits.
    let mut size = ((max * width / full) * 2.0).floor() / 2.0;
    size = size.clamp(MIN_TEXT_SIZE, max);
    while size > MIN_TEXT_SIZE && text_width(text, size) > width {
        size -= 0.5;
    }
    size.max(MIN_TEXT_SIZE)
}

/// Text as drawn: control characters (which XML cannot hold) become '?', line breaks and tabs spaces.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' => ' ',
            c if c.is_control() || c == '\u{FFFE}' || c == '\u{FFFF}' => '?',
            c => c,
        })
        .collect()
}

/// Removes "-0" style negative zeros and trailing fractional zeros from a decimal string.
fn tidy_decimal(s: String) -> String {
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
    if s == "-0" {
        "0".to_string()
    } else {
        s
    }
}

/// Scientific notation with `digits` fractional mantissa digits, trailing zeros removed ("1.5e7", "2e-5").
fn sci(v: f64, digits: usize) -> String {
    let s = format!("{:.*e}", digits, v);
    match s.split_once('e') {
        Some((mantissa, exp)) => format!("{}e{}", tidy_decimal(mantissa.to_string()), exp),
        None => s,
    }
}

/// Compact value label with about three significant digits ("0.712", "12.3", "1235", "4.2e-5").
fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        return "-".to_string();
    }
    if v == 0.0 {
        return "0".to_string();
    }
    let mag = v.abs().log10().floor();
    if !(-3.0..5.0).contains(&mag) {
        return sci(v, 2);
    }
    let decimals = (2.0 - mag).clamp(0.0, 5.0) as usize;
    tidy_decimal(format!("{:.*}", decimals, v))
}

// ---------------------------------------------------------------------------------------------------------
// Axes and nice ticks
// ---------------------------------------------------------------------------------------------------------

/// Largest magnitude used for axis ranges, so spans stay finite.
const RANGE_LIMIT: f64 = 1e300;

/// Makes a usable, finite, non-degenerate `lo < hi` range.
fn sanitize_range(lo: f64, hi: f64) -> (f64, f64) {
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
    let (lo, hi) = (lo.clamp(-RANGE_LIMIT, RANGE_LIMIT), hi.clamp(-RANGE_LIMIT, RANGE_LIMIT));
    let span = hi - lo;
    let scale = lo.abs().max(hi.abs());
    if span <= scale * 1e-9 || span < 1e-200 {
        let mid = lo / 2.0 + hi / 2.0;
        let d = if mid.abs() < 1e-200 { 1.0 } else { mid.abs() * 0.1 };
        return (mid - d, mid + d);
    }
    (lo, hi)
}

/// About five "nice" ticks (steps of 1, 2 or 5 × 10^k) covering `[lo, hi]`, plus the step's exponent `k`.
fn nice_ticks(lo: f64, hi: f64) -> (Vec<f64>, i32) {
    let (lo, hi) = sanitize_range(lo, hi);
    let span = hi - lo;
    let k = (span / 5.0).log10().floor();
    let k = if k.is_finite() { k.clamp(-320.0, 320.0) as i32 } else { 0 };
    let mut best: Option<(f64, f64, f64, i32, f64)> = None; // (score, first, last, exp, mantissa)
    for e in (k - 1)..=(k + 1) {
        for m in [1.0, 2.0, 5.0] {
            let step = m * 10f64.powi(e);
            if !(step.is_finite() && step > 0.0) {
                continue;
            }
            let first = (lo / step + 1e-9).floor();
            let last = (hi / step - 1e-9).ceil();
            let n = last - first + 1.0;
            if !(first.is_finite() && last.is_finite() && (2.0..=50.0).contains(&n)) {
                continue;
            }
            // Closest to 5.5 ticks; on ties prefer the larger step (later candidate).
            let score = (n - 5.5).abs();
            if best.is_none_or(|b| score <= b.0) {
                best = Some((score, first, last, e, m));
            }
        }
    }
    let Some((_, first, last, e, m)) = best else {
        return (vec![lo, hi], k);
    };
    let count = (last - first) as i64;
    let ticks = (0..=count)
        .map(|i| {
            let units = (first + i as f64) * m;
            if e < 0 {
                units / 10f64.powi(-e)
            } else {
                units * 10f64.powi(e)
            }
        })
        .collect();
    (ticks, e)
}

/// Tick labels sharing one format: fixed decimals for ordinary ranges, scientific for tiny/huge ones.
fn tick_labels(ticks: &[f64], exp: i32) -> Vec<String> {
    let max_abs = ticks.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let scientific = !(-4..=5).contains(&exp) || max_abs >= 1e6;
    ticks
        .iter()
        .map(|&v| {
            if v == 0.0 {
                "0".to_string()
            } else if scientific {
                let mag = v.abs().log10().floor();
                let digits = if mag.is_finite() { (mag - f64::from(exp)).clamp(0.0, 6.0) as usize } else { 0 };
                sci(v, digits)
            } else {
                tidy_decimal(format!("{:.*}", (-exp).max(0) as usize, v))
            }
        })
        .collect()
}

/// A numeric axis: its drawn range and its labelled ticks.
#[derive(Debug, Clone, PartialEq)]
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<(f64, String)>,
}

impl Axis {
    /// An axis covering `[lo, hi]`, widened to the outer nice ticks (except at the bottom if `fixed_lo`).
    fn new(lo: f64, hi: f64, fixed_lo: bool) -> Axis {
        let (lo, hi) = sanitize_range(lo, hi);
        let (values, exp) = nice_ticks(lo, hi);
        let mut a_lo = lo;
        let mut a_hi = hi;
        if let (Some(&first), Some(&last)) = (values.first(), values.last()) {
            if !fixed_lo {
                a_lo = a_lo.min(first);
            }
            a_hi = a_hi.max(last);
        }
        let eps = (a_hi - a_lo) * 1e-9;
        let values: Vec<f64> = values.into_iter().filter(|v| *v >= a_lo - eps && *v <= a_hi + eps).collect();
        let labels = tick_labels(&values, exp);
        Axis { lo: a_lo, hi: a_hi, ticks: values.into_iter().zip(labels).collect() }
    }

    /// An axis over the finite values' extent, or `[0, 1]` without any.
    fn over(values: impl Iterator<Item = f64>) -> Axis {
        let (lo, hi) = extent(values).unwrap_or((0.0, 1.0));
        Axis::new(lo, hi, false)
    }

    /// The plotters coordinate: the axis range with exactly these ticks.
    fn coord(&self) -> Ticked {
        Ticked { range: self.lo..self.hi, ticks: self.ticks.iter().map(|(v, _)| *v).collect() }
    }

    /// The label of the tick at `v`.
    fn label(&self, v: f64) -> String {
        let eps = (self.hi - self.lo) * 1e-9;
        match self.ticks.iter().find(|(t, _)| (t - v).abs() <= eps) {
            Some((_, s)) => s.clone(),
            None => fmt_value(v),
        }
    }

    /// Width of the label area left of the plot: tick labels, tick marks and the rotated axis description.
    fn label_area_width(&self) -> u32 {
        let widest = self.ticks.iter().map(|(_, s)| text_width(s, TICK_SIZE)).fold(0.0, f64::max);
        label_area_width(widest)
    }
}

/// Width of a left label area whose widest tick label is `widest` pixels.
fn label_area_width(widest: f64) -> u32 {
    (widest + f64::from(2 * TICK_MARK) + 8.0 + DESC_SIZE + 6.0).ceil() as u32
}

/// Min and max of the finite values, if any.
fn extent(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.filter(|v| v.is_finite()).fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Category slots `0..n` (slot `i` spans `[i, i + 1]`), with a tick at every `step`-th slot centre.
fn slot_coord(n: usize, step: usize) -> Ticked {
    let ticks = (0..n).step_by(step.max(1)).map(|i| i as f64 + 0.5).collect();
    Ticked { range: 0.0..n.max(1) as f64, ticks }
}

/// Every how many slots a label can be printed so that labels of `size` do not overlap.
fn label_step(labels: &[String], size: f64, slot_px: f64) -> usize {
    let widest = labels.iter().map(|s| text_width(s, size)).fold(0.0, f64::max);
    if slot_px > 0.0 && slot_px.is_finite() {
        ((widest + 8.0) / slot_px).ceil().max(1.0) as usize
    } else {
        1
    }
}

/// The label of the slot containing `v` (empty outside the slots).
fn slot_label(labels: &[String], v: f64) -> String {
    if v.is_finite() && v >= 0.0 {
        labels.get(v.floor() as usize).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Shared layout: title, plot frame, legend, "no data"
// ---------------------------------------------------------------------------------------------------------

const CANVAS_W: u32 = 800;
const CANVAS_H: u32 = 500;
/// Height of the band holding the title.
const TITLE_BAND: u32 = 44;
/// Space around the plotting area inside its part of the canvas.
const MARGIN: u32 = 10;
/// Height of the label area under the plot: tick labels plus the axis description.
const X_AXIS_H: u32 = 56;
/// Tick mark length (tick labels sit twice this far from the axis).
const TICK_MARK: i32 = 5;
/// Series with at most this many finite points also get point markers.
const MARKER_MAX: usize = 40;

/// Fills the canvas white, draws the title centred on top (shrunk to fit, never cut) and returns the area
/// below the title.
fn draw_title<DB: DrawingBackend>(root: &Area<DB>, title: &str) -> Result<Area<DB>, PlotError> {
    root.fill(&WHITE).map_err(plot_error)?;
    let (w, _) = root.dim_in_pixel();
    let (band, body) = root.split_vertically(TITLE_BAND);
    let title = clean(title);
    let size = fitted_size(&title, TITLE_SIZE, f64::from(w) - 2.0 * f64::from(MARGIN));
    let at = (w as i32 / 2, TITLE_BAND as i32 / 2 + 2);
    band.draw(&Text::new(title.as_str(), at, anchored(size, HPos::Center, VPos::Center))).map_err(plot_error)?;
    Ok(body)
}

/// A chart with two numeric axes on `area`, leaving `left` pixels for the value labels and [`X_AXIS_H`] for
/// the category/x labels.
fn plane<DB: DrawingBackend>(area: &Area<DB>, x: Ticked, y: Ticked, left: u32) -> Result<Plane<'_, DB>, PlotError> {
    ChartBuilder::on(area)
        .margin(MARGIN)
        .margin_right(2 * MARGIN)
        .x_label_area_size(X_AXIS_H)
        .y_label_area_size(left)
        .build_cartesian_2d(x, y)
        .map_err(plot_error)
}

/// Grid lines (where wanted), axes, tick labels from the formatters and the axis descriptions.
fn draw_mesh<DB: DrawingBackend>(
    chart: &mut Plane<'_, DB>,
    x_fmt: &dyn Fn(&f64) -> String,
    y_fmt: &dyn Fn(&f64) -> String,
    (x_desc, y_desc): (&str, &str),
    (x_grid, y_grid): (bool, bool),
) -> Result<(), PlotError> {
    let mut mesh = chart.configure_mesh();
    mesh.set_all_tick_mark_size(TICK_MARK)
        .label_style(font(TICK_SIZE))
        .axis_desc_style(font(DESC_SIZE))
        .bold_line_style(GRID.stroke_width(1))
        .axis_style(AXIS.stroke_width(1))
        .x_label_formatter(x_fmt)
        .y_label_formatter(y_fmt);
    let (x_desc, y_desc) = (clean(x_desc), clean(y_desc));
    if !x_desc.trim().is_empty() {
        mesh.x_desc(x_desc);
    }
    if !y_desc.trim().is_empty() {
        mesh.y_desc(y_desc);
    }
    if !x_grid {
        mesh.disable_x_mesh();
    }
    if !y_grid {
        mesh.disable_y_mesh();
    }
    mesh.draw().map_err(plot_error)
}

/// A grey "no data" note in the middle of the plotting area.
fn no_data<DB: DrawingBackend>(chart: &Plane<'_, DB>) -> Result<(), PlotError> {
    let area = chart.plotting_area();
    let (x, y) = (area.get_x_range(), area.get_y_range());
    let centre = ((x.start + x.end) / 2.0, (y.start + y.end) / 2.0);
    let style = anchored(NOTE_SIZE, HPos::Center, VPos::Center).color(&MUTED);
    area.draw(&Text::new("no data", centre, style)).map_err(plot_error)
}

/// How a legend entry shows its colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Swatch {
    Line,
    Dot,
    Block,
}

/// Widest share of the canvas the legend column may take.
const LEGEND_MAX_SHARE: f64 = 0.4;
/// Legend column width besides the text: frame gap, swatch, gap to the text, right padding.
const LEGEND_PAD: f64 = 12.0 + 26.0 + 8.0 + 12.0;

/// A legend column right of the plot: the full entry names, the font size they all fit at, and the width.
#[derive(Debug, Clone)]
struct Legend {
    entries: Vec<(String, RGBColor)>,
    swatch: Swatch,
    size: f64,
    width: u32,
}

impl Legend {
    /// The legend for `names` coloured in palette order, or `None` for fewer than two entries.
    fn new<'a>(names: impl Iterator<Item = &'a str>, swatch: Swatch, canvas_w: u32) -> Option<Legend> {
        let entries: Vec<(String, RGBColor)> = names.enumerate().map(|(i, n)| (clean(n), palette(i))).collect();
        if entries.len() < 2 {
            return None;
        }
        let room = f64::from(canvas_w) * LEGEND_MAX_SHARE - LEGEND_PAD;
        let size = entries.iter().map(|(n, _)| fitted_size(n, LEGEND_SIZE, room)).fold(LEGEND_SIZE, f64::min);
        let text = entries.iter().map(|(n, _)| text_width(n, size)).fold(0.0, f64::max);
        let width = (text + LEGEND_PAD).ceil() as u32;
        Some(Legend { entries, swatch, size, width })
    }

    /// Draws the entries top-down in `area`, framed, as many as fit ("+N more" for the rest).
    fn draw<DB: DrawingBackend>(&self, area: &Area<DB>) -> Result<(), PlotError> {
        let (w, h) = area.dim_in_pixel();
        let row = (self.size * 1.5).ceil() as i32;
        let top = MARGIN as i32;
        let cap = ((h as i32 - 2 * top) / row).max(1) as usize;
        let shown = if self.entries.len() > cap { cap - 1 } else { self.entries.len() };
        let rows = shown + usize::from(shown < self.entries.len());
        let (x0, x1) = (4, w as i32 - 4);
        let frame = Rectangle::new([(x0, top), (x1, top + rows as i32 * row + 8)], FRAME.stroke_width(1));
        area.draw(&frame).map_err(plot_error)?;
        let text_x = x0 + 8 + 26 + 8;
        for (i, (name, color)) in self.entries.iter().take(shown).enumerate() {
            let y = top + 4 + i as i32 * row + row / 2;
            let (sx0, sx1) = (x0 + 8, x0 + 8 + 26);
            let drawn = match self.swatch {
                Swatch::Line => area.draw(&PathElement::new(vec![(sx0, y), (sx1, y)], color.stroke_width(3))),
                Swatch::Dot => area.draw(&Circle::new(((sx0 + sx1) / 2, y), 4, color.filled())),
                Swatch::Block => area.draw(&Rectangle::new([(sx0 + 6, y - 6), (sx1 - 6, y + 6)], color.filled())),
            };
            drawn.map_err(plot_error)?;
            let style = anchored(self.size, HPos::Left, VPos::Center);
            area.draw(&Text::new(name.as_str(), (text_x, y), style)).map_err(plot_error)?;
        }
        if shown < self.entries.len() {
            let y = top + 4 + shown as i32 * row + row / 2;
            let more = format!("+{} more", self.entries.len() - shown);
            let style = anchored(self.size, HPos::Left, VPos::Center).color(&MUTED);
            area.draw(&Text::new(more.as_str(), (text_x, y), style)).map_err(plot_error)?;
        }
        Ok(())
    }
}

/// Splits `body` into the plot area and, with a legend, the legend column on the right.
fn split_legend<DB: DrawingBackend>(body: &Area<DB>, legend: Option<&Legend>) -> (Area<DB>, Option<Area<DB>>) {
    match legend {
        Some(l) => {
            let (w, _) = body.dim_in_pixel();
            let (plot, side) = body.split_horizontally(w.saturating_sub(l.width));
            (plot, Some(side))
        }
        None => (body.clone(), None),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Line and scatter charts
// ---------------------------------------------------------------------------------------------------------

/// Series over two numeric axes, drawn as lines (`lines`) or as points only.
#[derive(Debug, Clone, Copy)]
struct Xy<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    series: &'a [Series],
    lines: bool,
}

impl LineChart {
    fn xy(&self) -> Xy<'_> {
        Xy { title: &self.title, x_label: &self.x_label, y_label: &self.y_label, series: &self.series, lines: true }
    }
}

impl ScatterChart {
    fn xy(&self) -> Xy<'_> {
        Xy { title: &self.title, x_label: &self.x_label, y_label: &self.y_label, series: &self.series, lines: false }
    }
}

/// Runs of consecutive finite points; a non-finite coordinate ends a run.
fn finite_runs(points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    let mut runs: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut current = Vec::new();
    for &(x, y) in points {
        if x.is_finite() && y.is_finite() {
            current.push((x, y));
        } else if !current.is_empty() {
            runs.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        runs.push(current);
    }
    runs
}

impl Draw for Xy<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &Area<DB>) -> Result<(), PlotError> {
        let body = draw_title(root, self.title)?;
        let swatch = if self.lines { Swatch::Line } else { Swatch::Dot };
        let legend = Legend::new(self.series.iter().map(|s| s.name.as_str()), swatch, CANVAS_W);
        let (area, side) = split_legend(&body, legend.as_ref());
        let points = || {
            self.series.iter().flat_map(|s| s.points.iter().copied()).filter(|(x, y)| x.is_finite() && y.is_finite())
        };
        let has_data = points().next().is_some();
        let (x, y) = (Axis::over(points().map(|p| p.0)), Axis::over(points().map(|p| p.1)));
        let mut chart = plane(&area, x.coord(), y.coord(), y.label_area_width())?;
        let (x_fmt, y_fmt) = (|v: &f64| x.label(*v), |v: &f64| y.label(*v));
        draw_mesh(&mut chart, &x_fmt, &y_fmt, (self.x_label, self.y_label), (true, true))?;
        for (i, s) in self.series.iter().enumerate() {
            self.draw_series(&mut chart, s, palette(i))?;
        }
        if let (Some(legend), Some(side)) = (&legend, &side) {
            legend.draw(side)?;
        }
        if !has_data {
            no_data(&chart)?;
        }
        Ok(())
    }
}

impl Xy<'_> {
    /// One series: a polyline per finite run, with markers when there are few points (line charts) or
    /// markers only (scatter charts). A lone finite point always gets a marker.
    fn draw_series<DB: DrawingBackend>(
        &self,
        chart: &mut Plane<'_, DB>,
        s: &Series,
        color: RGBColor,
    ) -> Result<(), PlotError> {
        let runs = finite_runs(&s.points);
        if self.lines {
            let paths =
                runs.iter().filter(|r| r.len() >= 2).map(|r| PathElement::new(r.clone(), color.stroke_width(2)));
            chart.draw_series(paths).map_err(plot_error)?;
        }
        let n: usize = runs.iter().map(Vec::len).sum();
        let all_markers = !self.lines || n <= MARKER_MAX;
        let radius = if self.lines { 3 } else { 4 };
        let markers = runs
            .iter()
            .filter(|r| all_markers || r.len() == 1)
            .flatten()
            .map(|&p| Circle::new(p, radius, color.filled()));
        chart.draw_series(markers).map_err(plot_error)?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------
// Grouped bar chart
// ---------------------------------------------------------------------------------------------------------

/// Share of a category slot covered by its bars (the rest separates the categories).
const BAR_SHARE: f64 = 0.8;

impl BarChart {
    /// Number of category slots: the labels or the longest group, whichever is more.
    fn slots(&self) -> usize {
        self.groups.iter().map(|g| g.values.len()).fold(self.labels.len(), usize::max)
    }

    /// The value axis and the value bars start from: `y_min` when finite, otherwise zero (always on the axis).
    fn value_axis(&self) -> (Axis, f64) {
        let range = extent(self.groups.iter().flat_map(|g| g.values.iter().copied()));
        let fixed = self.y_min.filter(|v| v.is_finite());
        let (lo, hi) = match (fixed, range) {
            (Some(m), Some((_, hi))) => (m, hi.max(m)),
            (Some(m), None) => (m, m),
            (None, Some((lo, hi))) => (lo.min(0.0), hi.max(0.0)),
            (None, None) => (0.0, 1.0),
        };
        let axis = Axis::new(lo, hi, fixed.is_some());
        let base = fixed.unwrap_or(0.0).clamp(axis.lo, axis.hi);
        (axis, base)
    }

    /// The bars, group by group, with each value printed above its bar where it fits.
    fn draw_bars<DB: DrawingBackend>(
        &self,
        chart: &mut Plane<'_, DB>,
        axis: &Axis,
        base: f64,
    ) -> Result<(), PlotError> {
        let n = self.slots();
        let bar = BAR_SHARE / self.groups.len().max(1) as f64;
        let gap = bar * 0.06;
        let (px, _) = chart.plotting_area().get_pixel_range();
        let bar_px = f64::from(px.end - px.start) / n.max(1) as f64 * (bar - 2.0 * gap);
        for (j, g) in self.groups.iter().enumerate() {
            let color = palette(j);
            let bars: Vec<(f64, f64)> = (0..n)
                .filter_map(|i| g.values.get(i).copied().filter(|v| v.is_finite()).map(|v| (i, v)))
                .map(|(i, v)| (i as f64 + (1.0 - BAR_SHARE) / 2.0 + j as f64 * bar, v))
                .collect();
            let rects = bars.iter().map(|&(x0, v)| {
                Rectangle::new([(x0 + gap, base), (x0 + bar - gap, v.clamp(axis.lo, axis.hi))], color.filled())
            });
            chart.draw_series(rects).map_err(plot_error)?;
            let labels: Vec<(String, f64, f64)> = bars
                .iter()
                .map(|&(x0, v)| (fmt_value(v), x0 + bar / 2.0, v))
                .filter(|(s, _, _)| text_width(s, VALUE_SIZE - 2.0) <= bar_px + 2.0)
                .collect();
            for (s, x, v) in &labels {
                let (dy, vpos) = if *v >= base { (-3, VPos::Bottom) } else { (3, VPos::Top) };
                let style = anchored(VALUE_SIZE - 2.0, HPos::Center, vpos).color(&AXIS);
                let label = EmptyElement::at((*x, v.clamp(axis.lo, axis.hi))) + Text::new(s.clone(), (0, dy), style);
                chart.plotting_area().draw(&label).map_err(plot_error)?;
            }
        }
        if base > axis.lo {
            // Bars grow both ways from the base: mark it.
            let line = PathElement::new(vec![(0.0, base), (n.max(1) as f64, base)], AXIS.stroke_width(1));
            chart.draw_series(std::iter::once(line)).map_err(plot_error)?;
        }
        Ok(())
    }
}

impl Draw for BarChart {
    fn draw<DB: DrawingBackend>(&self, root: &Area<DB>) -> Result<(), PlotError> {
        let body = draw_title(root, &self.title)?;
        let legend = Legend::new(self.groups.iter().map(|g| g.name.as_str()), Swatch::Block, CANVAS_W);
        let (area, side) = split_legend(&body, legend.as_ref());
        let n = self.slots();
        let (axis, base) = self.value_axis();
        let left = axis.label_area_width();
        let labels: Vec<String> = (0..n).map(|i| self.labels.get(i).map(|s| clean(s)).unwrap_or_default()).collect();
        let plot_w = f64::from(area.dim_in_pixel().0) - f64::from(left + 3 * MARGIN);
        let step = label_step(&labels, TICK_SIZE, plot_w / n.max(1) as f64);
        let mut chart = plane(&area, slot_coord(n, step), axis.coord(), left)?;
        let (x_fmt, y_fmt) = (|v: &f64| slot_label(&labels, *v), |v: &f64| axis.label(*v));
        draw_mesh(&mut chart, &x_fmt, &y_fmt, ("", &self.y_label), (false, true))?;
        self.draw_bars(&mut chart, &axis, base)?;
        if let (Some(legend), Some(side)) = (&legend, &side) {
            legend.draw(side)?;
        }
        if extent(self.groups.iter().flat_map(|g| g.values.iter().copied())).is_none() {
            no_data(&chart)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------
// Heat map
// ---------------------------------------------------------------------------------------------------------

/// Most rows or columns a heat map draws; beyond that, extra rows/columns are left out.
const HEAT_MAX_CELLS: usize = 400;
const HEAT_MAX_W: u32 = 1600;
const HEAT_MAX_H: u32 = 1200;
/// Width of the colour bar column right of the map.
const COLOUR_BAR_W: u32 = 110;
/// Smallest cell height the canvas grows for.
const HEAT_ROW_H: f64 = 26.0;

/// Rows and columns drawn, the row-name area width and the canvas size of a heat map.
#[derive(Debug, Clone, Copy, PartialEq)]
struct HeatLayout {
    rows: usize,
    cols: usize,
    left: u32,
    size: (u32, u32),
}

impl HeatMap {
    fn cell(&self, r: usize, col: usize) -> Option<f64> {
        self.values.get(r).and_then(|row| row.get(col)).copied()
    }

    /// The canvas grows beyond 800×500 (up to 1600×1200) so cells fit their values and column names.
    fn layout(&self) -> HeatLayout {
        let rows = self.rows.len().max(self.values.len()).min(HEAT_MAX_CELLS);
        let cols = self.values.iter().map(Vec::len).fold(self.cols.len(), usize::max).min(HEAT_MAX_CELLS);
        let row_w = self.rows.iter().take(rows).map(|s| text_width(&clean(s), TICK_SIZE)).fold(0.0, f64::max);
        let col_w = self.cols.iter().take(cols).map(|s| text_width(&clean(s), TICK_SIZE)).fold(0.0, f64::max);
        let value_w = (0..rows)
            .flat_map(|r| (0..cols).filter_map(move |c| self.cell(r, c)))
            .map(|v| text_width(&fmt_value(v), VALUE_SIZE))
            .fold(0.0, f64::max);
        let left = label_area_width(row_w);
        let cell_w = (col_w.max(value_w) + 12.0).clamp(30.0, 140.0);
        let frame_w = f64::from(left + COLOUR_BAR_W + 3 * MARGIN);
        let frame_h = f64::from(TITLE_BAND + X_AXIS_H + 2 * MARGIN);
        let w = (frame_w + cols as f64 * cell_w).ceil().clamp(f64::from(CANVAS_W), f64::from(HEAT_MAX_W));
        let h = (frame_h + rows as f64 * HEAT_ROW_H).ceil().clamp(f64::from(CANVAS_H), f64::from(HEAT_MAX_H));
        HeatLayout { rows, cols, left, size: (w as u32, h as u32) }
    }

    /// Min and max of the finite cells drawn.
    fn range(&self, l: &HeatLayout) -> Option<(f64, f64)> {
        extent((0..l.rows).flat_map(|r| (0..l.cols).filter_map(move |c| self.cell(r, c))))
    }

    /// The cells (row 0 on top), coloured by value or grey, each with its value where it fits.
    fn draw_cells<DB: DrawingBackend>(
        &self,
        chart: &mut Plane<'_, DB>,
        l: &HeatLayout,
        range: Option<(f64, f64)>,
    ) -> Result<(), PlotError> {
        let (px, py) = chart.plotting_area().get_pixel_range();
        let cell_w = f64::from(px.end - px.start) / l.cols.max(1) as f64;
        let cell_h = f64::from(py.end - py.start) / l.rows.max(1) as f64;
        let widest = (0..l.rows)
            .flat_map(|r| (0..l.cols).filter_map(move |c| self.cell(r, c)))
            .map(fmt_value)
            .max_by_key(|s| s.chars().count())
            .unwrap_or_default();
        let size = fitted_size(&widest, VALUE_SIZE, cell_w - 6.0);
        let show_values = text_width(&widest, size) <= cell_w - 6.0 && cell_h >= size;
        let mut cells = Vec::new();
        let mut texts: Vec<(String, (f64, f64), RGBColor)> = Vec::new();
        for r in 0..l.rows {
            for c in 0..l.cols {
                let raw = self.cell(r, c);
                let fill = match (raw.filter(|v| v.is_finite()), range) {
                    (Some(v), Some((lo, hi))) => heat_color(if hi > lo { (v - lo) / (hi - lo) } else { 0.5 }),
                    _ => MISSING,
                };
                let (x0, y0) = (c as f64, (l.rows - 1 - r) as f64);
                cells.push(Rectangle::new([(x0, y0), (x0 + 1.0, y0 + 1.0)], fill.filled()));
                if cell_w >= 6.0 && cell_h >= 6.0 {
                    cells.push(Rectangle::new([(x0, y0), (x0 + 1.0, y0 + 1.0)], WHITE.stroke_width(1)));
                }
                if let Some(v) = raw.filter(|_| show_values) {
                    let ink = if v.is_finite() { contrast_text(fill) } else { AXIS };
                    texts.push((fmt_value(v), (x0 + 0.5, y0 + 0.5), ink));
                }
            }
        }
        chart.draw_series(cells).map_err(plot_error)?;
        for (s, at, ink) in &texts {
            let style = anchored(size, HPos::Center, VPos::Center).color(ink);
            chart.plotting_area().draw(&Text::new(s.as_str(), *at, style)).map_err(plot_error)?;
        }
        Ok(())
    }
}

/// A vertical colour bar for `[lo, hi]` in `area`, level with the map's plotting area, ticks on its right.
fn draw_colour_bar<DB: DrawingBackend>(
    area: &Area<DB>,
    map: &Plane<'_, DB>,
    (lo, hi): (f64, f64),
) -> Result<(), PlotError> {
    let (_, py) = map.plotting_area().get_pixel_range();
    let (_, base_y) = area.get_base_pixel();
    let (_, h) = area.dim_in_pixel();
    let top = (py.start - base_y).max(0) as u32;
    let bottom = (h as i32 - (py.end - base_y)).max(0) as u32;
    let axis = Axis::new(lo, hi, false);
    let widest = axis.ticks.iter().map(|(_, s)| text_width(s, TICK_SIZE)).fold(0.0, f64::max);
    let mut bar = ChartBuilder::on(area)
        .margin_top(top)
        .margin_bottom(bottom)
        .margin_left(MARGIN)
        .margin_right(4)
        .set_label_area_size(LabelAreaPosition::Right, (widest + f64::from(2 * TICK_MARK) + 12.0).ceil() as u32)
        .build_cartesian_2d(Ticked { range: 0.0..1.0, ticks: Vec::new() }, axis.coord())
        .map_err(plot_error)?;
    const STEPS: usize = 64;
    let step = (axis.hi - axis.lo) / STEPS as f64;
    let strips = (0..STEPS).map(|k| {
        let y0 = axis.lo + k as f64 * step;
        let t = if hi > lo { (y0 + step / 2.0 - lo) / (hi - lo) } else { 0.5 };
        Rectangle::new([(0.0, y0), (1.0, y0 + step)], heat_color(t).filled())
    });
    bar.draw_series(strips).map_err(plot_error)?;
    bar.configure_mesh()
        .set_all_tick_mark_size(TICK_MARK)
        .disable_mesh()
        .disable_x_axis()
        .label_style(font(TICK_SIZE))
        .axis_style(AXIS.stroke_width(1))
        .y_label_formatter(&|v: &f64| axis.label(*v))
        .draw()
        .map_err(plot_error)
}

impl Draw for HeatMap {
    fn size(&self) -> (u32, u32) {
        self.layout().size
    }

    fn draw<DB: DrawingBackend>(&self, root: &Area<DB>) -> Result<(), PlotError> {
        let l = self.layout();
        let body = draw_title(root, &self.title)?;
        let (w, h) = body.dim_in_pixel();
        let (grid, side) = body.split_horizontally(w.saturating_sub(COLOUR_BAR_W));
        let names = |v: &[String], n: usize| (0..n).map(|i| v.get(i).map(|s| clean(s)).unwrap_or_default()).collect();
        let (rows, cols): (Vec<String>, Vec<String>) = (names(&self.rows, l.rows), names(&self.cols, l.cols));
        let plot_w = f64::from(w.saturating_sub(l.left + COLOUR_BAR_W + 3 * MARGIN));
        let plot_h = f64::from(h.saturating_sub(X_AXIS_H + 2 * MARGIN));
        let col_step = label_step(&cols, TICK_SIZE, plot_w / l.cols.max(1) as f64);
        let row_step = ((TICK_SIZE * 1.1) / (plot_h / l.rows.max(1) as f64)).ceil().max(1.0) as usize;
        // Rows run top-down: row r spans y in [rows - 1 - r, rows - r].
        let ticks = (0..l.rows).step_by(row_step).map(|r| (l.rows - 1 - r) as f64 + 0.5).collect();
        let y = Ticked { range: 0.0..l.rows.max(1) as f64, ticks };
        let mut chart = plane(&grid, slot_coord(l.cols, col_step), y, l.left)?;
        let x_fmt = |v: &f64| slot_label(&cols, *v);
        let y_fmt = |v: &f64| slot_label(&rows, l.rows as f64 - *v);
        draw_mesh(&mut chart, &x_fmt, &y_fmt, (&self.col_label, &self.row_label), (false, false))?;
        let range = self.range(&l);
        self.draw_cells(&mut chart, &l, range)?;
        match range {
            Some(range) => draw_colour_bar(&side, &chart, range),
            None => no_data(&chart),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

    fn series(name: &str, points: &[(f64, f64)]) -> Series {
        Series { name: name.to_string(), points: points.to_vec() }
    }

    fn line_chart(title: &str, series: Vec<Series>) -> LineChart {
        LineChart { title: title.to_string(), x_label: "step".into(), y_label: "loss".into(), series }
    }

    fn loss_chart() -> LineChart {
        let train: Vec<(f64, f64)> = (0..200).map(|i| (f64::from(i), 2.0 / (1.0 + f64::from(i) / 20.0))).collect();
        let val: Vec<(f64, f64)> = (0..20).map(|i| (f64::from(i) * 10.0, 2.2 / (1.0 + f64::from(i) / 2.0))).collect();
        line_chart("Training loss", vec![series("train", &train), series("validation", &val)])
    }

    fn scatter_chart() -> ScatterChart {
        let ring = |r: f64, k: usize| -> Vec<(f64, f64)> {
            (0..k).map(|i| (i as f64 * 0.7).sin_cos()).map(|(s, c)| (r * c, r * s - 0.5 * r)).collect()
        };
        ScatterChart {
            title: "Modality space, 2 principal components (Figure 5)".into(),
            x_label: "component 1".into(),
            y_label: "component 2".into(),
            series: vec![
                series("text", &ring(1.0, 30)),
                series("image", &ring(2.0, 30)),
                series("graph", &ring(3.0, 9)),
            ],
        }
    }

    fn bar_chart(groups: Vec<BarGroup>, y_min: Option<f64>) -> BarChart {
        let labels = (1..=10).map(|d| format!("D{d}")).collect();
        BarChart { title: "AUC by popularity decile".into(), y_label: "AUC".into(), labels, groups, y_min }
    }

    fn group(name: &str, values: &[f64]) -> BarGroup {
        BarGroup { name: name.to_string(), values: values.to_vec() }
    }

    fn heat_map(values: Vec<Vec<f64>>) -> HeatMap {
        HeatMap {
            title: "Modality attention".into(),
            row_label: "category".into(),
            col_label: "modality".into(),
            rows: vec!["books".into(), "music".into(), "video".into()],
            cols: vec!["text".into(), "image".into(), "graph".into()],
            values,
        }
    }

    /// Decodes a PNG into (width, height, rgb bytes).
    fn decode(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().expect("png header");
        let mut buf = vec![0; reader.output_buffer_size().expect("buffer size")];
        let info = reader.next_frame(&mut buf).expect("png frame");
        assert_eq!(info.color_type, png::ColorType::Rgb);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    const CANVAS: (u32, u32) = (CANVAS_W, CANVAS_H);

    /// Renders the PNG, checks its signature and that it decodes to `size`; returns the bytes.
    fn png_ok(chart: &dyn Chart, size: (u32, u32)) -> Vec<u8> {
        let bytes = chart.png().expect("png renders");
        assert_eq!(bytes[..8], PNG_SIGNATURE);
        let (w, h, rgb) = decode(&bytes);
        assert_eq!((w, h), size);
        assert_eq!(rgb.len(), (w * h * 3) as usize);
        bytes
    }

    fn assert_well_formed(svg: &str) {
        assert!(svg.starts_with("<svg"), "svg start: {}", &svg[..svg.len().min(40)]);
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<svg").count(), 1);
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        for bad in ["NaN", "inf", "plot error"] {
            assert!(!svg.contains(bad), "svg contains {bad}");
        }
        assert!(!svg.chars().any(|c| c.is_control() && c != '\n'), "control character in svg");
    }

    /// The value of attribute `name` in one SVG tag.
    fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        tag[start..].split('"').next()
    }

    /// Every `<text>` element as (its opening tag, its trimmed content).
    fn texts(svg: &str) -> Vec<(String, String)> {
        svg.split("<text")
            .skip(1)
            .filter_map(|chunk| {
                let (tag, rest) = chunk.split_once('>')?;
                let content = rest.split("</text>").next()?;
                Some((format!(" {tag}"), content.trim().to_string()))
            })
            .collect()
    }

    fn has_text(svg: &str, content: &str) -> bool {
        texts(svg).iter().any(|(_, c)| c == content)
    }

    #[derive(Debug, Clone, PartialEq)]
    struct SvgRect {
        x: i32,
        y: i32,
        w: i32,
        h: i32,
        fill: String,
    }

    /// Every `<rect>` element.
    fn rects(svg: &str) -> Vec<SvgRect> {
        let num = |tag: &str, name: &str| attr(tag, name).and_then(|v| v.parse().ok()).expect("rect attribute");
        svg.split("<rect")
            .skip(1)
            .map(|chunk| {
                let tag = format!(" {}", chunk.split('>').next().unwrap_or_default());
                let fill = attr(&tag, "fill").unwrap_or_default().to_string();
                SvgRect { x: num(&tag, "x"), y: num(&tag, "y"), w: num(&tag, "width"), h: num(&tag, "height"), fill }
            })
            .collect()
    }

    fn hex(c: RGBColor) -> String {
        format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
    }

    /// How many polylines (series lines, legend swatches) are stroked in `color`.
    fn polylines(svg: &str, color: RGBColor) -> usize {
        let stroke = format!("stroke=\"{}\"", hex(color));
        svg.lines().filter(|l| l.starts_with("<polyline") && l.contains(&stroke)).count()
    }

    #[test]
    fn png_signature_and_size() {
        assert_eq!(decode(&png_ok(&loss_chart(), CANVAS)).0, CANVAS_W);
        let (w, h, _) = decode(&png_ok(&scatter_chart(), CANVAS));
        assert_eq!((w, h), (CANVAS_W, CANVAS_H));
        let (w, h, _) = decode(&png_ok(&bar_chart(vec![group("g", &[0.5, 0.7])], None), CANVAS));
        assert_eq!((w, h), (CANVAS_W, CANVAS_H));
        let heat = heat_map(vec![vec![0.1, 0.2, 0.7], vec![0.3, 0.3, 0.4], vec![0.5, 0.25, 0.25]]);
        let (w, h, _) = decode(&png_ok(&heat, heat.size()));
        assert_eq!((w, h), (CANVAS_W, CANVAS_H));
        let wide = HeatMap { cols: (0..40).map(|i| format!("modality {i}")).collect(), ..heat };
        let (w, h, _) = decode(&png_ok(&wide, wide.size()));
        assert!(w > CANVAS_W && w <= HEAT_MAX_W && h == CANVAS_H, "{w}x{h}");
    }

    #[test]
    fn rendering_is_deterministic() {
        let heat = heat_map(vec![vec![0.1, 0.2, 0.7], vec![0.3, f64::NAN, 0.4]]);
        let bars = bar_chart(vec![group("a", &[0.6, 0.7]), group("b", &[0.65, 0.8])], Some(0.5));
        let line = loss_chart();
        let scatter = scatter_chart();
        let charts: [&dyn Chart; 4] = [&line, &scatter, &bars, &heat];
        for chart in charts {
            let svg = chart.svg();
            assert_well_formed(&svg);
            assert_eq!(svg, chart.svg());
            assert_eq!(chart.png().expect("png"), chart.png().expect("png"));
        }
        assert_eq!(line.png().expect("png"), line.clone().png().expect("png"));
        // Different data gives a different picture (the comparison above can fail).
        let mut other = line.clone();
        other.series[0].points[100].1 = 5.0;
        assert_ne!(line.png().expect("png"), other.png().expect("png"));
        assert_ne!(line.svg(), other.svg());
    }

    #[test]
    fn full_title_and_legend_names_in_svg() {
        let title = "marn_full_attention_variant@v12 training losses (Figure 6a), CTR, total, adversarial and \
                     discriminator losses per training sample";
        let names = [
            "CTR loss",
            "total loss",
            "adversarial loss (L_ADV)",
            "D0 loss",
            "share of |rep| from c (invariant)",
            "mean w (image embedding of items)",
        ];
        let s: Vec<Series> = names
            .iter()
            .enumerate()
            .map(|(i, n)| series(n, &[(0.0, i as f64), (1.0, i as f64 + 0.5), (2.0, i as f64 * 0.9)]))
            .collect();
        let svg = line_chart(title, s).svg();
        assert_well_formed(&svg);
        let all = texts(&svg);
        let (tag, _) = all.iter().find(|(_, c)| c == title).expect("full title");
        // The long title is shrunk (SVG font-size = size / 1.24), and fits the canvas at that size.
        let size: f64 = attr(tag, "font-size").and_then(|v| v.parse().ok()).expect("font-size");
        assert!(size < TITLE_SIZE / 1.24, "title size {size}");
        assert!(text_width(title, size * 1.24) <= f64::from(CANVAS_W) - 2.0 * f64::from(MARGIN));
        for name in names {
            assert!(all.iter().any(|(_, c)| c == name), "legend entry {name}");
        }
        let bars = bar_chart(vec![group("marn@v3 (adversarial)", &[0.7]), group("dupn@v1 baseline", &[0.6])], None);
        let svg = bars.svg();
        assert!(has_text(&svg, "marn@v3 (adversarial)") && has_text(&svg, "dupn@v1 baseline"));
        assert!(has_text(&svg, "AUC by popularity decile") && has_text(&svg, "AUC"));
        let svg = scatter_chart().svg();
        for text in ["Modality space, 2 principal components (Figure 5)", "text", "image", "graph", "component 2"] {
            assert!(has_text(&svg, text), "{text}");
        }
    }

    #[test]
    fn single_series_has_no_legend() {
        let chart = line_chart("one", vec![series("only-line", &[(0.0, 1.0), (1.0, 2.0)])]);
        let svg = chart.svg();
        assert!(!svg.contains("only-line"));
        assert_eq!(polylines(&svg, palette(0)), 1);
        let two = line_chart("two", vec![series("a-line", &[(0.0, 1.0)]), series("b-line", &[(1.0, 2.0)])]).svg();
        assert!(has_text(&two, "a-line") && has_text(&two, "b-line"));
    }

    #[test]
    fn non_finite_point_breaks_the_line() {
        let pts = [(0.0, 1.0), (1.0, 2.0), (2.0, f64::NAN), (3.0, 1.5), (4.0, 1.0), (f64::INFINITY, 3.0), (6.0, 2.0)];
        let runs: Vec<usize> = finite_runs(&pts).iter().map(Vec::len).collect();
        assert_eq!(runs, vec![2, 2, 1]);
        let svg = line_chart("gap", vec![series("s", &pts)]).svg();
        assert_well_formed(&svg);
        // Two polylines (the lone last point has no line), and a marker on each of the 5 finite points.
        assert_eq!(polylines(&svg, palette(0)), 2);
        assert_eq!(svg.matches("<circle").count(), 5);
    }

    #[test]
    fn bars_one_per_finite_value_and_labels_stay() {
        let a = group("model A", &[0.61, 0.65, f64::NAN, 0.7, 0.72, 0.74, 0.75, 0.8, 0.83, 0.87]);
        let b = group("model B", &[0.6, f64::INFINITY, f64::NAN, 0.68, 0.7, 0.73, 0.77, 0.79, 0.8, 0.86]);
        let c = group("model C", &[0.55, 0.6]);
        let svg = bar_chart(vec![a, b, c], Some(0.5)).svg();
        assert_well_formed(&svg);
        let all = rects(&svg);
        // Each group's bars plus its legend swatch.
        for (i, want) in [9, 8, 2].into_iter().enumerate() {
            assert_eq!(all.iter().filter(|r| r.fill == hex(palette(i))).count(), want + 1, "group {i}");
        }
        for label in ["D1", "D3", "D10", "model C", "0.5"] {
            assert!(has_text(&svg, label), "{label}");
        }
    }

    #[test]
    fn bars_start_at_y_min_or_zero() {
        let svg = bar_chart(vec![group("g", &[-3.0, 2.0, 7.0])], None).svg();
        let bars: Vec<SvgRect> = rects(&svg).into_iter().filter(|r| r.fill == hex(palette(0))).collect();
        assert_eq!(bars.len(), 3);
        // The negative bar hangs from the zero line, where the positive bars stand.
        assert_eq!(bars[0].y, bars[1].y + bars[1].h);
        assert_eq!(bars[1].y + bars[1].h, bars[2].y + bars[2].h);
        let lowest = Axis::new(-3.0, 7.0, false).ticks[0].1.clone();
        assert!(lowest.starts_with('-') && has_text(&svg, &lowest), "negative range on the axis: {lowest}");
        assert!(has_text(&svg, "0"), "zero on the axis");
        let svg = bar_chart(vec![group("g", &[0.6, 0.9])], Some(0.5)).svg();
        let bars: Vec<SvgRect> = rects(&svg).into_iter().filter(|r| r.fill == hex(palette(0))).collect();
        assert_eq!(bars.len(), 2);
        assert!(bars[1].h > 3 * bars[0].h, "bars grow from 0.5: {bars:?}");
        assert!(has_text(&svg, "0.5") && !has_text(&svg, "0"), "the axis starts at y_min");
    }

    #[test]
    fn heat_map_colours_follow_values_and_values_are_printed() {
        let values = vec![vec![0.10, 0.20, 0.70], vec![0.30, 0.95, 0.40], vec![0.50, 0.25, 0.05]];
        let chart = heat_map(values.clone());
        let svg = chart.svg();
        assert_well_formed(&svg);
        let (w, _) = chart.size();
        let cells: Vec<SvgRect> =
            rects(&svg).into_iter().filter(|r| r.w > 20 && r.h > 20 && r.w < w as i32 && r.fill != "none").collect();
        assert_eq!(cells.len(), 9, "{cells:?}");
        let (pw, _, rgb) = decode(&chart.png().expect("png"));
        let pixel = |x: i32, y: i32| {
            let i = ((y as usize) * pw as usize + x as usize) * 3;
            RGBColor(rgb[i], rgb[i + 1], rgb[i + 2])
        };
        let flat: Vec<f64> = values.iter().flatten().copied().collect();
        for (cell, v) in cells.iter().zip(&flat) {
            // PNG and SVG share the geometry: the cell's corner (away from the value text) has its colour.
            assert_eq!(hex(pixel(cell.x + 4, cell.y + 4)), cell.fill, "cell {v}");
        }
        let lum: Vec<f64> = cells.iter().map(|c| luminance(pixel(c.x + 4, c.y + 4))).collect();
        for i in 0..flat.len() {
            for j in 0..flat.len() {
                if flat[i] < flat[j] {
                    assert!(lum[i] > lum[j], "cell {i} ({}) vs {j} ({})", flat[i], flat[j]);
                }
            }
        }
        // Each value printed; white on the dark max cell, dark on the light min cell.
        for v in &flat {
            assert!(has_text(&svg, &fmt_value(*v)), "value {v}");
        }
        let all = texts(&svg);
        let fill_of = |content: &str| {
            all.iter().find(|(_, c)| c == content).and_then(|(t, _)| attr(t, "fill")).map(str::to_string)
        };
        assert_eq!(fill_of("0.95"), Some(hex(WHITE)));
        assert_eq!(fill_of("0.05"), Some(hex(INK)));
        for label in ["books", "video", "text", "graph", "category", "modality", "Modality attention"] {
            assert!(has_text(&svg, label), "{label}");
        }
    }

    #[test]
    fn heat_map_value_text_is_visible_in_png() {
        let chart = heat_map(vec![vec![0.0, 0.987]]);
        let svg = chart.svg();
        let dark = rects(&svg).into_iter().find(|r| r.fill == hex(heat_color(1.0))).expect("dark cell");
        let (w, _, rgb) = decode(&chart.png().expect("png"));
        let mut white = 0;
        for y in dark.y + 3..dark.y + dark.h - 3 {
            for x in dark.x + 3..dark.x + dark.w - 3 {
                let i = (y as usize * w as usize + x as usize) * 3;
                if rgb[i..i + 3].iter().all(|c| *c > 200) {
                    white += 1;
                }
            }
        }
        assert!(white > 20, "value text drawn in white on the dark cell ({white} px)");
    }

    #[test]
    fn heat_map_missing_cells_are_grey() {
        let chart = heat_map(vec![vec![1.0, f64::NAN, 3.0], vec![2.0]]);
        let svg = chart.svg();
        assert_well_formed(&svg);
        // Row 0 has one NaN, row 1 two missing cells, row 2 (no values) three.
        assert_eq!(rects(&svg).iter().filter(|r| r.fill == hex(MISSING)).count(), 6);
        assert!(has_text(&svg, "-"), "the NaN cell says so");
        assert!(!has_text(&svg, "no data"));
    }

    #[test]
    fn png_text_is_rendered() {
        let chart = loss_chart();
        let (w, _, rgb) = decode(&chart.png().expect("png"));
        let dark_in = |x0: u32, x1: u32, y0: u32, y1: u32| {
            let mut n = 0;
            for y in y0..y1 {
                for x in x0..x1 {
                    let i = (y * w + x) as usize * 3;
                    if rgb[i..i + 3].iter().all(|c| *c < 120) {
                        n += 1;
                    }
                }
            }
            n
        };
        assert!(dark_in(0, w, 0, TITLE_BAND) > 150, "title pixels");
        let legend = Legend::new(["train", "validation"].into_iter(), Swatch::Line, CANVAS_W).expect("legend");
        assert!(dark_in(w - legend.width, w, TITLE_BAND, TITLE_BAND + 80) > 100, "legend pixels");
    }

    #[test]
    fn empty_charts_say_no_data() {
        let empty_heat = HeatMap {
            title: String::new(),
            row_label: String::new(),
            col_label: String::new(),
            rows: vec![],
            cols: vec![],
            values: vec![],
        };
        let charts: Vec<Box<dyn Chart>> = vec![
            Box::new(line_chart("", vec![])),
            Box::new(line_chart("nan", vec![series("nan", &[(f64::NAN, 1.0)])])),
            Box::new(ScatterChart { series: vec![], ..scatter_chart() }),
            Box::new(bar_chart(vec![], None)),
            Box::new(bar_chart(vec![group("nan", &[f64::NAN; 10])], Some(f64::NAN))),
            Box::new(heat_map(vec![])),
            Box::new(heat_map(vec![vec![f64::NAN; 3]; 3])),
            Box::new(empty_heat),
        ];
        for chart in &charts {
            let svg = chart.svg();
            assert_well_formed(&svg);
            assert!(has_text(&svg, "no data"), "{svg}");
            assert_eq!(chart.png().expect("png")[..8], PNG_SIGNATURE);
        }
        assert!(has_text(&charts[4].svg(), "D10"), "labels stay without data");
        assert!(!has_text(&loss_chart().svg(), "no data"));
        assert!(!has_text(&bar_chart(vec![group("g", &[0.5])], None).svg(), "no data"));
    }

    #[test]
    fn bad_inputs_do_not_panic() {
        let weird = [
            vec![],
            vec![series("empty", &[])],
            vec![series("nan", &[(f64::NAN, f64::NAN), (f64::INFINITY, f64::NEG_INFINITY)])],
            vec![series("single", &[(3.0, 4.0)])],
            vec![series("flat", &[(1.0, 5.0), (2.0, 5.0), (3.0, 5.0)])],
            vec![series("vertical", &[(1.0, 5.0), (1.0, 6.0)])],
            vec![series("huge", &[(-1e308, 1e308), (1e308, -1e308), (f64::MAX, f64::MIN)])],
            vec![series("tiny", &[(0.0, 1e-310), (1e-310, 0.0)])],
            vec![series("close", &[(1.0, 1.0), (1.0 + 1e-15, 1.0 + 2e-16)])],
        ];
        for s in weird {
            let chart = line_chart("weird\u{0}\u{1F600}\n<x>", s);
            assert_well_formed(&chart.svg());
            png_ok(&chart, CANVAS);
            let scatter = ScatterChart { series: chart.series.clone(), ..scatter_chart() };
            assert_well_formed(&scatter.svg());
            png_ok(&scatter, CANVAS);
        }
        let bar_cases = [
            bar_chart(vec![], None),
            bar_chart(vec![group("nan", &[f64::NAN; 10])], Some(f64::NAN)),
            bar_chart(vec![group("inf", &[f64::INFINITY, f64::NEG_INFINITY])], Some(f64::INFINITY)),
            bar_chart(vec![group("huge", &[1e308, -1e308])], None),
            bar_chart(vec![group("zeros", &[0.0; 10])], None),
            bar_chart(vec![group("above", &[0.1, 0.2])], Some(0.9)),
            bar_chart(vec![group("below", &[0.2, 0.9, -0.4])], Some(0.5)),
            bar_chart(vec![group("many", &vec![1.0; 5000])], None),
            BarChart { title: String::new(), y_label: String::new(), labels: vec![], groups: vec![], y_min: None },
        ];
        for chart in &bar_cases {
            assert_well_formed(&chart.svg());
            png_ok(chart, CANVAS);
        }
        let heat_cases = [
            heat_map(vec![vec![1.0], vec![], vec![2.0, f64::INFINITY, 3.0, 4.0]]),
            heat_map(vec![vec![7.0; 3]; 3]),
            heat_map(vec![vec![1e308, -1e308, f64::MIN_POSITIVE]]),
            heat_map(vec![vec![0.5; 600]; 3]),
            HeatMap { rows: (0..900).map(|i| format!("r{i}")).collect(), ..heat_map(vec![]) },
            HeatMap {
                rows: vec!["a very long category name (planted profile: image-heavy)".into()],
                ..heat_map(vec![])
            },
        ];
        for chart in &heat_cases {
            assert_well_formed(&chart.svg());
            let (w, h) = chart.size();
            assert!((CANVAS_W..=HEAT_MAX_W).contains(&w) && (CANVAS_H..=HEAT_MAX_H).contains(&h), "{w}x{h}");
            png_ok(chart, (w, h));
        }
    }

    #[test]
    fn svg_text_is_escaped_and_cleaned() {
        let mut chart = loss_chart();
        chart.title = "Loss <&> \"q\" 'a'\u{0}\tend".into();
        let svg = chart.svg();
        assert_well_formed(&svg);
        assert!(has_text(&svg, "Loss &lt;&amp;&gt; &quot;q&quot; &apos;a&apos;? end"), "{svg}");
        assert!(!svg.contains("<&>"));
        assert_eq!(clean("a\u{7}b\nc\u{FFFF}µ→"), "a?b c?µ→");
    }

    #[test]
    fn fitted_size_shrinks_long_text_only() {
        assert_eq!(fitted_size("short", TITLE_SIZE, 700.0), TITLE_SIZE);
        let long = "a rather long title ".repeat(6);
        let size = fitted_size(&long, TITLE_SIZE, 700.0);
        assert!((MIN_TEXT_SIZE..TITLE_SIZE).contains(&size), "{size}");
        assert!(text_width(&long, size) <= 700.0);
        assert!(text_width(&long, size + 0.5) > 700.0 || size == TITLE_SIZE, "largest size that fits");
        let huge = "x".repeat(2000);
        assert_eq!(fitted_size(&huge, TITLE_SIZE, 700.0), MIN_TEXT_SIZE);
    }

    fn assert_close(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?} vs {want:?}");
        }
    }

    fn assert_sensible(lo: f64, hi: f64) -> Vec<f64> {
        let (ticks, _) = nice_ticks(lo, hi);
        assert!((4..=7).contains(&ticks.len()), "{lo}..{hi}: {ticks:?}");
        let first = ticks[0];
        let last = ticks[ticks.len() - 1];
        assert!(first <= lo && last >= hi, "{lo}..{hi}: {ticks:?}");
        let step = ticks[1] - ticks[0];
        for pair in ticks.windows(2) {
            assert!(((pair[1] - pair[0]) - step).abs() < step * 1e-9, "{ticks:?}");
        }
        let mantissa = step / 10f64.powf(step.log10().floor());
        assert!([1.0, 2.0, 5.0, 10.0].iter().any(|m| (mantissa - m).abs() < 1e-9), "step {step}");
        // The data covers a good part of the axis.
        assert!((hi - lo) / (last - first) > 0.4, "{lo}..{hi}: {ticks:?}");
        ticks
    }

    #[test]
    fn nice_ticks_for_common_ranges() {
        assert_close(&nice_ticks(0.0, 1.0).0, &[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_close(&nice_ticks(0.0, 100.0).0, &[0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        assert_close(&assert_sensible(0.61, 0.87), &[0.6, 0.7, 0.8, 0.9]);
        assert_sensible(-3.0, 7.0);
        assert_sensible(0.23, 2.41);
        assert_sensible(1e-6, 9e-6);
        assert_sensible(12345.0, 98765.0);
        assert_sensible(-1e300, 1e300);
        let (flat, _) = nice_ticks(5.0, 5.0);
        assert!(flat.len() >= 2 && flat[0] < 5.0 && flat[flat.len() - 1] > 5.0, "{flat:?}");
        let (bad, _) = nice_ticks(f64::NAN, f64::INFINITY);
        assert_close(&bad, &[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
    }

    #[test]
    fn tick_labels_are_compact() {
        assert_eq!(
            Axis::new(0.0, 1.0, false).ticks.iter().map(|t| t.1.as_str()).collect::<Vec<_>>(),
            ["0", "0.2", "0.4", "0.6", "0.8", "1"]
        );
        let big = Axis::new(0.0, 2e7, false);
        assert!(big.ticks.iter().all(|(_, s)| s.len() <= 6), "{:?}", big.ticks);
        assert!(big.ticks.iter().any(|(_, s)| s == "1e7"), "{:?}", big.ticks);
        let small = Axis::new(0.0, 3e-6, false);
        assert!(small.ticks.iter().any(|(_, s)| s == "1e-6"), "{:?}", small.ticks);
        let neg = Axis::new(-0.5, 0.5, false);
        assert!(neg.ticks.iter().all(|(_, s)| s != "-0"), "{:?}", neg.ticks);
        let fixed = Axis::new(0.55, 0.87, true);
        assert_eq!(fixed.lo, 0.55);
        assert!(fixed.ticks.iter().all(|(v, _)| *v >= 0.55));
        assert_eq!(fixed.label(0.6), "0.6");
        assert_eq!(fmt_value(0.71234), "0.712");
        assert_eq!(fmt_value(12.345), "12.3");
        assert_eq!(fmt_value(0.5), "0.5");
        assert_eq!(fmt_value(f64::NAN), "-");
        assert_eq!(fmt_value(4.2e-5), "4.2e-5");
    }

    /// Writes one sample of each chart kind to /tmp/plots (PNG and SVG) for a visual check:
    /// `cargo test --release -p marnflow-engine --lib plot::tests::write_samples -- --ignored`.
    #[test]
    #[ignore]
    fn write_samples() {
        let dir = std::path::Path::new("/tmp/plots");
        std::fs::create_dir_all(dir).expect("mkdir");
        let curve = |f: &dyn Fn(f64) -> f64| -> Vec<(f64, f64)> {
            (0..120).map(|i| f64::from(i) * 5000.0).map(|x| (x, f(x / 1e5))).collect()
        };
        let mut adv = curve(&|t| 0.69 - 0.1 * (-t).exp());
        adv[40].1 = f64::NAN;
        let loss = LineChart {
            title: "marn_full@v7 training losses (Figure 6a)".into(),
            x_label: "training samples".into(),
            y_label: "loss".into(),
            series: vec![
                series("CTR loss", &curve(&|t| 0.45 + 0.2 * (-t).exp())),
                series("total loss", &curve(&|t| 1.1 + 0.4 * (-t).exp())),
                series("adversarial loss (L_ADV)", &adv),
                series("D0 loss", &curve(&|t| 0.3 + 0.3 * (-2.0 * t).exp())),
                series("Ds loss", &curve(&|t| 0.2 + 0.1 * (t * 3.0).sin().abs())),
            ],
        };
        let deciles = BarChart {
            title: "AUC per item-popularity decile, 2024-03-01..2024-03-07 (Table 4)".into(),
            y_label: "AUC".into(),
            labels: (1..=10).map(|d| d.to_string()).collect(),
            groups: ["marn_full", "marn_no_adversarial", "dupn", "wide_and_deep"]
                .iter()
                .enumerate()
                .map(|(g, name)| BarGroup {
                    name: name.to_string(),
                    values: (0..10).map(|d| 0.6 + 0.02 * f64::from(d) + 0.015 * g as f64).collect(),
                })
                .collect(),
            y_min: Some(0.5),
        };
        let attention = HeatMap {
            title: "MAF attention l2-norm per category (Figure 4)".into(),
            row_label: "category (planted profile)".into(),
            col_label: "modality".into(),
            rows: (0..8).map(|i| format!("cat_{i} ({})", ["text-heavy", "image-heavy", "graph"][i % 3])).collect(),
            cols: vec!["id".into(), "text".into(), "image".into(), "graph".into()],
            values: (0..8)
                .map(|r| {
                    (0..4)
                        .map(|c| if (r, c) == (5, 2) { f64::NAN } else { ((r * 7 + c * 3) % 11) as f64 / 10.0 })
                        .collect()
                })
                .collect(),
        };
        let charts: [(&str, &dyn Chart); 4] =
            [("loss", &loss), ("modality_space", &scatter_chart()), ("deciles", &deciles), ("attention", &attention)];
        for (name, chart) in charts {
            std::fs::write(dir.join(format!("{name}.png")), chart.png().expect("png")).expect("write png");
            std::fs::write(dir.join(format!("{name}.svg")), chart.svg()).expect("write svg");
        }
    }
}
