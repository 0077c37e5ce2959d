//! Base snapshots: every row of a set of tables, consistent with a slot's
//! exported snapshot, streamed in bounded memory into part objects; the
//! manifest is written last (a snapshot without its manifest does not exist).
//!
//! The snapshot comes from a *temporary* slot created just for it: its
//! consistent point `L` splits history exactly. Transactions committed before
//! `L` are in the snapshot; the archive's slot then contributes only
//! transactions committing at or after `L` for those tables.

use crate::archive::layout;
use crate::archive::state::{Manifest, ManifestPart, ManifestTable};
use crate::archive::Store;
use crate::event::Row;
use crate::segment::SchemaRecord;
use crate::source::{self, quote, ConnInfo, PgConn, SnapshotAction};
use crate::{Error, Lsn};
use futures_util::StreamExt;
use std::sync::Arc;

/// Uncompressed bytes per snapshot part.
const PART_BYTES: usize = 32 << 20;

/// Decodes one field of COPY's text format (`\N` is NULL).
fn copy_field(f: &[u8]) -> Result<Option<String>, Error> {
    if f == b"\\N" {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(f.len());
    let mut i = 0;
    while i < f.len() {
        let b = f[i];
        if b != b'\\' || i + 1 >= f.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let c = f[i + 1];
        i += 2;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                for _ in 0..2 {
                    match f.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'x' => {
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 {
                    match f.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                            n += 1;
                        }
                        None => break,
                    }
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    String::from_utf8(out)
        .map(Some)
        .map_err(|_| Error::Protocol("COPY produced a value that is not UTF-8".into()))
}

/// A table to snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub name: String,
}

impl TableRef {
    /// `schema.name`, as archived.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// The first line of a snapshot part.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PartHeader {
    /// Format version.
    pub waly_snapshot_part: u32,
    /// `schema.table`.
    pub table: String,
    /// The snapshot's LSN.
    pub lsn: Lsn,
    /// The part number.
    pub part: u32,
    /// The schema version of the rows.
    pub schema_version: u32,
}

/// A snapshot part being written: zstd frames sized as a segment's
/// ([`crate::segment::FrameSizer`]), so one row's frame can be read alone
/// (the index records which frame holds which key).
struct PartWriter {
    compressor: zstd::bulk::Compressor<'static>,
    frame: Vec<u8>,
    body: Vec<u8>,
    frames: Vec<(u64, u64)>,
    keys: crate::index::KeyEntries,
    rows: u64,
    uncompressed: usize,
    sizer: crate::segment::FrameSizer,
    /// Encrypted archives: seals each frame.
    sealer: Option<crate::crypt::Sealer>,
}

impl PartWriter {
    fn new(header: &PartHeader, sealer: Option<crate::crypt::Sealer>) -> Result<Self, Error> {
        let mut compressor = zstd::bulk::Compressor::new(3)?;
        compressor.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
        let mut frame = serde_json::to_vec(header).map_err(|e| Error::Protocol(e.to_string()))?;
        frame.push(b'\n');
        let uncompressed = frame.len();
        Ok(PartWriter {
            compressor,
            frame,
            body: Vec::new(),
            frames: Vec::new(),
            keys: Default::default(),
            rows: 0,
            uncompressed,
            sizer: Default::default(),
            sealer,
        })
    }

    fn end_frame(&mut self) -> Result<(), Error> {
        if !self.frame.is_empty() {
            let mut z = self.compressor.compress(&self.frame)?;
            self.sizer.ended(self.frame.len(), z.len());
            if let Some(s) = &self.sealer {
                z = s.seal(&z)?;
            }
            self.frames.push((self.body.len() as u64, z.len() as u64));
            self.body.extend_from_slice(&z);
            self.frame.clear();
        }
        Ok(())
    }

    /// Appends a row line (with its newline); `hash` is its key's.
    fn push(&mut self, line: &[u8], hash: Option<crate::index::RowKey>) -> Result<(), Error> {
        if self.sizer.full(&self.frame, &mut self.compressor)? {
            self.end_frame()?;
        }
        self.frame.extend_from_slice(line);
        if let Some(h) = hash {
            self.keys.note(h, self.frames.len() as u32);
        }
        self.rows += 1;
        self.uncompressed += line.len();
        Ok(())
    }
}

/// Takes a consistent snapshot of `tables` into generation `gen`, recording
/// each table's columns as schema version `schema_versions[table]` (or 1).
/// A table no longer there under its name is left out. Returns the
/// manifest (already written, unless it holds no table) and the schema
/// records written.
pub async fn take(
    info: &ConnInfo,
    store: &Store,
    gen: &str,
    tables: &[TableRef],
    next_versions: &std::collections::BTreeMap<String, u32>,
    metrics: &crate::metrics::Metrics,
) -> Result<(Manifest, Vec<SchemaRecord>), Error> {
    use std::sync::atomic::Ordering;
    metrics.snapshot_tables.store(tables.len() as u64, Ordering::Relaxed);
    metrics.snapshot_tables_done.store(0, Ordering::Relaxed);
    let mut repl = PgConn::connect(info, true).await?;
    let slot_name = format!(
        "waly_snap_{}_{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    );
    let created = source::create_slot(&mut repl, &slot_name, true, SnapshotAction::Export).await?;
    let snapshot_name = created
        .snapshot_name
        .clone()
        .ok_or_else(|| Error::Protocol("the server exported no snapshot".into()))?;
    let lsn = created.consistent_point;
    tracing::info!(%lsn, tables = tables.len(), "taking a consistent snapshot");
    let sql = source::tls::connect_sql(info).await?;
    sql.batch_execute(&format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
        quote::literal(&snapshot_name)?
    ))
    .await
    .map_err(|e| source::tls::sql_error(info, e))?;
    let mut manifest = Manifest {
        waly_snapshot: 1,
        generation: gen.to_string(),
        lsn,
        taken_at: chrono::Utc::now(),
        compacted_at: None,
        tables: Vec::new(),
    };
    let mut schemas = Vec::new();
    let mut index = crate::index::Builder::for_writer(store.sealer()?.as_ref()).spilling();
    for t in tables {
        let qualified = t.qualified();
        let Some(def) = crate::schema::ddl::catalog_definition(&sql, &t.schema, &t.name).await? else {
            // Renamed again or dropped since the command that asked for it
            // (the stream says so after it): nothing of that name to take.
            tracing::info!(
                table = qualified,
                "no table of this name exists any more: not snapshotted"
            );
            continue;
        };
        let columns = def.columns;
        let from = quote::own_rows(
            &format!("{}.{}", quote::ident(&t.schema)?, quote::ident(&t.name)?),
            def.meta.relkind.as_deref(),
        );
        let version = next_versions.get(&qualified).copied().unwrap_or(1);
        let schema = SchemaRecord {
            commit_lsn: lsn,
            commit_time: Some(manifest.taken_at),
            table: qualified.clone(),
            version,
            columns: columns.clone(),
            source: Some("snapshot".into()),
            meta: def.meta,
            ddl: None,
            dropped: false,
            sealed: None,
        };
        let seg = layout::table_segment(&t.schema, &t.name);
        let pk = crate::schema::keys::KeyColumns::row_key(&schema);
        let names: Vec<Arc<str>> = columns.iter().map(|c| Arc::from(c.name.as_str())).collect();
        let select: Vec<String> = columns
            .iter()
            .map(|c| quote::ident(&c.name))
            .collect::<Result<_, _>>()?;
        let copy = format!(
            "COPY (SELECT {} FROM {from}) TO STDOUT",
            if select.is_empty() {
                "".to_string()
            } else {
                select.join(", ")
            }
        );
        // Renamed or dropped between the look-up above and the COPY (the
        // name is resolved in the catalog of now): skipped as above, the
        // transaction kept by a savepoint.
        sql.batch_execute("SAVEPOINT waly_table")
            .await
            .map_err(|e| source::tls::sql_error(info, e))?;
        let stream = match sql.copy_out(copy.as_str()).await {
            Ok(s) => s,
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                sql.batch_execute("ROLLBACK TO SAVEPOINT waly_table")
                    .await
                    .map_err(|e| source::tls::sql_error(info, e))?;
                tracing::info!(
                    table = qualified,
                    "no table of this name exists any more: not snapshotted"
                );
                continue;
            }
            Err(e) => return Err(source::tls::sql_error(info, e)),
        };
        futures_util::pin_mut!(stream);
        let mut table = TableWriter::new(store, gen, lsn, &qualified, &seg, version, pk)?;
        let mut carry: Vec<u8> = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| source::tls::sql_error(info, e))?;
            carry.extend_from_slice(&chunk);
            let mut start = 0;
            while let Some(nl) = carry[start..].iter().position(|&b| b == b'\n') {
                let raw = &carry[start..start + nl];
                start += nl + 1;
                let mut values = Vec::with_capacity(names.len());
                let fields: Vec<&[u8]> = if names.is_empty() {
                    Vec::new()
                } else {
                    raw.split(|&b| b == b'\t').collect()
                };
                if fields.len() != names.len() {
                    return Err(Error::Protocol(format!(
                        "COPY of {qualified} returned {} fields for {} columns",
                        fields.len(),
                        names.len()
                    )));
                }
                for (n, f) in names.iter().zip(fields) {
                    values.push((n.clone(), copy_field(f)?));
                }
                table.push(&Row(values), &mut index, metrics).await?;
            }
            carry.drain(..start);
        }
        let entry = table.finish(&mut index, metrics).await?;
        // The version after its rows: a table skipped above leaves none.
        store
            .put_once(&layout::schema_key(gen, &seg, version), store.schema_bytes(&schema)?)
            .await?;
        schemas.push(schema);
        tracing::info!(
            table = qualified,
            rows = entry.rows,
            parts = entry.parts.len(),
            "snapshot of table done"
        );
        manifest.tables.push(entry);
        metrics.snapshot_tables_done.fetch_add(1, Ordering::Relaxed);
    }
    sql.batch_execute("COMMIT")
        .await
        .map_err(|e| source::tls::sql_error(info, e))?;
    if !manifest.tables.is_empty() {
        write_manifest(store, &manifest, index).await?;
    }
    repl.close().await;
    Ok((manifest, schemas))
}

