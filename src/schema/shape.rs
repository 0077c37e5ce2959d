//! Rows carried from the shape they were written in to another version's
//! shape, by attnum: the one rule every reader uses across DDL.
//!
//! Walking the versions in between, a column keeps its value through a
//! rename, disappears with a drop, and a column added later takes the value
//! PostgreSQL gave the rows that existed (`missing`, or NULL). A type change
//! keeps the text only where the new type prints every old value the same
//! way; anything else (a `USING` expression, a default computed per row by a
//! table rewrite) cannot be reproduced from the archive, and an exact
//! projection refuses it, naming the DDL and where it took effect. A lenient
//! projection (for display) carries the old text instead.

use super::{ColumnDef, SchemaRecord, Schemas};
use crate::event::Row;
use crate::Error;
use std::collections::HashMap;
use std::sync::Arc;

/// Where a target column's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// The source row's column of this name.
    Column(Arc<str>),
    /// A value every source row has (a column added after it).
    Value(Option<String>),
    /// Unknown: why, and what a lenient projection (for display) uses.
    Unknown(String, Box<Source>),
}

/// How to build a row of one version from a row of an earlier one.
#[derive(Debug, Clone)]
pub struct Projection {
    columns: Vec<(Arc<str>, Source)>,
    identity: bool,
    barrier: Option<String>,
}

impl Projection {
    /// Whether rows come out as they went in.
    pub fn is_identity(&self) -> bool {
        self.identity
    }

    /// Why no state from before it can be carried across at all (rows came
    /// or went without changes in the stream), if so.
    pub fn barrier(&self) -> Option<&str> {
        self.barrier.as_deref()
    }

    /// Whether some value of a row crossing it cannot be known: only a
    /// snapshot taken after the DDL makes the table restorable again.
    pub fn has_unknown(&self) -> bool {
        self.columns.iter().any(|(_, s)| matches!(s, Source::Unknown(..)))
    }

    /// The row in the target shape. Columns the row leaves out (unchanged
    /// TOAST) stay out, under their new names. A value the archive cannot
    /// know is marked (see [`unknown`]): it is an error only if it reaches
    /// a result, so a row deleted or rewritten since costs nothing.
    pub fn apply(&self, row: &Row) -> Row {
        if self.identity {
            return row.clone();
        }
        self.build(row, false)
    }

    /// The row in the target shape for display: a value the archive cannot
    /// know keeps its old text (or is NULL for a column added since).
    pub fn apply_lenient(&self, row: &Row) -> Row {
        if self.identity {
            return row.clone();
        }
        self.build(row, true)
    }

    fn build(&self, row: &Row, lenient: bool) -> Row {
        fn value(src: &Source, row: &Row, lenient: bool) -> Option<Option<String>> {
            match src {
                Source::Column(from) => row.0.iter().find(|(n, _)| n == from).map(|(_, v)| v.clone()),
                Source::Value(v) => Some(v.clone()),
                Source::Unknown(_, fallback) if lenient => value(fallback, row, lenient),
                Source::Unknown(why, _) => Some(Some(unknown_value(why))),
            }
        }
        let mut out = Vec::with_capacity(self.columns.len());
        for (name, src) in &self.columns {
            if let Some(v) = value(src, row, lenient) {
                out.push((name.clone(), v));
            }
        }
        Row(out)
    }

    /// The target name of the source column `from`, if it survives.
    pub fn rename(&self, from: &str) -> Option<Arc<str>> {
        self.columns.iter().find_map(|(name, src)| match src {
            Source::Column(f) if &**f == from => Some(name.clone()),
            _ => None,
        })
    }
}

/// Marks a value the archive cannot know. PostgreSQL text never holds a
/// NUL character, so no real value starts with it.
const UNKNOWN: char = '\0';

/// A value marked as unknown, for the reason `why`.
pub fn unknown_value(why: &str) -> String {
    format!("{UNKNOWN}{why}")
}

/// The reason a marked value cannot be known, or `None` for a real value.
pub fn unknown(value: &str) -> Option<&str> {
    value.strip_prefix(UNKNOWN)
}

/// The first unknown value of `row`: why it cannot be known.
pub fn first_unknown(row: &Row) -> Option<&str> {
    row.0.iter().find_map(|(_, v)| v.as_deref().and_then(unknown))
}

