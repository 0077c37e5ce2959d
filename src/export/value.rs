//! PostgreSQL column types as Parquet types, and a value's text (as the
//! archive holds it) as a Parquet value. docs/EXPORT.md lists the rules.

use crate::schema::ColumnDef;
use chrono::{NaiveDate, NaiveDateTime};

/// What a column becomes in Parquet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `smallint`: INT32, INTEGER(16).
    Int16,
    /// `integer`: INT32.
    Int32,
    /// `bigint` (and `oid`): INT64.
    Int64,
    /// `numeric(p, s)`, p ≤ 38: INT64 (p ≤ 18) or a 16-byte FIXED_LEN_BYTE_ARRAY, DECIMAL(p, s).
    Decimal {
        /// Precision.
        precision: u8,
        /// Scale.
        scale: u8,
    },
    /// `real`: FLOAT.
    Float32,
    /// `double precision`: DOUBLE.
    Float64,
    /// `boolean`.
    Bool,
    /// Anything else as its text (`text`, `varchar`, `json`, ...): BYTE_ARRAY, STRING.
    Text,
    /// `date`: INT32, DATE.
    Date,
    /// `timestamp` (`utc` false) and `timestamptz` (true): INT64, TIMESTAMP(MICROS).
    Timestamp {
        /// UTC-adjusted.
        utc: bool,
    },
    /// `uuid`: 16-byte FIXED_LEN_BYTE_ARRAY, UUID.
    Uuid,
    /// `bytea`: BYTE_ARRAY.
    Bytes,
    /// A one-dimensional array of one of the above: LIST.
    List(Box<Kind>),
}

/// A Parquet value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// INT32 (also DATE).
    I32(i32),
    /// INT64 (also TIMESTAMP and small DECIMAL).
    I64(i64),
    /// FLOAT.
    F32(f32),
    /// DOUBLE.
    F64(f64),
    /// BOOLEAN.
    Bool(bool),
    /// BYTE_ARRAY (shared: a constant or a moved string is not copied).
    Bytes(bytes::Bytes),
    /// FIXED_LEN_BYTE_ARRAY (16 bytes: UUID, large DECIMAL).
    Fixed(Vec<u8>),
}

impl Kind {
    /// The kind of a column, from its type OID and modifier.
    pub fn of(c: &ColumnDef) -> Kind {
        Kind::of_type(c.type_oid, c.type_modifier)
    }

    fn of_type(oid: u32, typmod: i32) -> Kind {
        match oid {
            21 => Kind::Int16,
            23 => Kind::Int32,
            20 | 26 => Kind::Int64,
            1700 => decimal(typmod).unwrap_or(Kind::Text),
            700 => Kind::Float32,
            701 => Kind::Float64,
            16 => Kind::Bool,
            1082 => Kind::Date,
            1114 => Kind::Timestamp { utc: false },
            1184 => Kind::Timestamp { utc: true },
            2950 => Kind::Uuid,
            17 => Kind::Bytes,
            _ => match element(oid) {
                Some(e) => Kind::List(Box::new(Kind::of_type(e, typmod))),
                None => Kind::Text,
            },
        }
    }

    /// The kind that holds every value of kinds `a` and `b` (a column retyped
    /// between schema versions): the wider integer, float or decimal where
    /// one holds the other, else text.
    pub fn unify(a: &Kind, b: &Kind) -> Kind {
        use Kind::*;
        let rank = |k: &Kind| match k {
            Int16 => Some(1),
            Int32 => Some(2),
            Int64 => Some(3),
            _ => None,
        };
        match (a, b) {
            _ if a == b => a.clone(),
            (Int16 | Int32 | Int64, Int16 | Int32 | Int64) => {
                if rank(a) > rank(b) {
                    a.clone()
                } else {
                    b.clone()
                }
            }
            (Float32 | Float64, Float32 | Float64) => Float64,
            (
                Decimal {
                    precision: p1,
                    scale: s1,
                },
                Decimal {
                    precision: p2,
                    scale: s2,
                },
            ) => {
                let scale = (*s1).max(*s2);
                let int_digits = (p1 - s1).max(p2 - s2);
                if int_digits as u16 + scale as u16 <= 38 {
                    Decimal {
                        precision: int_digits + scale,
                        scale,
                    }
                } else {
                    Text
                }
            }
            (List(x), List(y)) => List(Box::new(Kind::unify(x, y))),
            _ => Text,
        }
    }