/// The snapshot of tables one transaction created (`lsn`, `taken_at`: its
/// commit), each empty in the schema version its creation recorded: a
/// table born in the stream needs no rows from the source, and every
/// change of it from its creation on, that transaction's own included, is
/// history. `tables`: each table and its version.
pub(crate) async fn write_created(
    store: &Store,
    gen: &str,
    (lsn, taken_at): (Lsn, chrono::DateTime<chrono::Utc>),
    tables: &[(TableRef, SchemaRecord)],
    metrics: &crate::metrics::Metrics,
) -> Result<Manifest, Error> {
    let mut manifest = Manifest {
        waly_snapshot: 1,
        generation: gen.to_string(),
        lsn,
        taken_at,
        compacted_at: None,
        tables: Vec::new(),
    };
    let mut index = crate::index::Builder::for_writer(store.sealer()?.as_ref()).spilling();
    for (t, schema) in tables {
        let seg = layout::table_segment(&t.schema, &t.name);
        let pk = crate::schema::keys::KeyColumns::row_key(schema);
        let table = TableWriter::new(store, gen, lsn, &t.qualified(), &seg, schema.version, pk)?;
        manifest.tables.push(table.finish(&mut index, metrics).await?);
    }
    write_manifest(store, &manifest, index).await?;
    Ok(manifest)
}

