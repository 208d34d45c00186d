-- A queue manager with QM_RESTORE_FIRST starts (background.py): on a Redis the morning's restore
-- has not opened yet ({p}:opened, set by ``cli load``), dispatch is paused, so no GPU takes a job
-- before last night's queue is back (it would run ahead of it, or twice beside its restored twin).
-- In one step, so a restore that opens the Redis meanwhile is never paused again after it.
-- ARGV: prefix. Returns 1 when dispatch now waits for the restore, 0 when the restore already ran.
if redis.call('EXISTS', k('opened')) == 1 then
  return 0
end
redis.call('SET', k('paused'), '1')
return 1
