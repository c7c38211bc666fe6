//! Property tests of the raw text readers and the importers: on generated CSV and JSON files
//! with every kind of broken record mixed in, and on arbitrary bytes, no reader panics and every
//! record is either a row or a quarantined line (nothing is lost).
#![allow(clippy::unwrap_used)] // Tests unwrap: a failed unwrap is a failed test, with its location.

use std::io::Write;

use arrow::array::{Array, AsArray};
use marnflow_pipeline::contract;
use marnflow_pipeline::raw_rows::{screen_csv, screen_json, Screened};
use proptest::prelude::*;

/// One generated record: its bytes (no terminator) and whether it must become a row.
#[derive(Debug, Clone)]
struct Record {
    bytes: Vec<u8>,
    good: bool,
}

fn id() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,8}"
}

/// Text that may hold the CSV specials (commas, quotes, newlines) and any Unicode.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![id(), "[ -~]{0,12}", "\\PC{0,6}", Just("a,b".to_string()), Just("say \"hi\"\nthere".to_string())]
}

fn csv_field(s: &str) -> Vec<u8> {
    if s.contains([',', '"', '\n', '\r']) || s.is_empty() {
        format!("\"{}\"", s.replace('"', "\"\"")).into_bytes()
    } else {
        s.as_bytes().to_vec()
    }
}

/// CSV records of the exposures contract: good ones, and short, long and non-UTF-8 ones.
fn csv_record() -> impl Strategy<Value = Record> {
    (prop::collection::vec(text(), 5), 0u8..6, 0usize..5).prop_map(|(fields, kind, at)| {
        let join = |fields: Vec<Vec<u8>>| fields.join(&b","[..]);
        let encoded: Vec<Vec<u8>> = fields.iter().map(|f| csv_field(f)).collect();
        match kind {
            0 => Record { bytes: join(encoded[..at.clamp(1, 4)].to_vec()), good: false },
            1 => {
                let mut longer = encoded;
                longer.push(b"extra".to_vec());
                Record { bytes: join(longer), good: false }
            }
            2 => {
                let mut bad = encoded;
                bad[at] = b"x\xffy".to_vec();
                Record { bytes: join(bad), good: false }
            }
            _ => Record { bytes: join(encoded), good: true },
        }
    })
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{json, Value};
    prop_oneof![
        4 => text().prop_map(Value::String),
        1 => any::<i64>().prop_map(|n| json!(n)),
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => Just(json!([1, "x"])),
        1 => Just(json!({"a": 1})),
    ]
}

/// JSON lines of the exposures contract: objects with values of every JSON type, and lines that
/// are no object, no JSON or no UTF-8.
fn json_record() -> impl Strategy<Value = Record> {
    use serde_json::Value;
    (prop::collection::vec(json_value(), 5), 0u8..8).prop_map(|(values, kind)| {
        let names = ["event_time", "request_id", "user_id", "item_id", "position"];
        let object: serde_json::Map<String, Value> =
            names.iter().zip(&values).map(|(n, v)| (n.to_string(), v.clone())).collect();
        let line = Value::Object(object.clone()).to_string().into_bytes();
        match kind {
            0 => Record { bytes: line[..line.len() / 2].to_vec(), good: false },
            1 => Record { bytes: b"[1, 2]".to_vec(), good: false },
            2 => {
                let mut bad = line.clone();
                bad.insert(1, 0xff);
                Record { bytes: bad, good: false }
            }
            _ => {
                // Text columns take text or null; the others also a number.
                let good = names.iter().zip(&values).all(|(n, v)| match v {
                    Value::String(_) | Value::Null => true,
                    Value::Number(_) => matches!(*n, "event_time" | "position"),
                    _ => false,
                });
                Record { bytes: line, good }
            }
        }
    })
}

/// The file of `records`, each ended by `\n` or `\r\n`, with blank lines between some.
fn file_of(header: Option<&[u8]>, records: &[Record], crlf: &[bool], blank: &[bool]) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(h) = header {
        out.extend_from_slice(h);
        out.push(b'\n');
    }
    for (i, r) in records.iter().enumerate() {
        if blank[i % blank.len()] {
            out.push(b'\n');
        }
        out.extend_from_slice(&r.bytes);
        out.extend_from_slice(if crlf[i % crlf.len()] { b"\r\n" } else { b"\n" });
    }
    out
}

