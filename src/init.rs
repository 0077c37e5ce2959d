//! `waly init`: check the server, then create the publication and the slot,
//! without ever publishing a table in a way that breaks the application.
//!
//! Every check that fails says exactly how to fix it. Running init twice is
//! safe: what exists is left as it is.

use crate::archive::state::{self, Identity};
use crate::archive::Store;
use crate::source::{self, quote, ConnInfo, PgConn};
use crate::Error;
use std::io::Write;

/// The event trigger that protects tables created later (see sql/guard.sql).
pub const GUARD_SQL: &str = include_str!("../sql/guard.sql");

/// What `init` says when it cannot install the DDL capture triggers.
pub const DDL_FALLBACK_NOTE: &str = "-- NOT installing the DDL capture triggers (sql/ddl.sql): they need a superuser (run init as one, or pass --no-ddl-capture).\n\
-- Without them waly learns a table's new shape only from its next change, and from the catalog at that moment:\n\
--   a point between a DDL and the table's next change restores the old shape; a column renamed and changed again\n\
--   before the next change looks dropped and re-added; DDL that changes nothing pgoutput sends (OWNER TO,\n\
--   defaults, rewrites) is not recorded, so a retype cannot be told from a rewrite.";

/// What to set up.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// The slot.
    pub slot: String,
    /// The publication.
    pub publication: String,
    /// Only these tables (`schema.table` or `table`); all tables when empty.
    pub tables: Vec<String>,
    /// Print the SQL, do nothing.
    pub dry_run: bool,
    /// Give tables without a key REPLICA IDENTITY FULL.
    pub replica_identity_full: bool,
    /// Leave tables without a key out of the publication.
    pub skip_unkeyed: bool,
    /// Do not install the event trigger.
    pub no_guard: bool,
    /// Do not install the DDL capture triggers.
    pub no_ddl_capture: bool,
    /// Encrypt the archive (a new one): `--encrypt`.
    pub encrypt: Option<crate::crypt::EncryptSpec>,
    /// The archive's database moved here: record that the archive follows
    /// this one from now on (`--source-moved`).
    pub source_moved: bool,
}

struct Table {
    schema: String,
    name: String,
    unkeyed: bool,
    can_select: bool,
}

