//! `waly restore`: a table as it was, into a new table, another database, a
//! file, or as row-level undo statements for the live table.

use super::{ArchiveArgs, SourceArgs};
use crate::log::Bound;
use crate::restore::{self, Filter, Plan};
use crate::source::quote;
use crate::Lsn;
use std::io::Write;

/// Which point in history.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct PointArgs {
    /// Every transaction committed at or before this instant: RFC 3339
    /// (2026-11-20T09:30:00Z; a date-time without an offset is UTC), or `now`.
    #[arg(long, value_parser = parse_at)]
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    /// Every transaction whose commit LSN is at or before this one (0/16B6C50).
    #[arg(long)]
    pub lsn: Option<Lsn>,
}

/// `--shape`: the columns rows come out with.
pub(crate) fn parse_shape(s: &str) -> Result<restore::Shape, String> {
    s.parse()
}

fn parse_at(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if s.eq_ignore_ascii_case("now") {
        return Ok(chrono::Utc::now());
    }
    if s.parse::<Lsn>().is_ok() {
        return Err(format!("{s:?} is an LSN: give it with --lsn"));
    }
    crate::log::parse_time(s).map_err(|_| {
        format!("invalid time {s:?}: use RFC 3339, e.g. 2026-11-20T09:30:00Z (a time without an offset is UTC), or now")
    })
}

impl PointArgs {
    /// The point.
    pub fn point(&self) -> Bound {
        match (self.at, self.lsn) {
            (Some(t), _) => Bound::Time(t),
            (None, Some(l)) => Bound::Lsn(l),
            (None, None) => Bound::Lsn(Lsn(u64::MAX)),
        }
    }
}

/// The formats of `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FileFormat {
    /// CSV with a header line, as `COPY ... FROM ... (FORMAT csv, HEADER)` reads it.
    Csv,
    /// `CREATE TABLE` and `COPY ... FROM stdin`, for psql.
    Sql,
    /// One JSON object per row.
    Jsonl,
}

/// Restore a table as it was at a point in time.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The table (schema.table; unqualified means public).
    pub table: String,
    #[command(flatten)]
    pub point: PointArgs,
    #[command(flatten)]
    pub archive: ArchiveArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    /// The table to create (default: <table>_at_<yyyymmddthhmmss>, in the table's schema;
    /// with --output, only for --format sql: the table the file creates).
    #[arg(long)]
    pub into: Option<String>,
    /// Create the table in this database instead of the source (a URL or key=value string).
    #[arg(long, hide_env_values = true)]
    pub target: Option<String>,
    /// Write the rows to this file (`-` for stdout) instead of a table.
    #[arg(long, conflicts_with_all = ["target", "upsert"])]
    pub output: Option<String>,
    /// The format of --output.
    #[arg(long, value_enum, default_value = "csv", requires = "output")]
    pub format: FileFormat,
    /// Only these rows: the key value (the primary key, or the replica identity
    /// index under `REPLICA IDENTITY USING INDEX`), `col=val,col=val` for a
    /// composite key, or the values in key order (`42,7`). Repeatable.
    #[arg(long = "key")]
    pub keys: Vec<String>,
    /// Print SQL that puts the --key rows back into the live table as they were
    /// (INSERT ... ON CONFLICT DO UPDATE, or DELETE for rows that did not exist then).
    #[arg(long, requires = "keys")]
    pub upsert: bool,
    /// Run the --upsert statements (in one transaction) instead of only printing them.
    #[arg(long, requires = "upsert")]
    pub apply: bool,
    /// Replace an existing table (the live source table: its rows, in one transaction).
    #[arg(long)]
    pub replace: bool,
    /// Print the plan (generation, snapshot, segments and bytes to read) and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// The columns the rows come out with: `as-was` (the table's columns at that point) or
    /// `latest` (today's: renamed columns under their new names, dropped ones left out,
    /// added ones with the value existing rows got), e.g. to --upsert old rows into the live table.
    #[arg(long, default_value = "as-was", value_parser = parse_shape)]
    pub shape: restore::Shape,
}

/// `schema.table` from what the user typed.
pub(crate) fn qualify(t: &str) -> anyhow::Result<(String, String)> {
    Ok(quote::split_qualified(t)?)
}

pub(crate) fn print_plan(plan: &Plan, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "table:      {}", plan.table)?;
    writeln!(out, "point:      {}", restore::show_point(plan.point))?;
    writeln!(out, "generation: {}", plan.generation)?;
    writeln!(
        out,
        "snapshot:   LSN {} taken {} ({} rows, {} bytes)",
        plan.snapshot.lsn,
        plan.snapshot
            .taken_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        plan.snapshot_rows,
        plan.snapshot_bytes
    )?;
    writeln!(
        out,
        "segments:   {} ({} bytes)",
        plan.segments.len(),
        plan.bytes() - plan.snapshot_bytes
    )?;
    writeln!(out, "to read:    {} bytes", plan.bytes())
}

