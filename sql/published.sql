-- waly: the tables a publication (named below) publishes, each with whether it
-- publishes it whole: every operation (insert, update, delete, truncate),
-- every row (no row filter) and every column (no column list, on the table
-- or the partitioned table it is published through), and logged (an
-- unlogged table's changes are not streamed). waly archives a table
-- only while it is published whole; anything less would make an archive
-- that restores rows the database never held. One query for the event
-- trigger (sql/ddl.sql, which records membership as each publication
-- command leaves it), `waly run`'s start and a table's first description.
-- Tables a restore made and the writer's schema keys are never archived.
SELECT t.schemaname::text AS schemaname, t.tablename::text AS tablename, c.oid AS rel,
       p.pubinsert AND p.pubupdate AND p.pubdelete AND p.pubtruncate
       AND c.relpersistence = 'p'
       AND t.rowfilter IS NULL
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel r
                        WHERE r.prpubid = p.oid AND r.prattrs IS NOT NULL
                          AND r.prrelid IN (SELECT a.relid FROM pg_catalog.pg_partition_ancestors(c.oid) a)) AS whole
  FROM pg_catalog.pg_publication p
  JOIN pg_catalog.pg_publication_tables t ON t.pubname = p.pubname
  JOIN pg_catalog.pg_namespace n ON n.nspname = t.schemaname
  JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.tablename
 WHERE p.pubname = :pub
   AND coalesce(pg_catalog.obj_description(c.oid, 'pg_class'), '') NOT LIKE @RESTORED@
   AND coalesce(pg_catalog.obj_description(c.oid, 'pg_class'), '') <> @SCHEMA_KEYS@
