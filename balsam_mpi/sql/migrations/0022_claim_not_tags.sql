-- 0022_claim_not_tags: a planned claim can leave rows with other launchers' tags alone
-- (docs/launcher.md, *Which work first*).
--
-- The division between live launchers (launcher/division.py) counts rows per workflow,
-- owner and tag signature while a live launcher filters by tags: which of the live
-- launchers' distinct tag filters a row matches. A launcher then claims its share of one
-- signature: the rows that have the tags of the filters it matches and those of none of
-- the others. The last half needs a filter the claim did not have: p_not_tags, tag
-- filters no claimed row may match (each `tags @> filter` false). It comes last with a
-- default, so every call with the ten arguments of 0008 means what it meant; the old
-- function goes, or such calls would be ambiguous. The body is 0011's, with that one
-- condition in each branch; the plan stays pinned as 0016 pinned it.

DROP FUNCTION launcher_claim(bigint, bigint, integer, double precision, double precision,
                             text[], jsonb, text[], double precision, integer);

CREATE FUNCTION launcher_claim(
    p_job bigint, p_epoch bigint, p_limit integer, p_capacity double precision,
    p_max_need double precision, p_workflows text[], p_tags jsonb, p_owners text[],
    p_remaining_min double precision, p_max_nodes integer,
    p_not_tags jsonb[] DEFAULT NULL)
RETURNS TABLE (id bigint, workflow text, name text, state task_state, app text,
               command text, shell boolean, env_script text, params jsonb, args text[],
               env jsonb, num_nodes integer, ranks_per_node integer,
               threads_per_rank integer, gpus_per_rank integer,
               node_packing_count integer, wall_time_min double precision,
               priority integer, input_files text[], parents jsonb)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_sort = off SET jit = off
