-- Version 2: the stored-bytes figure (`meta.usage_bytes`) is kept by the storage code
-- instead of triggers. Triggers were parsed on every open of a user file and compiled
-- into every statement writing `bso` (a cold open was ~20% schema parse for them), and
-- they missed rows that `INSERT OR REPLACE` dropped (delete triggers do not fire for
-- REPLACE), so the figure is recounted once here.
DROP TRIGGER IF EXISTS usage_after_insert;
DROP TRIGGER IF EXISTS usage_after_delete;
DROP TRIGGER IF EXISTS usage_after_update;
UPDATE meta SET value = (SELECT coalesce(sum(payload_size), 0) FROM bso)
WHERE key = 'usage_bytes';
