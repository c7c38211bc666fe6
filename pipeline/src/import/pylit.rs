//! A reader of Python literals (`{'asin': 'B0', 'price': 3.5, 'categories': [['A', 'B']]}`), the
//! format of the older Amazon metadata files, which were written with Python's `repr` and meant
//! to be read back with `eval`. Only literals are read (dicts, lists, tuples, strings, numbers,
//! `True`, `False`, `None`); anything else is an error naming the byte offset. Nesting is
//! bounded, so no input can exhaust the stack.

use serde_json::{Map, Number, Value};

const MAX_DEPTH: usize = 64;

/// Parses one Python literal; the whole text must be that literal (plus whitespace).
pub fn parse(text: &str) -> Result<Value, String> {
    let mut p = Parser { s: text.as_bytes(), text, i: 0 };
    let v = p.value(0)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("unexpected {:?} at byte {}", p.rest(), p.i));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    i: usize,
}

impl Parser<'_> {
    fn rest(&self) -> String {
        self.text.get(self.i..).unwrap_or("").chars().take(20).collect()
    }

    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH} at byte {}", self.i));
        }
        self.ws();
        match self.peek() {
            None => Err("unexpected end of the line".into()),
            Some(b'{') => self.dict(depth),
            Some(b'[') => self.seq(b']', depth),
            Some(b'(') => self.seq(b')', depth),
            Some(b'\'' | b'"') => self.string().map(Value::String),
            Some(b'u' | b'U' | b'b' | b'B' | b'r' | b'R') if matches!(self.s.get(self.i + 1), Some(b'\'' | b'"')) => {
                let raw = matches!(self.peek(), Some(b'r' | b'R'));
                self.i += 1;
                if raw {
                    self.raw_string().map(Value::String)
                } else {
                    self.string().map(Value::String)
                }
            }
            Some(c) if c == b'-' || c == b'+' || c == b'.' || c.is_ascii_digit() => self.number(),
            Some(_) => {
                for (word, v) in [("True", Value::Bool(true)), ("False", Value::Bool(false)), ("None", Value::Null)] {
                    if self.s[self.i..].starts_with(word.as_bytes()) {
                        self.i += word.len();
                        return Ok(v);
                    }
                }
                Err(format!("not a Python literal at byte {}: {:?}", self.i, self.rest()))
            }
        }
    }

    fn dict(&mut self, depth: usize) -> Result<Value, String> {
        self.i += 1;
        let mut map = Map::new();
        loop {
            self.ws();
            if self.peek() == Some(b'}') {
                self.i += 1;
                return Ok(Value::Object(map));
            }
            let key = match self.value(depth + 1)? {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                other => return Err(format!("a dict key must be a string or number, not {other} (byte {})", self.i)),
            };
            self.ws();
            if self.peek() != Some(b':') {
                return Err(format!("expected ':' after a dict key at byte {}", self.i));
            }
            self.i += 1;
            let v = self.value(depth + 1)?;
            map.insert(key, v);
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {}
                _ => return Err(format!("expected ',' or '}}' at byte {}", self.i)),
            }
        }
    }

    fn seq(&mut self, close: u8, depth: usize) -> Result<Value, String> {
        self.i += 1;
        let mut out = Vec::new();
        loop {
            self.ws();
            if self.peek() == Some(close) {
                self.i += 1;
                return Ok(Value::Array(out));
            }
            out.push(self.value(depth + 1)?);
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(c) if c == close => {}
                _ => return Err(format!("expected ',' or '{}' at byte {}", close as char, self.i)),
            }
        }
    }

    fn raw_string(&mut self) -> Result<String, String> {
        let quote = self.s[self.i];
        let start = self.i + 1;
        let mut j = start;
        while j < self.s.len() {
            if self.s[j] == b'\\' {
                j += 2;
                continue;
            }
            if self.s[j] == quote {
                self.i = j + 1;
                return Ok(self.text[start..j].to_string());
            }
            j += 1;
        }
        Err(format!("unterminated string starting at byte {}", start - 1))
    }

    fn string(&mut self) -> Result<String, String> {
        let quote = self.s[self.i];
        let start = self.i;
        self.i += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(format!("unterminated string starting at byte {start}"));
            };
            if c == quote {
                self.i += 1;
                return Ok(out);
            }
            if c != b'\\' {
                // Copy the whole UTF-8 character.
                let ch = self.text[self.i..].chars().next().ok_or("unterminated string")?;
                out.push(ch);
                self.i += ch.len_utf8();
                continue;
            }
            let esc = self.s.get(self.i + 1).copied().ok_or_else(|| format!("a lone '\\' at byte {}", self.i))?;
            self.i += 2;
            match esc {
                b'n' => out.push('\n'),
                b't' => out.push('\t'),
                b'r' => out.push('\r'),
                b'0' => out.push('\0'),
                b'\\' => out.push('\\'),
                b'\'' => out.push('\''),
                b'"' => out.push('"'),
                b'\n' => {}
                b'x' => out.push(self.hex(2)?),
                b'u' => out.push(self.hex(4)?),
                b'U' => out.push(self.hex(8)?),
                // Python keeps an unknown escape as written.
                _ => {
                    out.push('\\');
                    self.i -= 1;
                }
            }
        }
    }

    fn hex(&mut self, n: usize) -> Result<char, String> {
        let digits =
            self.text.get(self.i..self.i + n).ok_or_else(|| format!("a short \\x/\\u escape at byte {}", self.i))?;
        let code =
            u32::from_str_radix(digits, 16).map_err(|_| format!("bad escape digits {digits:?} at byte {}", self.i))?;
        self.i += n;
        // A lone surrogate cannot be a Rust char: the replacement character keeps the rest.
        Ok(char::from_u32(code).unwrap_or('\u{fffd}'))
    }

    fn number(&mut self) -> Result<Value, String> {
        let start = self.i;
        while self.i < self.s.len() && matches!(self.s[self.i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E' | b'_') {
            self.i += 1;
        }
        let t: String = self.text[start..self.i].chars().filter(|&c| c != '_').collect();
        if let Ok(i) = t.parse::<i64>() {
            return Ok(Value::Number(i.into()));
        }
        match t.parse::<f64>().ok().and_then(Number::from_f64) {
            Some(n) => Ok(Value::Number(n)),
            None => Err(format!("not a number {t:?} at byte {start}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn amazon_metadata_lines_parse() {
        let v = parse(
            r#"{'asin': '0000031852', 'title': "Girls' Ballet Tutu", 'price': 3.17, 'salesRank': {'Toys & Games': 211836}, 'categories': [['Sports & Outdoors', 'Other Sports', 'Dance']], 'ok': True, 'none': None, 't': (1, -2.5e3,), u'x': u'caf\xe9 \u00e9'}"#,
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"asin": "0000031852", "title": "Girls' Ballet Tutu", "price": 3.17,
                "salesRank": {"Toys & Games": 211836}, "categories": [["Sports & Outdoors", "Other Sports", "Dance"]],
                "ok": true, "none": null, "t": [1, -2500.0], "x": "café é"})
        );
        assert_eq!(parse(r"'it\'s'").unwrap(), json!("it's"));
    }

    #[test]
    fn bad_literals_are_errors_not_panics() {
        for bad in [
            "{'a': }",
            "{'a' 1}",
            "'open",
            "[1, 2",
            "os.system('x')",
            "{'a': 1} trailing",
            "'\\x4'",
            "{[1]: 2}",
            "",
            "1e999",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        let deep = "[".repeat(10_000);
        assert!(parse(&deep).unwrap_err().contains("deeper"));
    }
}
