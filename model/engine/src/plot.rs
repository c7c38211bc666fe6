//! Report plots of `marnflow evaluate --report`, rendered without a plotting crate.
//!
//! Three chart kinds are supported: [`LineChart`] (e.g. training loss per step), grouped [`BarChart`]
//! (e.g. AUC per popularity decile per model) and [`HeatMap`] (e.g. modality attention per category).
//! Every chart implements [`Chart`], which renders it either as a standalone SVG document (text) or as
//! PNG bytes.
//!
//! Design: one primitive list, two renderers. A chart is laid out once into a short list of drawing
//! primitives (filled rectangles, stroked lines and paths, text) on a fixed-size canvas. The SVG writer turns
//! that list into markup; a small software rasterizer paints the same list into an RGB buffer (anti-aliased
//! thick lines, rectangle fills, an embedded 5×7 bitmap font with descenders, scaled by an integer factor)
//! which is then encoded with the `png` crate. Output is deterministic: the same input always gives identical
//! bytes.
//!
//! Bad data never panics: points with a non-finite coordinate are skipped (breaking their line), bars and
//! cells with non-finite values are left out (their labels stay), and a chart without any data still shows
//! its axes and a "no data" note.

use std::fmt::{self, Write as _};

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

/// An error while rendering a chart (only PNG encoding can fail).
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
        self.build().to_svg()
    }
    fn png(&self) -> Result<Vec<u8>, PlotError> {
        self.build().to_png()
    }
}

impl Chart for ScatterChart {
    fn svg(&self) -> String {
        xy_canvas(&self.title, &self.x_label, &self.y_label, &self.series, false).to_svg()
    }
    fn png(&self) -> Result<Vec<u8>, PlotError> {
        xy_canvas(&self.title, &self.x_label, &self.y_label, &self.series, false).to_png()
    }
}

impl Chart for BarChart {
    fn svg(&self) -> String {
        self.build().to_svg()
    }
    fn png(&self) -> Result<Vec<u8>, PlotError> {
        self.build().to_png()
    }
}