/// A progress line on stderr, only on a terminal.
pub(crate) struct ProgressLine {
    total: u64,
    shown: bool,
    tty: bool,
    last: std::time::Instant,
}

impl ProgressLine {
    pub(crate) fn new(total: u64) -> ProgressLine {
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr())
            && std::io::IsTerminal::is_terminal(&std::io::stdout());
        ProgressLine {
            total: total.max(1),
            shown: false,
            tty,
            last: std::time::Instant::now(),
        }
    }

    pub(crate) fn update(&mut self, done: u64) {
        if !self.tty || (self.shown && self.last.elapsed() < std::time::Duration::from_millis(100)) {
            return;
        }
        self.last = std::time::Instant::now();
        self.shown = true;
        let pct = (done.min(self.total) * 100 / self.total) as usize;
        let bar = format!("{}{}", "#".repeat(pct / 4), ".".repeat(25 - pct / 4));
        eprint!(
            "\rreading the archive [{bar}] {pct:3}%  {:.1}/{:.1} MB",
            done as f64 / 1e6,
            self.total as f64 / 1e6
        );
    }

    pub(crate) fn done(&mut self) {
        if self.shown {
            eprint!("\r{}\r", " ".repeat(72));
        }
    }
}

fn default_name(table: &str, point: Bound) -> String {
    match point {
        // Lower case: a name to type without quotes.
        Bound::Time(t) => format!("{table}_at_{}", t.format("%Y%m%dt%H%M%S")),
        Bound::Lsn(l) => format!("{table}_at_{}", l.to_string().replace('/', "_").to_lowercase()),
    }
}

pub async fn run(args: &RestoreArgs) -> anyhow::Result<()> {
    let (schema, name) = qualify(&args.table)?;
    let table = format!("{schema}.{name}");
    let store = args.archive.open()?;
    let point = args.point.point();
    if args.into.is_some() && args.output.is_some() && args.format != FileFormat::Sql {
        anyhow::bail!(
            "--into names a table to create, and --output {} writes rows to a file instead: pass one of them \
             (with --format sql, --into names the table the file creates)",
            clap::ValueEnum::to_possible_value(&args.format).map_or_else(String::new, |v| v.get_name().to_string())
        );
    }
    let plan = restore::plan(&store, &table, point).await?;
    if let Some(note) = &plan.past_end {
        eprintln!("note: {note}");
    }
    let shape = restore::target_schema(&plan, args.shape)?;
    let ident = restore::identity(&shape);
    if !args.keys.is_empty() && shape.row_key().is_empty() {
        anyhow::bail!("--key needs a primary key (or a replica identity index), and {table} has neither");
    }
    let filter = Filter {
        keys: restore::parse_keys(&args.keys, &ident, &table)?,
        shape: args.shape,
    };
    if args.dry_run {
        print_plan(&plan, &mut std::io::stdout())?;
        return Ok(());
    }
    let mut bar = ProgressLine::new(plan.bytes());
    let info = match &args.target {
        Some(t) => crate::source::ConnInfo::parse(t)?,
        None => args.source.conninfo()?,
    };
    // Sessions and files read `money` in the text form the archive holds it in.
    let info = crate::archive::state::with_archive_settings(&store, &info).await?;
    if args.upsert {
        return upsert(args, &store, &plan, &filter, &table, &ident, &info, &mut bar).await;
    }
    let mut progress = |n: u64| bar.update(n);
    if let Some(path) = &args.output {
        let mut rows = restore::rows(&store, &plan, &filter, &mut progress)
            .await?
            .generated_by_database();
        bar.done();
        let into = args.into.clone().unwrap_or_else(|| default_name(&name, point));
        let n = write_file(path, args.format, (&schema, &into), &info, &mut rows)?;
        eprintln!("{n} rows of {table} as of {}", describe_cut(&rows.outcome, point));
        return Ok(());
    }
    let into = args.into.clone().unwrap_or_else(|| default_name(&name, point));
    let (into_schema, into_name) = match into.contains('.') || into.contains('"') {
        true => qualify(&into)?,
        false => (schema.clone(), into.clone()),
    };
    let target = format!("{}.{}", quote::ident(&into_schema)?, quote::ident(&into_name)?);
    let client = crate::source::tls::connect_sql(&info).await?;
    let exists: bool = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!(
                "{}.{}",
                quote::ident(&into_schema)?,
                quote::ident(&into_name)?
            )],
        )
        .await?
        .get(0);
    let live = args.target.is_none() && into_schema == schema && into_name == name;
    if exists && !args.replace {
        anyhow::bail!(
            "{target} already exists; pass --replace to {}, or --into another name",
            if live {
                "overwrite the live table's rows with their state at that point"
            } else {
                "drop and recreate it"
            }
        );
    }
    let mut rows = restore::rows(&store, &plan, &filter, &mut progress)
        .await?
        .generated_by_database();
    bar.done();
    let full = rows.outcome.schema.clone();
    // Generated columns are computed by the database, not copied.
    let schema_rec = restore::writable(&full);
    let cols = restore::column_list(&schema_rec)?;
    let mut setup = String::from("BEGIN;\n");
    if exists && live {
        eprintln!(
            "replacing every row of the live table {target} with its rows as of {} (one transaction)",
            describe_cut(&rows.outcome, point)
        );
        setup.push_str(&format!("DELETE FROM {target};\n"));
    } else {
        if exists {
            setup.push_str(&format!("DROP TABLE {target};\n"));
        }
        // Filled UNLOGGED, then logged: see restore::set_logged_sql.
        setup.push_str(&restore::create_table_sql(&into_schema, &into_name, &full, true)?);
        setup.push_str(";\n");
    }
    client.batch_execute(&setup).await?;
    let n = copy_in(
        &client,
        &format!("COPY {target} ({cols}) FROM STDIN"),
        &schema_rec,
        &mut rows,
    )
    .await;
    let n = match n {
        Ok(n) => n,
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e);
        }
    };
    if !(exists && live) {
        client
            .batch_execute(&format!(
                "{};\n{}",
                restore::set_logged_sql(&into_schema, &into_name, &full)?,
                restore::restored_comment_sql(&into_schema, &into_name, &table, &restore::show_point(point))?
            ))
            .await?;
    }
    client.batch_execute("COMMIT").await?;
    eprintln!(
        "restored {n} rows of {table} as of {} into {target}",
        describe_cut(&rows.outcome, point)
    );
    Ok(())
}

