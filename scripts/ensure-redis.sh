#!/usr/bin/env bash
# Make sure a Redis answers at $REDIS_PORT (default 6379) on 127.0.0.1; start one in var/redis if not.
set -euo pipefail
port="${REDIS_PORT:-6379}"
if redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1; then
  echo "redis: using the server already on 127.0.0.1:$port"
  exit 0
fi
mkdir -p var/redis
redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --dir "$PWD/var/redis" \
  --logfile "$PWD/var/redis/redis.log" --pidfile "$PWD/var/redis/redis.pid" --appendonly yes
for _ in $(seq 50); do
  redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1 && { echo "redis: started on 127.0.0.1:$port (data in var/redis)"; exit 0; }
  sleep 0.1
done
echo "redis: could not start redis-server on port $port, see var/redis/redis.log" >&2
exit 1
