//! Row by row screening of the text formats of the raw log tables: CSV with a header, and
//! newline-delimited JSON.
//!
//! A whole-file reader fails a file on its first bad record, so one short CSV row or one JSON
//! line with a number for an id used to cost every row of the file. Here each record is checked
//! on its own, and a record that cannot become a row is a [`LineFault`], with its file, its
//! 1-based line number, its exact bytes and the reason:
//!
//! * CSV: more or fewer fields than the header; a contract column's field that is not UTF-8;
//! * JSON: a line that is not UTF-8, not JSON, or not an object; a contract column holding a
//!   value of a type that column cannot take (an id given as a number, a nested array or object).
//!
//! The other records become one batch of text columns, one per contract column the file has
//! (an empty CSV field is null, as in Arrow's CSV reader): typing and the contract's value checks
//! are the clean SQL jobs' work, as for every raw table, so a bad *value* quarantines its row
//! there. Blank lines are not records. A CSV file whose header is not UTF-8 cannot be read at all:
//! [`screen_csv`] returns the reason and the caller quarantines the file whole.
//!
//! Nothing here panics on any input (`tests`, and the property tests in `tests/raw_rows.rs`).

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema};
use serde::Serialize;
use serde_json::Value;

/// A record of a raw text file that cannot become a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineFault {
    /// The file, relative to the lake root.
    pub path: String,
    /// 1-based line the record starts on.
    pub line: u64,
    /// The record's bytes, without its line terminator.
    #[serde(skip)]
    pub raw: Vec<u8>,
    /// Why it was quarantined.
    pub reason: String,
}

/// What a text file gave: its readable rows and its faulty records.
#[derive(Debug)]
pub struct Screened {
    /// The readable rows as text columns named after the contract; `None` without any.
    pub batch: Option<RecordBatch>,
    /// Records quarantined, in file order.
    pub faults: Vec<LineFault>,
}

impl Screened {
    /// Readable rows.
    pub fn rows(&self) -> u64 {
        self.batch.as_ref().map_or(0, |b| b.num_rows() as u64)
    }
}

/// One text builder per contract column the file has, in contract order, and the rows.
struct Columns {
    names: Vec<String>,
    builders: Vec<StringBuilder>,
    rows: usize,
}

impl Columns {
    fn new(names: Vec<String>) -> Self {
        let builders = names.iter().map(|_| StringBuilder::new()).collect();
        Self { names, builders, rows: 0 }
    }

    /// The batch; rows without any contract column still count (the caller then finds the
    /// required columns missing and quarantines the file whole, by its rows).
    fn finish(mut self) -> Option<RecordBatch> {
        if self.rows == 0 {
            return None;
        }
        let fields: Vec<Field> = self.names.iter().map(|n| Field::new(n, DataType::Utf8, true)).collect();
        let arrays: Vec<ArrayRef> = self.builders.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef).collect();
        let options = RecordBatchOptions::new().with_row_count(Some(self.rows));
        // Every column has `rows` text values by construction.
        RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), arrays, &options).ok()
    }
}

/// `bytes` without a trailing `\n` or `\r\n`.
fn without_terminator(bytes: &[u8]) -> &[u8] {
    let b = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    b.strip_suffix(b"\r").unwrap_or(b)
}

/// Screens a CSV file with a header line (RFC 4180 quoting; `\n`, `\r\n` or `\r` ends a record).
/// `Err` when the header itself cannot be read.
pub fn screen_csv(bytes: &[u8], contract: &Schema, path: &str) -> Result<Screened, String> {
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(bytes);
    let mut record = csv::ByteRecord::new();
    let mut header: Option<(usize, Vec<usize>, Columns)> = None;
    let mut faults = Vec::new();
    // Line numbers are counted here: the reader's own count skips blank lines.
    let (mut counted_to, mut lines_before) = (0usize, 0u64);
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            // A ByteRecord reader over memory, flexible, has no error left to report; should a
            // later csv release add one, it costs the rest of the file, named, not a panic.
            Err(e) => return Err(format!("CSV unreadable after line {}: {e}", reader.position().line())),
        }
        let mut start = record.position().map_or(counted_to, |p| p.byte() as usize).clamp(counted_to, bytes.len());
        // The reader's position includes the blank lines it skipped before the record.
        while matches!(bytes.get(start), Some(b'\n' | b'\r')) {
            start += 1;
        }
        lines_before += bytes[counted_to..start].iter().filter(|&&b| b == b'\n').count() as u64;
        counted_to = start;
        let line = lines_before + 1;
        let end = reader.position().byte() as usize;
        let raw = || without_terminator(bytes.get(start..end).unwrap_or_default()).to_vec();
        let Some((width, at, columns)) = header.as_mut() else {
            let mut names = Vec::with_capacity(record.len());
            for (k, field) in record.iter().enumerate() {
                let name = std::str::from_utf8(field)
                    .map_err(|_| format!("the header's field {} is not UTF-8", k + 1))?
                    .trim_start_matches('\u{feff}');
                names.push(name.to_string());
            }
            let (at, present): (Vec<usize>, Vec<String>) = contract
                .fields()
                .iter()
                .filter_map(|f| names.iter().position(|n| n == f.name()).map(|k| (k, f.name().clone())))
                .unzip();
            header = Some((names.len(), at, Columns::new(present)));
            continue;
        };
        if record.len() != *width {
            let reason = format!("{} fields where the header has {width}", record.len());
            faults.push(LineFault { path: path.to_string(), line, raw: raw(), reason });
            continue;
        }
        let values: Result<Vec<&str>, String> = at
            .iter()
            .zip(&columns.names)
            .map(|(&k, name)| {
                std::str::from_utf8(record.get(k).unwrap_or_default())
                    .map_err(|e| format!("{name} is not UTF-8 (invalid byte at {} of the field)", e.valid_up_to()))
            })
            .collect();
        let values = match values {
            Ok(values) => values,
            Err(reason) => {
                faults.push(LineFault { path: path.to_string(), line, raw: raw(), reason });
                continue;
            }
        };
        for (b, v) in columns.builders.iter_mut().zip(values) {
            // An empty field is null, as Arrow's CSV reader reads it.
            b.append_option((!v.is_empty()).then_some(v));
        }
        columns.rows += 1;
    }
    let batch = header.and_then(|(_, _, columns)| columns.finish());
    Ok(Screened { batch, faults })
}

