-- Least privilege for waly. Run it as a superuser (or the published tables'
-- owner) after `waly init` has created the publication:
--
--   psql -v role=waly -v publication=waly -v password='...' -f sql/setup.sql
--
-- It creates the role (LOGIN REPLICATION, not a superuser) if it is missing,
-- sets its password when one is given, and grants it SELECT on the tables of
-- the publication only, with USAGE on their schemas. Run it again after
-- adding tables to the publication. Every waly command then works as that
-- role, except creating the publication (`waly init` needs the tables' owner
-- or a superuser, and the guard trigger a superuser), and `waly restore
-- --into`, which needs CREATE on the target schema.
\set ON_ERROR_STOP on
\if :{?role}
\else
\set role waly
\endif
\if :{?publication}
\else
\set publication waly
\endif
\if :{?password}
\else
\set password ''
\endif

SELECT format('CREATE ROLE %I LOGIN REPLICATION', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I WITH LOGIN REPLICATION NOSUPERUSER', :'role') \gexec
SELECT format('ALTER ROLE %I PASSWORD %L', :'role', :'password') WHERE :'password' <> '' \gexec
SELECT format('GRANT USAGE ON SCHEMA %I TO %I', schemaname, :'role')
  FROM (SELECT DISTINCT schemaname FROM pg_publication_tables WHERE pubname = :'publication') s \gexec
SELECT format('GRANT SELECT ON %I.%I TO %I', schemaname, tablename, :'role')
  FROM pg_publication_tables WHERE pubname = :'publication' \gexec
-- Encrypted archives: the table of the writer's schema keys
-- (sql/schema_keys.sql), which it reads and adds to.
\ir schema_keys.sql
SELECT format('GRANT SELECT, INSERT ON public.waly_schema_keys TO %I', :'role') \gexec
