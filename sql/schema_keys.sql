-- The schema keys of encrypted archives (format 4), kept for `waly run`:
-- a schema version is sealed whole under a schema key, and the writer,
-- which holds no identity, reads the shapes it resumes from with its copy
-- kept here. Readers never need this table (their identity unwraps the
-- same keys in the archive). Whoever reads it can read the archive's schema
-- versions (table and column names, types), not its rows: guard it like
-- the catalog. waly never captures it (its comment). `waly run` creates it
-- when it is missing and the role may; sql/setup.sql creates it too.
CREATE TABLE IF NOT EXISTS public.waly_schema_keys (
    archive text NOT NULL,
    key_id text NOT NULL,
    recipients integer NOT NULL,
    secret text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (archive, key_id)
);
REVOKE ALL ON public.waly_schema_keys FROM PUBLIC;
COMMENT ON TABLE public.waly_schema_keys IS 'waly: schema keys of encrypted archives, kept for `waly run`; not captured';