/// Every record is a row or a fault; the good ones are the rows, in order.
fn check_conservation(s: &Screened, records: &[Record]) {
    let good = records.iter().filter(|r| r.good).count() as u64;
    assert_eq!(s.rows(), good, "rows");
    assert_eq!(s.rows() + s.faults.len() as u64, records.len() as u64, "rows + faults = records");
    let bad: Vec<&[u8]> = records.iter().filter(|r| !r.good).map(|r| r.bytes.as_slice()).collect();
    let quarantined: Vec<&[u8]> = s.faults.iter().map(|f| f.raw.as_slice()).collect();
    assert_eq!(quarantined, bad, "each bad record is quarantined with its exact bytes");
    assert!(s.faults.windows(2).all(|w| w[0].line < w[1].line), "faults in line order");
}

/// Cases per property: `n` in the test suite, `PROPTEST_CASES` for a longer fuzzing run.
fn cases(n: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(n)
}

const CSV_HEADER: &[u8] = b"event_time,request_id,user_id,item_id,position";

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(400), ..ProptestConfig::default() })]

    #[test]
    fn csv_records_are_rows_or_faults(
        records in prop::collection::vec(csv_record(), 0..40),
        crlf in prop::collection::vec(any::<bool>(), 1..4),
        blank in prop::collection::vec(any::<bool>(), 1..4),
    ) {
        let file = file_of(Some(CSV_HEADER), &records, &crlf, &blank);
        let s = screen_csv(&file, &contract::exposures_schema(), "f.csv").unwrap();
        check_conservation(&s, &records);
        // The good records' ids come back exactly.
        if let Some(b) = &s.batch {
            let users = b.column(2).as_string::<i32>();
            prop_assert_eq!(users.len(), records.iter().filter(|r| r.good).count());
        }
        // Each fault's line number points at its record's first line.
        let lines: Vec<&[u8]> = file.split(|&c| c == b'\n').collect();
        for f in &s.faults {
            let first = f.raw.split(|&c| c == b'\n').next().unwrap_or_default();
            let at = lines[f.line as usize - 1];
            prop_assert_eq!(at.strip_suffix(b"\r").unwrap_or(at), first);
        }
    }

    #[test]
    fn json_lines_are_rows_or_faults(
        records in prop::collection::vec(json_record(), 0..40),
        crlf in prop::collection::vec(any::<bool>(), 1..4),
        blank in prop::collection::vec(any::<bool>(), 1..4),
    ) {
        let file = file_of(None, &records, &crlf, &blank);
        let s = screen_json(&file, &contract::exposures_schema(), "f.json");
        check_conservation(&s, &records);
        let lines: Vec<&[u8]> = file.split(|&c| c == b'\n').collect();
        for f in &s.faults {
            let at = lines[f.line as usize - 1];
            prop_assert_eq!(at.strip_suffix(b"\r").unwrap_or(at), f.raw.as_slice());
        }
    }

    /// Arbitrary bytes: no panic, and every non-blank JSON line is a row or a fault.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600), header in any::<bool>()) {
        let mut file = if header { CSV_HEADER.to_vec() } else { Vec::new() };
        file.extend_from_slice(&bytes);
        let _ = screen_csv(&file, &contract::behaviors_schema(), "f.csv");
        let s = screen_json(&bytes, &contract::behaviors_schema(), "f.json");
        let lines = bytes
            .split(|&c| c == b'\n')
            .filter(|l| !l.strip_suffix(b"\r").unwrap_or(l).iter().all(u8::is_ascii_whitespace))
            .count() as u64;
        prop_assert_eq!(s.rows() + s.faults.len() as u64, lines);
    }
}

/// A MovieLens folder in the GroupLens layout with two movies and `data` as `u.data`.
fn movielens_dir(data: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        std::fs::File::create(dir.path().join(name)).unwrap().write_all(bytes).unwrap();
    };
    write("u.item", b"1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n2|GoldenEye (1995)|01-Jan-1995||http://x|0|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0|1|0|0\n");
    write("u.data", data);
    dir
}

/// Lines as the importers read them: split at `\n`, line ends trimmed, UTF-8 or else Latin-1;
/// blank ones are no records.
fn non_blank_lines(data: &[u8]) -> usize {
    data.split(|&c| c == b'\n')
        .map(|l| match std::str::from_utf8(l) {
            Ok(s) => s.to_string(),
            Err(_) => l.iter().map(|&b| b as char).collect(),
        })
        .filter(|l| !l.trim().is_empty())
        .count()
}

fn rating_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => (1u32..4, 1u32..4, 0u32..7, 870_000_000u64..890_000_000)
            .prop_map(|(u, i, r, t)| format!("{u}\t{i}\t{r}\t{t}").into_bytes()),
        1 => "\\PC{0,20}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 1..20).prop_map(|mut b| { b.retain(|&c| c != b'\n'); b }),
    ]
}

