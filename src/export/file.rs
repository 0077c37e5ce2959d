//! One Parquet file of one table's changes: rows buffered into row groups
//! and written to a local temporary file, which the export then uploads.

use super::value::{array_elements, Kind, Value};
use parquet::basic::{Compression, Encoding, LogicalType, Repetition, TimeUnit, Type as Physical, ZstdLevel};
use parquet::column::page::{CompressedPage, PageWriteSpec, PageWriter};
use parquet::column::writer::{get_column_writer, ColumnWriter};
use parquet::data_type::{ByteArray, FixedLenByteArray};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::{SerializedFileWriter, SerializedPageWriter, TrackedWrite};
use parquet::schema::types::{ColumnPath, Type, TypePtr};
use std::io::Write as _;
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
    /// `insert`, `update`, `delete`, `truncate`, `snapshot` or
    /// `empty_snapshot`.
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
    /// Columns whose values the archive cannot know (null in the row).
    pub unknown: Vec<String>,
}

impl OutRow {
    /// A row of a snapshot at `lsn` (`op` is `snapshot`, or
    /// `empty_snapshot` for a table without rows there), its values to come.
    pub fn snapshot(
        op: &'static str,
        lsn: crate::Lsn,
        taken_at: chrono::DateTime<chrono::Utc>,
        schema_version: u32,
    ) -> OutRow {
        OutRow {
            op,
            commit_lsn: lsn.0,
            seq: -1,
            xid: 0,
            commit_time: taken_at.timestamp_micros(),
            schema_version,
            intent: None,
            values: Vec::new(),
            old_key: None,
            unchanged: Vec::new(),
            unknown: Vec::new(),
        }
    }

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
///
/// Each leaf column has its own encoder for the row group being built, fed
/// batch by batch, its pages kept compressed in memory; a finished group's
/// chunks are appended to the file. So the writer's work keeps pace with
/// the rows as they come, instead of stopping everything for a whole row
/// group at once, and a group's rows are never all in memory.
pub struct ParquetFile {
    writer: SerializedFileWriter<std::fs::File>,
    columns: Vec<OutColumn>,
    /// The key columns (indices into `columns`) that `_old_key` holds.
    key: Vec<usize>,
    /// The open row group's encoders, one per leaf column.
    chunks: Vec<Chunk>,
    /// Rows in the open row group, and their bytes as `OutRow::size` counts them.
    group_rows: usize,
    group_bytes: usize,
    /// Rows that close a row group (`GROUP_ROWS`; tests take fewer).
    group_max: usize,
    /// Rows written so far.
    pub rows_written: u64,
    /// The first and last commit LSN in the file.
    pub lsns: Option<(u64, u64)>,
    table: String,
}

/// A leaf column's encoder for one row group, and the pages it wrote.
struct Chunk {
    writer: ColumnWriter<'static>,
    pages: Pages,
}

/// Encoded pages in memory (shared between the encoder and its file).
#[derive(Clone, Default)]
struct Pages(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Pages {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("a poisoned page buffer"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A page writer into [`Pages`], laid out as in a file (offsets from 0),
/// which `SerializedRowGroupWriter::append_column` moves into place.
struct PageSink(TrackedWrite<Pages>);

impl PageWriter for PageSink {
    fn write_page(&mut self, page: CompressedPage) -> parquet::errors::Result<PageWriteSpec> {
        SerializedPageWriter::new(&mut self.0).write_page(page)
    }

    fn close(&mut self) -> parquet::errors::Result<()> {
        self.0.flush()?;
        Ok(())
    }
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
pub const META: [&str; 10] = [
    "_op",
    "_commit_lsn",
    "_seq",
    "_xid",
    "_commit_time",
    "_schema_version",
    "_intent",
    "_old_key",
    "_unchanged_toast",
    "_unknown",
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
    for name in ["_unchanged_toast", "_unknown"] {
        fields.push(Arc::new(column_type(name, &Kind::List(Box::new(Kind::Text)))));
    }
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
        let mut file = ParquetFile {
            writer,
            columns,
            key,
            chunks: Vec::new(),
            group_rows: 0,
            group_bytes: 0,
            group_max: GROUP_ROWS,
            rows_written: 0,
            lsns: None,
            table: table.to_string(),
        };
        file.chunks = file.new_chunks();
        Ok(file)
    }

    /// Fresh encoders for a row group.
    fn new_chunks(&self) -> Vec<Chunk> {
        let props = self.writer.properties();
        self.writer
            .schema_descr()
            .columns()
            .iter()
            .map(|descr| {
                let pages = Pages::default();
                let sink = Box::new(PageSink(TrackedWrite::new(pages.clone())));
                Chunk {
                    writer: get_column_writer(descr.clone(), props.clone(), sink),
                    pages,
                }
            })
            .collect()
    }

    /// The data columns.
    pub fn columns(&self) -> &[OutColumn] {
        &self.columns
    }

    /// Bytes in the file so far (written row groups).
    pub fn bytes_written(&self) -> usize {
        self.writer.bytes_written()
    }

    /// Adds rows (they come in commit order), closing a row group at
    /// `GROUP_ROWS` rows or `GROUP_BYTES` bytes.
    pub fn push_rows(&mut self, mut rows: Vec<OutRow>) -> Result<(), String> {
        let mut start = 0;
        while start < rows.len() {
            let end = rows.len().min(start + self.group_max - self.group_rows);
            let part = &mut rows[start..end];
            if let (Some(first), Some(last)) = (part.first(), part.last()) {
                self.lsns = Some((self.lsns.map_or(first.commit_lsn, |(f, _)| f), last.commit_lsn));
            }
            self.group_bytes += part.iter().map(OutRow::size).sum::<usize>();
            self.encode(part)?;
            self.group_rows += part.len();
            self.rows_written += part.len() as u64;
            if self.group_rows >= self.group_max || self.group_bytes >= GROUP_BYTES {
                self.write_group()?;
            }
            start = end;
        }
        Ok(())
    }

    /// Writes the open row group's chunks into the file.
    fn write_group(&mut self) -> Result<(), String> {
        if self.group_rows == 0 {
            return Ok(());
        }
        let table = self.table.clone();
        let fail = |what: &str, e: parquet::errors::ParquetError| format!("writing {table}'s Parquet {what}: {e}");
        let fresh = self.new_chunks();
        let chunks = std::mem::replace(&mut self.chunks, fresh);
        let mut group = self.writer.next_row_group().map_err(|e| fail("row group", e))?;
        for c in chunks {
            let closed = c.writer.close().map_err(|e| fail("column", e))?;
            let pages = match c.pages.0.lock() {
                Ok(mut p) => bytes::Bytes::from(std::mem::take(&mut *p)),
                Err(_) => return Err(format!("writing {table}'s Parquet: a poisoned page buffer")),
            };
            group.append_column(&pages, closed).map_err(|e| fail("column", e))?;
        }
        group.close().map_err(|e| fail("row group", e))?;
        self.group_rows = 0;
        self.group_bytes = 0;
        Ok(())
    }

    /// Feeds rows to the open row group's encoders, leaf column by leaf column.
    fn encode(&mut self, rows: &mut [OutRow]) -> Result<(), String> {
        let table = self.table.clone();
        let fail = |e: parquet::errors::ParquetError| format!("writing {table}'s Parquet column: {e}");
        let mut leaves = self.chunks.iter_mut();
        let mut put = |leaf: Leaf| -> Result<(), String> {
            let Some(chunk) = leaves.next() else {
                return Err(format!("writing {table}'s Parquet: more values than columns"));
            };
            leaf.write(&mut chunk.writer).map_err(fail)
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
                    for r in rows.iter() {
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
                    for r in rows.iter_mut() {
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
            for r in rows.iter() {
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
        // `_unchanged_toast`, then `_unknown`: lists of column names.
        let unchanged: fn(&OutRow) -> &Vec<String> = |r| &r.unchanged;
        let unknown: fn(&OutRow) -> &Vec<String> = |r| &r.unknown;
        for names in [unchanged, unknown] {
            put(Leaf::list(rows.iter().map(|r| {
                let names = names(r);
                (!names.is_empty()).then(|| names.iter().map(|n| Some(shared(n))).collect())
            })))?;
        }
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

    fn write(self, col: &mut ColumnWriter<'static>) -> Result<(), parquet::errors::ParquetError> {
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
        match col {
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

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    fn row(i: u64) -> OutRow {
        OutRow {
            op: if i.is_multiple_of(3) { "insert" } else { "update" },
            commit_lsn: 100 + i / 4,
            seq: (i % 4) as i64,
            xid: 7,
            commit_time: 1_700_000_000_000_000 + i as i64,
            schema_version: 1,
            intent: i.is_multiple_of(5).then(|| Arc::from("why")),
            values: vec![
                Some(i.to_string()),
                (!i.is_multiple_of(7)).then(|| format!("name {i}")),
                Some(format!("{{{i},NULL}}")),
            ],
            old_key: i.is_multiple_of(11).then(|| vec![Some((i + 1_000_000).to_string())]),
            unchanged: if i.is_multiple_of(13) {
                vec!["name".into()]
            } else {
                vec![]
            },
            unknown: if i.is_multiple_of(17) {
                vec!["tags".into()]
            } else {
                vec![]
            },
        }
    }

    /// The row as the file should give it back, one string per column.
    fn expected(i: u64) -> Vec<String> {
        let r = row(i);
        let or_null = |v: Option<String>| v.unwrap_or_else(|| "null".into());
        vec![
            format!("\"{}\"", r.op),
            r.commit_lsn.to_string(),
            r.seq.to_string(),
            r.xid.to_string(),
            r.schema_version.to_string(),
            or_null(r.intent.map(|s| format!("\"{s}\""))),
            i.to_string(),
            or_null(r.values[1].clone().map(|s| format!("\"{s}\""))),
            format!("[{i}, null]"),
            or_null(
                r.old_key
                    .map(|k| format!("{{aid: {}}}", k[0].clone().unwrap_or_default())),
            ),
            if r.unchanged.is_empty() {
                "null".into()
            } else {
                "[\"name\"]".into()
            },
            if r.unknown.is_empty() {
                "null".into()
            } else {
                "[\"tags\"]".into()
            },
        ]
    }

    #[test]
    fn a_file_holds_every_row_in_order_across_row_groups_cut_inside_a_batch() {
        let path = std::env::temp_dir().join(format!("waly-parquet-file-test-{}", std::process::id()));
        let columns = vec![
            OutColumn {
                name: "aid".into(),
                kind: Kind::Int64,
                earlier_names: vec![],
            },
            OutColumn {
                name: "name".into(),
                kind: Kind::Text,
                earlier_names: vec!["label".into()],
            },
            OutColumn {
                name: "tags".into(),
                kind: Kind::List(Box::new(Kind::Int32)),
                earlier_names: vec![],
            },
        ];
        let mut file = ParquetFile::create(&path, "public.t", columns, vec![0], vec![("waly.x".into(), "1".into())])
            .expect("created");
        file.group_max = 1000;
        // Batches of 700 rows: groups close inside a batch and across two.
        let total = 3_500u64;
        let mut next = 0;
        while next < total {
            let end = (next + 700).min(total);
            file.push_rows((next..end).map(row).collect()).expect("pushed");
            next = end;
        }
        assert_eq!(file.rows_written, total);
        assert_eq!(file.lsns, Some((100, 100 + (total - 1) / 4)));
        file.finish().expect("finished");

        let reader = SerializedFileReader::new(std::fs::File::open(&path).expect("open")).expect("a Parquet file");
        let meta = reader.metadata();
        let groups: Vec<i64> = meta.row_groups().iter().map(|g| g.num_rows()).collect();
        assert_eq!(groups, vec![1000, 1000, 1000, 500]);
        let kv = meta.file_metadata().key_value_metadata().expect("key-value metadata");
        assert!(kv
            .iter()
            .any(|k| k.key == "waly.column.name.earlier_names" && k.value.as_deref() == Some("[\"label\"]")));
        // Each group's LSN statistics bound its rows.
        let lsn = meta.row_group(1).column(1).statistics().expect("statistics");
        assert_eq!(lsn.min_bytes_opt(), Some(&(100i64 + 1000 / 4).to_le_bytes()[..]));
        assert_eq!(lsn.max_bytes_opt(), Some(&(100i64 + 1999 / 4).to_le_bytes()[..]));
        let rows: Vec<Vec<String>> = reader
            .get_row_iter(None)
            .expect("rows")
            .map(|r| {
                r.expect("a row")
                    .get_column_iter()
                    .filter(|(name, _)| name.as_str() != "_commit_time")
                    .map(|(_, f)| f.to_string())
                    .collect()
            })
            .collect();
        assert_eq!(rows.len(), total as usize);
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(r, &expected(i as u64), "row {i}");
        }
        let _ = std::fs::remove_file(&path);
    }
}
