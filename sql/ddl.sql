-- waly DDL capture: inside the DDL's own transaction, an event trigger emits
-- a transactional logical message (prefix 'waly_ddl') with the whole
-- definition of each table the DDL touched, after the change. The archive
-- records a schema version at that transaction's commit: the DDL takes
-- effect in the archive where it took effect in the database, and every
-- column is known by its attnum, so a rename is a rename.
--
-- A failure here never fails the application's DDL: it is reported as a
-- WARNING and waly falls back to the next change's Relation message.
-- Installing it needs a superuser. The functions run as their owner
-- (SECURITY DEFINER) with a fixed search_path, and with the settings that
-- make values' text exact and one form whatever the session's (dates in
-- ISO, intervals in PostgreSQL's style, floats in full, money as the C
-- locale prints it): defaults,
-- partition bounds and the values rows without an added column have.
CREATE OR REPLACE FUNCTION public.waly_table_definition(rel oid) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog
SET DateStyle = 'ISO' SET IntervalStyle = 'postgres' SET extra_float_digits = 3 SET bytea_output = 'hex'
SET lc_monetary = 'C' AS $waly$
@DEFINITION@
$waly$;

-- The tables a publication publishes, and whether whole (sql/published.sql).
CREATE OR REPLACE FUNCTION public.waly_published_tables(pub text)
RETURNS TABLE (schemaname text, tablename text, rel oid, whole boolean)
LANGUAGE sql STABLE SET search_path = pg_catalog AS $waly$
@PUBLISHED@
$waly$;

-- PostgreSQL rewrites a table's rows for some DDL (a volatile default, most
-- type changes). Which tables were rewritten is noted for the transaction,
-- so the DDL message can say so.
CREATE OR REPLACE FUNCTION public.waly_note_rewrite() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $waly$
BEGIN
    PERFORM set_config('waly.rewritten',
        coalesce(current_setting('waly.rewritten', true), '') || ' ' || pg_event_trigger_table_rewrite_oid() || ' ',
        true);
END
$waly$;

CREATE OR REPLACE FUNCTION public.waly_capture_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog
SET DateStyle = 'ISO' SET IntervalStyle = 'postgres' SET extra_float_digits = 3 SET bytea_output = 'hex'
SET lc_monetary = 'C' AS $waly$
-- (waly ddl capture 10: this line names the version `waly status` checks for.)
DECLARE
    r record;
    partitioned boolean := false;
    rewritten text := coalesce(current_setting('waly.rewritten', true), '');
    created text := coalesce(current_setting('waly.created', true), '');
    cmd text := left(current_query(), 4000);