fn describe_cut(o: &restore::Outcome, point: Bound) -> String {
    match o.cut {
        Some((lsn, t)) => format!(
            "{} (last transaction included: {lsn} committed {})",
            restore::show_point(point),
            t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        ),
        None => format!("{} (the snapshot; no later transaction)", restore::show_point(point)),
    }
}

async fn copy_in(
    client: &tokio_postgres::Client,
    sql: &str,
    schema: &crate::segment::SchemaRecord,
    rows: &mut restore::Rows,
) -> anyhow::Result<u64> {
    use futures_util::SinkExt;
    let sink = client.copy_in::<_, bytes::Bytes>(sql).await?;
    futures_util::pin_mut!(sink);
    let mut buf = Vec::with_capacity(256 * 1024);
    let mut n = 0u64;
    let names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
    let absent: Vec<Option<&str>> = schema.columns.iter().map(|c| c.missing.as_deref()).collect();
    while let Some(json) = rows.next_json()? {
        let values = restore::pick(&json, &names, &absent)?;
        restore::copy_text_line(&mut buf, values.iter().map(|v| v.as_deref()));
        n += 1;
        if buf.len() >= 256 * 1024 {
            sink.send(bytes::Bytes::from(std::mem::take(&mut buf))).await?;
            buf.reserve(256 * 1024);
        }
    }
    if !buf.is_empty() {
        sink.send(bytes::Bytes::from(buf)).await?;
    }
    sink.finish().await?;
    Ok(n)
}

fn write_file(
    path: &str,
    format: FileFormat,
    (target_schema, target_name): (&str, &str),
    info: &crate::source::ConnInfo,
    rows: &mut restore::Rows,
) -> anyhow::Result<u64> {
    let target = format!("{}.{}", quote::ident(target_schema)?, quote::ident(target_name)?);
    let out: Box<dyn Write> = if path == "-" {
        Box::new(std::io::stdout())
    } else {
        Box::new(std::fs::File::create(path).map_err(|e| anyhow::anyhow!("cannot create {path}: {e}"))?)
    };
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, out);
    let full = rows.outcome.schema.clone();
    let schema = restore::writable(&full);
    let mut line = Vec::with_capacity(1024);
    match format {
        FileFormat::Csv => restore::csv_line(&mut line, schema.columns.iter().map(|c| Some(c.name.as_str()))),
        FileFormat::Sql => {
            line.extend_from_slice(money_setting(info, "")?.as_bytes());
            line.extend_from_slice(restore::create_table_sql(target_schema, target_name, &full, false)?.as_bytes());
            line.extend_from_slice(
                format!(";\nCOPY {target} ({}) FROM stdin;\n", restore::column_list(&schema)?).as_bytes(),
            );
        }
        FileFormat::Jsonl => {}
    }
    out.write_all(&line)?;
    let mut n = 0u64;
    while let Some(row) = rows.next_row()? {
        line.clear();
        match format {
            FileFormat::Csv => restore::csv_line(&mut line, restore::values(&schema.columns, &row)),
            FileFormat::Sql => restore::copy_text_line(&mut line, restore::values(&schema.columns, &row)),
            FileFormat::Jsonl => {
                let obj: serde_json::Map<String, serde_json::Value> = schema
                    .columns
                    .iter()
                    .zip(restore::values(&schema.columns, &row))
                    .map(|(c, v)| (c.name.clone(), v.map_or(serde_json::Value::Null, |v| v.into())))
                    .collect();
                serde_json::to_writer(&mut line, &obj)?;
                line.push(b'\n');
            }
        }
        out.write_all(&line)?;
        n += 1;
    }
    if format == FileFormat::Sql {
        out.write_all(b"\\.\n")?;
    }
    out.flush()?;
    Ok(n)
}

