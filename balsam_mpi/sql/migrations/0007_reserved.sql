-- 0007: reserved for the database-security migration, which is developed alongside
-- 0008; this empty stand-in only keeps the numbering without gaps until it lands, and is
-- replaced by it (it creates nothing).
SELECT 1;
