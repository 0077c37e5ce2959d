//! One Parquet file of one table's changes: rows buffered into row groups
//! and written to a local temporary file, which the export then uploads.

use super::value::{array_elements, Kind, Value};
use parquet::basic::{Compression, Encoding, LogicalType, Repetition, TimeUnit, Type as Physical, ZstdLevel};
use parquet::data_type::{ByteArray, FixedLenByteArray};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::{SerializedColumnWriter, SerializedFileWriter};
use parquet::schema::types::{ColumnPath, Type, TypePtr};
use std::sync::Arc;

/// A data column of a file.
#[derive(Debug, Clone)]
pub struct OutColumn {
    /// Its name in the file (the newest the export knows).
    pub name: String,
    /// What it becomes.
    pub kind: Kind,
    /// Names it had before (renames), oldest first.
    pub earlier_names: Vec<String>,
}

/// A row of the change log.
#[derive(Debug, Clone)]
pub struct OutRow {
    /// `insert`, `update`, `delete`, `truncate` or `snapshot`.
    pub op: &'static str,
    /// The commit LSN.
    pub commit_lsn: u64,
    /// The ordinal in the transaction (-1 for a snapshot row).
    pub seq: i64,
    /// The transaction id (0 for a snapshot row).
    pub xid: u32,
    /// Commit time, microseconds since the epoch (UTC).
    pub commit_time: i64,
    /// The schema version the values were written in.
    pub schema_version: u32,
    /// The transaction's `waly` messages.
    pub intent: Option<Arc<str>>,
    /// Values by the file's data column.
    pub values: Vec<Option<String>>,
    /// The old key's values (by key column) when the key changed.
    pub old_key: Option<Vec<Option<String>>>,
    /// Columns whose large values were unchanged and not sent.
    pub unchanged: Vec<String>,
}

impl OutRow {
    fn size(&self) -> usize {
        96 + self
            .values
            .iter()
            .map(|v| v.as_ref().map_or(8, |s| s.len() + 24))
            .sum::<usize>()
    }
}

/// Rows per row group, and buffered bytes that close one early.
const GROUP_ROWS: usize = 100_000;
const GROUP_BYTES: usize = 48 << 20;

/// An open file.
pub struct ParquetFile {
    writer: SerializedFileWriter<std::fs::File>,
    columns: Vec<OutColumn>,
    /// The key columns (indices into `columns`) that `_old_key` holds.
    key: Vec<usize>,
    rows: Vec<OutRow>,
    buffered: usize,
    /// Rows written so far.
    pub rows_written: u64,
    /// The first and last commit LSN in the file.
    pub lsns: Option<(u64, u64)>,
    table: String,
}

impl std::fmt::Debug for ParquetFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetFile").field("table", &self.table).finish()
    }
}

fn primitive(name: &str, physical: Physical, rep: Repetition, logical: Option<LogicalType>) -> Type {
    let b = Type::primitive_type_builder(name, physical)
        .with_repetition(rep)
        .with_logical_type(logical.clone());
    let b = match logical {
        Some(LogicalType::Decimal(d)) => b
            .with_precision(d.precision)
            .with_scale(d.scale)
            .with_length(if d.precision <= 18 { -1 } else { 16 }),
        Some(LogicalType::Uuid) => b.with_length(16),
        _ => b,
    };
    b.build().expect("a valid primitive type")
}