/// What a JSON value is, in a reason.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The text of JSON value `v` for a contract column of type `want`, or why it has none. Text
/// columns (ids, the behavior) take text only; timestamps and numbers take text or a number.
fn json_text(v: &Value, want: &DataType) -> Result<Option<String>, String> {
    match (v, want) {
        (Value::Null, _) => Ok(None),
        (Value::String(s), _) => Ok(Some(s.clone())),
        (Value::Number(n), DataType::Timestamp(..) | DataType::Int32 | DataType::Int64 | DataType::Float64) => {
            Ok(Some(n.to_string()))
        }
        (other, DataType::Utf8) => Err(format!("{} where the contract wants text", json_kind(other))),
        (other, _) => Err(format!("{} where the contract wants text or a number", json_kind(other))),
    }
}

/// Screens a newline-delimited JSON file: one object per line.
pub fn screen_json(bytes: &[u8], contract: &Schema, path: &str) -> Screened {
    let fields = contract.fields();
    let mut builders: Vec<StringBuilder> = fields.iter().map(|_| StringBuilder::new()).collect();
    let mut seen = vec![false; fields.len()];
    let mut rows = 0;
    let mut faults = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line = i as u64 + 1;
        match json_row(raw, contract) {
            Ok(values) => {
                for (k, v) in values.into_iter().enumerate() {
                    seen[k] |= v.is_some();
                    builders[k].append_option(v.flatten());
                }
                rows += 1;
            }
            Err(reason) => faults.push(LineFault { path: path.to_string(), line, raw: raw.to_vec(), reason }),
        }
    }
    // The file's columns: the contract columns some readable line has.
    let mut columns = Columns::new(Vec::new());
    columns.rows = rows;
    for ((f, b), seen) in fields.iter().zip(builders).zip(seen) {
        if seen {
            columns.names.push(f.name().clone());
            columns.builders.push(b);
        }
    }
    Screened { batch: columns.finish(), faults }
}

/// Per contract column: `None` where the line lacks the key, `Some(text or null)` where it has it.
type JsonRow = Vec<Option<Option<String>>>;

