-- Registry::declare_fleet. ARGV[3..]: the fleet's regions.
redis.call('SET', K.known, '1')
for i = 3, #ARGV do redis.call('SADD', K.regions, ARGV[i]) end
return reply()