impl Table {
    fn sql_name(&self) -> Result<String, Error> {
        Ok(format!("{}.{}", quote::ident(&self.schema)?, quote::ident(&self.name)?))
    }
    fn shown(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

fn problem(what: impl Into<String>) -> Error {
    Error::Prerequisite(what.into())
}

/// Runs init, writing what it does (or would do) to `out`.
pub async fn init(
    info: &ConnInfo,
    store: &Store,
    opts: &InitOptions,
    out: &mut (dyn Write + Send),
) -> Result<(), Error> {
    let sql = source::tls::connect_sql(info).await?;
    let q = |e| source::tls::sql_error(info, e);

    // The server.
    let wal_level: String = sql.query_one("SHOW wal_level", &[]).await.map_err(q)?.get(0);
    let version: i32 = sql
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(q)?
        .get(0);
    // PostgreSQL 18 can send stored generated columns' values; earlier
    // versions never do (docs/RESTORE.md).
    let with = if version >= 180000 {
        "publish_via_partition_root = true, publish_generated_columns = stored"
    } else {
        "publish_via_partition_root = true"
    };
    if wal_level != "logical" {
        return Err(problem(format!(
            "wal_level is {wal_level:?}, but waly needs logical decoding.\n  to fix: {}",
            crate::error::WAL_LEVEL_FIX
        )));
    }
    let row = sql
        .query_one(
            "SELECT current_user::text, current_database()::text,
                    (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
                    (SELECT rolreplication FROM pg_roles WHERE rolname = current_user),
                    current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)::int,
                    current_setting('max_wal_senders')::int - (SELECT count(*) FROM pg_stat_replication)::int,
                    EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1),
                    (SELECT puballtables FROM pg_publication WHERE pubname = $2),
                    (SELECT pubviaroot FROM pg_publication WHERE pubname = $2)",
            &[&opts.slot, &opts.publication],
        )
        .await
        .map_err(q)?;
    let (user, database): (String, String) = (row.get(0), row.get(1));
    let (superuser, replication): (bool, bool) = (row.get(2), row.get(3));
    let (free_slots, free_senders): (i32, i32) = (row.get(4), row.get(5));
    let slot_exists: bool = row.get(6);
    let publication: Option<bool> = row.get(7);
    let via_root: Option<bool> = row.get(8);
    if !superuser && !replication {
        return Err(problem(format!(
            "role {user:?} may not stream changes.\n  to fix: ALTER ROLE {} REPLICATION;",
            quote::ident(&user)?
        )));
    }
    if !slot_exists && free_slots < 1 {
        return Err(problem(
            "no free replication slot (max_replication_slots is used up).\n  to fix: ALTER SYSTEM SET max_replication_slots = 20; \
             then restart PostgreSQL, or drop an unused slot with pg_drop_replication_slot()",
        ));
    }
    if free_senders < 1 {
        return Err(problem(
            "no free WAL sender (max_wal_senders is used up).\n  to fix: ALTER SYSTEM SET max_wal_senders = 20; then restart PostgreSQL",
        ));
    }

    // The archive: refuse one that belongs to another database before touching anything.
    let mut repl = PgConn::connect(info, true).await?;
    let system = source::identify_system(&mut repl).await?;
    repl.close().await;
    let identity = Identity::new(&system.system_id, &database, &opts.slot, &opts.publication);
    let mut moved_from = None;
    if let Some(theirs) = state::read_identity(store).await? {
        let theirs = state::following(store, theirs).await?;
        if opts.source_moved && theirs.source() != identity.source() && theirs.slot == identity.slot {
            state::check_source_move(store, &identity.source(), system.xlogpos).await?;
            moved_from = Some(theirs.source());
        } else {
            state::check_identity(store, &theirs, &identity)?;
        }
        if opts.encrypt.is_some() && theirs.encryption.is_none() {
            return Err(problem(format!(
                "the archive at {} already holds plaintext history: encryption starts with a new archive.\n  to fix: pass another --archive",
                store.url()
            )));
        }
    }

    // The tables.
    let rows = sql
        .query(
            "SELECT n.nspname::text, c.relname::text,
                    c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS
                        (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)),
                    has_table_privilege(c.oid, 'SELECT')
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence = 'p'
                AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
              ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(q)?;
    let all: Vec<Table> = rows
        .iter()
        .map(|r| Table {
            schema: r.get(0),
            name: r.get(1),
            unkeyed: r.get(2),
            can_select: r.get(3),
        })
        .collect();
    let mut chosen = Vec::new();
    if opts.tables.is_empty() {
        chosen.extend(all.iter());
    } else {
        for t in &opts.tables {
            let (s, n) = quote::split_qualified(t)?;
            let found = all
                .iter()
                .find(|x| x.schema == s && x.name == n)
                .ok_or_else(|| problem(format!("table {s}.{n} does not exist (given in --tables)")))?;
            chosen.push(found);
        }
    }
    let unselectable: Vec<String> = chosen.iter().filter(|t| !t.can_select).map(|t| t.shown()).collect();
    if !unselectable.is_empty() {
        return Err(problem(format!(
            "role {user:?} cannot read {}; the base snapshot needs SELECT.\n  to fix: GRANT SELECT ON {} TO {};",
            unselectable.join(", "),
            unselectable.join(", "),
            quote::ident(&user)?
        )));
    }
    let unkeyed: Vec<&Table> = chosen.iter().copied().filter(|t| t.unkeyed).collect();
    let mut statements: Vec<(String, String)> = Vec::new();
    if !unkeyed.is_empty() && publication.is_none() {
        let names: Vec<String> = unkeyed.iter().map(|t| t.shown()).collect();
        if opts.replica_identity_full {
            for t in &unkeyed {
                statements.push((
                    format!(
                        "{} has no primary key: send whole old rows so UPDATE/DELETE keep working",
                        t.shown()
                    ),
                    format!("ALTER TABLE {} REPLICA IDENTITY FULL", t.sql_name()?),
                ));
            }
        } else if opts.skip_unkeyed {
            writeln!(out, "-- leaving out tables without a key: {}", names.join(", "))?;
            chosen.retain(|t| !t.unkeyed);
        } else {
            return Err(problem(format!(
                "refusing to publish tables without a primary key: {}.\n  Once published, every UPDATE and DELETE on them \
                 would fail on the primary (\"cannot update table ... because it does not have a replica identity\").\n  \
                 to fix: add primary keys, or run again with --replica-identity-full (log whole old rows) or \
                 --skip-unkeyed (do not capture them)",
                names.join(", ")
            )));
        }
    }
    let all_tables = opts.tables.is_empty() && (!opts.skip_unkeyed || unkeyed.is_empty());
    match publication {
        Some(_) => {
            writeln!(out, "-- publication {:?} exists; leaving it as it is", opts.publication)?;
            if via_root == Some(false) {
                writeln!(
                    out,
                    "-- it publishes partitioned tables partition by partition, so the archive holds each partition as a table.\n\
                     -- To archive them under their own name (docs/OPERATIONS.md, \"Partitioned tables\"):\n\
                     --   ALTER PUBLICATION {} SET (publish_via_partition_root = true);",
                    quote::ident(&opts.publication)?
                )?;
            }
        }
        None if all_tables => statements.push((
            "publish every table, including tables created later".into(),
            format!(
                "CREATE PUBLICATION {} FOR ALL TABLES WITH ({with})",
                quote::ident(&opts.publication)?
            ),
        )),
        None if chosen.is_empty() => return Err(problem("no tables to publish")),
        None => statements.push((
            "publish the chosen tables".into(),
            format!(
                "CREATE PUBLICATION {} FOR TABLE {} WITH ({with})",
                quote::ident(&opts.publication)?,
                chosen
                    .iter()
                    .map(|t| t.sql_name())
                    .collect::<Result<Vec<_>, _>>()?
                    .join(", ")
            ),
        )),
    }
    let publishes_all = publication.unwrap_or(all_tables);
    let mut guard = false;
    if publishes_all && !opts.no_guard {
        if superuser {
            guard = true;
        } else {
            writeln!(
                out,
                "-- NOT installing the guard event trigger: it needs a superuser (run init as one, or pass --no-guard).\n\
                 -- Without it, a table created later without a primary key breaks UPDATE/DELETE on itself."
            )?;
        }
    }
    let ddl_capture = !opts.no_ddl_capture && superuser;
    if !opts.no_ddl_capture && !superuser {
        writeln!(out, "{DDL_FALLBACK_NOTE}")?;
    }
    if slot_exists {
        writeln!(out, "-- slot {:?} exists; leaving it as it is", opts.slot)?;
    } else {
        statements.push((
            "the slot that holds WAL until waly has archived it".into(),
            format!(
                "SELECT pg_create_logical_replication_slot({}, 'pgoutput')",
                quote::literal(&opts.slot)?
            ),
        ));
    }
    for (why, stmt) in &statements {
        writeln!(out, "-- {why}\n{stmt};")?;
    }
    // The triggers' bodies are long: shown in full only by a dry run.
    if guard {
        match opts.dry_run {
            true => writeln!(
                out,
                "-- protect tables created later (sql/guard.sql; needs a superuser)\n{GUARD_SQL}"
            )?,
            false => writeln!(
                out,
                "-- installing the guard event trigger (sql/guard.sql): tables created later without a key get REPLICA IDENTITY FULL"
            )?,
        }
    }
    if ddl_capture {
        match opts.dry_run {
            true => writeln!(
                out,
                "-- record each DDL in the archive as it happens (sql/ddl.sql; needs a superuser)\n{}",
                crate::schema::ddl::install_sql()?
            )?,
            false => writeln!(
                out,
                "-- installing the DDL capture event triggers (sql/ddl.sql): each DDL is recorded in the archive as it happens"
            )?,
        }
    }
    if opts.dry_run {
        writeln!(out, "-- dry run: nothing was changed")?;
        return Ok(());
    }
    for (_, stmt) in &statements {
        sql.batch_execute(stmt).await.map_err(q)?;
    }
    if guard {
        sql.batch_execute(GUARD_SQL).await.map_err(q)?;
    }
    if ddl_capture {
        sql.batch_execute(&crate::schema::ddl::install_sql()?)
            .await
            .map_err(q)?;
    }
    if let Some(from) = &moved_from {
        let m = state::record_source_move(store, from, &identity.source(), system.xlogpos).await?;
        writeln!(
            out,
            "-- the archive follows {} from now on (it followed {}; recorded as {}): \
             `waly run` starts a new generation from a snapshot of it",
            m.to,
            m.from,
            crate::archive::layout::source_move_key(m.number)
        )?;
    }
    match &opts.encrypt {
        Some(spec) => crate::crypt::create(store, &identity, spec).await?,
        None => {
            state::claim(store, &identity).await?;
        }
    }
    writeln!(
        out,
        "-- done: publication {:?}, slot {:?}, archive {} ({}). Next: waly run",
        opts.publication,
        opts.slot,
        store.url(),
        if chosen.len() == all.len() {
            "all tables".to_string()
        } else {
            format!("{} tables", chosen.len())
        }
    )?;
    Ok(())
}
