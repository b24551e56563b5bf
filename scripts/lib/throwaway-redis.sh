# Sourced by the scripts that need a Redis: starts a throwaway redis-server on a free loopback
# port (no persistence), killed when the script exits, and sets `url` to it.
command -v redis-server > /dev/null || { echo "needs redis-server (apt-get install redis-server)"; exit 1; }
redis_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no > /dev/null &
redis_pid=$!
trap 'kill $redis_pid 2> /dev/null || true' EXIT
sleep 0.3
url="redis://127.0.0.1:$redis_port/"
