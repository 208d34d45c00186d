-- Give a dead-lettered job a fresh set of attempts; it waits at the priority level its owner has
-- now (the admin may have changed hers since it died), in its old place inside that level.
-- ARGV: prefix, id, mode.
-- Returns {'ok', user} | {'missing'} | {'closed'} (after the evening's snapshot, which holds the
-- dead letter: the requeue would be lost).
local id = ARGV[2]
if closed() then
  return {'closed'}
end
local key = k('job', id)
local f = redis.call('HMGET', key, 'dead', 'user', 'scope', 'score', 'priority')
if f[1] ~= '1' then
  return {'missing'}
end
redis.call('PERSIST', key)
redis.call('ZREM', k('dead'), id)
redis.call('ZREM', k('finished'), id)
local score = score_at_level(ARGV[3], f[2], f[5], f[4])
redis.call('HSET', key, 'dead', '0', 'attempts', 0, 'error', '', 'finished_at', '', 'started_at', '',
  'done_token', '', 'score', score)
enqueue(id, f[2], f[3], score)
return {'ok', f[2]}
