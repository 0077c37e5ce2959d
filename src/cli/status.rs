//! `waly status`: the slot as PostgreSQL sees it, and the archive.

use super::{ArchiveArgs, SlotArgs, SourceArgs};
use crate::archive::state;
use std::io::Write;

/// Show the slot (active, confirmed LSN, lag, retained WAL) and the archive
/// (latest commit, size, segments, generations, the writer, the sidecar's last error).
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub archive: ArchiveArgs,
    #[command(flatten)]
    pub names: SlotArgs,
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
}

async fn slot(args: &StatusArgs) -> anyhow::Result<serde_json::Value> {
    let info = args.source.conninfo()?;
    let client = crate::source::tls::connect_sql(&info).await?;
    let row = client
        .query_opt(
            "SELECT active, active_pid, confirmed_flush_lsn::text, restart_lsn::text, wal_status,
                    pg_current_wal_lsn()::text,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8,
                    current_setting('max_slot_wal_keep_size')
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&args.names.slot],
        )
        .await?;
    let keep: String = client
        .query_one("SELECT current_setting('max_slot_wal_keep_size')", &[])
        .await?
        .get(0);
    let ddl = crate::schema::ddl::capture_mode(&client).await?.as_str();
    // Columns newer servers add (16: conflicting; 17: inactive_since,
    // invalidation_reason), read by name so every version answers.
    let extra: Option<serde_json::Value> = client
        .query_opt(
            "SELECT to_jsonb(s)::text FROM pg_replication_slots s WHERE slot_name = $1",
            &[&args.names.slot],
        )
        .await?
        .and_then(|r| serde_json::from_str(&r.get::<_, String>(0)).ok());
    let newer = |k: &str| extra.as_ref().map_or(serde_json::Value::Null, |e| e[k].clone());
    Ok(match row {
        None => serde_json::json!({"slot": args.names.slot, "exists": false, "max_slot_wal_keep_size": keep,
            "ddl_capture": ddl}),
        Some(r) => serde_json::json!({
            "ddl_capture": ddl,
            "slot": args.names.slot,
            "exists": true,
            "active": r.get::<_, bool>(0),
            "active_pid": r.get::<_, Option<i32>>(1),
            "confirmed_flush_lsn": r.get::<_, Option<String>>(2),
            "restart_lsn": r.get::<_, Option<String>>(3),
            "wal_status": r.get::<_, Option<String>>(4),
            "current_wal_lsn": r.get::<_, Option<String>>(5),
            "lag_bytes": r.get::<_, Option<i64>>(6),
            "retained_wal_bytes": r.get::<_, Option<i64>>(7),
            "max_slot_wal_keep_size": r.get::<_, String>(8),
            "conflicting": newer("conflicting"),
            "inactive_since": newer("inactive_since"),
            "invalidation_reason": newer("invalidation_reason"),
        }),
    })
}

async fn archive(args: &StatusArgs) -> anyhow::Result<serde_json::Value> {
    let store = args.archive.open()?;
    let identity = state::read_identity(&store).await?;
    let mut gens = Vec::new();
    let mut total_bytes = 0u64;
    let mut total_segments = 0u64;
    for (_, size) in store.list("").await? {
        total_bytes += size;
    }
    let mut latest = serde_json::Value::Null;
    for g in state::generations(&store).await? {
        let info = state::generation_info(&store, &g).await?;
        // No key needed: what status shows is never sealed.
        let (st, segs) = state::load_generation_listing(&store, &g, state::Shapes::WhatOpens, |_| {}).await?;
        total_segments += segs.len() as u64;
        if let Some(c) = st.tail.last_commit {
            latest = serde_json::json!({"generation": g, "commit_lsn": c.commit_lsn,
                "commit_time": c.commit_time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)});
        }
        gens.push(
            serde_json::json!({"generation": g, "started_at": info.started_at, "reason": info.reason,
            "segments": segs.len(), "snapshots": st.manifests.len(), "durable_lsn": st.tail.durable_lsn}),
        );
    }
    // The writer: the newest lease. The sidecar's last error: the newest
    // object under errors/ (names sort by time).
    let newest = |dir: &'static str| {
        let store = &store;
        async move {
            let mut keys: Vec<String> = store.list(dir).await?.into_iter().map(|(k, _)| k).collect();
            keys.sort();
            anyhow::Ok(match keys.last() {
                Some(k) => match store.open_blob(k, store.get(k).await?).await {
                    Ok(b) => serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null),
                    Err(e) => serde_json::json!({ "unreadable": e.to_string() }),
                },
                None => serde_json::Value::Null,
            })
        }
    };
    let writer = newest(crate::archive::layout::LEASES_DIR).await?;
    let last_error = newest(crate::archive::layout::ERRORS_DIR).await?;
    let encryption = if store.is_encrypted().await? {
        let keys = crate::crypt::rotate::list(&store).await?;
        serde_json::json!({"recipient_set": keys.recipients.as_ref().map(|s| s.number),
            "recipients": keys.recipients.map_or(0, |s| s.recipients.len()), "data_keys": keys.data_keys.len()})
    } else {
        serde_json::Value::Null
    };
    let moves = state::source_moves(&store).await?;
    Ok(
        serde_json::json!({"url": store.url(), "identity": identity, "bytes": total_bytes,
        "segments": total_segments, "latest_commit": latest, "generations": gens,
        "writer": writer, "last_error": last_error, "encryption": encryption, "source_moves": moves}),
    )
}