/// Writes a snapshot's manifest (after all its parts: the snapshot exists
/// from then on), then the index of its parts.
pub(crate) async fn write_manifest(
    store: &Store,
    manifest: &Manifest,
    index: crate::index::Builder,
) -> Result<(), Error> {
    let (gen, lsn) = (manifest.generation.as_str(), manifest.lsn);
    // On one line: every reader of a table reads it, and its frame lists
    // take a third of the bytes this way that they take pretty-printed.
    let mut json = serde_json::to_vec(manifest).map_err(|e| Error::Protocol(e.to_string()))?;
    json.push(b'\n');
    store
        .put_once(&layout::snapshot_manifest(gen, lsn), json.into())
        .await?;
    // The index is derived data: a failure to write it costs speed, not
    // history.
    let key = crate::index::snapshot_index_key(gen, lsn);
    if let Err(e) = index.store(store, &key, gen, store.sealer()?.as_ref()).await {
        tracing::warn!(error = %crate::error::chain(&e), "could not write the snapshot's index; reads fall back to scanning");
    }
    Ok(())
}

/// One table's rows going into the parts of a snapshot (and its index).
pub(crate) struct TableWriter<'a> {
    store: &'a Store,
    gen: String,
    lsn: Lsn,
    seg: String,
    pk: crate::schema::keys::KeyColumns,
    header: PartHeader,
    writer: PartWriter,
    entry: ManifestTable,
    line: Vec<u8>,
}