/// The Parquet type of a column of `kind`.
fn column_type(name: &str, kind: &Kind) -> Type {
    let opt = Repetition::OPTIONAL;
    match kind {
        Kind::Int16 => primitive(name, Physical::INT32, opt, Some(LogicalType::integer(16, true))),
        Kind::Int32 => primitive(name, Physical::INT32, opt, None),
        Kind::Int64 => primitive(name, Physical::INT64, opt, None),
        Kind::Decimal { precision, scale } => primitive(
            name,
            if *precision <= 18 {
                Physical::INT64
            } else {
                Physical::FIXED_LEN_BYTE_ARRAY
            },
            opt,
            Some(LogicalType::decimal(*scale as i32, *precision as i32)),
        ),
        Kind::Float32 => primitive(name, Physical::FLOAT, opt, None),
        Kind::Float64 => primitive(name, Physical::DOUBLE, opt, None),
        Kind::Bool => primitive(name, Physical::BOOLEAN, opt, None),
        Kind::Text => primitive(name, Physical::BYTE_ARRAY, opt, Some(LogicalType::String)),
        Kind::Date => primitive(name, Physical::INT32, opt, Some(LogicalType::Date)),
        Kind::Timestamp { utc } => primitive(
            name,
            Physical::INT64,
            opt,
            Some(LogicalType::timestamp(*utc, TimeUnit::MICROS)),
        ),
        Kind::Uuid => primitive(name, Physical::FIXED_LEN_BYTE_ARRAY, opt, Some(LogicalType::Uuid)),
        Kind::Bytes => primitive(name, Physical::BYTE_ARRAY, opt, None),
        Kind::List(element) => {
            let element = match **element {
                Kind::List(_) => Kind::Text,
                ref k => k.clone(),
            };
            let list = Type::group_type_builder("list")
                .with_repetition(Repetition::REPEATED)
                .with_fields(vec![Arc::new(column_type("element", &element))])
                .build()
                .expect("a valid list");
            Type::group_type_builder(name)
                .with_repetition(opt)
                .with_logical_type(Some(LogicalType::List))
                .with_fields(vec![Arc::new(list)])
                .build()
                .expect("a valid list")
        }
    }
}

/// The names of the columns every file has, besides the table's.
pub const META: [&str; 9] = [
    "_op",
    "_commit_lsn",
    "_seq",
    "_xid",
    "_commit_time",
    "_schema_version",
    "_intent",
    "_old_key",
    "_unchanged_toast",
];

fn schema(columns: &[OutColumn], key: &[usize]) -> TypePtr {
    let req = Repetition::REQUIRED;
    let mut fields: Vec<TypePtr> = vec![
        Arc::new(primitive("_op", Physical::BYTE_ARRAY, req, Some(LogicalType::String))),
        Arc::new(primitive("_commit_lsn", Physical::INT64, req, None)),
        Arc::new(primitive("_seq", Physical::INT64, req, None)),
        Arc::new(primitive("_xid", Physical::INT64, req, None)),
        Arc::new(primitive(
            "_commit_time",
            Physical::INT64,
            req,
            Some(LogicalType::timestamp(true, TimeUnit::MICROS)),
        )),
        Arc::new(primitive("_schema_version", Physical::INT32, req, None)),
        Arc::new(primitive(
            "_intent",
            Physical::BYTE_ARRAY,
            Repetition::OPTIONAL,
            Some(LogicalType::String),
        )),
    ];
    fields.extend(columns.iter().map(|c| Arc::new(column_type(&c.name, &c.kind))));
    if !key.is_empty() {
        let old_key = Type::group_type_builder("_old_key")
            .with_repetition(Repetition::OPTIONAL)
            .with_fields(
                key.iter()
                    .map(|&i| Arc::new(column_type(&columns[i].name, &key_kind(&columns[i].kind))))
                    .collect(),
            )
            .build()
            .expect("a valid group");
        fields.push(Arc::new(old_key));
    }
    fields.push(Arc::new(column_type(
        "_unchanged_toast",
        &Kind::List(Box::new(Kind::Text)),
    )));
    Arc::new(
        Type::group_type_builder("waly_change")
            .with_fields(fields)
            .build()
            .expect("a valid schema"),
    )
}

/// A key column's kind inside `_old_key` (a list key is kept as text).
fn key_kind(k: &Kind) -> Kind {
    match k {
        Kind::List(_) => Kind::Text,
        k => k.clone(),
    }
}

