//! `waly tail`: stream live changes from a slot and print them, as readable
//! lines or as one JSON object per change.
//!
//! By default it creates a temporary slot, which disappears with the
//! connection, so tailing never leaves anything behind on the server. With
//! `slot` it reads an existing slot and confirms what it has printed.

use crate::event::{Assembler, Change, Event, LogicalMessage, Op, Row};
use crate::source::{self, quote, ConnInfo, PgConn, ReplicationMessage, SnapshotAction, StartOptions};
use crate::{Error, Lsn};
use std::future::Future;
use std::io::Write;

/// How to tail.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// The publication to stream.
    pub publication: String,
    /// An existing slot to read (and confirm); `None` creates a temporary one.
    pub slot: Option<String>,
    /// Where to start in an existing slot (`0/0`: where it was confirmed).
    pub start: Lsn,
    /// Stop once this position is reached.
    pub endpos: Option<Lsn>,
    /// Print JSON objects instead of text lines.
    pub json: bool,
    /// The pgoutput protocol version.
    pub proto_version: u32,
}

/// What a tail saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TailSummary {
    /// Changes printed.
    pub changes: u64,
    /// Transactions seen.
    pub transactions: u64,
    /// Logical messages printed.
    pub messages: u64,
}

/// Checks that the server can stream `publication`, with the fix when not.
pub async fn preflight(conn: &mut PgConn, publication: &str) -> Result<(), Error> {
    source::check_wal_level(conn).await?;
    let rows = conn
        .simple_query(&format!(
            "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = {}",
            quote::literal(publication)?
        ))
        .await?;
    if rows.is_empty() {
        return Err(Error::Prerequisite(format!(
            "publication {publication:?} does not exist in this database.\n  to fix: \
             CREATE PUBLICATION {} FOR ALL TABLES; (or FOR TABLE a, b)",
            quote::ident(publication)?
        )));
    }
    Ok(())
}

/// Tails until `stop` resolves, `endpos` is reached or the stream fails.
pub async fn run(
    info: &ConnInfo,
    opts: &TailOptions,
    out: &mut (dyn Write + Send),
    stop: impl Future<Output = ()>,
) -> Result<TailSummary, Error> {
    let mut conn = PgConn::connect(info, true).await?;
    preflight(&mut conn, &opts.publication).await?;
    let slot = match &opts.slot {
        Some(s) => s.clone(),
        None => {
            let name = format!("waly_tail_{}", std::process::id());
            source::create_slot(&mut conn, &name, true, SnapshotAction::Nothing).await?;
            name
        }
    };
    tracing::info!(slot, publication = opts.publication, "streaming");
    let start_opts = StartOptions {
        publications: vec![opts.publication.clone()],
        proto_version: opts.proto_version,
        ..StartOptions::default()
    };
    let mut stream = source::start_replication(conn, &slot, opts.start, &start_opts).await?;
    let mut asm = Assembler::new();
    let mut events = Vec::new();
    let mut summary = TailSummary::default();
    // The end of the last transaction written to `out` but not yet flushed.
    let mut unflushed: Option<Lsn> = None;
    let mut line = Vec::with_capacity(1024);
    tokio::pin!(stop);
    let result = loop {
        // Flush whenever we would otherwise wait, then confirm what is out.
        if let Some(end) = unflushed {
            if !stream.has_pending() {
                if let Err(e) = out.flush() {
                    break Err(Error::Io(e));
                }
                stream.confirm(end);
                unflushed = None;
            }
        }
        let msg = tokio::select! {
            _ = &mut stop => break Ok(()),
            m = stream.recv() => m,
        };
        let reached_end = match msg {
            None => break Err(Error::ConnectionClosed),
            Some(Err(e)) => break Err(e),
            Some(Ok(ReplicationMessage::Keepalive { wal_end, .. })) => {
                // Between transactions, with everything printed flushed, all
                // WAL before wal_end is accounted for: an idle tail never pins WAL.
                let between = !asm.in_transaction();
                if between && unflushed.is_none() {
                    stream.confirm(wal_end);
                }
                between && opts.endpos.is_some_and(|e| wal_end >= e)
            }
            Some(Ok(ReplicationMessage::XLogData { wal_start, data, .. })) => {
                events.clear();
                if let Err(e) = asm.push(wal_start, &data, &mut events) {
                    break Err(e);
                }
                let mut reached = false;
                for ev in &events {
                    line.clear();
                    match ev {
                        Event::Change(c) => {
                            summary.changes += 1;
                            format_change(c, opts.json, &mut line);
                        }
                        Event::Message(m) => {
                            summary.messages += 1;
                            format_message(m, opts.json, &mut line);
                        }
                        Event::Commit { end_lsn, .. } => {
                            summary.transactions += 1;
                            unflushed = Some(*end_lsn);
                            reached = opts.endpos.is_some_and(|e| *end_lsn >= e);
                        }
                        Event::Begin { .. } | Event::Relation(_) => {}
                    }
                    if !line.is_empty() {
                        line.push(b'\n');
                        if let Err(e) = out.write_all(&line) {
                            return finish(stream, Err(Error::Io(e)), summary).await;
                        }
                    }
                }
                reached
            }
        };
        if reached_end {
            break Ok(());
        }
    };
    if let Err(e) = out.flush() {
        return finish(stream, Err(Error::Io(e)), summary).await;
    }
    if let (Ok(()), Some(end)) = (&result, unflushed) {
        stream.confirm(end);
    }
    finish(stream, result, summary).await
}