impl<'a> TableWriter<'a> {
    /// Starts table `qualified` (`seg` as a path segment) of the snapshot at
    /// `lsn`, its rows following schema `version` with primary key `pk`.
    pub(crate) fn new(
        store: &'a Store,
        gen: &str,
        lsn: Lsn,
        qualified: &str,
        seg: &str,
        version: u32,
        pk: crate::schema::keys::KeyColumns,
    ) -> Result<Self, Error> {
        let header = PartHeader {
            waly_snapshot_part: 1,
            table: qualified.to_string(),
            lsn,
            part: 0,
            schema_version: version,
        };
        Ok(TableWriter {
            store,
            gen: gen.to_string(),
            lsn,
            seg: seg.to_string(),
            pk,
            writer: PartWriter::new(&header, store.sealer()?)?,
            header,
            entry: ManifestTable {
                table: qualified.to_string(),
                schema_version: version,
                rows: 0,
                parts: Vec::new(),
            },
            line: Vec::with_capacity(1024),
        })
    }

    /// Adds a row; a full part is uploaded.
    pub(crate) async fn push(
        &mut self,
        row: &Row,
        index: &mut crate::index::Builder,
        metrics: &crate::metrics::Metrics,
    ) -> Result<(), Error> {
        let hash = (!self.pk.is_empty()).then(|| index.hasher().row(&self.header.table, &self.pk, row));
        self.line.clear();
        serde_json::to_writer(&mut self.line, row).map_err(|e| Error::Protocol(e.to_string()))?;
        self.line.push(b'\n');
        self.writer.push(&self.line, hash)?;
        if self.writer.uncompressed >= PART_BYTES {
            self.header.part += 1;
            let full = std::mem::replace(&mut self.writer, PartWriter::new(&self.header, self.store.sealer()?)?);
            self.upload(full, index, metrics).await?;
        }
        Ok(())
    }

    /// Uploads the last part; returns the table's manifest entry.
    pub(crate) async fn finish(
        mut self,
        index: &mut crate::index::Builder,
        metrics: &crate::metrics::Metrics,
    ) -> Result<ManifestTable, Error> {
        let last = std::mem::replace(&mut self.writer, PartWriter::new(&self.header, self.store.sealer()?)?);
        self.upload(last, index, metrics).await?;
        Ok(self.entry)
    }

    async fn upload(
        &mut self,
        mut w: PartWriter,
        index: &mut crate::index::Builder,
        metrics: &crate::metrics::Metrics,
    ) -> Result<(), Error> {
        w.end_frame()?;
        let part = self.entry.parts.len() as u32;
        let rows = w.rows;
        let bytes = bytes::Bytes::from(std::mem::take(&mut w.body));
        let key = layout::snapshot_part(&self.gen, self.lsn, &self.seg, part);
        let sha256 = crate::segment::sha256_hex(&bytes);
        let size = bytes.len() as u64;
        crate::pipeline::put_with_retry(self.store, &key, bytes, metrics, &mut || false).await?;
        self.entry.rows += rows;
        metrics
            .snapshot_rows
            .fetch_add(rows, std::sync::atomic::Ordering::Relaxed);
        index.add(
            crate::index::Covered {
                number: part as u64,
                key: key.clone(),
                frames: w.frames.clone(),
                fence: 0,
            },
            &w.keys,
            &[],
            &[],
        );
        self.entry.parts.push(ManifestPart {
            key,
            rows,
            bytes: size,
            sha256,
            frames: w.frames,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_fields_decode() {
        assert_eq!(copy_field(b"\\N").ok(), Some(None));
        assert_eq!(copy_field(b"").ok(), Some(Some(String::new())));
        assert_eq!(copy_field(b"a\\tb\\nc\\\\d").ok(), Some(Some("a\tb\nc\\d".into())));
        assert_eq!(copy_field(b"\\101\\x42\\v").ok(), Some(Some("AB\u{b}".into())));
        assert_eq!(copy_field("ü日".as_bytes()).ok(), Some(Some("ü日".into())));
    }
}
