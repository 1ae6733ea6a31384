-- 0019_filter_shape: a batch job's filters have the shape every reader assumes.
--
-- launcher_open_job and batch_job_submit store the caller's filters as given. A member
-- calling them directly could store {"workflows": "x"} or {"workflows": [{"a": 1}]}; the
-- readers of other launchers' filters (launcher_filter_takes, launcher_hunger, the
-- division's read in launcher_claim_peers) then failed for every launcher on the
-- project, or handed a leader values its division could not use. The database now
-- refuses such a row: an object whose "workflows" and "owners", when present, are
-- arrays of strings and whose "tags", when present, is an object (ClaimFilter.as_json).
-- Rows written before are not re-checked (NOT VALID): the launcher wrote only that shape.
CREATE FUNCTION launcher_filters_ok(f jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, public AS $$
    SELECT jsonb_typeof(f) = 'object'
       AND (NOT f ? 'workflows' OR (jsonb_typeof(f -> 'workflows') = 'array'
            AND NOT jsonb_path_exists(f -> 'workflows', '$[*] ? (@.type() != "string")')))
       AND (NOT f ? 'owners' OR (jsonb_typeof(f -> 'owners') = 'array'
            AND NOT jsonb_path_exists(f -> 'owners', '$[*] ? (@.type() != "string")')))
       AND (NOT f ? 'tags' OR jsonb_typeof(f -> 'tags') = 'object')
$$;

ALTER TABLE batch_jobs ADD CONSTRAINT batch_jobs_filters_shape
    CHECK (launcher_filters_ok(filters)) NOT VALID;