impl ParquetFile {
    /// Creates the file at `path` with these data columns; `key` names the
    /// key columns `_old_key` holds; `metadata` goes into the footer.
    pub fn create(
        path: &std::path::Path,
        table: &str,
        columns: Vec<OutColumn>,
        key: Vec<usize>,
        metadata: Vec<(String, String)>,
    ) -> Result<ParquetFile, String> {
        let file = std::fs::File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let mut kv: Vec<KeyValue> = metadata.into_iter().map(|(k, v)| KeyValue::new(k, v)).collect();
        for c in &columns {
            if !c.earlier_names.is_empty() {
                kv.push(KeyValue::new(
                    format!("waly.column.{}.earlier_names", c.name),
                    serde_json::to_string(&c.earlier_names).unwrap_or_default(),
                ));
            }
        }
        // Integers (LSNs, seq, keys, times) delta-coded where a dictionary
        // does not fit them: increasing values cost a few bits each.
        let mut builder = WriterProperties::builder();
        let delta = |k: &Kind| {
            matches!(
                k,
                Kind::Int16 | Kind::Int32 | Kind::Int64 | Kind::Date | Kind::Timestamp { .. }
            ) || matches!(k, Kind::Decimal { precision, .. } if *precision <= 18)
        };
        let int_columns = ["_commit_lsn", "_seq", "_xid", "_commit_time", "_schema_version"]
            .into_iter()
            .map(str::to_string)
            .chain(columns.iter().filter(|c| delta(&c.kind)).map(|c| c.name.clone()));
        for name in int_columns {
            builder = builder.set_column_encoding(ColumnPath::new(vec![name]), Encoding::DELTA_BINARY_PACKED);
        }
        // Values that are unique in a row group (seq, the key) never fit a
        // dictionary.
        let unique = std::iter::once("_seq".to_string()).chain(
            key.iter()
                .filter(|&&i| delta(&columns[i].kind))
                .map(|&i| columns[i].name.clone()),
        );
        for name in unique {
            builder = builder.set_column_dictionary_enabled(ColumnPath::new(vec![name]), false);
        }
        let props = builder
            // Version 2 encodings: increasing integers (LSNs, seq, keys)
            // delta-coded where the dictionary does not fit.
            .set_writer_version(parquet::file::properties::WriterVersion::PARQUET_2_0)
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).map_err(|e| e.to_string())?))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_max_row_group_row_count(Some(GROUP_ROWS))
            .set_key_value_metadata(Some(kv))
            .set_created_by(format!("waly {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer = SerializedFileWriter::new(file, schema(&columns, &key), Arc::new(props))
            .map_err(|e| format!("cannot start a Parquet file: {e}"))?;
        Ok(ParquetFile {
            writer,
            columns,
            key,
            rows: Vec::new(),
            buffered: 0,
            rows_written: 0,
            lsns: None,
            table: table.to_string(),
        })
    }

    /// The data columns.
    pub fn columns(&self) -> &[OutColumn] {
        &self.columns
    }

    /// Bytes in the file so far (written row groups).
    pub fn bytes_written(&self) -> usize {
        self.writer.bytes_written()
    }

    /// Adds a row (rows come in commit order).
    pub fn push(&mut self, row: OutRow) -> Result<(), String> {
        self.lsns = Some(match self.lsns {
            None => (row.commit_lsn, row.commit_lsn),
            Some((first, _)) => (first, row.commit_lsn),
        });
        self.buffered += row.size();
        self.rows.push(row);
        self.rows_written += 1;
        if self.rows.len() >= GROUP_ROWS || self.buffered >= GROUP_BYTES {
            self.write_group()?;
        }
        Ok(())
    }

    /// Writes the buffered rows as a row group.
    fn write_group(&mut self) -> Result<(), String> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let mut rows = std::mem::take(&mut self.rows);
        self.buffered = 0;
        let table = self.table.clone();
        let fail = |what: &str, e: parquet::errors::ParquetError| format!("writing {table}'s Parquet {what}: {e}");
        let mut group = self.writer.next_row_group().map_err(|e| fail("row group", e))?;
        // Each leaf column is made, written and dropped before the next, so
        // a group's typed values are never all in memory at once.
        let mut put = |leaf: Leaf| -> Result<(), String> {
            let Some(mut col) = group.next_column().map_err(|e| fail("column", e))? else {
                return Err(format!("writing {table}'s Parquet: more values than columns"));
            };
            leaf.write(&mut col).map_err(|e| fail("column", e))?;
            col.close().map_err(|e| fail("column", e))
        };
        let shared = |s: &str| Value::Bytes(bytes::Bytes::copy_from_slice(s.as_bytes()));
        put(Leaf::required(
            rows.iter()
                .map(|r| Value::Bytes(bytes::Bytes::from_static(r.op.as_bytes()))),
        ))?;
        put(Leaf::required(rows.iter().map(|r| Value::I64(r.commit_lsn as i64))))?;
        put(Leaf::required(rows.iter().map(|r| Value::I64(r.seq))))?;
        put(Leaf::required(rows.iter().map(|r| Value::I64(r.xid as i64))))?;
        put(Leaf::required(rows.iter().map(|r| Value::I64(r.commit_time))))?;
        put(Leaf::required(rows.iter().map(|r| Value::I32(r.schema_version as i32))))?;
        put(Leaf::optional(rows.iter().map(|r| r.intent.as_deref().map(shared))))?;
        for (i, c) in self.columns.iter().enumerate() {
            let at = |r: &OutRow| format!("{table}.{} at {}#{}", c.name, crate::Lsn(r.commit_lsn), r.seq);
            let leaf = match &c.kind {
                Kind::List(element) => {
                    let element = match **element {
                        Kind::List(_) => Kind::Text,
                        ref k => k.clone(),
                    };
                    let mut lists = Vec::with_capacity(rows.len());
                    for r in &rows {
                        lists.push(match &r.values[i] {
                            None => None,
                            Some(text) => Some(
                                array_elements(text)
                                    .and_then(|els| {
                                        els.iter()
                                            .map(|e| e.as_deref().map(|t| element.value(t)).transpose())
                                            .collect::<Result<Vec<_>, _>>()
                                    })
                                    .map_err(|e| format!("{}: {e}: {text:?}", at(r)))?,
                            ),
                        });
                    }
                    Leaf::list(lists)
                }
                kind => {
                    let mut vals = Vec::with_capacity(rows.len());
                    for r in &mut rows {
                        vals.push(match r.values[i].take() {
                            None => None,
                            // A text is moved into the column, not copied.
                            Some(t) if *kind == Kind::Text => Some(Value::Bytes(t.into_bytes().into())),
                            Some(t) => Some(kind.value(&t).map_err(|e| format!("{}: {e}: {:?}", at(r), Some(&t)))?),
                        });
                    }
                    Leaf::optional(vals.into_iter())
                }
            };
            put(leaf)?;
        }
        for (j, &i) in self.key.iter().enumerate() {
            let kind = key_kind(&self.columns[i].kind);
            let mut leaf = Leaf::default();
            for r in &rows {
                match &r.old_key {
                    None => leaf.defs.push(0),
                    Some(k) => match &k[j] {
                        None => leaf.defs.push(1),
                        Some(t) => {
                            leaf.defs.push(2);
                            leaf.values.push(kind.value(t).map_err(|e| {
                                format!(
                                    "{table}._old_key.{} at {}: {e}",
                                    self.columns[i].name,
                                    crate::Lsn(r.commit_lsn)
                                )
                            })?);
                        }
                    },
                }
            }
            put(leaf)?;
        }
        put(Leaf::list(rows.iter().map(|r| {
            (!r.unchanged.is_empty()).then(|| r.unchanged.iter().map(|n| Some(shared(n))).collect())
        })))?;
        // The emptied buffer is kept for the next group (it is tens of
        // megabytes: grown anew, it costs reallocations and fresh pages).
        rows.clear();
        self.rows = rows;
        group.close().map_err(|e| fail("row group", e))?;
        Ok(())
    }

    /// Writes what is buffered and the footer.
    pub fn finish(mut self) -> Result<(), String> {
        self.write_group()?;
        let table = self.table.clone();
        self.writer
            .close()
            .map(|_| ())
            .map_err(|e| format!("closing {table}'s Parquet file: {e}"))
    }
}