pub async fn run(args: &StatusArgs) -> anyhow::Result<()> {
    let slot = slot(args)
        .await
        .unwrap_or_else(|e| serde_json::json!({"slot": args.names.slot, "error": format!("{e:#}")}));
    let archive = archive(args).await?;
    let mut out = std::io::stdout();
    if args.json {
        serde_json::to_writer(&mut out, &serde_json::json!({"slot": slot, "archive": archive}))?;
        writeln!(out)?;
        return Ok(());
    }
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    match slot.get("error") {
        Some(e) => writeln!(out, "slot {}: cannot ask the database: {}", s(&slot["slot"]), s(e))?,
        None if slot["exists"] == false => writeln!(out, "slot {}: does not exist", s(&slot["slot"]))?,
        None => {
            writeln!(
                out,
                "slot {}: {}{}, confirmed to {}, {} bytes behind {} (wal_status {})",
                s(&slot["slot"]),
                if slot["active"] == true { "active" } else { "INACTIVE" },
                slot["active_pid"]
                    .as_i64()
                    .map(|p| format!(" (pid {p})"))
                    .unwrap_or_default(),
                s(&slot["confirmed_flush_lsn"]),
                s(&slot["lag_bytes"]),
                s(&slot["current_wal_lsn"]),
                s(&slot["wal_status"])
            )?;
            writeln!(
                out,
                "retained WAL: {} bytes (max_slot_wal_keep_size = {})",
                s(&slot["retained_wal_bytes"]),
                s(&slot["max_slot_wal_keep_size"])
            )?;
            if let Some(why) = slot["invalidation_reason"].as_str() {
                writeln!(out, "the slot is INVALIDATED: {why}")?;
            }
            writeln!(out, "DDL capture: {}", s(&slot["ddl_capture"]))?;
        }
    }
    writeln!(
        out,
        "archive {}: {} bytes, {} segments; latest commit {} at {}",
        s(&archive["url"]),
        s(&archive["bytes"]),
        s(&archive["segments"]),
        s(&archive["latest_commit"]["commit_lsn"]),
        s(&archive["latest_commit"]["commit_time"])
    )?;
    if let Some(m) = archive["source_moves"].as_array().and_then(|m| m.last()) {
        writeln!(
            out,
            "source: database {} of cluster {}, since move {} at {} (from database {} of cluster {}; waly init --source-moved)",
            s(&m["to"]["database"]),
            s(&m["to"]["system_identifier"]),
            s(&m["number"]),
            s(&m["recorded_at"]),
            s(&m["from"]["database"]),
            s(&m["from"]["system_identifier"])
        )?;
    }
    let w = &archive["writer"];
    if !w.is_null() {
        // The lease says who wrote last; whether it still runs, the slot says.
        let state = match (slot.get("error"), slot["active"].as_bool()) {
            (Some(_), _) => "state unknown: cannot ask the database",
            (None, Some(true)) => "running: it streams the slot",
            _ => "STOPPED: no process streams the slot",
        };
        writeln!(
            out,
            "writer: {} ({state}; fencing token {}) since {}, from segment {} of generation {}",
            s(&w["holder"]),
            s(&w["token"]),
            s(&w["acquired_at"]),
            s(&w["first_segment"]),
            s(&w["generation"])
        )?;
    }
    let e = &archive["encryption"];
    if !e.is_null() {
        writeln!(
            out,
            "encrypted (age): recipient set {} with {} recipient(s), {} data key(s); readers need --identity or WALY_PASSPHRASE",
            s(&e["recipient_set"]),
            s(&e["recipients"]),
            s(&e["data_keys"])
        )?;
    }
    match &archive["last_error"] {
        serde_json::Value::Null => writeln!(out, "last error of the sidecar: none recorded")?,
        e if !e["unreadable"].is_null() => {
            writeln!(out, "last error of the sidecar: recorded, but {}", s(&e["unreadable"]))?
        }
        e => writeln!(
            out,
            "last error of the sidecar: {} on {}: {}",
            s(&e["time"]),
            s(&e["host"]),
            s(&e["error"])
        )?,
    }
    for g in archive["generations"].as_array().cloned().unwrap_or_default() {
        writeln!(
            out,
            "  generation {}: {} segments, {} snapshot(s), since {} ({})",
            s(&g["generation"]),
            s(&g["segments"]),
            s(&g["snapshots"]),
            s(&g["started_at"]),
            s(&g["reason"])
        )?;
    }
    Ok(())
}