/// The `SET` a file of SQL starts with so `money` values read back as the
/// archive holds them, whatever the `lc_monetary` of the session that
/// runs it: empty for an archive whose values are in the source's own.
fn money_setting(info: &crate::source::ConnInfo, scope: &str) -> anyhow::Result<String> {
    Ok(match &info.lc_monetary {
        Some(m) => format!("SET {scope}lc_monetary = {};\n", quote::literal(m)?),
        None => String::new(),
    })
}

#[allow(clippy::too_many_arguments)]
async fn upsert(
    args: &RestoreArgs,
    store: &crate::archive::Store,
    plan: &Plan,
    filter: &Filter,
    table: &str,
    ident: &crate::schema::keys::KeyColumns,
    info: &crate::source::ConnInfo,
    bar: &mut ProgressLine,
) -> anyhow::Result<()> {
    let mut rows = restore::rows(store, plan, filter, &mut |n| bar.update(n))
        .await?
        .generated_by_database();
    bar.done();
    let schema = restore::writable(&rows.outcome.schema);
    let (s, n) = qualify(table)?;
    let target = format!("{}.{}", quote::ident(&s)?, quote::ident(&n)?);
    let cols = restore::column_list(&schema)?;
    let pk = ident
        .names
        .iter()
        .map(|c| quote::ident(c))
        .collect::<Result<Vec<_>, _>>()?;
    let lit = |v: Option<&str>| -> anyhow::Result<String> {
        Ok(match v {
            None => "NULL".to_string(),
            Some(v) => quote::literal(v)?,
        })
    };
    let mut sql = String::from("BEGIN;\n");
    sql.push_str(&money_setting(info, "LOCAL ")?);
    let mut found = Vec::new();
    while let Some(row) = rows.next_row()? {
        found.push(ident.encode(&row));
        let vals = restore::values(&schema.columns, &row)
            .map(lit)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let updates: Vec<String> = schema
            .columns
            .iter()
            .filter(|c| !ident.names.contains(&c.name))
            .map(|c| quote::ident(&c.name).map(|q| format!("{q} = EXCLUDED.{q}")))
            .collect::<Result<_, _>>()?;
        let action = if updates.is_empty() {
            "NOTHING".to_string()
        } else {
            format!("UPDATE SET {}", updates.join(", "))
        };
        // The row's own values, identity columns' too (GENERATED ALWAYS
        // refuses a value without OVERRIDING; any table accepts it).
        sql.push_str(&format!(
            "INSERT INTO {target} ({cols}) OVERRIDING SYSTEM VALUE VALUES ({}) ON CONFLICT ({}) DO {action};\n",
            vals.join(", "),
            pk.join(", ")
        ));
    }
    for key in &filter.keys {
        if found.contains(key) {
            continue;
        }
        let vals: Vec<Option<String>> = serde_json::from_slice(key)?;
        let conds = ident
            .names
            .iter()
            .zip(&vals)
            .map(|(c, v)| Ok(format!("{} = {}", quote::ident(c)?, lit(v.as_deref())?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        sql.push_str(&format!("DELETE FROM {target} WHERE {};\n", conds.join(" AND ")));
    }
    sql.push_str("COMMIT;\n");
    print!("{sql}");
    std::io::stdout().flush()?;
    if args.apply {
        let client = crate::source::tls::connect_sql(info).await?;
        client.batch_execute(&sql).await?;
        eprintln!(
            "applied: {} row(s) of {target} put back as of {}",
            filter.keys.len(),
            describe_cut(&rows.outcome, plan.point)
        );
    } else {
        eprintln!("not applied (pass --apply to run these statements)");
    }
    Ok(())
}
