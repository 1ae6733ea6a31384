-- Statements the benchmarks run directly (not the package's; those live in balsam_mpi/sql).

-- name: ceiling_reset
DROP TABLE IF EXISTS ceiling_rows;
CREATE TABLE ceiling_rows (id bigint PRIMARY KEY, claimed_by integer);
CREATE INDEX ceiling_unclaimed ON ceiling_rows (id) WHERE claimed_by IS NULL;

-- name: ceiling_fill
INSERT INTO ceiling_rows (id) SELECT generate_series(1, %(n)s);

-- name: ceiling_claim
-- The bare shape of a batch claim: lock up to k free rows, skip rows others hold.
WITH picked AS (
    SELECT id FROM ceiling_rows WHERE claimed_by IS NULL
     ORDER BY id LIMIT %(k)s FOR UPDATE SKIP LOCKED
)
UPDATE ceiling_rows c SET claimed_by = %(who)s FROM picked WHERE c.id = picked.id
RETURNING c.id;