    /// The value of `text` (a value's PostgreSQL text form) in this kind.
    pub fn value(&self, text: &str) -> Result<Value, String> {
        // Text is taken as it is (no trimming: a `char(n)`'s padding is part of it).
        let padded = |t: &str| t.starts_with(char::is_whitespace) || t.ends_with(char::is_whitespace);
        let t = if matches!(self, Kind::Text) || !padded(text) {
            text
        } else {
            text.trim()
        };
        match self {
            Kind::Int16 | Kind::Int32 => t.parse::<i32>().map(Value::I32).map_err(|_| "not an integer".into()),
            Kind::Int64 => t.parse::<i64>().map(Value::I64).map_err(|_| "not an integer".into()),
            Kind::Decimal { precision, scale } => {
                let n = unscaled(t, *scale)?;
                if *precision <= 18 {
                    i64::try_from(n).map(Value::I64).map_err(|_| "out of range".into())
                } else {
                    Ok(Value::Fixed(n.to_be_bytes().to_vec()))
                }
            }
            Kind::Float32 => float(t).map(|f| Value::F32(f as f32)),
            Kind::Float64 => float(t).map(Value::F64),
            Kind::Bool => match t {
                "t" | "true" => Ok(Value::Bool(true)),
                "f" | "false" => Ok(Value::Bool(false)),
                _ => Err("not a boolean".into()),
            },
            Kind::Text => Ok(Value::Bytes(bytes::Bytes::copy_from_slice(text.as_bytes()))),
            Kind::Date => date(t).map(Value::I32),
            Kind::Timestamp { utc } => timestamp(t, *utc).map(Value::I64),
            Kind::Uuid => {
                let hex: String = t.chars().filter(|c| *c != '-').collect();
                if hex.len() != 32 {
                    return Err("not a UUID".into());
                }
                hex_bytes(&hex).map(Value::Fixed)
            }
            Kind::Bytes => bytea(text).map(|b| Value::Bytes(b.into())),
            Kind::List(_) => Err("a list is not one value".into()),
        }
    }
}

/// `numeric(p, s)`'s kind from its type modifier, when Parquet's DECIMAL holds it.
fn decimal(typmod: i32) -> Option<Kind> {
    if typmod < 4 {
        return None; // unbounded
    }
    let m = typmod - 4;
    let precision = (m >> 16) & 0xffff;
    let scale = m & 0x7ff; // 11 bits; larger means a negative scale (PostgreSQL 15+)
    (precision <= 38 && scale <= precision && (m & 0xffff) <= 0x3ff).then_some(Kind::Decimal {
        precision: precision as u8,
        scale: scale as u8,
    })
}

/// The element type of an array type, for the arrays exported as lists.
fn element(array_oid: u32) -> Option<u32> {
    Some(match array_oid {
        1005 => 21,
        1007 => 23,
        1016 => 20,
        1231 => 1700,
        1021 => 700,
        1022 => 701,
        1000 => 16,
        1009 => 25,
        1015 => 1043,
        1014 => 1042,
        1182 => 1082,
        1115 => 1114,
        1185 => 1184,
        2951 => 2950,
        1001 => 17,
        199 => 114,
        3807 => 3802,
        _ => return None,
    })
}

/// The integer `text * 10^scale`; more fractional digits than `scale`
/// (other than zeros) is an error, never a rounding.
fn unscaled(t: &str, scale: u8) -> Result<i128, String> {
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "not a decimal number (NaN and infinity do not fit DECIMAL): {t:?}"
        ));
    }
    let scale = scale as usize;
    if frac.len() > scale && frac[scale..].bytes().any(|b| b != b'0') {
        return Err(format!("more than {scale} fractional digits"));
    }
    let frac = &frac[..frac.len().min(scale)];
    let mut n: i128 = 0;
    for b in int
        .bytes()
        .chain(frac.bytes())
        .chain(std::iter::repeat_n(b'0', scale - frac.len()))
    {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add((b - b'0') as i128))
            .ok_or("out of range")?;
    }
    Ok(if neg { -n } else { n })
}

