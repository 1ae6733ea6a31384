-- Statements used by balsam-dbctl (run as the database superuser over the socket,
-- except instance_check, which every client runs).

-- name: instance_check
SELECT nonce, data_dev, data_ino FROM balsam_instance;

-- name: instance_record
INSERT INTO balsam_instance (singleton, nonce, data_dev, data_ino, started_at)
VALUES (true, %(nonce)s, %(dev)s, %(ino)s, now())
ON CONFLICT (singleton) DO UPDATE
   SET nonce = EXCLUDED.nonce, data_dev = EXCLUDED.data_dev,
       data_ino = EXCLUDED.data_ino, started_at = EXCLUDED.started_at;

-- name: role_exists
SELECT 1 FROM pg_roles WHERE rolname = %(name)s;

-- name: database_exists
SELECT 1 FROM pg_database WHERE datname = %(name)s;

-- name: create_nologin_role
CREATE ROLE {role} NOLOGIN;

-- name: grant_signal_backend
-- The one function that uses them is end_hogging_sessions() (migration 0031): to end a
-- session, and to see how long another role's transaction has been open (without
-- pg_read_all_stats, pg_stat_get_activity shows only the caller's own).
GRANT pg_signal_backend, pg_read_all_stats TO {role};

-- name: create_database
CREATE DATABASE {db} OWNER {owner} ENCODING 'UTF8' TEMPLATE template0;

-- name: lock_down_database
REVOKE ALL ON DATABASE {db} FROM PUBLIC;

-- name: set_role
SET ROLE {role};

-- name: reset_role
RESET ROLE;

-- name: migrations_table
CREATE TABLE IF NOT EXISTS balsam_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- name: migrations_applied
SELECT version FROM balsam_migrations ORDER BY version;

-- name: migration_record
INSERT INTO balsam_migrations (version, name) VALUES (%(version)s, %(name)s);

-- name: migration_lock
SELECT pg_advisory_xact_lock(20240901);

-- name: server_status
SELECT current_setting('server_version') AS server_version,
       extract(epoch FROM now() - pg_postmaster_start_time()) AS uptime_s,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')
           AS connections,
       (SELECT count(*) FROM pg_stat_activity
         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()) AS other_connections,
       pg_database_size(current_database()) AS database_bytes,
       (SELECT coalesce(max(version), 0) FROM balsam_migrations) AS schema_version;

-- name: catalog_snapshot
-- What the migrations-vs-schema test compares: columns, constraints, indexes, functions,
-- policies and types of the public schema, in a stable order.
SELECT 'column' AS kind, table_name || '.' || column_name AS name,
       data_type || ' ' || is_nullable || ' ' || coalesce(column_default, '') AS detail
  FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL
SELECT 'constraint', conrelid::regclass::text || '.' || conname, pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT 'index', indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL
SELECT 'function', p.oid::regprocedure::text, md5(pg_get_functiondef(p.oid))
  FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
UNION ALL
SELECT 'policy', tablename || '.' || policyname,
       cmd || ' ' || coalesce(qual, '') || ' ' || coalesce(with_check, '') || ' ' || roles::text
  FROM pg_policies WHERE schemaname = 'public'
UNION ALL
SELECT 'type', t.typname, string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
  FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
 WHERE t.typnamespace = 'public'::regnamespace GROUP BY t.typname
UNION ALL
SELECT 'grant', table_name || ':' || grantee, string_agg(privilege_type, ',' ORDER BY privilege_type)
  FROM information_schema.role_table_grants WHERE table_schema = 'public'
 GROUP BY table_name, grantee
UNION ALL
SELECT 'rls', relname, relrowsecurity::text || relforcerowsecurity::text
  FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'
ORDER BY 1, 2, 3;

-- name: server_status_connections
SELECT count(*) FROM pg_stat_activity
 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid();

-- name: create_database_copy
CREATE DATABASE {db} TEMPLATE {template} OWNER {owner} STRATEGY FILE_COPY;

-- name: drop_database_force
DROP DATABASE IF EXISTS {db} WITH (FORCE);