/// One leaf column's values with their definition and repetition levels.
#[derive(Default)]
struct Leaf {
    values: Vec<Value>,
    defs: Vec<i16>,
    reps: Vec<i16>,
    required: bool,
}

impl Leaf {
    fn required(values: impl Iterator<Item = Value>) -> Leaf {
        Leaf {
            values: values.collect(),
            required: true,
            ..Leaf::default()
        }
    }

    fn optional(values: impl Iterator<Item = Option<Value>>) -> Leaf {
        let n = values.size_hint().0;
        let mut leaf = Leaf {
            values: Vec::with_capacity(n),
            defs: Vec::with_capacity(n),
            ..Leaf::default()
        };
        for v in values {
            leaf.defs.push(v.is_some() as i16);
            leaf.values.extend(v);
        }
        leaf
    }

    /// A three-level list: null (0), empty (1), a null element (2), a value (3).
    fn list(lists: impl IntoIterator<Item = Option<Vec<Option<Value>>>>) -> Leaf {
        let mut leaf = Leaf::default();
        for l in lists {
            match l {
                None => {
                    leaf.defs.push(0);
                    leaf.reps.push(0);
                }
                Some(l) if l.is_empty() => {
                    leaf.defs.push(1);
                    leaf.reps.push(0);
                }
                Some(l) => {
                    for (i, e) in l.into_iter().enumerate() {
                        leaf.reps.push((i > 0) as i16);
                        leaf.defs.push(if e.is_some() { 3 } else { 2 });
                        leaf.values.extend(e);
                    }
                }
            }
        }
        leaf
    }

