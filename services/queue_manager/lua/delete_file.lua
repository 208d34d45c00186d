-- Delete one of a participant's saved files (workspaces/userdata.py), its bytes and its listing
-- entry together. ARGV: prefix, user, path.
-- Returns {'ok'} | {'missing'} | {'closed'} (after the evening's snapshot: it would come back).
if closed() then
  return {'closed'}
end
if redis.call('HDEL', k('ws', 'ud', ARGV[2]), ARGV[3]) == 0 then
  return {'missing'}
end
redis.call('HDEL', k('ws', 'udmeta', ARGV[2]), ARGV[3])
return {'ok'}
