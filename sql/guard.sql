-- waly guard: a table created after `waly init` is published at once by a
-- FOR ALL TABLES publication. Without a primary key and with REPLICA
-- IDENTITY DEFAULT, every UPDATE and DELETE on it would then fail on the
-- primary. This event trigger gives such tables REPLICA IDENTITY FULL as
-- they are created. Installing it needs a superuser.
CREATE OR REPLACE FUNCTION public.waly_guard_replica_identity() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT * FROM pg_event_trigger_ddl_commands()
             WHERE command_tag IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO')
               AND object_type = 'table'
    LOOP
        -- Only permanent tables: temporary and unlogged ones are never published.
        IF (SELECT relreplident FROM pg_class WHERE oid = r.objid AND relpersistence = 'p') = 'd'
           AND NOT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = r.objid AND indisprimary) THEN
            EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', r.object_identity);
            RAISE NOTICE 'waly: % has no primary key; set REPLICA IDENTITY FULL so UPDATE and DELETE keep working while it is published', r.object_identity;
        END IF;
    END LOOP;
END
$$;
DROP EVENT TRIGGER IF EXISTS waly_guard_replica_identity;
CREATE EVENT TRIGGER waly_guard_replica_identity ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO')
    EXECUTE FUNCTION public.waly_guard_replica_identity();
