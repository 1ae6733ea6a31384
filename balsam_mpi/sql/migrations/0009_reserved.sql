-- 0009_reserved: this number belongs to a migration of another line of work that is not
-- merged here yet; the empty file only keeps the sequence without gaps (sql.migrations
-- refuses gaps) so that 0010 can be applied. Delete it when the real 0009 is merged.
SELECT 1;