mod oid {
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const INT8: u32 = 20;
    pub const NUMERIC: u32 = 1700;
    pub const TEXT: u32 = 25;
    pub const VARCHAR: u32 = 1043;
    pub const UUID: u32 = 2950;
    pub const DATE: u32 = 1082;
    pub const JSONB: u32 = 3802;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
}

/// Whether `ALTER COLUMN ... TYPE` from `a` to `b` (without `USING`) leaves
/// the text of every value as it was: widening integers, unconstrained
/// numeric or text targets, larger length or precision limits.
fn text_preserving(a: &ColumnDef, b: &ColumnDef) -> bool {
    use oid::*;
    let (from, to) = (a.type_oid, b.type_oid);
    let widened = |unlimited_or_larger: bool| b.type_modifier == -1 || unlimited_or_larger;
    if from == to {
        return match from {
            // varchar(n): the modifier is n + 4; values fit and print the same.
            VARCHAR => widened(a.type_modifier != -1 && b.type_modifier >= a.type_modifier),
            // numeric(p, s): same scale, no smaller precision.
            NUMERIC => widened(
                a.type_modifier != -1
                    && (a.type_modifier & 0xffff) == (b.type_modifier & 0xffff)
                    && (b.type_modifier >> 16) >= (a.type_modifier >> 16),
            ),
            // Fractional-second precision: only ever more of it.
            TIMESTAMP | TIMESTAMPTZ => widened(a.type_modifier != -1 && b.type_modifier >= a.type_modifier),
            _ => a.type_modifier == b.type_modifier,
        };
    }
    match (from, to) {
        (INT2, INT4 | INT8) | (INT4, INT8) => true,
        (INT2 | INT4 | INT8, NUMERIC) => b.type_modifier == -1,
        (INT2 | INT4 | INT8 | NUMERIC | TEXT | VARCHAR | UUID | DATE | JSONB, TEXT) => true,
        (INT2 | INT4 | INT8 | NUMERIC | TEXT | UUID | DATE | JSONB, VARCHAR) => b.type_modifier == -1,
        _ => false,
    }
}

fn words(command: &str) -> impl Iterator<Item = &str> {
    command.split(|c: char| !c.is_alphanumeric() && c != '_' && c != '$')
}

fn has_using(command: &str) -> bool {
    words(command).any(|w| w.eq_ignore_ascii_case("using"))
}

/// Whether the statement names the column (a superset of the columns a
/// `USING` expression can have converted).
fn mentions(command: &str, column: &str) -> bool {
    words(command).any(|w| w.eq_ignore_ascii_case(column))
}

fn refusal(table: &str, at: &SchemaRecord, what: String) -> String {
    let ddl = at.ddl.as_ref().map_or_else(
        || format!("the schema change to version {}", at.version),
        |d| format!("{:?}", d.describe()),
    );
    format!(
        "{table}: cannot carry rows across {ddl} at {}: {what}; choose a point before {} or one after a snapshot taken since",
        at.commit_lsn, at.commit_lsn
    )
}