async fn finish(
    stream: source::ReplicationStream,
    result: Result<(), Error>,
    summary: TailSummary,
) -> Result<TailSummary, Error> {
    match result {
        Ok(()) => {
            stream.shutdown().await?;
            Ok(summary)
        }
        Err(e) => {
            // A broken stream cannot be shut down politely; dropping it closes it.
            drop(stream);
            Err(e)
        }
    }
}

/// Appends one change as a JSON object or a text line.
pub fn format_change(c: &Change, json: bool, out: &mut Vec<u8>) {
    if json {
        // Serializing plain data into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, c);
        return;
    }
    let _ = write!(
        out,
        "{} {} xid {} #{} {:<8} {}",
        c.commit_time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        c.commit_lsn,
        c.xid,
        c.seq,
        c.op.as_str(),
        c.table
    );
    if let Some(k) = &c.key {
        out.extend_from_slice(b" [");
        text_row(k, out);
        out.push(b']');
    }
    match c.op {
        Op::Insert | Op::Update => {
            if let Some(n) = &c.new {
                out.push(b' ');
                text_row(n, out);
            }
            for t in &c.unchanged_toast {
                let _ = write!(out, " {t}=<unchanged toast>");
            }
            if let Some(o) = &c.old {
                out.extend_from_slice(b" (old: ");
                text_row(o, out);
                out.push(b')');
            }
        }
        Op::Delete => {
            if let Some(o) = &c.old {
                out.extend_from_slice(b" (old: ");
                text_row(o, out);
                out.push(b')');
            }
        }
        Op::Truncate => {}
    }
}

fn text_row(r: &Row, out: &mut Vec<u8>) {
    for (i, (name, v)) in r.0.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        match v {
            None => {
                let _ = write!(out, "{name}=NULL");
            }
            // A value the archive cannot know says why (never the marker).
            Some(s) if crate::schema::shape::unknown(s).is_some() => {
                let why = crate::schema::shape::unknown(s).unwrap_or_default();
                let _ = write!(out, "{name}=<unknown: {why}>");
            }
            Some(s) => {
                let shown: String = s.chars().take(60).collect();
                let more = if shown.len() < s.len() { "…" } else { "" };
                let _ = write!(out, "{name}='{}{more}'", shown.replace('\'', "''"));
            }
        }
    }
}

/// Appends one logical message as JSON (`{"message": {...}}`) or text.
pub fn format_message(m: &LogicalMessage, json: bool, out: &mut Vec<u8>) {
    if json {
        let _ = serde_json::to_writer(&mut *out, &serde_json::json!({ "message": m }));
        return;
    }
    match &m.txn {
        Some(t) => {
            let _ = write!(
                out,
                "{} {} xid {} #{} {:<8} {}: {}",
                t.commit_time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                t.commit_lsn,
                t.xid,
                t.seq,
                "message",
                m.prefix,
                m.content
            );
        }
        None => {
            let _ = write!(
                out,
                "(not transactional) {} message  {}: {}",
                m.lsn, m.prefix, m.content
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// `waly log` and `waly tail` in text: a value the archive cannot know
    /// says why, and no NUL byte (the marker) reaches the terminal.
    #[test]
    fn an_unknown_value_prints_why_and_never_its_marker() {
        let why = "the column n was dropped later";
        let row = Row(vec![
            (Arc::from("id"), Some("2".to_string())),
            (Arc::from("n"), Some(crate::schema::shape::unknown_value(why))),
        ]);
        let c = Change {
            commit_lsn: crate::Lsn(0x100),
            seq: 0,
            lsn: crate::Lsn(0xf0),
            xid: 7,
            commit_time: chrono::DateTime::from_timestamp(0, 0).unwrap_or_default(),
            table: Arc::from("public.item"),
            op: Op::Insert,
            key: None,
            old: None,
            new: Some(row),
            unchanged_toast: Vec::new(),
        };
        let mut out = Vec::new();
        format_change(&c, false, &mut out);
        let text = String::from_utf8(out).expect("utf-8");
        assert!(
            text.ends_with("id='2' n=<unknown: the column n was dropped later>"),
            "{text}"
        );
        assert!(!text.contains('\0'), "{text:?}");
    }
}
