-- waly: a table's whole definition as JSON, from the catalog. One query for
-- every place waly reads a definition: the DDL event trigger (sql/ddl.sql,
-- with :rel the table's OID), the base snapshot and the Relation-message
-- fallback. Columns come with their attnum, the identity that survives a
-- rename.
SELECT jsonb_strip_nulls(jsonb_build_object(
    'oid', c.oid::int8,
    'schema', n.nspname::text,
    'name', c.relname::text,
    'relkind', c.relkind::text,
    'owner', pg_get_userbyid(c.relowner)::text,
    'replica_identity', CASE c.relreplident WHEN 'd' THEN 'default' WHEN 'f' THEN 'full'
                                            WHEN 'i' THEN 'index' ELSE 'nothing' END,
    'partition_key', CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END,
    'parent', (SELECT i.inhparent::regclass::text FROM pg_inherits i WHERE i.inhrelid = c.oid LIMIT 1),
    'partition_bound', CASE WHEN c.relispartition THEN pg_get_expr(c.relpartbound, c.oid) END,
    'partitions', CASE WHEN c.relkind = 'p' THEN coalesce((
        SELECT jsonb_agg(jsonb_build_object(
                   'name', p.relname::text,
                   'schema', pn.nspname::text,
                   'bound', pg_get_expr(p.relpartbound, p.oid),
                   'partition_key', CASE WHEN p.relkind = 'p' THEN pg_get_partkeydef(p.oid) END)
                   ORDER BY pn.nspname, p.relname)
          FROM pg_inherits i
          JOIN pg_class p ON p.oid = i.inhrelid
          JOIN pg_namespace pn ON pn.oid = p.relnamespace
         WHERE i.inhparent = c.oid), '[]'::jsonb) END,
    'columns', coalesce((
        SELECT jsonb_agg(jsonb_build_object(
            'attnum', a.attnum,
            'name', a.attname::text,
            'type', format_type(a.atttypid, a.atttypmod),
            'type_oid', a.atttypid::int8,
            'type_modifier', a.atttypmod,
            'not_null', a.attnotnull,
            'primary_key', coalesce(a.attnum = ANY(pk.indkey), false),
            'key_position', array_position(pk.indkey::int2[], a.attnum) + 1 - array_lower(pk.indkey::int2[], 1),
            'key', CASE c.relreplident
                       WHEN 'f' THEN true
                       WHEN 'd' THEN coalesce(a.attnum = ANY(pk.indkey), false)
                       WHEN 'i' THEN coalesce(a.attnum = ANY(ri.indkey), false)
                       ELSE false END,
            'missing', CASE WHEN a.atthasmissing THEN array_to_string(a.attmissingval, '') END,
            'default', CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END,
            'generated', CASE WHEN a.attgenerated <> '' THEN jsonb_build_object(
                             'kind', CASE a.attgenerated WHEN 's' THEN 'stored' ELSE 'virtual' END,
                             'expression', pg_get_expr(d.adbin, d.adrelid)) END,
            'identity', CASE a.attidentity WHEN 'a' THEN 'always' WHEN 'd' THEN 'by default' END,
            -- The enums and composite types its values are written in (its
            -- type, through arrays, domains and composites' attributes), by
            -- OID: an enum's labels, a composite's attributes (attnum, type).
            -- Renaming a label, or adding or dropping an attribute, changes
            -- the text of values already written without a change in the
            -- stream.
            'type_shape', (
                WITH RECURSIVE reach(t, depth) AS (
                    SELECT a.atttypid, 0
                    UNION
                    SELECT x.t, r.depth + 1
                      FROM reach r
                      JOIN pg_type y ON y.oid = r.t
                     CROSS JOIN LATERAL (
                           SELECT y.typelem WHERE y.typcategory = 'A' AND y.typelem <> 0
                           UNION ALL SELECT y.typbasetype WHERE y.typtype = 'd'
                           UNION ALL SELECT at.atttypid FROM pg_attribute at
                                      WHERE y.typtype = 'c' AND at.attrelid = y.typrelid
                                        AND at.attnum > 0 AND NOT at.attisdropped) x(t)
                     WHERE r.depth < 8)
                SELECT jsonb_object_agg(y.oid::text, CASE y.typtype
                           WHEN 'e' THEN jsonb_build_object('labels', (
                               SELECT jsonb_agg(e.enumlabel::text ORDER BY e.enumsortorder)
                                 FROM pg_enum e WHERE e.enumtypid = y.oid))
                           ELSE jsonb_build_object('attributes', (
                               SELECT jsonb_agg(jsonb_build_array(at.attnum, at.atttypid::int8) ORDER BY at.attnum)
                                 FROM pg_attribute at
                                WHERE at.attrelid = y.typrelid AND at.attnum > 0 AND NOT at.attisdropped)) END)
                  FROM pg_type y
                 WHERE y.oid IN (SELECT r.t FROM reach r) AND y.typtype IN ('e', 'c'))
        ) ORDER BY a.attnum)
          FROM pg_attribute a
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]'::jsonb)))
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_index pk ON pk.indrelid = c.oid AND pk.indisprimary
  LEFT JOIN pg_index ri ON ri.indrelid = c.oid AND ri.indisreplident
 WHERE c.oid = :rel