/// How rows of `table` written under version `from` look under version
/// `to` (not earlier than `from`).
pub fn projection(schemas: &Schemas, table: &str, from: u32, to: u32) -> Result<Projection, Error> {
    let missing = |v: u32| Error::NotInArchive(format!("{table} has no schema version {v} in the archive"));
    let first = schemas.version(table, from).ok_or_else(|| missing(from))?;
    let mut state: Vec<(ColumnDef, Source)> = first
        .columns
        .iter()
        .map(|c| (c.clone(), Source::Column(Arc::from(c.name.as_str()))))
        .collect();
    let mut changed = false;
    let mut barrier = None;
    let mut previous = first;
    for v in schemas
        .versions(table)
        .iter()
        .filter(|s| s.version > from && s.version <= to)
    {
        changed = true;
        let ddl = v.ddl.as_ref();
        if v.dropped {
            // The table's history ended here and began again under the
            // same name: only a snapshot taken since says what it held.
            // A table that left the publication is the same table, whose
            // columns go on (its version keeps them). After a table dropped
            // or renamed away, the one of that name is another table: its
            // columns are taken for the old ones of the same name (so a
            // row's history follows its key), never by attnum.
            barrier = Some(refusal(table, v, ended(v).because().to_string()));
            if !left_publication(v) {
                for (c, _) in &mut state {
                    c.attnum = None;
                }
            }
            previous = v;
            continue;
        }
        let rewritten = ddl.is_some_and(|d| d.rewritten);
        // Attaching a partition adds its rows to the table, detaching one
        // takes them away, and neither is a change in the stream.
        let moved_rows = v.meta.partitions != previous.meta.partitions
            && ddl.is_some_and(|d| mentions(&d.command, "attach") || mentions(&d.command, "detach"));
        previous = v;
        if moved_rows {
            let why = refusal(
                table,
                v,
                "it attached or detached a partition, which adds or removes rows without a change the archive sees"
                    .to_string(),
            );
            barrier = Some(why.clone());
            state = v
                .columns
                .iter()
                .map(|c| {
                    let fallback = state
                        .iter()
                        .find(|(p, _)| p.same_column(c))
                        .map_or(Source::Value(None), |(_, s)| s.clone());
                    (c.clone(), Source::Unknown(why.clone(), Box::new(fallback)))
                })
                .collect();
            continue;
        }
        let mut next = Vec::with_capacity(v.columns.len());
        for c in &v.columns {
            let src = match state.iter().find(|(p, _)| p.same_column(c)) {
                Some((p, src)) => {
                    let retyped = p.type_oid != c.type_oid || p.type_modifier != c.type_modifier;
                    let using = ddl.is_some_and(|d| has_using(&d.command));
                    // A rewrite with USING may have converted a column to
                    // its own type: any column the statement names.
                    let converted = rewritten
                        && using
                        && ddl.is_some_and(|d| mentions(&d.command, &p.name) || mentions(&d.command, &c.name));
                    // A generated column's expression changed (`SET
                    // EXPRESSION`: a stored one's rewrites the table, a
                    // virtual one is computed as it is read): every row's
                    // value is computed again, with no change in the stream.
                    // (A column it reads renamed changes its text only.)
                    let recomputed = match &c.generated {
                        Some(g) if g.kind == "virtual" => ddl.is_some_and(|d| mentions(&d.command, "expression")),
                        _ => rewritten,
                    };
                    let regenerated = recomputed
                        && matches!((&p.generated, &c.generated), (Some(a), Some(b)) if a.expression != b.expression);
                    if regenerated {
                        Source::Unknown(
                            refusal(
                                table,
                                v,
                                format!(
                                    "it computed generated column {} again by a new expression, {}, which the archive does not hold",
                                    c.name,
                                    c.generated.as_ref().map_or("", |g| g.expression.as_str())
                                ),
                            ),
                            Box::new(src.clone()),
                        )
                    } else if let (false, Some(oid)) = (retyped, p.type_changing_values(c)) {
                        Source::Unknown(
                            refusal(
                                table,
                                v,
                                format!(
                                    "it changed a type {} ({}) is written in (type OID {oid}: an enum label renamed, \
                                     or a composite type's attributes added or dropped), which changes the text of values \
                                     the archive holds",
                                    c.name, c.type_name
                                ),
                            ),
                            Box::new(src.clone()),
                        )
                    } else if (retyped && (using || !text_preserving(p, c))) || converted {
                        Source::Unknown(
                            refusal(
                                table,
                                v,
                                format!(
                                    "it converted {} ({} to {}) and waly cannot reproduce that conversion",
                                    c.name, p.type_name, c.type_name
                                ),
                            ),
                            Box::new(src.clone()),
                        )
                    } else {
                        src.clone()
                    }
                }
                None if rewritten && c.missing.is_none() && (c.default.is_some() || c.generated.is_some()) => {
                    Source::Unknown(
                        refusal(
                            table,
                            v,
                            format!(
                                "it added column {} with values computed row by row (the table was rewritten), which the archive does not hold",
                                c.name
                            ),
                        ),
                        Box::new(Source::Value(None)),
                    )
                }
                None => Source::Value(c.missing.clone()),
            };
            next.push((c.clone(), src));
        }
        state = next;
    }
    let identity = !changed
        || (state.len() == first.columns.len()
            && state
                .iter()
                .zip(&first.columns)
                .all(|((c, s), f)| c.name == f.name && *s == Source::Column(Arc::from(f.name.as_str()))));
    Ok(Projection {
        columns: state
            .into_iter()
            .map(|(c, s)| (Arc::from(c.name.as_str()), s))
            .collect(),
        identity,
        barrier,
    })
}

/// Projections of one table's rows into one target version, built once per
/// source version.
#[derive(Debug)]
pub struct Shaper<'a> {
    schemas: &'a Schemas,
    table: String,
    target: u32,
    cache: HashMap<u32, Projection>,
}