fn float(t: &str) -> Result<f64, String> {
    match t {
        "NaN" => Ok(f64::NAN),
        "Infinity" => Ok(f64::INFINITY),
        "-Infinity" => Ok(f64::NEG_INFINITY),
        _ => t.parse::<f64>().map_err(|_| "not a number".into()),
    }
}

/// A date or date-time's text without a trailing ` BC`, and whether it had one.
fn era(t: &str) -> (&str, bool) {
    match t.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (t, false),
    }
}

/// Year `y` BC is year `1 - y` (1 BC is year 0).
fn bc_date(d: NaiveDate) -> Option<NaiveDate> {
    use chrono::Datelike;
    d.with_year(1 - d.year())
}

/// Days since 1970-01-01; `infinity` and `-infinity` as the largest and smallest INT32.
fn date(t: &str) -> Result<i32, String> {
    match t {
        "infinity" => return Ok(i32::MAX),
        "-infinity" => return Ok(i32::MIN),
        _ => {}
    }
    let (t, bc) = era(t);
    let d = NaiveDate::parse_from_str(t, "%Y-%m-%d").map_err(|_| "not a date (YYYY-MM-DD)".to_string())?;
    let d = if bc { bc_date(d).ok_or("out of range")? } else { d };
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).ok_or("out of range")?;
    i32::try_from((d - epoch).num_days()).map_err(|_| "out of range".into())
}

/// Microseconds since 1970-01-01 00:00 (UTC for `utc`); `infinity` and
/// `-infinity` as the largest and smallest INT64.
fn timestamp(t: &str, utc: bool) -> Result<i64, String> {
    match t {
        "infinity" => return Ok(i64::MAX),
        "-infinity" => return Ok(i64::MIN),
        _ => {}
    }
    let (body, bc) = era(t);
    let at: Option<NaiveDateTime> = if utc {
        crate::schema::keys::instant(body)
    } else {
        crate::schema::keys::naive(body)
    };
    let at = at.ok_or_else(|| "not a timestamp (YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM]])".to_string())?;
    let at = if bc {
        bc_date(at.date()).ok_or("out of range")?.and_time(at.time())
    } else {
        at
    };
    Ok(at.and_utc().timestamp_micros())
}

fn hex_bytes(hex: &str) -> Result<Vec<u8>, String> {
    if !hex.len().is_multiple_of(2) {
        return Err("an odd number of hex digits".into());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| "not hex".to_string()))
        .collect()
}

/// `bytea`'s text: `\x` and hex digits, or the escape format.
fn bytea(t: &str) -> Result<Vec<u8>, String> {
    if let Some(hex) = t.strip_prefix("\\x") {
        return hex_bytes(hex);
    }
    let b = t.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
        } else if b.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let oct = t.get(i + 1..i + 4).ok_or("a bad escape")?;
            out.push(u8::from_str_radix(oct, 8).map_err(|_| "a bad escape")?);
            i += 4;
        }
    }
    Ok(out)
}