/// One JSON line's contract values, or why it cannot be a row.
fn json_row(raw: &[u8], contract: &Schema) -> Result<JsonRow, String> {
    let text = std::str::from_utf8(raw).map_err(|e| format!("not UTF-8 (invalid byte at {})", e.valid_up_to()))?;
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(object) = value else {
        return Err(format!("{} where a JSON object was expected", json_kind(&value)));
    };
    contract
        .fields()
        .iter()
        .map(|f| match object.get(f.name()) {
            None => Ok(None),
            Some(v) => json_text(v, f.data_type()).map(Some).map_err(|e| format!("{} is {e}", f.name())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};

    fn contract() -> Schema {
        (*crate::contract::exposures_schema()).clone()
    }

    fn column(s: &Screened, name: &str) -> Vec<Option<String>> {
        let b = s.batch.as_ref().expect("rows");
        let c = b.column(b.schema().index_of(name).expect("column")).as_string::<i32>();
        (0..c.len()).map(|i| c.is_valid(i).then(|| c.value(i).to_string())).collect()
    }

    #[test]
    fn csv_rows_of_the_wrong_width_or_encoding_are_faults_with_their_line() {
        let mut file = b"event_time,request_id,user_id,item_id,position,extra\n".to_vec();
        file.extend_from_slice(b"2026-01-01T00:00:00Z,r1,u1,i1,1,x\n");
        file.extend_from_slice(b"2026-01-01T00:00:01Z,r2,u2\n");
        file.extend_from_slice(b"\n");
        file.extend_from_slice(b"2026-01-01T00:00:02Z,r3,u\xff3,i3,2,x\r\n");
        file.extend_from_slice(b"2026-01-01T00:00:03Z,\"r,4\",u4,i4,,x,y\n");
        file.extend_from_slice(b"2026-01-01T00:00:04Z,\"r\n5\",u5,i5,,\xff\n");
        let s = screen_csv(&file, &contract(), "raw/exposures/dt=2026-01-01/a.csv").unwrap();
        let lines: Vec<(u64, &str)> = s.faults.iter().map(|f| (f.line, f.reason.as_str())).collect();
        assert_eq!(
            lines,
            [
                (3, "3 fields where the header has 6"),
                (5, "user_id is not UTF-8 (invalid byte at 1 of the field)"),
                (6, "7 fields where the header has 6")
            ]
        );
        assert_eq!(s.faults[1].raw, b"2026-01-01T00:00:02Z,r3,u\xff3,i3,2,x");
        assert_eq!(s.faults[0].path, "raw/exposures/dt=2026-01-01/a.csv");
        // A quoted newline stays in its field; invalid UTF-8 outside the contract's columns is
        // no fault; an empty field is null.
        assert_eq!(column(&s, "request_id"), [Some("r1".into()), Some("r\n5".into())]);
        assert_eq!(column(&s, "position"), [Some("1".into()), None]);
        assert_eq!(s.batch.as_ref().unwrap().num_columns(), 5, "extra is not a contract column");
    }

    #[test]
    fn a_csv_header_that_is_not_utf8_fails_the_file_and_an_empty_file_has_no_rows() {
        assert!(screen_csv(b"event_time,user\xff\n1,2\n", &contract(), "x.csv").unwrap_err().contains("field 2"));
        let s = screen_csv(b"", &contract(), "x.csv").unwrap();
        assert!(s.batch.is_none() && s.faults.is_empty());
        let s = screen_csv(b"event_time,request_id\n", &contract(), "x.csv").unwrap();
        assert!(s.batch.is_none() && s.faults.is_empty());
    }

    #[test]
    fn json_lines_of_the_wrong_shape_or_type_are_faults_with_their_line() {
        let file = concat!(
            "{\"event_time\":\"2026-01-01T00:00:00Z\",\"request_id\":\"r1\",\"user_id\":\"u1\",\"item_id\":\"i1\",\"position\":1}\n",
            "{\"event_time\":\"2026-01-01T00:00:00Z\",\"request_id\":\"r2\",\"user_id\":42,\"item_id\":\"i2\"}\n",
            "\n",
            "{\"event_time\":\"2026-01-01T00:00:00Z\",\"request_id\":\"r3\",\n",
            "[1,2]\n",
            "{\"event_time\":1767225600000,\"request_id\":\"r4\",\"user_id\":\"u4\",\"item_id\":[\"i\"],\"x\":{}}\n",
            "{\"event_time\":1767225600000,\"request_id\":\"r5\",\"user_id\":\"u5\",\"item_id\":\"i5\",\"position\":\"2\",\"x\":{}}\r\n",
        );
        let mut bytes = file.as_bytes().to_vec();
        bytes.extend_from_slice(b"{\"user_id\":\"\xff\"}\n");
        let s = screen_json(&bytes, &contract(), "a.json");
        let lines: Vec<(u64, String)> = s.faults.iter().map(|f| (f.line, f.reason.clone())).collect();
        assert_eq!(lines[0], (2, "user_id is a number where the contract wants text".into()));
        assert_eq!(lines[1].0, 4);
        assert!(lines[1].1.starts_with("not JSON: EOF while parsing"), "{:?}", lines[1]);
        assert_eq!(lines[2], (5, "an array where a JSON object was expected".into()));
        assert_eq!(lines[3], (6, "item_id is an array where the contract wants text".into()));
        assert_eq!(lines[4], (8, "not UTF-8 (invalid byte at 12)".into()));
        assert_eq!(s.faults.len(), 5);
        assert_eq!(column(&s, "event_time"), [Some("2026-01-01T00:00:00Z".into()), Some("1767225600000".into())]);
        assert_eq!(column(&s, "position"), [Some("1".into()), Some("2".into())]);
    }

    #[test]
    fn json_columns_are_those_a_readable_line_has() {
        let s = screen_json(b"{\"user_id\":\"u\",\"item_id\":\"i\"}\n", &contract(), "a.json");
        let b = s.batch.unwrap();
        let names: Vec<&str> = b.schema_ref().fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["user_id", "item_id"]);
        assert!(screen_json(b"  \n\n", &contract(), "a.json").batch.is_none());
        // Objects without any contract key are rows still: counted, never lost.
        let s = screen_json(b"{\"a\":1}\n{}\n", &contract(), "a.json");
        assert_eq!((s.rows(), s.batch.unwrap().num_columns()), (2, 0));
    }
}
