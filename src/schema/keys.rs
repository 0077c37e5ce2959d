//! Keys compared by value: a key column's text in one canonical form per
//! type, so `2026-01-05 10:00:00+01` finds the row the server printed as
//! `2026-01-05 09:00:00+00`, `1.0` finds `1`, `+007` finds `7`.
//!
//! Every reader and the index key rows by [`KeyColumns::encode`]; user input
//! goes through [`KeyColumns::parse`], which says which column and type a
//! value does not fit. A stored value that does not parse (a form this code
//! does not know) is kept as it is, so it still matches itself.

use super::{ColumnDef, SchemaRecord};
use crate::event::Row;
use crate::Error;
use chrono::{NaiveDate, NaiveDateTime};

/// The identity columns of a version, in key order, with their types.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyColumns {
    /// Their names.
    pub names: Vec<String>,
    /// Their type OIDs.
    pub types: Vec<u32>,
    /// Their type names (for messages).
    pub type_names: Vec<String>,
}

impl KeyColumns {
    fn from_columns<'a>(cols: impl Iterator<Item = &'a ColumnDef>) -> KeyColumns {
        let mut k = KeyColumns::default();
        for c in cols {
            k.names.push(c.name.clone());
            k.types.push(c.type_oid);
            k.type_names.push(c.type_name.clone());
        }
        k
    }

    /// The key rows of `schema` are followed by ([`SchemaRecord::row_key`]:
    /// the replica identity index, else the primary key, in its own order;
    /// empty when it has neither).
    pub fn row_key(schema: &SchemaRecord) -> KeyColumns {
        KeyColumns::from_columns(schema.row_key().into_iter())
    }

    /// What identifies a row for a restore: the row key, or every column
    /// when there is none.
    pub fn identity(schema: &SchemaRecord) -> KeyColumns {
        let pk = KeyColumns::row_key(schema);
        if pk.names.is_empty() {
            KeyColumns::from_columns(schema.columns.iter())
        } else {
            pk
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The key of a row: the canonical values as a JSON array (a column the
    /// row lacks counts as NULL).
    pub fn encode(&self, row: &Row) -> Vec<u8> {
        self.encode_with(|c| row.0.iter().find(|(n, _)| &**n == c).map(|(_, v)| v.clone()))
    }

    /// The key from a function giving each column's value.
    pub fn encode_with(&self, value: impl Fn(&str) -> Option<Option<String>>) -> Vec<u8> {
        let vals: Vec<Option<String>> = self
            .names
            .iter()
            .zip(&self.types)
            .map(|(c, t)| value(c).flatten().map(|v| canonical(*t, &v).unwrap_or(v)))
            .collect();
        serde_json::to_vec(&vals).unwrap_or_default()
    }

    /// Parses a key as a user gives it: `col=val,col=val`, or the values
    /// in key order (`42,7`).
    pub fn parse(&self, input: &str, table: &str) -> Result<Vec<u8>, Error> {
        let parts: Vec<&str> = input.split(',').collect();
        let named = parts.iter().all(|p| p.contains('='));
        let mut vals: Vec<Option<String>> = vec![None; self.names.len()];
        let cols = self.names.join(", ");
        if named {
            for p in &parts {
                let (c, v) = p.split_once('=').unwrap_or((p, ""));
                let Some(i) = self.names.iter().position(|x| x == c.trim()) else {
                    return Err(Error::Invalid(format!(
                        "--key {input:?}: {table} has no key column {:?}; its key is ({cols})",
                        c.trim()
                    )));
                };
                vals[i] = Some(v.to_string());
            }
        } else {
            if parts.len() != self.names.len() {
                return Err(Error::Invalid(format!(
                    "--key {input:?}: {table}'s key is ({cols}), so give {} value(s) in that order, or col=val pairs",
                    self.names.len()
                )));
            }
            for (i, p) in parts.iter().enumerate() {
                vals[i] = Some(p.to_string());
            }
        }
        let mut out = Vec::with_capacity(vals.len());
        for (i, v) in vals.into_iter().enumerate() {
            let Some(v) = v else {
                return Err(Error::Invalid(format!(
                    "--key {input:?}: no value for key column {}",
                    self.names[i]
                )));
            };
            let v = canonical(self.types[i], &v).map_err(|why| {
                Error::Invalid(format!(
                    "--key {input:?}: {v:?} is not a value of column {} (type {}): {why}",
                    self.names[i], self.type_names[i]
                ))
            })?;
            out.push(Some(v));
        }
        Ok(serde_json::to_vec(&out).unwrap_or_default())
    }

    /// A key as `col=val,...` for messages.
    pub fn show(&self, key: &[u8]) -> String {
        let vals: Vec<Option<String>> = serde_json::from_slice(key).unwrap_or_default();
        self.names
            .iter()
            .zip(vals)
            .map(|(c, v)| format!("{c}={}", v.as_deref().unwrap_or("NULL")))
            .collect::<Vec<_>>()
            .join(",")
    }
}

mod oid {
    pub const BOOL: u32 = 16;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const INT8: u32 = 20;
    pub const OID: u32 = 26;
    pub const NUMERIC: u32 = 1700;
    pub const BPCHAR: u32 = 1042;
    pub const UUID: u32 = 2950;
    pub const DATE: u32 = 1082;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
}

/// The canonical text of a value of type `type_oid`: equal values of the
/// type give equal text. Types without a rule keep their text.
pub fn canonical(type_oid: u32, text: &str) -> Result<String, String> {
    use oid::*;
    let t = text.trim();
    match type_oid {
        INT2 | INT4 | INT8 | OID => t
            .parse::<i64>()
            .map(|n| n.to_string())
            .map_err(|_| "not an integer".to_string()),
        NUMERIC => numeric(t),
        BOOL => match t.to_ascii_lowercase().as_str() {
            "t" | "true" | "yes" | "on" | "1" | "y" => Ok("t".into()),
            "f" | "false" | "no" | "off" | "0" | "n" => Ok("f".into()),
            _ => Err("not a boolean (t, true, f, false, ...)".into()),
        },
        UUID => {
            let hex: String = t.chars().filter(|c| !matches!(c, '-' | '{' | '}')).collect();
            if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err("not a UUID".into());
            }
            let h = hex.to_ascii_lowercase();
            Ok(format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]))
        }
        BPCHAR => Ok(text.trim_end_matches(' ').to_string()),
        DATE => special(t).map_or_else(
            || {
                NaiveDate::parse_from_str(t, "%Y-%m-%d")
                    .map(|d| d.format("%Y-%m-%d").to_string())
                    .map_err(|_| "not a date (YYYY-MM-DD)".to_string())
            },
            Ok,
        ),
        TIMESTAMP => special(t).map_or_else(
            || {
                naive(t)
                    .map(|d| d.format("%Y-%m-%d %H:%M:%S%.f").to_string())
                    .ok_or_else(|| "not a timestamp (YYYY-MM-DD HH:MM:SS[.ffffff])".to_string())
            },
            Ok,
        ),
        TIMESTAMPTZ => special(t).map_or_else(
            || {
                instant(t)
                    .map(|d| format!("{}+00", d.format("%Y-%m-%d %H:%M:%S%.f")))
                    .ok_or_else(|| {
                        "not a timestamp with time zone (YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM]|Z]; without an offset, UTC)"
                            .to_string()
                    })
            },
            Ok,
        ),
        _ => Ok(text.to_string()),
    }
}

