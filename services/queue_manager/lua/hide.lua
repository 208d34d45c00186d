-- A participant deletes finished jobs from her history panel (workspaces/routes_jobs.py): their
-- ids join her hidden set. ARGV: prefix, user, ids...
-- Returns {'ok'} | {'closed'} (after the evening's snapshot: they would show again in the morning).
if closed() then
  return {'closed'}
end
redis.call('SADD', k('ws', 'hidden', ARGV[2]), unpack(ARGV, 3))
return {'ok'}