    fn write(self, col: &mut SerializedColumnWriter<'_>) -> Result<(), parquet::errors::ParquetError> {
        use parquet::column::writer::ColumnWriter as W;
        let defs = (!self.required).then_some(self.defs.as_slice());
        let reps = (!self.reps.is_empty()).then_some(self.reps.as_slice());
        let bad = || parquet::errors::ParquetError::General("a value of another type".into());
        // The values in the column's physical type, in a vector of their
        // exact size (collecting into an `Option<Vec<_>>` grows it step by
        // step).
        fn typed<T>(values: Vec<Value>, f: impl Fn(Value) -> Option<T>) -> Option<Vec<T>> {
            let mut out = Vec::with_capacity(values.len());
            for v in values {
                out.push(f(v)?);
            }
            Some(out)
        }
        let values = self.values;
        match col.untyped() {
            W::BoolColumnWriter(w) => {
                let v = typed(values, |v| if let Value::Bool(b) = v { Some(b) } else { None });
                w.write_batch(&v.ok_or_else(bad)?, defs, reps)?;
            }
            W::Int32ColumnWriter(w) => {
                let v = typed(values, |v| if let Value::I32(n) = v { Some(n) } else { None });
                w.write_batch(&v.ok_or_else(bad)?, defs, reps)?;
            }
            W::Int64ColumnWriter(w) => {
                let v = typed(values, |v| if let Value::I64(n) = v { Some(n) } else { None });
                w.write_batch(&v.ok_or_else(bad)?, defs, reps)?;
            }
            W::FloatColumnWriter(w) => {
                let v = typed(values, |v| if let Value::F32(n) = v { Some(n) } else { None });
                w.write_batch(&v.ok_or_else(bad)?, defs, reps)?;
            }
            W::DoubleColumnWriter(w) => {
                let v = typed(values, |v| if let Value::F64(n) = v { Some(n) } else { None });
                w.write_batch(&v.ok_or_else(bad)?, defs, reps)?;
            }
            W::ByteArrayColumnWriter(w) => {
                let v = typed(values, |v| {
                    if let Value::Bytes(b) = v {
                        Some(ByteArray::from(b))
                    } else {
                        None
                    }
                });
                w.write_batch(&v.ok_or_else(bad)?, defs, reps)?;
            }
            W::FixedLenByteArrayColumnWriter(w) => {
                let v = typed(values, |v| {
                    if let Value::Fixed(b) = v {
                        Some(FixedLenByteArray::from(b))
                    } else {
                        None
                    }
                });
                w.write_batch(&v.ok_or_else(bad)?, defs, reps)?;
            }
            W::Int96ColumnWriter(_) => return Err(bad()),
        }
        Ok(())
    }
}
