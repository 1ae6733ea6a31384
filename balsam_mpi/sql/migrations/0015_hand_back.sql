-- 0015_hand_back: a launcher that holds queued tasks it cannot start yet gives them back
-- to the database when another live launcher has free slots and nothing to claim.
--
-- Within one launcher the leader moves queued tasks from busy nodes to idle ones (the
-- recall, launcher/dispatch.py). Between launchers only the database can: each claims
-- what its nodes can start soon plus a margin, so near the end of the work one launcher
-- may hold a node's worth of tasks queued behind long ones while another launcher, whose
-- claims find nothing, idles. With tasks of 600 s on 5 launchers that costs a whole extra
-- wave to the ones holding (the model in benchmarks/, "launchers hand back").
--
-- Two calls, both on the launcher's own batch job only (launcher_check_user):
--   launcher_hunger(job, epoch, hungry, holding): records whether this launcher is hungry
--     (its last claim came back short and it has free slots) and answers whether another
--     live launcher is hungry for a task this one holds claimed but not started — or,
--     when this one holds none, whether another is hungry at all: then it claims no
--     margins, or it would take back at once what it has just released;
--   launcher_give_back(job, epoch, ids): releases those of ids that this job (at this
--     epoch) holds claimed and never started, and that a hungry launcher's filters take.
-- Hunger is a timestamp renewed while it lasts: a launcher that died hungry stops counting
-- after HUNGER_FRESH (3 s, six of the leaders' half-second beats). Nothing is counted
-- against a released task (no retry, no event: its state does not change), exactly as
-- when a closing launcher releases its unstarted claims.
ALTER TABLE batch_jobs ADD COLUMN hungry_at timestamptz;

-- Would a launcher with filters f (ClaimFilter.as_json: workflows, tags, owners; an empty
-- list takes all) claim a task with this workflow, tags and owner?
CREATE FUNCTION launcher_filter_takes(f jsonb, p_workflow text, p_tags jsonb, p_owner text)
RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, public AS $$
    SELECT (coalesce(jsonb_array_length(f -> 'workflows'), 0) = 0
            OR (f -> 'workflows') ? p_workflow)
       AND p_tags @> coalesce(f -> 'tags', '{}'::jsonb)
       AND (coalesce(jsonb_array_length(f -> 'owners'), 0) = 0
            OR (f -> 'owners') ? p_owner)
$$;

CREATE FUNCTION launcher_hunger(p_job bigint, p_epoch bigint, p_hungry boolean,
                                p_holding boolean)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    PERFORM launcher_check_user(p_job);
    UPDATE public.batch_jobs b SET hungry_at = CASE WHEN p_hungry THEN now() END
     WHERE b.id = p_job AND b.lease_epoch = p_epoch AND b.state = 'RUNNING'
       AND (p_hungry OR b.hungry_at IS NOT NULL);
    IF NOT p_holding THEN
        RETURN EXISTS (
            SELECT 1 FROM public.batch_jobs h
             WHERE h.state = 'RUNNING' AND h.id <> p_job
               AND h.hungry_at > now() - interval '3 seconds');
    END IF;
    -- The few hungry jobs first; for each, does this job hold an unstarted task its
    -- filters take (this job's rows through tasks_batch_job, stopping at the first)?
    RETURN EXISTS (
        SELECT 1 FROM public.batch_jobs h
         WHERE h.state = 'RUNNING' AND h.id <> p_job
           AND h.hungry_at > now() - interval '3 seconds'
           AND EXISTS (
               SELECT 1 FROM public.tasks t
                WHERE t.batch_job_id = p_job AND t.lease_epoch = p_epoch
                  AND t.state IN ('READY', 'RESTART_READY') AND t.num_nodes = 1
                  AND launcher_filter_takes(h.filters, t.workflow, t.tags, t.owner)));
END $$;

CREATE FUNCTION launcher_give_back(p_job bigint, p_epoch bigint, p_ids bigint[])
RETURNS SETOF bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    PERFORM launcher_check_user(p_job);
    RETURN QUERY
    UPDATE public.tasks t SET batch_job_id = NULL, claimed_at = NULL
     WHERE t.id = ANY (p_ids) AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
       AND t.state IN ('READY', 'RESTART_READY') AND t.num_nodes = 1
       AND EXISTS (
           SELECT 1 FROM public.batch_jobs h
            WHERE h.state = 'RUNNING' AND h.id <> p_job
              AND h.hungry_at > now() - interval '3 seconds'
              AND launcher_filter_takes(h.filters, t.workflow, t.tags, t.owner))
    RETURNING t.id;
END $$;

REVOKE ALL ON FUNCTION launcher_hunger(bigint, bigint, boolean, boolean),
                       launcher_give_back(bigint, bigint, bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION launcher_hunger(bigint, bigint, boolean, boolean),
                          launcher_give_back(bigint, bigint, bigint[]) TO balsam_member;
