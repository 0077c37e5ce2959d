//! Names of PostgreSQL types as `format_type(oid, typmod)` prints them, for
//! the built-in types; other types are named by pgoutput's Type messages.

/// The `format_type` name of a built-in type without its modifier, or `None`.
fn builtin_base(oid: u32) -> Option<&'static str> {
    Some(match oid {
        16 => "boolean",
        17 => "bytea",
        18 => "\"char\"",
        19 => "name",
        20 => "bigint",
        21 => "smallint",
        23 => "integer",
        24 => "regproc",
        25 => "text",
        26 => "oid",
        28 => "xid",
        114 => "json",
        142 => "xml",
        600 => "point",
        601 => "lseg",
        602 => "path",
        603 => "box",
        604 => "polygon",
        628 => "line",
        650 => "cidr",
        700 => "real",
        701 => "double precision",
        718 => "circle",
        774 => "macaddr8",
        790 => "money",
        829 => "macaddr",
        869 => "inet",
        1033 => "aclitem",
        1042 => "character",
        1043 => "character varying",
        1082 => "date",
        1083 => "time without time zone",
        1114 => "timestamp without time zone",
        1184 => "timestamp with time zone",
        1186 => "interval",
        1266 => "time with time zone",
        1560 => "bit",
        1562 => "bit varying",
        1700 => "numeric",
        2205 => "regclass",
        2206 => "regtype",
        2950 => "uuid",
        3220 => "pg_lsn",
        3614 => "tsvector",
        3615 => "tsquery",
        3802 => "jsonb",
        3904 => "int4range",
        3906 => "numrange",
        3908 => "tsrange",
        3910 => "tstzrange",
        3912 => "daterange",
        3926 => "int8range",
        4072 => "jsonpath",
        4451 => "int4multirange",
        4532 => "nummultirange",
        4533 => "tsmultirange",
        4534 => "tstzmultirange",
        4535 => "datemultirange",
        4536 => "int8multirange",
        _ => return None,
    })
}

/// The element type of a built-in array type.
fn builtin_array_element(oid: u32) -> Option<u32> {
    Some(match oid {
        1000 => 16,
        1001 => 17,
        1002 => 18,
        1003 => 19,
        1016 => 20,
        1005 => 21,
        1007 => 23,
        1009 => 25,
        1028 => 26,
        199 => 114,
        143 => 142,
        1017 => 600,
        651 => 650,
        1021 => 700,
        1022 => 701,
        791 => 790,
        1040 => 829,
        1041 => 869,
        1014 => 1042,
        1015 => 1043,
        1182 => 1082,
        1183 => 1083,
        1115 => 1114,
        1185 => 1184,
        1187 => 1186,
        1270 => 1266,
        1561 => 1560,
        1563 => 1562,
        1231 => 1700,
        2951 => 2950,
        3221 => 3220,
        3643 => 3614,
        3807 => 3802,
        3905 => 3904,
        3907 => 3906,
        3909 => 3908,
        3911 => 3910,
        3913 => 3912,
        3927 => 3926,
        _ => return None,
    })
}

/// Applies a type modifier the way `format_type` does.
fn with_modifier(oid: u32, base: &str, typmod: i32) -> String {
    if typmod < 0 {
        // An unconstrained `character` is the internal `bpchar`.
        return if oid == 1042 { "bpchar".into() } else { base.into() };
    }
    match oid {
        1042 | 1043 => format!("{base}({})", typmod - 4),
        1560 | 1562 => format!("{base}({typmod})"),
        1700 => {
            let t = typmod - 4;
            let precision = (t >> 16) & 0xffff;
            // The scale is an 11-bit signed number since PostgreSQL 15.
            let scale = ((t & 0x7ff) ^ 1024) - 1024;
            format!("numeric({precision},{scale})")
        }
        1083 => format!("time({typmod}) without time zone"),
        1266 => format!("time({typmod}) with time zone"),
        1114 => format!("timestamp({typmod}) without time zone"),
        1184 => format!("timestamp({typmod}) with time zone"),
        1186 if typmod & 0xffff != 0xffff => format!("interval({})", typmod & 0xffff),
        _ => base.into(),
    }
}

/// The name of a built-in type with its modifier, as `format_type` prints it.
pub fn builtin_name(oid: u32, typmod: i32) -> Option<String> {
    if let Some(base) = builtin_base(oid) {
        return Some(with_modifier(oid, base, typmod));
    }
    let elem = builtin_array_element(oid)?;
    let base = builtin_base(elem)?;
    Some(format!("{}[]", with_modifier(elem, base, typmod)))
}

/// The name of a type described by a pgoutput Type message: qualified unless
/// it lives in `public` or `pg_catalog`; array types (`_name`) as `name[]`.
pub fn custom_name(namespace: &str, name: &str) -> String {
    let (base, array) = match name.strip_prefix('_') {
        Some(elem) => (elem, "[]"),
        None => (name, ""),
    };
    let quoted = |s: &str| {
        if s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !s.starts_with(|c: char| c.is_ascii_digit())
        {
            s.to_string()
        } else {
            format!("\"{}\"", s.replace('"', "\"\""))
        }
    };
    if namespace == "public" || namespace == "pg_catalog" {
        format!("{}{array}", quoted(base))
    } else {
        format!("{}.{}{array}", quoted(namespace), quoted(base))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_format_type_for_common_types() {
        let n = |oid, m| builtin_name(oid, m).unwrap_or_default();
        assert_eq!(n(23, -1), "integer");
        assert_eq!(n(1043, 14), "character varying(10)");
        assert_eq!(n(1042, 7), "character(3)");
        assert_eq!(n(1042, -1), "bpchar");
        assert_eq!(n(1700, ((12 << 16) | 4) + 4), "numeric(12,4)");
        assert_eq!(n(1700, -1), "numeric");
        assert_eq!(n(1184, 3), "timestamp(3) with time zone");
        assert_eq!(n(1007, -1), "integer[]");
        assert_eq!(n(1015, 9), "character varying(5)[]");
        assert_eq!(n(1560, 8), "bit(8)");
        assert_eq!(builtin_name(99999, -1), None);
    }

    #[test]
    fn names_custom_types() {
        assert_eq!(custom_name("public", "mood"), "mood");
        assert_eq!(custom_name("public", "_mood"), "mood[]");
        assert_eq!(custom_name("app", "Money Bag"), "app.\"Money Bag\"");
    }
}
