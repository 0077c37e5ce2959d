//! Quoting of identifiers and literals, so that no slot, publication or table
//! name can change the meaning of a command waly sends.

use crate::error::Error;

/// Quotes an identifier: `a"b` becomes `"a""b"`. NUL cannot be sent at all.
pub fn ident(name: &str) -> Result<String, Error> {
    if name.contains('\0') {
        return Err(Error::Invalid(format!("identifier {name:?} contains a NUL byte")));
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

/// Validates a replication slot name (PostgreSQL allows only lower-case
/// letters, digits and `_`, at most 63 bytes) and returns it quoted. The
/// replication command grammar cannot escape a `"` inside a name, so names
/// are checked here rather than trusted to quoting.
pub fn slot(name: &str) -> Result<String, Error> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        return Err(Error::Invalid(format!(
            "invalid replication slot name {name:?}: use 1 to 63 lower-case letters, digits and underscores"
        )));
    }
    Ok(format!("\"{name}\""))
}

/// Quotes a string literal for SQL. Backslashes force the `E''` form so the
/// result means the same whatever `standard_conforming_strings` is.
pub fn literal(value: &str) -> Result<String, Error> {
    if value.contains('\0') {
        return Err(Error::Invalid(format!("literal {value:?} contains a NUL byte")));
    }
    let quoted = value.replace('\'', "''");
    Ok(if value.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    })
}

/// Quotes a string literal for the replication command grammar, which knows
/// only `'...'` with doubled quotes (backslashes are plain characters there).
pub fn replication_literal(value: &str) -> Result<String, Error> {
    if value.contains('\0') {
        return Err(Error::Invalid(format!("literal {value:?} contains a NUL byte")));
    }
    Ok(format!("'{}'", value.replace('\'', "''")))
}

/// A table's own rows in a FROM clause, given its quoted name and
/// `relkind`: `ONLY t`, not the rows of tables inheriting from it (whose
/// changes the stream gives as theirs), unless it is partitioned (its rows
/// are its partitions', published through their root). Snapshots and the
/// restore drill read the same rows this way.
pub fn own_rows(quoted: &str, relkind: Option<&str>) -> String {
    match relkind {
        Some("p") => quoted.to_string(),
        _ => format!("ONLY {quoted}"),
    }
}

/// A qualified name such as `public.users`, split into schema and table; an
/// unqualified name means `public`. Quoted parts (`"My Schema"."T.x"`) keep
/// their case and dots.
pub fn split_qualified(name: &str) -> Result<(String, String), Error> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = name.chars().peekable();
    let mut quoted_part = false;
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted_part = true;
                loop {
                    match chars.next() {
                        None => return Err(Error::Invalid(format!("unterminated quote in table name {name:?}"))),
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            cur.push('"');
                        }
                        Some('"') => break,
                        Some(c) => cur.push(c),
                    }
                }
            }
            '.' => {
                parts.push(std::mem::take(&mut cur));
                quoted_part = false;
            }
            c if quoted_part => {
                return Err(Error::Invalid(format!(
                    "unexpected {c:?} after a quoted name in {name:?}"
                )))
            }
            c => cur.extend(c.to_lowercase()),
        }
    }
    parts.push(cur);
    if parts.iter().any(|p| p.is_empty()) {
        return Err(Error::Invalid(format!("invalid table name {name:?}")));
    }
    match <[String; 2]>::try_from(parts) {
        Ok([schema, table]) => Ok((schema, table)),
        Err(parts) if parts.len() == 1 => Ok(("public".into(), parts.into_iter().next().unwrap_or_default())),
        Err(_) => Err(Error::Invalid(format!(
            "invalid table name {name:?}: expected table or schema.table"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_cannot_break_out() {
        assert_eq!(ident("waly").ok().as_deref(), Some("\"waly\""));
        assert_eq!(
            ident("a\"; DROP TABLE x; --").ok().as_deref(),
            Some("\"a\"\"; DROP TABLE x; --\"")
        );
        assert!(ident("a\0b").is_err());
    }

    #[test]
    fn slot_names_are_validated_not_escaped() {
        assert_eq!(slot("waly_1").ok().as_deref(), Some("\"waly_1\""));
        for bad in ["", "Waly", "a b", "x\" LOGICAL pgoutput; --", &"a".repeat(64)] {
            assert!(slot(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn literals_cannot_break_out() {
        assert_eq!(literal("it's").ok().as_deref(), Some("'it''s'"));
        assert_eq!(literal("a\\' OR 1=1").ok().as_deref(), Some("E'a\\\\'' OR 1=1'"));
        assert_eq!(replication_literal("x' y").ok().as_deref(), Some("'x'' y'"));
    }

    #[test]
    fn splits_qualified_names() {
        let ok = |s: &str| split_qualified(s).unwrap_or_default();
        assert_eq!(ok("users"), ("public".into(), "users".into()));
        assert_eq!(ok("Sales.Orders"), ("sales".into(), "orders".into()));
        assert_eq!(ok("\"My S\".\"a.\"\"b\""), ("My S".into(), "a.\"b".into()));
        assert!(split_qualified("a.b.c").is_err());
        assert!(split_qualified("a.").is_err());
        assert!(split_qualified("\"open").is_err());
    }
}
