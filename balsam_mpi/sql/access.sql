-- Roles and collaborator access (balsam-dbctl add-user, drop-user, users, connections,
-- request-access). Role DDL cannot take parameters, so the {placeholders} below are filled
-- with psycopg.sql.Identifier / Literal by dbctl/access.py and dbctl/enroll.py; everything
-- else is a bound parameter.

-- name: access_role
SELECT a.rolcanlogin, a.rolsuper, a.rolpassword IS NOT NULL AS has_password,
       array(SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
              WHERE m.member = a.oid ORDER BY 1) AS groups
  FROM pg_authid a
 WHERE a.rolname = %(name)s;

-- name: access_create_login_role
CREATE ROLE {role} LOGIN;

-- name: access_allow_login
ALTER ROLE {role} LOGIN;

-- name: access_grant_role
GRANT {group} TO {role};

-- name: access_revoke_role
REVOKE {group} FROM {role};

-- name: access_set_verifier
ALTER ROLE {role} PASSWORD {verifier};

-- name: access_set_own_verifier
ALTER ROLE CURRENT_USER PASSWORD {verifier};

-- name: access_disable_role
ALTER ROLE {role} NOLOGIN PASSWORD NULL;

-- name: access_lock_database
REVOKE CONNECT, TEMPORARY ON DATABASE {db} FROM PUBLIC;

-- name: access_terminate_sessions
-- Waits up to 5 s for each session to end, so the caller can say it is gone.
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000))
  FROM pg_stat_activity
 WHERE usename = %(name)s AND pid <> pg_backend_pid();

-- name: access_users
-- Login roles in one of the project's groups: the owner, members and viewers.
SELECT a.rolname::text AS role,
       a.rolpassword IS NOT NULL AS has_password,
       array(SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
              WHERE m.member = a.oid ORDER BY 1) AS groups
  FROM pg_authid a
 WHERE a.rolcanlogin AND NOT a.rolsuper
   AND EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                WHERE m.member = a.oid AND g.rolname = ANY (%(groups)s))
 ORDER BY 1;

-- name: access_connections
SELECT usename::text AS "user", datname::text AS database,
       coalesce(host(client_addr), 'local') AS client,
       application_name AS application, backend_start AS since, state
  FROM pg_stat_activity
 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
 ORDER BY backend_start;

-- name: access_connection_limit
ALTER ROLE {role} CONNECTION LIMIT {limit};

-- name: access_role_setting
-- A default of every session of this login role (dbctl/rolelimits.py).
ALTER ROLE {role} SET {setting} = {value};

-- name: access_role_settings
-- The limits a login role has now (what `balsam-dbctl users` shows and the tests read).
SELECT r.rolconnlimit,
       coalesce((SELECT s.setconfig FROM pg_db_role_setting s
                  WHERE s.setrole = r.oid AND s.setdatabase = 0), '{}') AS settings
  FROM pg_roles r
 WHERE r.rolname = %(name)s;
