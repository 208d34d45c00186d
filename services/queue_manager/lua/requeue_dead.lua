-- Give a dead-lettered job a fresh set of attempts. ARGV: prefix, id.
-- Returns {'ok', user} | {'missing'} | {'closed'} (after the evening's snapshot, which holds the
-- dead letter: the requeue would be lost).
local id = ARGV[2]
if closed() then
  return {'closed'}
end
local key = k('job', id)
local f = redis.call('HMGET', key, 'dead', 'user', 'scope', 'score')
if f[1] ~= '1' then
  return {'missing'}
end
redis.call('PERSIST', key)
redis.call('ZREM', k('dead'), id)
redis.call('ZREM', k('finished'), id)
redis.call('HSET', key, 'dead', '0', 'attempts', 0, 'error', '', 'finished_at', '', 'started_at', '',
  'done_token', '')
enqueue(id, f[2], f[3], f[4])
return {'ok', f[2]}