AS $$
BEGIN
    PERFORM launcher_check_user(p_job);
    -- FOR KEY SHARE: the job cannot be deleted before this claim commits (what the
    -- foreign key's check did for every row).
    PERFORM 1 FROM public.batch_jobs b
      WHERE b.id = p_job AND b.lease_epoch = p_epoch AND b.state = 'RUNNING'
        FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batch job % (epoch %) no longer holds its lease', p_job, p_epoch
            USING ERRCODE = 'lock_not_available';
    END IF;
    IF p_workflows IS NULL THEN
        RETURN QUERY
        WITH locked AS (
            SELECT t.id, t.priority, 1.0::float8 / t.node_packing_count AS need
              FROM public.tasks t
             WHERE t.state IN ('READY', 'RESTART_READY') AND t.batch_job_id IS NULL
               AND t.num_nodes <= p_max_nodes
               AND 1.0::float8 / t.node_packing_count <= p_max_need + 1e-9
               AND (p_remaining_min IS NULL OR t.wall_time_min <= p_remaining_min)
               AND (p_tags IS NULL OR t.tags @> p_tags)
               AND (p_owners IS NULL OR t.owner = ANY (p_owners))
               AND (p_not_tags IS NULL OR NOT (t.tags @> ANY (p_not_tags)))
             ORDER BY t.priority DESC, t.id
             LIMIT p_limit
               FOR UPDATE OF t SKIP LOCKED
        ), fitting AS (
            SELECT s.id FROM (
                SELECT l.id, sum(l.need) OVER (ORDER BY l.priority DESC, l.id) AS used
                  FROM locked l) s
             WHERE s.used <= p_capacity + 1e-9
        )
        UPDATE public.tasks t
           SET batch_job_id = p_job, lease_epoch = p_epoch, claimed_at = now()
          FROM fitting f, public.apps a
         WHERE t.id = f.id AND a.id = t.app_id
        RETURNING t.id, t.workflow, t.name, t.state, a.name, a.command, a.shell,
                  a.env_script, t.params, t.args, t.env, t.num_nodes, t.ranks_per_node,
                  t.threads_per_rank, t.gpus_per_rank, t.node_packing_count,
                  t.wall_time_min, t.priority, t.input_files,
                  CASE WHEN cardinality(t.input_files) > 0 THEN
                      (SELECT jsonb_agg(jsonb_build_array(p.workflow, p.id, p.name)
                                        ORDER BY p.id)
                         FROM public.task_deps d JOIN public.tasks p ON p.id = d.parent_id
                        WHERE d.child_id = t.id) END;
    ELSE
        RETURN QUERY
        WITH locked AS (
            SELECT c.id, c.priority, c.need
              FROM unnest(p_workflows) AS w(name)
             CROSS JOIN LATERAL (
                SELECT t.id, t.priority, 1.0::float8 / t.node_packing_count AS need
                  FROM public.tasks t
                 -- A range, not `=` (0004 says why: it keeps tasks_runnable_workflow).
                 WHERE t.workflow >= w.name AND t.workflow <= w.name
                   AND t.state IN ('READY', 'RESTART_READY') AND t.batch_job_id IS NULL
                   AND t.num_nodes <= p_max_nodes
                   AND 1.0::float8 / t.node_packing_count <= p_max_need + 1e-9
                   AND (p_remaining_min IS NULL OR t.wall_time_min <= p_remaining_min)
                   AND (p_tags IS NULL OR t.tags @> p_tags)
                   AND (p_owners IS NULL OR t.owner = ANY (p_owners))
                   AND (p_not_tags IS NULL OR NOT (t.tags @> ANY (p_not_tags)))
                 ORDER BY t.workflow, t.priority DESC, t.id
                 LIMIT p_limit
                   FOR UPDATE OF t SKIP LOCKED) c
        ), fitting AS (
            SELECT s.id FROM (
                SELECT l.id, sum(l.need) OVER (ORDER BY l.priority DESC, l.id) AS used,
                       row_number() OVER (ORDER BY l.priority DESC, l.id) AS n
                  FROM locked l) s
             WHERE s.used <= p_capacity + 1e-9 AND s.n <= p_limit
        )
        UPDATE public.tasks t
           SET batch_job_id = p_job, lease_epoch = p_epoch, claimed_at = now()
          FROM fitting f, public.apps a
         WHERE t.id = f.id AND a.id = t.app_id
        RETURNING t.id, t.workflow, t.name, t.state, a.name, a.command, a.shell,
                  a.env_script, t.params, t.args, t.env, t.num_nodes, t.ranks_per_node,
                  t.threads_per_rank, t.gpus_per_rank, t.node_packing_count,
                  t.wall_time_min, t.priority, t.input_files,
                  CASE WHEN cardinality(t.input_files) > 0 THEN
                      (SELECT jsonb_agg(jsonb_build_array(p.workflow, p.id, p.name)
                                        ORDER BY p.id)
                         FROM public.task_deps d JOIN public.tasks p ON p.id = d.parent_id
                        WHERE d.child_id = t.id) END;
    END IF;
END $$;

ALTER FUNCTION launcher_claim(bigint, bigint, integer, double precision, double precision,
                              text[], jsonb, text[], double precision, integer, jsonb[])
    SET plan_cache_mode = force_generic_plan;

GRANT EXECUTE ON FUNCTION
    launcher_claim(bigint, bigint, integer, double precision, double precision, text[],
                   jsonb, text[], double precision, integer, jsonb[])
TO balsam_member;

-- The division now reads the live launchers' tag filters and keys its planned claims by
-- them, so a value there must be text, as the launcher writes it (a leader cannot hash a
-- JSON object or array, and a number is no tag a task could carry from the client):
-- 0019's shape check, with string values for "tags". Rows written before are not
-- re-checked; the division's read skips any live job whose filters fail it.
CREATE OR REPLACE FUNCTION launcher_filters_ok(f jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, public AS $$
    SELECT jsonb_typeof(f) = 'object'
       AND (NOT f ? 'workflows' OR (jsonb_typeof(f -> 'workflows') = 'array'
            AND NOT jsonb_path_exists(f -> 'workflows', '$[*] ? (@.type() != "string")')))
       AND (NOT f ? 'owners' OR (jsonb_typeof(f -> 'owners') = 'array'
            AND NOT jsonb_path_exists(f -> 'owners', '$[*] ? (@.type() != "string")')))
       AND (NOT f ? 'tags' OR (jsonb_typeof(f -> 'tags') = 'object'
            AND NOT jsonb_path_exists(f -> 'tags', '$.* ? (@.type() != "string")')))
$$;
-- The division's read is a plain query of the launcher's own role: it calls the check
-- too (a pure function of its argument).
GRANT EXECUTE ON FUNCTION launcher_filters_ok(jsonb) TO balsam_member;