fn special(t: &str) -> Option<String> {
    match t.to_ascii_lowercase().as_str() {
        "infinity" | "+infinity" => Some("infinity".into()),
        "-infinity" => Some("-infinity".into()),
        _ => None,
    }
}

pub(crate) fn naive(t: &str) -> Option<NaiveDateTime> {
    let t = t.replacen('T', " ", 1);
    NaiveDateTime::parse_from_str(&t, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(&t, "%Y-%m-%d %H:%M"))
        .ok()
}

/// A timestamp with an offset (`+01`, `+05:30`, `-0800`, `+05:53:28`, `Z`,
/// or none for UTC) as the UTC date-time it names.
pub(crate) fn instant(t: &str) -> Option<NaiveDateTime> {
    let t = t.trim();
    if let Some(rest) = t.strip_suffix('Z').or_else(|| t.strip_suffix('z')) {
        return naive(rest.trim_end());
    }
    // The offset starts at the last sign after the time of day.
    let time_start = t.find([' ', 'T', 't']).map_or(t.len(), |i| i + 1);
    let sign_at = t[time_start..].rfind(['+', '-']).map(|i| i + time_start);
    let Some(at) = sign_at else { return naive(t) };
    let (dt, off) = t.split_at(at);
    let sign: i64 = if off.starts_with('-') { -1 } else { 1 };
    let digits: Vec<&str> = off[1..].split(':').collect();
    let (h, m, s): (i64, i64, i64) = match digits.as_slice() {
        [hm] if hm.len() == 4 => (hm[..2].parse().ok()?, hm[2..].parse().ok()?, 0),
        [h] => (h.parse().ok()?, 0, 0),
        [h, m] => (h.parse().ok()?, m.parse().ok()?, 0),
        [h, m, s] => (h.parse().ok()?, m.parse().ok()?, s.parse().ok()?),
        _ => return None,
    };
    let offset: i64 = sign * (h * 3600 + m * 60 + s);
    naive(dt.trim_end()).map(|d| d - chrono::Duration::seconds(offset))
}