impl<'a> Shaper<'a> {
    /// Rows of `table` into the shape of version `target`.
    pub fn new(schemas: &'a Schemas, table: &str, target: u32) -> Self {
        Shaper {
            schemas,
            table: table.to_string(),
            target,
            cache: HashMap::new(),
        }
    }

    /// The target version.
    pub fn target(&self) -> u32 {
        self.target
    }

    /// The projection from version `from`.
    pub fn from(&mut self, from: u32) -> Result<&Projection, Error> {
        if !self.cache.contains_key(&from) {
            let p = projection(self.schemas, &self.table, from, self.target)?;
            self.cache.insert(from, p);
        }
        self.cache
            .get(&from)
            .ok_or_else(|| Error::NotInArchive(format!("{} has no schema version {from}", self.table)))
    }

    /// `row`, written under version `from`, in the target shape.
    pub fn row(&mut self, from: u32, row: &Row) -> Result<Row, Error> {
        Ok(self.from(from)?.apply(row))
    }
}

/// Where the restore point sits relative to a drop: the error for a table
/// whose version in force is `dropped`.
pub fn dropped_error(table: &str, v: &SchemaRecord) -> Error {
    let how = v
        .ddl
        .as_ref()
        .map_or_else(|| "DROP TABLE".to_string(), |d| d.describe());
    Error::NotInArchive(format!(
        "{table} {} at {} ({how}); choose a point before it, or one after a snapshot taken since",
        ended(v).what(),
        v.commit_lsn
    ))
}

/// Whether `table`'s rows cannot be carried into schema version `version`
/// from the one before: a DDL whose effect on existing rows the stream
/// does not carry (a value converted, a default computed per row, a
/// partition attached or detached), or the table's history ending there
/// (dropped, renamed away, out of the publication). Only a snapshot taken
/// after it says what the table holds.
pub fn breaks_rows(schemas: &Schemas, table: &str, version: u32) -> bool {
    let Some(v) = schemas.version(table, version) else {
        return false;
    };
    version > 1
        && (v.dropped
            || projection(schemas, table, version - 1, version).is_ok_and(|p| p.has_unknown() || p.barrier().is_some()))
}

/// Why a version marked dropped ended its table's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Dropped: the version has no columns, and a table of that name
    /// later is another table.
    Dropped,
    /// Renamed away (a table renamed or moved to another schema, or its
    /// schema renamed): as dropped for this name; the table goes on under
    /// its new one, archived from a snapshot.
    Renamed,
    /// A publication command left it unpublished, or published in part.
    LeftPublication,
    /// Attached as a partition of a table published through its root: its
    /// rows go on as the root's.
    Attached,
    /// Made unlogged: PostgreSQL streams no change of an unlogged table.
    Unlogged,
}

impl Ended {
    /// Whether the table goes on (its version keeps its columns): only
    /// its archive stopped.
    pub fn table_goes_on(self) -> bool {
        matches!(self, Ended::LeftPublication | Ended::Attached | Ended::Unlogged)
    }

    /// What happened to the table, for a refusal: "public.t {what} at ...".
    pub fn what(self) -> &'static str {
        match self {
            Ended::Dropped => "was dropped",
            Ended::Renamed => {
                "was renamed away (the archive holds it under its new name, from a snapshot, after that)"
            }
            Ended::LeftPublication => "left the publication (the archive holds none of its changes after that)",
            Ended::Attached => {
                "became a partition published through its root (the archive holds its rows as the root's after that)"
            }
            Ended::Unlogged => {
                "was made unlogged (PostgreSQL streams no change of an unlogged table: the archive holds none after that)"
            }
        }
    }

    /// What `waly schema` says of the version.
    pub fn label(self) -> &'static str {
        match self {
            Ended::Dropped => "table dropped",
            Ended::Renamed => "table renamed away: archived under its new name from here, from a snapshot",
            Ended::LeftPublication => "table left the publication: not archived from here until a snapshot",
            Ended::Attached => {
                "table attached as a partition published through its root: archived as the root's from here"
            }
            Ended::Unlogged => "table made unlogged: not archived from here until a snapshot after it is logged again",
        }
    }

    /// Why the rows cannot be carried across, for a barrier.
    fn because(self) -> &'static str {
        match self {
            Ended::Dropped => "the table was dropped there, and the archive holds a table of that name again only from a snapshot taken since",
            Ended::Renamed => "the table was renamed away there, and the archive holds a table of that name again only from a snapshot taken since",
            Ended::LeftPublication => "the table left the publication there, and the archive holds none of its changes until a snapshot taken after it was published whole again",
            Ended::Attached => "the table became a partition published through its root there, and the archive holds its rows as the root's until a snapshot taken after it was detached",
            Ended::Unlogged => "the table was made unlogged there, and the archive holds none of its changes until a snapshot taken after it was made logged again",
        }
    }
}