/// Every non-blank line of `data` (the importer's input file `file`) is imported (`imported`
/// counts the records made of its lines) or a quarantined line of that file; or the import
/// failed, naming the file.
fn imported_or_quarantined(
    read: marnflow_pipeline::error::Result<marnflow_pipeline::import::Dataset>,
    file: &str,
    data: &[u8],
    imported: impl Fn(&marnflow_pipeline::import::Dataset) -> usize,
) -> Result<(), TestCaseError> {
    match read {
        Ok(d) => {
            let rejected = d.lines.rejects.iter().filter(|r| r.file.ends_with(file)).count();
            prop_assert_eq!(imported(&d) + rejected, non_blank_lines(data));
        }
        Err(e) => prop_assert!(e.to_string().contains(file), "{}", e),
    }
    Ok(())
}

/// Review lines: strict JSON, Python literals (as the 2014 files write them), fields of the
/// wrong type, arbitrary text and bytes.
fn review_line() -> impl Strategy<Value = Vec<u8>> {
    let asin = prop_oneof![Just("A1"), Just("A2"), Just("B9")];
    let time = prop_oneof![
        (0i64..2_000_000_000).prop_map(|t| t.to_string()),
        Just("\"1400000000\"".to_string()),
        Just("-5".to_string()),
        Just("null".to_string()),
        Just("[1]".to_string()),
    ];
    prop_oneof![
        3 => ("[a-z]{1,3}", asin.clone(), time.clone())
            .prop_map(|(u, a, t)| format!("{{\"reviewerID\": \"{u}\", \"asin\": \"{a}\", \"unixReviewTime\": {t}}}").into_bytes()),
        2 => ("[a-z]{1,3}", asin, time)
            .prop_map(|(u, a, t)| format!("{{'reviewerID': '{u}', 'asin': u'{a}', 'unixReviewTime': {t}, 'helpful': [0, 0], 'x': None}}").into_bytes()),
        1 => "\\PC{0,30}".prop_map(String::into_bytes),
        1 => "[\\[\\]{}:,'\"uNTF0-9a-z ]{0,30}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 1..30).prop_map(|mut b| { b.retain(|&c| c != b'\n'); b }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(200), ..ProptestConfig::default() })]

    /// The MovieLens importer on fuzzed ratings: no panic; every non-blank rating line is an
    /// interaction or a quarantined line of `u.data`, or the import fails naming the file.
    #[test]
    fn movielens_ratings_are_imported_or_quarantined(lines in prop::collection::vec(rating_line(), 0..30)) {
        let data = lines.join(&b"\n"[..]);
        let dir = movielens_dir(&data);
        let read = marnflow_pipeline::import::movielens::read(dir.path(), 4.0);
        // A rating is one exposure, clicked or not.
        imported_or_quarantined(read, "u.data", &data, |d| d.interactions.len())?;
    }

    /// The Amazon importer on fuzzed reviews (JSON and Python literals): no panic; every
    /// non-blank review line is a clicked exposure or a quarantined line of the reviews file.
    #[test]
    fn amazon_reviews_are_imported_or_quarantined(lines in prop::collection::vec(review_line(), 0..30)) {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("meta.json");
        std::fs::write(&meta, "{'asin': 'A1', 'title': 'a lamp', 'categories': [['Home', 'Lamps']]}\n\
                               {\"asin\": \"A2\", \"title\": \"a desk\", \"price\": \"$12.99\"}\n").unwrap();
        let reviews = dir.path().join("reviews.json");
        let data = lines.join(&b"\n"[..]);
        std::fs::write(&reviews, &data).unwrap();
        let input = marnflow_pipeline::import::amazon::AmazonInput {
            reviews: reviews.clone(),
            meta,
            image_features: None,
            image_dim: 4,
            seed: 1,
        };
        let read = marnflow_pipeline::import::amazon::read(&input);
        // A review is a click (its sampled negative an exposure more).
        imported_or_quarantined(read, "reviews.json", &data, |d| d.interactions.iter().filter(|i| i.clicked).count())?;
    }

    /// The Python-literal parser of the Amazon files on arbitrary text: an answer, never a panic.
    #[test]
    fn python_literals_never_panic(text in "\\PC{0,40}|[\\[\\]{}()'\",:uNTF0-9.eE+-]{0,40}") {
        let _ = marnflow_pipeline::import::pylit::parse(&text);
    }
}
