# Shell helpers shared by the bench scripts (`source "$root/bench/lib.sh"`). Loopback only.

# A port free for both TCP and UDP on 127.0.0.1 (the kernel picks it; it is released at once,
# so a DNS server can take both).
free_port() {
    python3 - <<'PY'
import socket
while True:
    t = socket.socket(); t.bind(("127.0.0.1", 0)); port = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        t.close(); u.close()
    print(port); break
PY
}

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds; fails with a message
# naming the calling script after SECONDS.
wait_for() {
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "$(basename "$0"): timed out waiting for $what" >&2
            return 1
        fi
        sleep 0.1
    done
}