impl Chart for HeatMap {
    fn svg(&self) -> String {
        self.build().to_svg()
    }
    fn png(&self) -> Result<Vec<u8>, PlotError> {
        self.build().to_png()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Colours, primitives, canvas
// ---------------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rgb(u8, u8, u8);

impl Rgb {
    fn hex(self) -> String {
        format!("#{:02x}{:02x}{:02x}", self.0, self.1, self.2)
    }
    fn luminance(self) -> f64 {
        0.299 * f64::from(self.0) + 0.587 * f64::from(self.1) + 0.114 * f64::from(self.2)
    }
}

const WHITE: Rgb = Rgb(255, 255, 255);
const INK: Rgb = Rgb(34, 34, 34);
const AXIS: Rgb = Rgb(68, 68, 68);
const GRID: Rgb = Rgb(225, 225, 225);
const MUTED: Rgb = Rgb(150, 150, 150);
const MISSING: Rgb = Rgb(215, 215, 215);

/// Categorical palette (cycled): blue, orange, green, red, purple, brown, pink, grey, olive, cyan.
const PALETTE: [Rgb; 10] = [
    Rgb(31, 119, 180),
    Rgb(255, 127, 14),
    Rgb(44, 160, 44),
    Rgb(214, 39, 40),
    Rgb(148, 103, 189),
    Rgb(140, 86, 75),
    Rgb(227, 119, 194),
    Rgb(127, 127, 127),
    Rgb(188, 189, 34),
    Rgb(23, 190, 207),
];

fn palette(i: usize) -> Rgb {
    PALETTE[i % PALETTE.len()]
}

/// Sequential scale for heat maps: white (t = 0) through mid blue to dark blue (t = 1).
fn heat_color(t: f64) -> Rgb {
    const STOPS: [(f64, Rgb); 3] = [(0.0, WHITE), (0.5, Rgb(107, 174, 214)), (1.0, Rgb(8, 48, 107))];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let (lo, hi) = if t <= STOPS[1].0 { (STOPS[0], STOPS[1]) } else { (STOPS[1], STOPS[2]) };
    let f = (t - lo.0) / (hi.0 - lo.0);
    let mix = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * f).round().clamp(0.0, 255.0) as u8;
    Rgb(mix(lo.1 .0, hi.1 .0), mix(lo.1 .1, hi.1 .1), mix(lo.1 .2, hi.1 .2))
}

/// Dark text on light fills, white text on dark fills.
fn contrast_text(fill: Rgb) -> Rgb {
    if fill.luminance() > 150.0 {
        INK
    } else {
        WHITE
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Anchor {
    Start,
    Middle,
    End,
}

/// A text primitive; `(x, y)` is the anchor point on the baseline. Vertical text reads bottom to top.
#[derive(Debug, Clone, PartialEq)]
struct Text {
    x: f64,
    y: f64,
    text: String,
    scale: u32,
    anchor: Anchor,
    color: Rgb,
    vertical: bool,
}

impl Text {
    fn new(x: f64, y: f64, text: &str, anchor: Anchor) -> Self {
        Text { x, y, text: text.to_string(), scale: 1, anchor, color: INK, vertical: false }
    }
    fn scale(mut self, scale: u32) -> Self {
        self.scale = scale;
        self
    }
    fn color(mut self, color: Rgb) -> Self {
        self.color = color;
        self
    }
    fn vertical(mut self) -> Self {
        self.vertical = true;
        self
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Prim {
    /// Filled axis-aligned rectangle (non-negative size).
    Rect { x: f64, y: f64, w: f64, h: f64, fill: Rgb, class: Option<&'static str> },
    /// Straight line segment.
    Line { x1: f64, y1: f64, x2: f64, y2: f64, width: f64, color: Rgb },
    /// One or more polylines sharing a style (a data series broken at missing points).
    Path { segments: Vec<Vec<(f64, f64)>>, width: f64, color: Rgb, class: Option<&'static str> },
    /// Bitmap-font text.
    Text(Text),
}

/// A fixed-size drawing surface holding primitives in painting order; only finite geometry is accepted.
#[derive(Debug, Clone, PartialEq)]
struct Canvas {
    width: u32,
    height: u32,
    prims: Vec<Prim>,
}

impl Canvas {
    fn new(width: u32, height: u32) -> Self {
        Canvas { width, height, prims: Vec::new() }
    }

    fn w(&self) -> f64 {
        f64::from(self.width)
    }

    fn h(&self) -> f64 {
        f64::from(self.height)
    }

    fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: Rgb, class: Option<&'static str>) {
        let (x, w) = if w < 0.0 { (x + w, -w) } else { (x, w) };
        let (y, h) = if h < 0.0 { (y + h, -h) } else { (y, h) };
        if [x, y, w, h].iter().all(|v| v.is_finite()) {
            self.prims.push(Prim::Rect { x, y, w, h, fill, class });
        }
    }

    fn line(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), width: f64, color: Rgb) {
        if [x1, y1, x2, y2, width].iter().all(|v| v.is_finite()) {
            self.prims.push(Prim::Line { x1, y1, x2, y2, width, color });
        }
    }

    fn path(&mut self, segments: Vec<Vec<(f64, f64)>>, width: f64, color: Rgb, class: Option<&'static str>) {
        let segments: Vec<Vec<(f64, f64)>> = segments
            .into_iter()
            .map(|s| s.into_iter().filter(|(x, y)| x.is_finite() && y.is_finite()).collect::<Vec<_>>())
            .filter(|s| !s.is_empty())
            .collect();
        if !segments.is_empty() && width.is_finite() {
            self.prims.push(Prim::Path { segments, width, color, class });
        }
    }

    fn text(&mut self, t: Text) {
        if t.x.is_finite() && t.y.is_finite() && !t.text.is_empty() {
            self.prims.push(Prim::Text(t));
        }
    }

    fn no_data(&mut self, x: f64, y: f64) {
        self.text(Text::new(x, y, "no data", Anchor::Middle).scale(2).color(MUTED));
    }
}

// ---------------------------------------------------------------------------------------------------------
// Text helpers
// ---------------------------------------------------------------------------------------------------------

/// Glyph advance: 5 pixels plus one column of spacing, times the scale (glyphs are 7 px tall plus a descender).
const GLYPH_ADVANCE: f64 = 6.0;

fn text_width(chars: usize, scale: u32) -> f64 {
    if chars == 0 {
        0.0
    } else {
        (chars as f64 * GLYPH_ADVANCE - 1.0) * f64::from(scale.max(1))
    }
}

/// How many glyphs fit in `px` pixels at scale 1.
fn chars_fitting(px: f64) -> usize {
    if px.is_finite() && px > 0.0 {
        ((px + 1.0) / GLYPH_ADVANCE).floor() as usize
    } else {
        0
    }
}

/// Truncates `s` to at most `max` characters, marking the cut with "..".
fn fit(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        s.to_string()
    } else if max <= 2 {
        s.chars().take(max).collect()
    } else {
        let mut out: String = s.chars().take(max - 2).collect();
        out.push_str("..");
        out
    }
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

    /// Position of `v` along the axis, 0 at `lo` and 1 at `hi`.
    fn frac(&self, v: f64) -> f64 {
        let d = self.hi - self.lo;
        if d > 0.0 && d.is_finite() {
            (v - self.lo) / d
        } else {
            0.5
        }
    }

    fn label_chars(&self) -> usize {
        self.ticks.iter().map(|(_, s)| s.chars().count()).max().unwrap_or(1)
    }
}

/// Snaps a coordinate to a pixel centre so 1-px lines stay crisp.
fn crisp(v: f64) -> f64 {
    v.floor() + 0.5
}

/// The plotting rectangle inside a canvas.
#[derive(Debug, Clone, Copy)]
struct Plot {
    l: f64,
    t: f64,
    r: f64,
    b: f64,
}

impl Plot {
    fn px(&self, a: &Axis, v: f64) -> f64 {
        self.l + a.frac(v).clamp(-0.05, 1.05) * (self.r - self.l)
    }
    fn py(&self, a: &Axis, v: f64) -> f64 {
        self.b - a.frac(v).clamp(-0.05, 1.05) * (self.b - self.t)
    }
}

const CANVAS_W: u32 = 800;
const CANVAS_H: u32 = 500;
const TITLE_BASELINE: f64 = 30.0;
const LEGEND_CHARS: usize = 22;
const LEGEND_ROW: f64 = 16.0;
/// Series with at most this many finite points also get point markers.
const MARKER_MAX: usize = 40;

fn draw_title(c: &mut Canvas, title: &str) {
    let max = chars_fitting((c.w() - 20.0) / 2.0);
    c.text(Text::new(c.w() / 2.0, TITLE_BASELINE, &fit(title, max), Anchor::Middle).scale(2));
}

/// Left margin that fits the vertical axis label and the y tick labels.
fn left_margin(y: &Axis) -> f64 {
    34.0 + text_width(y.label_chars(), 1) + 10.0
}

fn legend_width(entries: &[(String, Rgb)]) -> f64 {
    let chars = entries.iter().map(|(n, _)| n.chars().count().min(LEGEND_CHARS)).max();
    match chars {
        Some(n) => 34.0 + text_width(n, 1),
        None => 0.0,
    }
}

/// Grid, axis lines, ticks and labels. `x` is `None` for categorical x axes (bar charts).
fn draw_axes(c: &mut Canvas, p: &Plot, x: Option<&Axis>, y: &Axis, x_label: &str, y_label: &str) {
    for (v, _) in &y.ticks {
        let yy = crisp(p.py(y, *v));
        c.line((p.l, yy), (p.r, yy), 1.0, GRID);
    }
    if let Some(x) = x {
        for (v, _) in &x.ticks {
            let xx = crisp(p.px(x, *v));
            c.line((xx, p.t), (xx, p.b), 1.0, GRID);
        }
    }
    let (l, b) = (crisp(p.l), crisp(p.b));
    c.line((l, p.t), (l, b), 1.0, AXIS);
    c.line((l, b), (p.r, b), 1.0, AXIS);
    for (v, s) in &y.ticks {
        let yy = crisp(p.py(y, *v));
        c.line((l - 5.0, yy), (l, yy), 1.0, AXIS);
        c.text(Text::new(p.l - 8.0, yy + 4.0, s, Anchor::End));
    }
    if let Some(x) = x {
        for (v, s) in &x.ticks {
            let xx = crisp(p.px(x, *v));
            c.line((xx, b), (xx, b + 5.0), 1.0, AXIS);
            c.text(Text::new(xx, p.b + 18.0, s, Anchor::Middle));
        }
    }
    let x_max = chars_fitting(p.r - p.l);
    c.text(Text::new((p.l + p.r) / 2.0, p.b + 44.0, &fit(x_label, x_max), Anchor::Middle));
    let y_max = chars_fitting(p.b - p.t);
    c.text(Text::new(18.0, (p.t + p.b) / 2.0, &fit(y_label, y_max), Anchor::Middle).vertical());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Swatch {
    Line,
    Block,
}

/// Legend entries stacked from `(x, top)`, as many as fit above `bottom` ("+N more" for the rest).
fn draw_legend(c: &mut Canvas, x: f64, top: f64, bottom: f64, entries: &[(String, Rgb)], swatch: Swatch) {
    let cap = ((bottom - top) / LEGEND_ROW).floor().max(1.0) as usize;
    let shown = if entries.len() > cap { cap.saturating_sub(1) } else { entries.len() };
    for (i, (name, color)) in entries.iter().take(shown).enumerate() {
        let y = top + 8.0 + i as f64 * LEGEND_ROW;
        match swatch {
            Swatch::Line => c.line((x, y), (x + 18.0, y), 2.0, *color),
            Swatch::Block => c.rect(x + 4.0, y - 5.0, 10.0, 10.0, *color, Some("swatch")),
        }
        c.text(Text::new(x + 24.0, y + 4.0, &fit(name, LEGEND_CHARS), Anchor::Start));
    }
    if shown < entries.len() {
        let y = top + 8.0 + shown as f64 * LEGEND_ROW;
        c.text(Text::new(x + 24.0, y + 4.0, &format!("+{} more", entries.len() - shown), Anchor::Start));
    }
}

/// Min and max of the finite values, if any.
fn extent(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.filter(|v| v.is_finite()).fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

// ---------------------------------------------------------------------------------------------------------
// Chart layouts
// ---------------------------------------------------------------------------------------------------------

impl LineChart {
    fn build(&self) -> Canvas {
        xy_canvas(&self.title, &self.x_label, &self.y_label, &self.series, true)
    }
}

/// Lays out series over two axes: lines (with markers when there are few points) or, without
/// lines, markers only.
fn xy_canvas(title: &str, x_label: &str, y_label: &str, series: &[Series], lines: bool) -> Canvas {
    let mut c = Canvas::new(CANVAS_W, CANVAS_H);
    let finite = || series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let xr = extent(finite().map(|p| p.0));
    let yr = extent(finite().map(|p| p.1));
    let has_data = xr.is_some();
    let (x_lo, x_hi) = xr.unwrap_or((0.0, 1.0));
    let (y_lo, y_hi) = yr.unwrap_or((0.0, 1.0));
    let x_axis = Axis::new(x_lo, x_hi, false);
    let y_axis = Axis::new(y_lo, y_hi, false);
    let entries: Vec<(String, Rgb)> = if series.len() > 1 {
        series.iter().enumerate().map(|(i, s)| (s.name.clone(), palette(i))).collect()
    } else {
        Vec::new()
    };
    let legend_w = legend_width(&entries);
    let p = Plot { l: left_margin(&y_axis), t: 50.0, r: c.w() - 24.0 - legend_w, b: c.h() - 60.0 };
    draw_title(&mut c, title);
    draw_axes(&mut c, &p, Some(&x_axis), &y_axis, x_label, y_label);
    for (i, s) in series.iter().enumerate() {
        let color = palette(i);
        let mut segments: Vec<Vec<(f64, f64)>> = Vec::new();
        let mut current: Vec<(f64, f64)> = Vec::new();
        for &(x, y) in &s.points {
            if x.is_finite() && y.is_finite() {
                current.push((p.px(&x_axis, x), p.py(&y_axis, y)));
            } else if !current.is_empty() {
                segments.push(std::mem::take(&mut current));
            }
        }
        if !current.is_empty() {
            segments.push(current);
        }
        let n_points: usize = segments.iter().map(Vec::len).sum();
        if !lines {
            for (x, y) in segments.into_iter().flatten() {
                c.rect(x - 1.5, y - 1.5, 3.0, 3.0, color, Some("marker"));
            }
            continue;
        }
        let markers: Vec<(f64, f64)> =
            if n_points <= MARKER_MAX { segments.iter().flatten().copied().collect() } else { Vec::new() };
        c.path(segments, 2.0, color, Some("series"));
        for (x, y) in markers {
            c.rect(x - 2.5, y - 2.5, 5.0, 5.0, color, Some("marker"));
        }
    }
    draw_legend(&mut c, p.r + 14.0, p.t, p.b, &entries, if lines { Swatch::Line } else { Swatch::Block });
    if !has_data {
        c.no_data((p.l + p.r) / 2.0, (p.t + p.b) / 2.0);
    }
    c
}

impl BarChart {
    fn build(&self) -> Canvas {
        let mut c = Canvas::new(CANVAS_W, CANVAS_H);
        let n = self.groups.iter().map(|g| g.values.len()).fold(self.labels.len(), usize::max);
        let vr = extent(self.groups.iter().flat_map(|g| g.values.iter().copied()));
        let fixed = self.y_min.filter(|v| v.is_finite());
        let (lo, hi) = match (fixed, vr) {
            (Some(m), Some((_, hi))) => (m, hi.max(m)),
            (Some(m), None) => (m, m),
            (None, Some((lo, hi))) => (lo.min(0.0), hi.max(0.0)),
            (None, None) => (0.0, 1.0),
        };
        let axis = Axis::new(lo, hi, fixed.is_some());
        let base = fixed.unwrap_or(0.0).clamp(axis.lo, axis.hi);
        let entries: Vec<(String, Rgb)> = if self.groups.len() > 1 {
            self.groups.iter().enumerate().map(|(i, g)| (g.name.clone(), palette(i))).collect()
        } else {
            Vec::new()
        };
        let legend_w = legend_width(&entries);
        let p = Plot { l: left_margin(&axis), t: 50.0, r: c.w() - 24.0 - legend_w, b: c.h() - 60.0 };
        draw_title(&mut c, &self.title);
        draw_axes(&mut c, &p, None, &axis, "", &self.y_label);
        if n > 0 {
            let slot = (p.r - p.l) / n as f64;
            let groups = self.groups.len().max(1) as f64;
            let bar = slot * 0.8 / groups;
            let gap = (bar * 0.1).min(2.0);
            let y_base = p.py(&axis, base);
            for i in 0..n {
                let x0 = p.l + i as f64 * slot + slot * 0.1;
                for (j, g) in self.groups.iter().enumerate() {
                    let Some(&v) = g.values.get(i) else { continue };
                    if !v.is_finite() {
                        continue;
                    }
                    let y_top = p.py(&axis, v.clamp(axis.lo, axis.hi));
                    let x = x0 + j as f64 * bar + gap / 2.0;
                    let w = bar - gap;
                    c.rect(x, y_top, w, y_base - y_top, palette(j), Some("bar"));
                    let label = fmt_value(v);
                    if text_width(label.chars().count(), 1) <= w + 2.0 {
                        let y = if v >= base { y_top - 4.0 } else { y_top + 12.0 };
                        c.text(Text::new(x + w / 2.0, y, &label, Anchor::Middle).color(AXIS));
                    }
                }
                if let Some(label) = self.labels.get(i) {
                    let max = chars_fitting(slot - 2.0);
                    c.text(Text::new(p.l + (i as f64 + 0.5) * slot, p.b + 18.0, &fit(label, max), Anchor::Middle));
                }
            }
        }
        draw_legend(&mut c, p.r + 14.0, p.t, p.b, &entries, Swatch::Block);
        if vr.is_none() {
            c.no_data((p.l + p.r) / 2.0, (p.t + p.b) / 2.0);
        }
        c
    }
}

/// Most rows or columns a heat map draws; beyond that, extra rows/columns are left out.
const HEAT_MAX_CELLS: usize = 400;

impl HeatMap {
    fn cell(&self, r: usize, col: usize) -> Option<f64> {
        self.values.get(r).and_then(|row| row.get(col)).copied()
    }

    fn build(&self) -> Canvas {
        let nr = self.rows.len().max(self.values.len()).min(HEAT_MAX_CELLS);
        let nc = self.values.iter().map(Vec::len).fold(self.cols.len(), usize::max).min(HEAT_MAX_CELLS);
        let range = extent((0..nr).flat_map(|r| (0..nc).filter_map(move |col| self.cell(r, col))));
        let value_chars = (0..nr)
            .flat_map(|r| (0..nc).map(move |col| (r, col)))
            .map(|(r, col)| self.cell(r, col).map_or(0, |v| fmt_value(v).chars().count()))
            .max()
            .unwrap_or(0);
        let col_chars = self.cols.iter().take(nc).map(|s| s.chars().count().min(14)).max().unwrap_or(0);
        let row_chars = self.rows.iter().take(nr).map(|s| s.chars().count().min(24)).max().unwrap_or(0);

        let (left, top, bottom, right) = (34.0 + text_width(row_chars, 1) + 10.0, 56.0, 64.0, 110.0);
        let (min_w, max_w, min_h, max_h) = (480.0, 1600.0, 240.0, 1200.0);
        let pref_w = (text_width(value_chars.max(col_chars), 1) + 12.0).clamp(36.0, 110.0);
        let cell_w = if nc > 0 { pref_w.min((max_w - left - right) / nc as f64) } else { pref_w };
        let cell_h = if nr > 0 { 26.0f64.min((max_h - top - bottom) / nr as f64) } else { 26.0 };
        let grid_w = nc as f64 * cell_w;
        let grid_h = nr as f64 * cell_h;
        let width = (left + grid_w + right).clamp(min_w, max_w).ceil();
        let height = (top + grid_h.max(150.0) + bottom).clamp(min_h, max_h).ceil();
        let mut c = Canvas::new(width as u32, height as u32);
        draw_title(&mut c, &self.title);

        // Centre the content when the minimum canvas width leaves slack.
        let (gl, gt) = (left + ((c.w() - (left + grid_w + right)) / 2.0).max(0.0).floor(), top);
        let gap = if cell_w >= 6.0 && cell_h >= 6.0 { 1.0 } else { 0.0 };
        for r in 0..nr {
            for col in 0..nc {
                let x = gl + col as f64 * cell_w;
                let y = gt + r as f64 * cell_h;
                let value = self.cell(r, col).filter(|v| v.is_finite());
                let fill = match (value, range) {
                    (Some(v), Some((lo, hi))) => heat_color(if hi > lo { (v - lo) / (hi - lo) } else { 0.5 }),
                    _ => MISSING,
                };
                c.rect(x, y, cell_w - gap, cell_h - gap, fill, Some("cell"));
                let Some(raw) = self.cell(r, col) else { continue };
                let label = fmt_value(raw);
                if text_width(label.chars().count(), 1) <= cell_w - 4.0 && cell_h >= 11.0 {
                    let color = if value.is_some() { contrast_text(fill) } else { AXIS };
                    c.text(
                        Text::new(x + (cell_w - gap) / 2.0, y + (cell_h - gap) / 2.0 + 3.5, &label, Anchor::Middle)
                            .color(color),
                    );
                }
            }
        }
        if cell_h >= 8.0 {
            for (r, name) in self.rows.iter().take(nr).enumerate() {
                let y = gt + (r as f64 + 0.5) * cell_h + 3.5;
                c.text(Text::new(gl - 8.0, y, &fit(name, 24), Anchor::End));
            }
        }
        let col_max = chars_fitting(cell_w - 2.0);
        if col_max > 0 {
            for (col, name) in self.cols.iter().take(nc).enumerate() {
                let x = gl + (col as f64 + 0.5) * cell_w;
                c.text(Text::new(x, gt + grid_h + 16.0, &fit(name, col_max), Anchor::Middle));
            }
        }
        let label_w = chars_fitting(c.w() - 20.0);
        c.text(Text::new(gl + grid_w / 2.0, gt + grid_h + 42.0, &fit(&self.col_label, label_w), Anchor::Middle));
        let label_h = chars_fitting(grid_h.max(150.0));
        c.text(
            Text::new(18.0, gt + grid_h.max(150.0) / 2.0, &fit(&self.row_label, label_h), Anchor::Middle).vertical(),
        );

        match range {
            Some((lo, hi)) => {
                // Colour bar: dark (max) at the top, white (min) at the bottom.
                const STEPS: usize = 48;
                let bx = gl + grid_w + 20.0;
                let bar_h = grid_h.max(150.0);
                let step_h = bar_h / STEPS as f64;
                for k in 0..STEPS {
                    let t = 1.0 - (k as f64 + 0.5) / STEPS as f64;
                    c.rect(bx, gt + k as f64 * step_h, 16.0, step_h + 0.5, heat_color(t), Some("scale"));
                }
                c.text(Text::new(bx + 22.0, gt + 7.0, &fmt_value(hi), Anchor::Start));
                c.text(Text::new(bx + 22.0, gt + bar_h, &fmt_value(lo), Anchor::Start));
            }
            None => {
                let cx = if nc > 0 { gl + grid_w / 2.0 } else { c.w() / 2.0 };
                c.no_data(cx, gt + grid_h.max(150.0) / 2.0);
            }
        }
        c
    }
}

// ---------------------------------------------------------------------------------------------------------
// SVG writer
// ---------------------------------------------------------------------------------------------------------

/// Coordinates with at most two decimals, no trailing zeros.
fn num(v: f64) -> String {
    tidy_decimal(format!("{:.2}", v))
}

/// Escapes text for XML content and attributes; characters XML cannot hold become '?'.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(' '),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

fn class_attr(class: Option<&'static str>) -> String {
    class.map(|c| format!(" class=\"{c}\"")).unwrap_or_default()
}

impl Canvas {
    fn to_svg(&self) -> String {
        let (w, h) = (self.width, self.height);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
             font-family=\"monospace\">"
        );
        let _ = writeln!(s, "<rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"#ffffff\"/>");
        for prim in &self.prims {
            match prim {
                Prim::Rect { x, y, w, h, fill, class } => {
                    let _ = writeln!(
                        s,
                        "<rect{} x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\"/>",
                        class_attr(*class),
                        num(*x),
                        num(*y),
                        num(*w),
                        num(*h),
                        fill.hex()
                    );
                }
                Prim::Line { x1, y1, x2, y2, width, color } => {
                    let _ = writeln!(
                        s,
                        "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"{}\"/>",
                        num(*x1),
                        num(*y1),
                        num(*x2),
                        num(*y2),
                        color.hex(),
                        num(*width)
                    );
                }
                Prim::Path { segments, width, color, class } => {
                    let mut d = String::new();
                    for seg in segments {
                        for (i, (x, y)) in seg.iter().enumerate() {
                            let cmd = if i == 0 { "M" } else { "L" };
                            let _ = write!(d, "{}{} {} ", cmd, num(*x), num(*y));
                        }
                        if let [(x, y)] = seg.as_slice() {
                            // A lone point: a zero-length segment, drawn as a dot by the round caps.
                            let _ = write!(d, "L{} {} ", num(*x), num(*y));
                        }
                    }
                    let _ = writeln!(
                        s,
                        "<path{} d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"{}\" \
                         stroke-linejoin=\"round\" stroke-linecap=\"round\"/>",
                        class_attr(*class),
                        d.trim_end(),
                        color.hex(),
                        num(*width)
                    );
                }
                Prim::Text(t) => {
                    let anchor = match t.anchor {
                        Anchor::Start => "start",
                        Anchor::Middle => "middle",
                        Anchor::End => "end",
                    };
                    let (x, y) = (num(t.x), num(t.y));
                    let rotate = if t.vertical { format!(" transform=\"rotate(-90 {x} {y})\"") } else { String::new() };
                    let _ = writeln!(
                        s,
                        "<text x=\"{x}\" y=\"{y}\" font-size=\"{}\" text-anchor=\"{anchor}\" \
                         fill=\"{}\"{rotate}>{}</text>",
                        10 * t.scale.max(1),
                        t.color.hex(),
                        escape(&t.text)
                    );
                }
            }
        }
        s.push_str("</svg>");
        s
    }
}

// ---------------------------------------------------------------------------------------------------------
// Rasterizer and PNG encoding
// ---------------------------------------------------------------------------------------------------------

/// An RGB pixel buffer, row-major, 3 bytes per pixel.
#[derive(Debug)]
struct Raster {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Raster {
    fn new(w: u32, h: u32) -> Self {
        let (w, h) = (w as usize, h as usize);
        Raster { w, h, px: vec![255; w * h * 3] }
    }

    fn index(&self, x: i64, y: i64) -> Option<usize> {
        if x < 0 || y < 0 {
            return None;
        }
        let (x, y) = (x as usize, y as usize);
        (x < self.w && y < self.h).then(|| (y * self.w + x) * 3)
    }

    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if let Some(i) = self.index(x, y) {
            if let Some(p) = self.px.get_mut(i..i + 3) {
                p.copy_from_slice(&[c.0, c.1, c.2]);
            }
        }
    }

    fn blend(&mut self, x: i64, y: i64, c: Rgb, a: f32) {
        if a >= 1.0 {
            return self.set(x, y, c);
        }
        if a <= 0.0 {
            return;
        }
        if let Some(i) = self.index(x, y) {
            if let Some(p) = self.px.get_mut(i..i + 3) {
                for (dst, src) in p.iter_mut().zip([c.0, c.1, c.2]) {
                    let v = f32::from(*dst) * (1.0 - a) + f32::from(src) * a;
                    *dst = v.round().clamp(0.0, 255.0) as u8;
                }
            }
        }
    }

    /// Clamped pixel range `[floor(lo), ceil(hi))` along an axis of length `len`.
    fn span(lo: f64, hi: f64, len: usize) -> (i64, i64) {
        let len = len as f64;
        (lo.floor().clamp(0.0, len) as i64, hi.ceil().clamp(0.0, len) as i64)
    }

    fn fill_rect(&mut self, x: f64, y: f64, w: f64, h: f64, c: Rgb) {
        let len_x = self.w as f64;
        let len_y = self.h as f64;
        let x0 = x.round().clamp(0.0, len_x) as i64;
        let x1 = (x + w).round().clamp(0.0, len_x) as i64;
        let y0 = y.round().clamp(0.0, len_y) as i64;
        let y1 = (y + h).round().clamp(0.0, len_y) as i64;
        for yy in y0..y1 {
            for xx in x0..x1 {
                self.set(xx, yy, c);
            }
        }
    }

    /// Strokes polylines with round joins/caps; coverage is the max over segments, so joints are not
    /// painted twice.
    fn stroke(&mut self, segments: &[Vec<(f64, f64)>], width: f64, c: Rgb) {
        let half = width.max(0.5) / 2.0;
        let pad = half + 1.0;
        let pts = || segments.iter().flatten();
        let (Some((x_lo, x_hi)), Some((y_lo, y_hi))) = (extent(pts().map(|p| p.0)), extent(pts().map(|p| p.1))) else {
            return;
        };
        let (bx0, bx1) = Self::span(x_lo - pad, x_hi + pad, self.w);
        let (by0, by1) = Self::span(y_lo - pad, y_hi + pad, self.h);
        if bx0 >= bx1 || by0 >= by1 {
            return;
        }
        let bw = (bx1 - bx0) as usize;
        let mut cov = vec![0f32; bw * (by1 - by0) as usize];
        let mut cover = |a: (f64, f64), b: (f64, f64)| {
            let (sx0, sx1) = Self::span(a.0.min(b.0) - pad, a.0.max(b.0) + pad, self.w);
            let (sy0, sy1) = Self::span(a.1.min(b.1) - pad, a.1.max(b.1) + pad, self.h);
            let (dx, dy) = (b.0 - a.0, b.1 - a.1);
            let len2 = dx * dx + dy * dy;
            for y in sy0.max(by0)..sy1.min(by1) {
                for x in sx0.max(bx0)..sx1.min(bx1) {
                    let (cx, cy) = (x as f64 + 0.5, y as f64 + 0.5);
                    let t = if len2 > 0.0 { (((cx - a.0) * dx + (cy - a.1) * dy) / len2).clamp(0.0, 1.0) } else { 0.0 };
                    let (qx, qy) = (a.0 + t * dx - cx, a.1 + t * dy - cy);
                    let d = (qx * qx + qy * qy).sqrt();
                    let alpha = (half + 0.5 - d).clamp(0.0, 1.0) as f32;
                    let i = (y - by0) as usize * bw + (x - bx0) as usize;
                    if let Some(slot) = cov.get_mut(i) {
                        *slot = slot.max(alpha);
                    }
                }
            }
        };
        for seg in segments {
            match seg.as_slice() {
                [p] => cover(*p, *p),
                pts => {
                    for pair in pts.windows(2) {
                        if let [a, b] = pair {
                            cover(*a, *b);
                        }
                    }
                }
            }
        }
        for (k, a) in cov.iter().enumerate() {
            let x = bx0 + (k % bw) as i64;
            let y = by0 + (k / bw) as i64;
            self.blend(x, y, c, *a);
        }
    }

    fn text(&mut self, t: &Text) {
        let s = i64::from(t.scale.clamp(1, 8));
        let chars: Vec<char> = t.text.chars().collect();
        let width = text_width(chars.len(), t.scale.clamp(1, 8));
        let offset = match t.anchor {
            Anchor::Start => 0.0,
            Anchor::Middle => -width / 2.0,
            Anchor::End => -width,
        };
        let (ox, oy) = (t.x.round() as i64, t.y.round() as i64);
        let offset = offset.round() as i64;
        for (i, ch) in chars.iter().enumerate() {
            let g = glyph(*ch);
            let gx = offset + i as i64 * 6 * s;
            for (row, bits) in (0i64..).zip(g.iter()) {
                for col in 0..5i64 {
                    if bits & (0x10 >> col) == 0 {
                        continue;
                    }
                    for dy in 0..s {
                        for dx in 0..s {
                            let lx = gx + col * s + dx;
                            let ly = (row - 7) * s + dy;
                            let (x, y) = if t.vertical { (ox + ly, oy - lx) } else { (ox + lx, oy + ly) };
                            self.set(x, y, t.color);
                        }
                    }
                }
            }
        }
    }
}

impl Canvas {
    fn rasterize(&self) -> Raster {
        let mut r = Raster::new(self.width, self.height);
        for prim in &self.prims {
            match prim {
                Prim::Rect { x, y, w, h, fill, .. } => r.fill_rect(*x, *y, *w, *h, *fill),
                Prim::Line { x1, y1, x2, y2, width, color } => {
                    r.stroke(&[vec![(*x1, *y1), (*x2, *y2)]], *width, *color)
                }
                Prim::Path { segments, width, color, .. } => r.stroke(segments, *width, *color),
                Prim::Text(t) => r.text(t),
            }
        }
        r
    }

    fn to_png(&self) -> Result<Vec<u8>, PlotError> {
        if self.width == 0 || self.height == 0 {
            return Err(PlotError(format!("empty canvas {}x{}", self.width, self.height)));
        }
        let raster = self.rasterize();
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, self.width, self.height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(|e| PlotError(format!("png header: {e}")))?;
        writer.write_image_data(&raster.px).map_err(|e| PlotError(format!("png data: {e}")))?;
        writer.finish().map_err(|e| PlotError(format!("png finish: {e}")))?;
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------------------
// 5×7 bitmap font (plus a descender row)
// ---------------------------------------------------------------------------------------------------------

/// The glyph of a printable ASCII character; anything else is drawn as '?'.
fn glyph(ch: char) -> [u8; 8] {
    let code = ch as u32;
    let index = if (32..=126).contains(&code) { code - 32 } else { u32::from(b'?') - 32 };
    FONT.get(index as usize).copied().unwrap_or([0; 8])
}

/// Printable ASCII 32..=126; each glyph is 8 rows top to bottom, 5 bits per row (0x10 = leftmost pixel).
/// Rows 0..7 stand on the baseline; row 7 is the descender row below it (g, j, p, q, y).
const FONT: [[u8; 8]; 95] = [
    [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00], // ' '
    [0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04, 0x00], // '!'
    [0x0A, 0x0A, 0x0A, 0x00, 0x00, 0x00, 0x00, 0x00], // '"'
    [0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A, 0x00], // '#'
    [0x04, 0x0F, 0x14, 0x0E, 0x05, 0x1E, 0x04, 0x00], // '$'
    [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03, 0x00], // '%'
    [0x0C, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0D, 0x00], // '&'
    [0x0C, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00], // '\''
    [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02, 0x00], // '('
    [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08, 0x00], // ')'
    [0x00, 0x04, 0x15, 0x0E, 0x15, 0x04, 0x00, 0x00], // '*'
    [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00, 0x00], // '+'
    [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08, 0x00], // ','
    [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00, 0x00], // '-'
    [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C, 0x00], // '.'
    [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00, 0x00], // '/'
    [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E, 0x00], // '0'
    [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E, 0x00], // '1'
    [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F, 0x00], // '2'
    [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E, 0x00], // '3'
    [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02, 0x00], // '4'
    [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E, 0x00], // '5'
    [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E, 0x00], // '6'
    [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08, 0x00], // '7'
    [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E, 0x00], // '8'
    [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C, 0x00], // '9'
    [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00, 0x00], // ':'
    [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x04, 0x08, 0x00], // ';'
    [0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02, 0x00], // '<'
    [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00, 0x00], // '='
    [0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08, 0x00], // '>'
    [0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04, 0x00], // '?'
    [0x0E, 0x11, 0x01, 0x0D, 0x15, 0x15, 0x0E, 0x00], // '@'
    [0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x00], // 'A'
    [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E, 0x00], // 'B'
    [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E, 0x00], // 'C'
    [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C, 0x00], // 'D'
    [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F, 0x00], // 'E'
    [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10, 0x00], // 'F'
    [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F, 0x00], // 'G'
    [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11, 0x00], // 'H'
    [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E, 0x00], // 'I'
    [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C, 0x00], // 'J'
    [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11, 0x00], // 'K'
    [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F, 0x00], // 'L'
    [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11, 0x00], // 'M'
    [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11, 0x00], // 'N'
    [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E, 0x00], // 'O'
    [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10, 0x00], // 'P'
    [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D, 0x00], // 'Q'
    [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11, 0x00], // 'R'
    [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E, 0x00], // 'S'
    [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x00], // 'T'
    [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E, 0x00], // 'U'
    [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04, 0x00], // 'V'
    [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A, 0x00], // 'W'
    [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11, 0x00], // 'X'
    [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0x00], // 'Y'
    [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F, 0x00], // 'Z'
    [0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E, 0x00], // '['
    [0x00, 0x10, 0x08, 0x04, 0x02, 0x01, 0x00, 0x00], // '\\'
    [0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E, 0x00], // ']'
    [0x04, 0x0A, 0x11, 0x00, 0x00, 0x00, 0x00, 0x00], // '^'
    [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F, 0x00], // '_'
    [0x08, 0x04, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00], // '`'
    [0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F, 0x00], // 'a'
    [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E, 0x00], // 'b'
    [0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E, 0x00], // 'c'
    [0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F, 0x00], // 'd'
    [0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E, 0x00], // 'e'
    [0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08, 0x00], // 'f'
    [0x00, 0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E], // 'g'
    [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11, 0x00], // 'h'
    [0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E, 0x00], // 'i'
    [0x02, 0x00, 0x06, 0x02, 0x02, 0x02, 0x12, 0x0C], // 'j'
    [0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12, 0x00], // 'k'
    [0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E, 0x00], // 'l'
    [0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11, 0x00], // 'm'
    [0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11, 0x00], // 'n'
    [0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E, 0x00], // 'o'
    [0x00, 0x00, 0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10], // 'p'
    [0x00, 0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x01], // 'q'
    [0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10, 0x00], // 'r'
    [0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E, 0x00], // 's'
    [0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06, 0x00], // 't'
    [0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D, 0x00], // 'u'
    [0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04, 0x00], // 'v'
    [0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A, 0x00], // 'w'
    [0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x00], // 'x'
    [0x00, 0x00, 0x11, 0x11, 0x11, 0x0F, 0x01, 0x0E], // 'y'
    [0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F, 0x00], // 'z'
    [0x02, 0x04, 0x04, 0x08, 0x04, 0x04, 0x02, 0x00], // '{'
    [0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x00], // '|'
    [0x08, 0x04, 0x04, 0x02, 0x04, 0x04, 0x08, 0x00], // '}'
    [0x00, 0x00, 0x08, 0x15, 0x02, 0x00, 0x00, 0x00], // '~'
];

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

    fn assert_well_formed(svg: &str) {
        assert!(svg.starts_with("<svg"), "svg start: {}", &svg[..svg.len().min(40)]);
        assert!(svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<svg").count(), 1);
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        for bad in ["NaN", "inf"] {
            assert!(!svg.contains(bad), "svg contains {bad}");
        }
        // Every element line is a single self-closing tag or a text element.
        for line in svg.lines().skip(1) {
            let ok = line == "</svg>" || line.ends_with("/>") || line.ends_with("</text>");
            assert!(ok, "malformed line: {line}");
        }
    }

    fn all_charts_png_ok(chart: &dyn Chart) -> Vec<u8> {
        let bytes = chart.png().expect("png renders");
        assert_eq!(bytes[..8], PNG_SIGNATURE);
        decode(&bytes);
        bytes
    }

    #[test]
    fn line_svg_structure_and_escaped_title() {
        let mut chart = loss_chart();
        chart.title = "Loss <&> \"q\" 'a'".into();
        chart.series.push(series("all bad", &[(f64::NAN, 1.0), (2.0, f64::INFINITY)]));
        let svg = chart.svg();
        assert_well_formed(&svg);
        assert!(svg.contains("Loss &lt;&amp;&gt; &quot;q&quot; &apos;a&apos;"));
        assert!(!svg.contains("<&>"));
        // One path per series with finite points; the all-NaN series draws none.
        assert_eq!(svg.matches("<path").count(), 2);
        assert_eq!(svg.matches("<polyline").count(), 0);
        // Multi-series legend lists every name.
        for name in ["train", "validation", "all bad"] {
            assert!(svg.contains(&format!(">{name}</text>")), "legend entry {name}");
        }
    }

    #[test]
    fn single_series_has_no_legend() {
        let chart = line_chart("one", vec![series("only-line", &[(0.0, 1.0), (1.0, 2.0)])]);
        let svg = chart.svg();
        assert!(!svg.contains("only-line"));
        assert_eq!(svg.matches("<path").count(), 1);
    }

    #[test]
    fn non_finite_point_breaks_the_line() {
        let pts = [(0.0, 1.0), (1.0, 2.0), (2.0, f64::NAN), (3.0, 1.5), (4.0, 1.0), (f64::INFINITY, 3.0), (6.0, 2.0)];
        let canvas = line_chart("gap", vec![series("s", &pts)]).build();
        let paths: Vec<&Vec<Vec<(f64, f64)>>> = canvas
            .prims
            .iter()
            .filter_map(|p| match p {
                Prim::Path { segments, .. } => Some(segments),
                _ => None,
            })
            .collect();
        assert_eq!(paths.len(), 1);
        let lens: Vec<usize> = paths[0].iter().map(Vec::len).collect();
        assert_eq!(lens, vec![2, 2, 1]);
        let svg = line_chart("gap", vec![series("s", &pts)]).svg();
        let d = svg.split("<path").nth(1).expect("path");
        assert_eq!(d.split(" d=\"").nth(1).expect("d").split('"').next().expect("d").matches('M').count(), 3);
    }

    #[test]
    fn bar_svg_one_rect_per_finite_bar_and_labels_stay() {
        let a = group("model A", &[0.61, 0.65, f64::NAN, 0.7, 0.72, 0.74, 0.75, 0.8, 0.83, 0.87]);
        let b = group("model B", &[0.6, f64::INFINITY, f64::NAN, 0.68, 0.7, 0.73, 0.77, 0.79, 0.8, 0.86]);
        let c = group("model C", &[0.55, 0.6]);
        let chart = bar_chart(vec![a, b, c], Some(0.5));
        let svg = chart.svg();
        assert_well_formed(&svg);
        assert_eq!(svg.matches("class=\"bar\"").count(), 9 + 8 + 2);
        assert!(svg.contains(">D3</text>"), "label of an all-NaN category stays");
        assert!(svg.contains(">model C</text>"));
        assert!(svg.contains(">0.5</text>"), "axis starts at y_min");
    }

    #[test]
    fn bar_values_below_y_min_and_negative_values() {
        let chart = bar_chart(vec![group("g", &[0.2, 0.9, -0.4])], Some(0.5));
        let svg = chart.svg();
        assert_well_formed(&svg);
        assert_eq!(svg.matches("class=\"bar\"").count(), 3);
        let chart = bar_chart(vec![group("g", &[-3.0, 2.0, 7.0])], None);
        let canvas = chart.build();
        let bars: Vec<(f64, f64)> = canvas
            .prims
            .iter()
            .filter_map(|p| match p {
                Prim::Rect { y, h, class: Some("bar"), .. } => Some((*y, *h)),
                _ => None,
            })
            .collect();
        assert_eq!(bars.len(), 3);
        // The negative bar starts where the positive ones end (the zero line).
        assert!((bars[0].0 - (bars[1].0 + bars[1].1)).abs() < 1e-9);
    }

    #[test]
    fn png_signature_and_dimensions() {
        for chart in [&loss_chart() as &dyn Chart, &bar_chart(vec![group("g", &[0.5, 0.7])], None)] {
            let bytes = all_charts_png_ok(chart);
            let (w, h, buf) = decode(&bytes);
            assert_eq!((w, h), (CANVAS_W, CANVAS_H));
            assert_eq!(buf.len(), (w * h * 3) as usize);
        }
        let heat = heat_map(vec![vec![0.1, 0.2, 0.7], vec![0.3, 0.3, 0.4], vec![0.5, 0.25, 0.25]]);
        let canvas = heat.build();
        let (w, h, _) = decode(&all_charts_png_ok(&heat));
        assert_eq!((w, h), (canvas.width, canvas.height));
        assert!((480..=1600).contains(&w) && (240..=1200).contains(&h));
    }

    #[test]
    fn rendering_is_deterministic() {
        let heat = heat_map(vec![vec![0.1, 0.2, 0.7], vec![0.3, f64::NAN, 0.4]]);
        let bars = bar_chart(vec![group("a", &[0.6, 0.7]), group("b", &[0.65, 0.8])], Some(0.5));
        let line = loss_chart();
        for chart in [&line as &dyn Chart, &bars, &heat] {
            assert_eq!(chart.svg(), chart.svg());
            assert_eq!(chart.png().expect("png"), chart.png().expect("png"));
        }
        assert_eq!(line.svg(), line.clone().svg());
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
            all_charts_png_ok(&chart);
        }
        let empty = line_chart("", vec![]);
        assert!(empty.svg().contains(">no data</text>"));

        let bar_cases = [
            bar_chart(vec![], None),
            bar_chart(vec![group("nan", &[f64::NAN; 10])], Some(f64::NAN)),
            bar_chart(vec![group("inf", &[f64::INFINITY, f64::NEG_INFINITY])], Some(f64::INFINITY)),
            bar_chart(vec![group("huge", &[1e308, -1e308])], None),
            bar_chart(vec![group("zeros", &[0.0; 10])], None),
            bar_chart(vec![group("above", &[0.1, 0.2])], Some(0.9)),
            bar_chart(vec![group("many", &vec![1.0; 5000])], None),
            BarChart { title: String::new(), y_label: String::new(), labels: vec![], groups: vec![], y_min: None },
        ];
        for chart in &bar_cases {
            assert_well_formed(&chart.svg());
            all_charts_png_ok(chart);
        }
        assert!(bar_cases[0].svg().contains(">no data</text>"));
        assert!(bar_cases[1].svg().contains(">no data</text>"));
        assert!(bar_cases[1].svg().contains(">D10</text>"));

        let mut heat_cases = vec![
            heat_map(vec![]),
            heat_map(vec![vec![f64::NAN; 3]; 3]),
            heat_map(vec![vec![1.0], vec![], vec![2.0, f64::INFINITY, 3.0, 4.0]]),
            heat_map(vec![vec![7.0; 3]; 3]),
            heat_map(vec![vec![1e308, -1e308, f64::MIN_POSITIVE]]),
            heat_map(vec![vec![0.5; 600]; 3]),
            HeatMap {
                title: String::new(),
                row_label: String::new(),
                col_label: String::new(),
                rows: vec![],
                cols: vec![],
                values: vec![],
            },
        ];
        heat_cases.push(HeatMap { rows: (0..900).map(|i| format!("r{i}")).collect(), ..heat_map(vec![]) });
        for chart in &heat_cases {
            assert_well_formed(&chart.svg());
            let canvas = chart.build();
            let (w, h, _) = decode(&all_charts_png_ok(chart));
            assert_eq!((w, h), (canvas.width, canvas.height));
            assert!(w <= 1600 && h <= 1200);
        }
        assert!(heat_cases[0].svg().contains(">no data</text>"));
        assert!(heat_cases[1].svg().contains(">no data</text>"));
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
        assert_eq!(fmt_value(0.71234), "0.712");
        assert_eq!(fmt_value(12.345), "12.3");
        assert_eq!(fmt_value(0.5), "0.5");
        assert_eq!(fmt_value(f64::NAN), "-");
        assert_eq!(fmt_value(4.2e-5), "4.2e-5");
    }

    #[test]
    fn heat_map_darkest_cell_is_largest_value() {
        let values = vec![vec![0.10, 0.20, 0.70], vec![0.30, 0.95, 0.40], vec![0.50, 0.25, 0.05]];
        let chart = heat_map(values.clone());
        let cells: Vec<(f64, f64)> = chart
            .build()
            .prims
            .iter()
            .filter_map(|p| match p {
                Prim::Rect { x, y, class: Some("cell"), .. } => Some((*x, *y)),
                _ => None,
            })
            .collect();
        assert_eq!(cells.len(), 9);
        let (w, _, rgb) = decode(&chart.png().expect("png"));
        let pixel = |x: f64, y: f64| {
            let i = ((y as usize) * w as usize + x as usize) * 3;
            Rgb(rgb[i], rgb[i + 1], rgb[i + 2])
        };
        // Sample near each cell's corner, away from the centred value text.
        let lum: Vec<f64> = cells.iter().map(|&(x, y)| pixel(x.round() + 3.0, y.round() + 3.0).luminance()).collect();
        let flat: Vec<f64> = values.iter().flatten().copied().collect();
        let argmin = |v: &[f64]| (0..v.len()).fold(0, |best, i| if v[i] < v[best] { i } else { best });
        let darkest = argmin(&lum);
        let largest = (0..flat.len()).fold(0, |best, i| if flat[i] > flat[best] { i } else { best });
        assert_eq!(darkest, largest, "luminances {lum:?}");
        assert_eq!(argmin(&flat), (0..lum.len()).fold(0, |b, i| if lum[i] > lum[b] { i } else { b }));
        // Colour order follows value order everywhere.
        for i in 0..flat.len() {
            for j in 0..flat.len() {
                if flat[i] < flat[j] {
                    assert!(lum[i] > lum[j], "cell {i} ({}) vs {j} ({})", flat[i], flat[j]);
                }
            }
        }
        // The value is printed in each cell, white on the dark max cell, dark on the light min cell.
        let svg = chart.svg();
        assert!(svg.contains(&format!("fill=\"{}\">0.95</text>", WHITE.hex())));
        assert!(svg.contains(&format!("fill=\"{}\">0.05</text>", INK.hex())));
    }

    #[test]
    fn heat_cell_text_is_visible_in_png() {
        let chart = heat_map(vec![vec![0.0, 1.0]]);
        let canvas = chart.build();
        let (w, _, rgb) = decode(&chart.png().expect("png"));
        let dark_cell = canvas
            .prims
            .iter()
            .filter_map(|p| match p {
                Prim::Rect { x, y, w, h, class: Some("cell"), .. } => Some((*x, *y, *w, *h)),
                _ => None,
            })
            .nth(1)
            .expect("second cell");
        let (x0, y0, cw, ch) = dark_cell;
        let mut white = 0;
        for y in (y0.round() as usize)..((y0 + ch).round() as usize) {
            for x in (x0.round() as usize)..((x0 + cw).round() as usize) {
                let i = (y * w as usize + x) * 3;
                if rgb[i..i + 3] == [255, 255, 255] {
                    white += 1;
                }
            }
        }
        assert!(white > 5, "value text drawn in white on the dark cell ({white} px)");
    }

    #[test]
    fn escape_covers_xml_specials() {
        assert_eq!(escape("a&b<c>d\"e'f"), "a&amp;b&lt;c&gt;d&quot;e&apos;f");
        assert_eq!(escape("x\u{0}y\nz"), "x?y z");
        assert_eq!(escape("µ→"), "µ→");
    }

    #[test]
    fn font_covers_printable_ascii() {
        for code in 33u8..=126 {
            assert!(glyph(char::from(code)).iter().any(|r| *r != 0), "glyph {code}");
            assert!(glyph(char::from(code)).iter().all(|r| *r < 0x20), "glyph {code} wider than 5");
        }
        assert_eq!(glyph(' '), [0; 8]);
        assert_eq!(glyph('é'), glyph('?'));
        assert_eq!(glyph('\u{7f}'), glyph('?'));
        // Distinct glyphs for the characters tick labels use.
        let digits: Vec<[u8; 8]> = "0123456789.-e".chars().map(glyph).collect();
        for i in 0..digits.len() {
            for j in (i + 1)..digits.len() {
                assert_ne!(digits[i], digits[j]);
            }
        }
    }

    #[test]
    fn rasterizer_draws_primitives() {
        let mut c = Canvas::new(60, 40);
        c.rect(2.0, 2.0, 10.0, 10.0, PALETTE[0], None);
        c.line((20.5, 5.5), (50.5, 5.5), 1.0, PALETTE[3]);
        c.text(Text::new(20.0, 30.0, "Hi?", Anchor::Start));
        c.text(Text::new(8.0, 38.0, "V", Anchor::Start).vertical());
        let r = c.rasterize();
        let at = |x: usize, y: usize| {
            let i = (y * 60 + x) * 3;
            Rgb(r.px[i], r.px[i + 1], r.px[i + 2])
        };
        assert_eq!(at(5, 5), PALETTE[0]);
        assert_eq!(at(30, 5), PALETTE[3]);
        assert_eq!(at(30, 7), WHITE);
        assert_eq!(at(20, 23), INK, "top-left pixel of 'H'");
        assert_eq!(at(21, 23), WHITE);
        let ink = r.px.chunks(3).filter(|p| p == &[INK.0, INK.1, INK.2]).count();
        assert!(ink > 30, "text pixels: {ink}");
    }
}