/// A decimal without a sign on zero, leading zeros or trailing fractional
/// zeros: `+01.500` is `1.5`, `-0.0` is `0`.
fn numeric(t: &str) -> Result<String, String> {
    let bad = || "not a number".to_string();
    match t.to_ascii_lowercase().as_str() {
        "nan" => return Ok("NaN".into()),
        "infinity" | "+infinity" | "inf" => return Ok("Infinity".into()),
        "-infinity" | "-inf" => return Ok("-Infinity".into()),
        _ => {}
    }
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (mantissa, exp) = match digits.find(['e', 'E']) {
        Some(i) => (&digits[..i], digits[i + 1..].parse::<i64>().map_err(|_| bad())?),
        None => (digits, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if (int.is_empty() && frac.is_empty()) || !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    // All digits, and where the decimal point falls among them.
    let all: String = format!("{int}{frac}");
    let point = int.len() as i64 + exp;
    let first = all.find(|c| c != '0');
    let Some(first) = first else { return Ok("0".into()) };
    let last = all.rfind(|c| c != '0').unwrap_or(first);
    let sig = &all[first..=last];
    let point = point - first as i64; // position of the point relative to sig
    let len = sig.len() as i64;
    let body = if point <= 0 {
        format!("0.{}{sig}", "0".repeat((-point) as usize))
    } else if point >= len {
        format!("{sig}{}", "0".repeat((point - len) as usize))
    } else {
        format!("{}.{}", &sig[..point as usize], &sig[point as usize..])
    };
    Ok(if neg { format!("-{body}") } else { body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_have_equal_text() {
        let same = |ty: u32, forms: &[&str]| {
            let want = canonical(ty, forms[0]).expect("parses");
            for f in forms {
                assert_eq!(canonical(ty, f).expect("parses"), want, "{f}");
            }
        };
        same(
            oid::TIMESTAMPTZ,
            &[
                "2026-01-05 09:00:00+00",
                "2026-01-05 10:00:00+01",
                "2026-01-05T09:00:00Z",
                "2026-01-05 09:00:00",
                "2026-01-05 04:00:00-05",
                "2026-01-05 14:30:00+05:30",
                "2026-01-05 14:30:00+0530",
            ],
        );
        same(
            oid::TIMESTAMPTZ,
            &["2026-01-05 09:00:00.5+00", "2026-01-05 10:00:00.500000+01"],
        );
        same(
            oid::TIMESTAMP,
            &["2026-01-05 09:00:00", "2026-01-05T09:00:00", "2026-01-05 09:00"],
        );
        same(oid::DATE, &["2026-01-05", " 2026-01-05"]);
        same(oid::NUMERIC, &["1", "1.0", "+1.000", "01", "1e0", "0.1e1"]);
        same(oid::NUMERIC, &["-0.5", "-.50", "-5e-1"]);
        same(oid::NUMERIC, &["0", "-0.0", "+000"]);
        same(oid::NUMERIC, &["9007199254740993", "9007199254740993.00"]);
        same(oid::INT8, &["7", "+7", "007", " 7"]);
        same(
            oid::UUID,
            &[
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
                "{a0eebc999c0b4ef8bb6d6bb9bd380a11}",
            ],
        );
        same(oid::BOOL, &["t", "true", "TRUE", "yes", "on", "1"]);
        assert_eq!(canonical(oid::NUMERIC, "120").expect("n"), "120");
        assert_eq!(canonical(oid::NUMERIC, "0.0012").expect("n"), "0.0012");
        assert_eq!(canonical(25, " x ").expect("text"), " x ");
    }

    #[test]
    fn values_that_do_not_fit_the_type_are_refused() {
        for (ty, v) in [
            (oid::INT4, "7a"),
            (oid::NUMERIC, "1.2.3"),
            (oid::UUID, "not-a-uuid"),
            (oid::DATE, "05/01/2026x"),
            (oid::TIMESTAMPTZ, "yesterday-ish"),
            (oid::BOOL, "maybe"),
        ] {
            assert!(canonical(ty, v).is_err(), "{v}");
        }
    }

    #[test]
    fn keys_parse_named_or_positional_and_name_the_column_that_does_not_fit() {
        let k = KeyColumns {
            names: vec!["a".into(), "b".into()],
            types: vec![oid::INT4, oid::TIMESTAMPTZ],
            type_names: vec!["integer".into(), "timestamp with time zone".into()],
        };
        let one = k.parse("a=+1,b=2026-01-05 10:00:00+01", "t").expect("named");
        assert_eq!(one, k.parse("1,2026-01-05T09:00:00Z", "t").expect("positional"));
        assert_eq!(one, br#"["1","2026-01-05 09:00:00+00"]"#);
        let err = k.parse("x,2026-01-05", "t").expect_err("not an integer").to_string();
        assert!(err.contains("column a (type integer)"), "{err}");
        for bad in ["1", "a=1", "c=1,a=2", "1,2,3"] {
            assert!(k.parse(bad, "t").is_err(), "{bad}");
        }
    }
}
