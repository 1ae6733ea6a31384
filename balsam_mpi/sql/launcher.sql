-- The launcher's statements (store.py). Each calls one SECURITY DEFINER function of
-- migrations/0004_launcher.sql, so a leader needs no table privileges of its own.

-- name: launcher_open_job
SELECT job_id, lease_epoch, adopted
  FROM launcher_open_job(%(job_id)s, %(scheduler)s, %(scheduler_job_id)s, %(host)s,
                         %(nodes)s, %(ranks)s, %(filters)s, %(wall_time_min)s,
                         %(lease_sec)s);

-- name: launcher_claim
SELECT id, workflow, name, state, app, command, shell, env_script, params, args, env,
       num_nodes, ranks_per_node, threads_per_rank, gpus_per_rank, node_packing_count,
       wall_time_min
  FROM launcher_claim(%(job)s, %(epoch)s, %(limit)s, %(capacity)s, %(max_need)s,
                      %(workflows)s, %(tags)s, %(owners)s, %(remaining_min)s,
                      %(max_nodes)s);

-- name: launcher_report
SELECT step, changed
  FROM launcher_report(%(job)s, %(epoch)s, %(s_ids)s, %(s_at)s, %(f_ids)s,
                       %(f_kind)s::smallint[], %(f_rc)s, %(f_started)s, %(f_ended)s,
                       %(f_tail)s);

-- name: launcher_heartbeat
SELECT launcher_heartbeat(%(job)s, %(epoch)s);

-- name: launcher_close_job
SELECT released, requeued
  FROM launcher_close_job(%(job)s, %(epoch)s, %(state)s, %(reason)s);