/// Why version `v`, marked dropped, ended its table's history. A version
/// `waly run` records for a table that is no longer published whole as
/// itself keeps the table's columns and names the command: a publication
/// command, or an `ALTER TABLE` (a partition attached, or `SET UNLOGGED`).
/// A table dropped or renamed away has no columns: renamed when the
/// command is not a `DROP` (`ALTER TABLE ... RENAME` or `SET SCHEMA`,
/// `ALTER SCHEMA ... RENAME`).
pub fn ended(v: &SchemaRecord) -> Ended {
    match v.ddl.as_ref() {
        Some(d) if d.tag.ends_with("PUBLICATION") => Ended::LeftPublication,
        Some(d) if !v.columns.is_empty() && mentions(&d.command, "attach") => Ended::Attached,
        Some(d) if !v.columns.is_empty() && mentions(&d.command, "unlogged") => Ended::Unlogged,
        Some(_) if !v.columns.is_empty() => Ended::LeftPublication,
        Some(d) if !d.tag.starts_with("DROP") => Ended::Renamed,
        _ => Ended::Dropped,
    }
}

/// Whether a version marked dropped ended its table's history while the
/// table goes on, no longer published whole as itself (see [`ended`]).
pub fn left_publication(v: &SchemaRecord) -> bool {
    v.dropped && ended(v).table_goes_on()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Ddl;
    use crate::Lsn;

    fn col(attnum: i16, name: &str, type_oid: u32, type_name: &str) -> ColumnDef {
        ColumnDef {
            attnum: Some(attnum),
            name: name.into(),
            type_name: type_name.into(),
            type_oid,
            type_modifier: -1,
            ..ColumnDef::default()
        }
    }

    fn version(v: u32, columns: Vec<ColumnDef>, command: &str, rewritten: bool) -> SchemaRecord {
        SchemaRecord {
            commit_lsn: Lsn(u64::from(v) * 100),
            table: "public.t".into(),
            version: v,
            columns,
            commit_time: None,
            source: Some("ddl".into()),
            meta: Default::default(),
            ddl: Some(Ddl {
                tag: "ALTER TABLE".into(),
                command: command.into(),
                rewritten,
                ..Ddl::default()
            }),
            dropped: false,
            sealed: None,
        }
    }

    fn row(pairs: &[(&str, Option<&str>)]) -> Row {
        Row(pairs
            .iter()
            .map(|(n, v)| (Arc::from(*n), v.map(str::to_string)))
            .collect())
    }

    #[test]
    fn a_rename_carries_values_a_drop_drops_them_an_add_takes_the_missing_value() {
        let mut s = Schemas::default();
        s.insert(version(
            1,
            vec![
                col(1, "id", 23, "integer"),
                col(2, "email", 25, "text"),
                col(3, "x", 25, "text"),
            ],
            "",
            false,
        ));
        s.insert(version(
            2,
            vec![
                col(1, "id", 23, "integer"),
                col(2, "email_address", 25, "text"),
                col(3, "x", 25, "text"),
            ],
            "alter table t rename email to email_address",
            false,
        ));
        let mut plan = col(4, "plan", 25, "text");
        plan.missing = Some("free".into());
        plan.default = Some("'free'::text".into());
        s.insert(version(
            3,
            vec![col(1, "id", 23, "integer"), col(2, "email_address", 25, "text"), plan],
            "alter table t drop x, add plan text default 'free'",
            false,
        ));
        let p = projection(&s, "public.t", 1, 3).expect("a projection");
        let got = p.apply(&row(&[("id", Some("1")), ("email", Some("a@x")), ("x", Some("gone"))]));
        assert_eq!(
            got,
            row(&[
                ("id", Some("1")),
                ("email_address", Some("a@x")),
                ("plan", Some("free"))
            ])
        );
        assert_eq!(p.rename("email").as_deref(), Some("email_address"));
        assert!(p.rename("x").is_none());
        assert!(projection(&s, "public.t", 3, 3).expect("same").is_identity());
        assert!(!p.is_identity());
    }

    #[test]
    fn retypes_carry_text_only_where_every_value_prints_the_same() {
        let mut s = Schemas::default();
        s.insert(version(
            1,
            vec![col(1, "id", 23, "integer"), col(2, "n", 23, "integer")],
            "",
            false,
        ));
        s.insert(version(
            2,
            vec![col(1, "id", 20, "bigint"), col(2, "n", 23, "integer")],
            "alter table t alter id type bigint",
            true,
        ));
        s.insert(version(
            3,
            vec![col(1, "id", 20, "bigint"), col(2, "n", 1700, "numeric")],
            "alter table t alter n type numeric using n * 2",
            true,
        ));
        let widen = projection(&s, "public.t", 1, 2).expect("a projection");
        let exact = row(&[("id", Some("7")), ("n", Some("3"))]);
        assert_eq!(widen.apply(&exact), exact, "int to bigint keeps the text");
        assert!(first_unknown(&exact).is_none());
        let using = projection(&s, "public.t", 1, 3).expect("a projection");
        let got = using.apply(&exact);
        assert_eq!(
            got.0[0],
            (Arc::from("id"), Some("7".to_string())),
            "the other column is known"
        );
        let err = first_unknown(&got).expect("USING cannot be reproduced");
        assert!(err.contains("using n * 2") && err.contains("0/12C"), "{err}");
        assert_eq!(using.apply_lenient(&exact), exact, "for display, the old text");
        // Rows written after the retype are not affected.
        assert!(projection(&s, "public.t", 3, 3).expect("same").is_identity());
    }

    #[test]
    fn a_column_added_by_a_rewrite_with_a_per_row_default_cannot_be_known() {
        let mut s = Schemas::default();
        s.insert(version(1, vec![col(1, "id", 23, "integer")], "", false));
        let mut at = col(2, "at", 1184, "timestamp with time zone");
        at.default = Some("clock_timestamp()".into());
        at.not_null = true;
        s.insert(version(
            2,
            vec![col(1, "id", 23, "integer"), at],
            "alter table t add at timestamptz not null default clock_timestamp()",
            true,
        ));
        let p = projection(&s, "public.t", 1, 2).expect("a projection");
        let got = p.apply(&row(&[("id", Some("1"))]));
        let err = first_unknown(&got).expect("refused");
        assert!(err.contains("added column at"), "{err}");
    }

    #[test]
    fn a_history_ends_for_the_reason_its_command_and_columns_say() {
        let ended_by = |tag: &str, command: &str, columns: Vec<ColumnDef>| {
            let mut v = version(2, columns, command, false);
            v.dropped = true;
            if let Some(d) = v.ddl.as_mut() {
                d.tag = tag.into();
            }
            ended(&v)
        };
        let cols = || vec![col(1, "id", 23, "integer")];
        assert_eq!(ended_by("DROP TABLE", "DROP TABLE t", vec![]), Ended::Dropped);
        assert_eq!(ended_by("DROP SCHEMA", "DROP SCHEMA s CASCADE", vec![]), Ended::Dropped);
        assert_eq!(
            ended_by("ALTER TABLE", "ALTER TABLE t RENAME TO u", vec![]),
            Ended::Renamed
        );
        assert_eq!(
            ended_by("ALTER TABLE", "ALTER TABLE t SET SCHEMA o", vec![]),
            Ended::Renamed
        );
        assert_eq!(
            ended_by("ALTER SCHEMA", "ALTER SCHEMA s RENAME TO s2", vec![]),
            Ended::Renamed
        );
        assert_eq!(
            ended_by("ALTER", "renamed to o.t (not recorded)", vec![]),
            Ended::Renamed
        );
        assert_eq!(
            ended_by("ALTER PUBLICATION", "ALTER PUBLICATION w DROP TABLE t", cols()),
            Ended::LeftPublication
        );
        assert_eq!(
            ended_by(
                "ALTER TABLE",
                "ALTER TABLE p ATTACH PARTITION t FOR VALUES IN (1)",
                cols()
            ),
            Ended::Attached
        );
        assert_eq!(
            ended_by("ALTER TABLE", "ALTER TABLE t SET UNLOGGED", cols()),
            Ended::Unlogged
        );
        let mut v = version(2, vec![], "", false);
        v.dropped = true;
        v.ddl = None;
        assert_eq!(ended(&v), Ended::Dropped);
        // Only a table no longer published whole goes on.
        assert!(!Ended::Renamed.table_goes_on() && !Ended::Dropped.table_goes_on());
        assert!(Ended::Attached.table_goes_on() && Ended::Unlogged.table_goes_on());
    }
}