BEGIN
    BEGIN
        IF TG_EVENT = 'sql_drop' THEN
            FOR r IN SELECT DISTINCT d.objid, d.schema_name, d.object_name
                       FROM pg_event_trigger_dropped_objects() d
                      WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0 AND d.object_type = 'table'
            LOOP
                PERFORM pg_logical_emit_message(true, 'waly_ddl', jsonb_build_object(
                    'waly_ddl', 1, 'tag', TG_TAG, 'command', cmd, 'dropped', true,
                    'oid', r.objid::int8, 'schema', r.schema_name, 'name', r.object_name)::text);
            END LOOP;
        ELSE
            -- The tables the command touched, every table of a schema
            -- altered (renaming a schema renames its tables), every table
            -- with a column whose values are written in a type the command
            -- altered (`users`: the type itself, a composite type altered,
            -- reported as its relation, or a table's row type; and, through
            -- pg_depend, arrays of them, domains over them and composite
            -- types or tables with an attribute of them or of their type
            -- (a typed table, `OF` it), at any depth):
            -- renamed, its columns name it anew; an enum's label renamed or
            -- a composite's attribute added or dropped, its values read
            -- anew. Then the root of each partition among them (a partition
            -- created or attached changes its root), and every table that
            -- inherits from one of them (not as a partition): ALTER TABLE
            -- on a parent changes its children too (a column added with
            -- its default, renamed, retyped or dropped).
            FOR r IN WITH RECURSIVE users(t) AS (
                         SELECT c.objid FROM pg_event_trigger_ddl_commands() c
                          WHERE c.classid = 'pg_type'::regclass AND c.command_tag IN ('ALTER TYPE', 'ALTER DOMAIN')
                         UNION
                         SELECT k.reltype FROM pg_event_trigger_ddl_commands() c
                           JOIN pg_class k ON k.oid = c.objid
                          WHERE c.classid = 'pg_class'::regclass AND k.reltype <> 0
                         UNION
                         SELECT x.t FROM users u
                           JOIN pg_depend d ON d.refclassid = 'pg_type'::regclass AND d.refobjid = u.t
                          CROSS JOIN LATERAL (
                                SELECT d.objid WHERE d.classid = 'pg_type'::regclass
                                UNION ALL
                                SELECT k.reltype FROM pg_class k
                                 WHERE d.classid = 'pg_class'::regclass
                                   AND k.oid = d.objid AND k.reltype <> 0) x(t)),
                     touched AS (
                         SELECT c.objid AS rel FROM pg_event_trigger_ddl_commands() c
                          WHERE c.classid = 'pg_class'::regclass
                         UNION
                         SELECT k.oid FROM pg_event_trigger_ddl_commands() c
                           JOIN pg_class k ON k.relnamespace = c.objid
                          WHERE c.classid = 'pg_namespace'::regclass AND c.command_tag = 'ALTER SCHEMA'
                         UNION
                         SELECT y.typrelid FROM users u
                           JOIN pg_type y ON y.oid = u.t AND y.typrelid <> 0),
                     heirs AS (
                         SELECT t.rel FROM touched t
                         UNION
                         SELECT i.inhrelid FROM heirs h
                           JOIN pg_inherits i ON i.inhparent = h.rel
                           JOIN pg_class k ON k.oid = i.inhrelid AND NOT k.relispartition)
                     SELECT DISTINCT x.rel, k.relkind, k.relpersistence FROM (
                         SELECT h.rel FROM heirs h
                         UNION SELECT pg_partition_root(t.rel) FROM touched t) x
                       JOIN pg_class k ON k.oid = x.rel
                      WHERE k.relkind IN ('r', 'p')
            LOOP
                partitioned := partitioned OR r.relkind = 'p';
                -- A permanent table this command created (CREATE TABLE, not
                -- CREATE TABLE AS, whose rows come before this message, nor
                -- a table it touched) is noted for the transaction: each
                -- message about it until the commit says which publications
                -- publish it whole, so that its history can start, empty, at
                -- its creation.
                IF r.relpersistence = 'p' AND EXISTS (
                       SELECT 1 FROM pg_event_trigger_ddl_commands() c
                        WHERE c.classid = 'pg_class'::regclass AND c.objid = r.rel AND c.objsubid = 0
                          AND c.command_tag = 'CREATE TABLE') THEN
                    created := created || ' ' || r.rel || ' ';
                    PERFORM set_config('waly.created', created, true);
                END IF;
                PERFORM pg_logical_emit_message(true, 'waly_ddl', jsonb_build_object(
                    'waly_ddl', 1, 'tag', TG_TAG, 'command', cmd,
                    'rewritten', position(' ' || r.rel || ' ' IN rewritten) > 0
                                 OR EXISTS (SELECT 1 FROM pg_partition_tree(r.rel) pt
                                             WHERE position(' ' || pt.relid::oid || ' ' IN rewritten) > 0),
                    'oid', r.rel::int8,
                    -- For a table created by this transaction (noted
                    -- above): the publications that publish it whole now.
                    'created_in', CASE WHEN position(' ' || r.rel || ' ' IN created) > 0 THEN (
                        SELECT coalesce(jsonb_agg(p.pubname ORDER BY p.pubname), '[]'::jsonb)
                          FROM pg_publication p
                         WHERE EXISTS (SELECT 1 FROM public.waly_published_tables(p.pubname) w
                                        WHERE w.rel = r.rel AND w.whole)) END,
                    'table', public.waly_table_definition(r.rel))::text);
            END LOOP;
            PERFORM set_config('waly.rewritten', '', true);
            IF TG_TAG IN ('CREATE PUBLICATION', 'ALTER PUBLICATION', 'DROP PUBLICATION')
               OR (TG_TAG = 'ALTER TABLE' AND (partitioned OR rewritten <> '')) THEN
                -- The tables each publication publishes whole as this
                -- command leaves them: a table that leaves waly's
                -- publication ends its history in the archive here, and
                -- one that joins it (again) is snapshotted. Attaching or
                -- detaching a partition moves tables in and out too: one
                -- published through its partition root is not published
                -- as itself (publish_via_partition_root). So does SET
                -- UNLOGGED and SET LOGGED (each rewrites the table): an
                -- unlogged table's changes are not streamed.
                PERFORM pg_logical_emit_message(true, 'waly_ddl', jsonb_build_object(
                    'waly_ddl', 1, 'tag', TG_TAG, 'command', cmd,
                    'publications', (SELECT coalesce(jsonb_object_agg(p.pubname, (
                                         SELECT coalesce(jsonb_agg(jsonb_build_array(w.schemaname, w.tablename)
                                                                   ORDER BY w.schemaname, w.tablename), '[]'::jsonb)
                                           FROM public.waly_published_tables(p.pubname) w
                                          WHERE w.whole)), '{}'::jsonb)
                                       FROM pg_publication p))::text);
            END IF;
        END IF;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'waly: this DDL was not recorded for the archive (%); waly will learn the new shape from the next change instead', SQLERRM;
    END;
END
$waly$;

DROP EVENT TRIGGER IF EXISTS waly_capture_ddl;
DROP EVENT TRIGGER IF EXISTS waly_capture_drop;
DROP EVENT TRIGGER IF EXISTS waly_note_rewrite;
CREATE EVENT TRIGGER waly_capture_ddl ON ddl_command_end EXECUTE FUNCTION public.waly_capture_ddl();
CREATE EVENT TRIGGER waly_capture_drop ON sql_drop EXECUTE FUNCTION public.waly_capture_ddl();
CREATE EVENT TRIGGER waly_note_rewrite ON table_rewrite EXECUTE FUNCTION public.waly_note_rewrite();
