-- Multi-node tasks, pre/postprocessing and tasks that add tasks (balsam_mpi/appinfo.py).

-- name: launcher_app_prepost
-- The pre/postprocessing of the apps a claim returned (read once per app per leader).
SELECT a.name, a.preprocess, a.postprocess, a.postprocess_on_error,
       a.postprocess_on_timeout
  FROM apps a
 WHERE a.name = ANY (%(names)s::text[]);