/// The elements of a one-dimensional array's text (`{1,2,NULL}`,
/// `{"a b","c\"d"}`, `[0:1]={1,2}`); `None` is a NULL element.
pub fn array_elements(t: &str) -> Result<Vec<Option<String>>, String> {
    let t = t.trim();
    let t = match t.find("={") {
        Some(i) if t.starts_with('[') => &t[i + 1..],
        _ => t,
    };
    let inner = t
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or("not an array")?;
    if inner.starts_with('{') {
        return Err("a multi-dimensional array (only one dimension becomes a list)".into());
    }
    let mut out = Vec::new();
    if inner.is_empty() {
        return Ok(out);
    }
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let mut item = String::new();
        let mut quoted = false;
        if chars.peek() == Some(&'"') {
            quoted = true;
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => item.push(chars.next().ok_or("a bad escape")?),
                    Some('"') => break,
                    Some(c) => item.push(c),
                    None => return Err("an unterminated quote".into()),
                }
            }
        }
        loop {
            match chars.peek() {
                None | Some(',') => break,
                Some('\\') => {
                    chars.next();
                    item.push(chars.next().ok_or("a bad escape")?);
                }
                Some(_) => item.extend(chars.next()),
            }
        }
        if !quoted {
            item = item.trim_end().to_string();
        }
        out.push((quoted || !item.eq_ignore_ascii_case("NULL")).then_some(item));
        if chars.next().is_none() {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_type_parses_to_its_parquet_value() {
        let d = |p, s| Kind::Decimal { precision: p, scale: s };
        assert_eq!(Kind::of_type(1700, ((10 << 16) | 2) + 4), d(10, 2));
        assert_eq!(Kind::of_type(1700, -1), Kind::Text);
        assert_eq!(d(10, 2).value("-12.5"), Ok(Value::I64(-1250)));
        assert!(d(10, 2).value("1.234").is_err(), "never rounded");
        assert!(d(10, 2).value("NaN").is_err());
        assert_eq!(
            d(30, 0).value("12345678901234567890"),
            Ok(Value::Fixed(12345678901234567890i128.to_be_bytes().to_vec()))
        );
        assert_eq!(Kind::Date.value("1970-01-02"), Ok(Value::I32(1)));
        assert_eq!(Kind::Date.value("0001-01-01 BC"), Kind::Date.value("0000-01-01"));
        let tz = Kind::Timestamp { utc: true };
        assert_eq!(tz.value("1970-01-01 01:00:00+01"), Ok(Value::I64(0)));
        assert_eq!(tz.value("1970-01-01 00:00:00.5+00"), Ok(Value::I64(500_000)));
        assert_eq!(
            Kind::Timestamp { utc: false }.value("1970-01-01 00:00:01"),
            Ok(Value::I64(1_000_000))
        );
        assert_eq!(Kind::Bytes.value("\\x00ff"), Ok(Value::Bytes(vec![0, 255].into())));
        assert_eq!(
            Kind::Bytes.value("a\\\\\\001"),
            Ok(Value::Bytes(vec![b'a', b'\\', 1].into()))
        );
        assert_eq!(
            Kind::Uuid.value("00000000-0000-0000-0000-0000000000ff"),
            Ok(Value::Fixed([vec![0; 15], vec![255]].concat()))
        );
        assert_eq!(Kind::Float64.value("-Infinity"), Ok(Value::F64(f64::NEG_INFINITY)));
        assert_eq!(Kind::Bool.value("t"), Ok(Value::Bool(true)));
    }

    #[test]
    fn arrays_split_into_their_elements() {
        let s = |v: &[Option<&str>]| v.iter().map(|e| e.map(str::to_string)).collect::<Vec<_>>();
        assert_eq!(array_elements("{}"), Ok(vec![]));
        assert_eq!(array_elements("{1,NULL,3}"), Ok(s(&[Some("1"), None, Some("3")])));
        assert_eq!(
            array_elements(r#"{"a b","NULL","c\"d",e\,f}"#),
            Ok(s(&[Some("a b"), Some("NULL"), Some("c\"d"), Some("e,f")]))
        );
        assert_eq!(array_elements("[0:1]={7,8}"), Ok(s(&[Some("7"), Some("8")])));
        assert!(array_elements("{{1,2},{3,4}}").is_err());
    }

    #[test]
    fn retyped_columns_widen_or_become_text() {
        use Kind::*;
        assert_eq!(Kind::unify(&Int16, &Int64), Int64);
        assert_eq!(Kind::unify(&Float32, &Float64), Float64);
        assert_eq!(Kind::unify(&Int32, &Text), Text);
        assert_eq!(
            Kind::unify(
                &Decimal { precision: 5, scale: 2 },
                &Decimal {
                    precision: 10,
                    scale: 0
                }
            ),
            Decimal {
                precision: 12,
                scale: 2
            }
        );
    }
}
