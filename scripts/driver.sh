#!/usr/bin/env bash
# Start or stop the cilium-docker driver that `make run` manages.
#
#   scripts/driver.sh start   start it in the background unless the one we started is alive,
#                             then wait until the plugin socket answers Plugin.Activate
#   scripts/driver.sh stop    stop only the driver recorded in $PIDFILE, wait for it to exit
#   scripts/driver.sh status  exit 0 when the driver we started is alive
#
# Environment (the Makefile passes them): VENV, PIDFILE, LOG, PLUGIN_SOCK, DOCKER, IMAGE,
# DRIVER_ARGS (extra arguments for cilium-docker, empty by default).
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

VENV=${VENV:-.venv}
case "$VENV" in /*) ;; *) VENV="$REPO_ROOT/$VENV" ;; esac
PIDFILE=${PIDFILE:-/run/pycilium/cilium-docker.pid}
LOG=${LOG:-/var/log/pycilium/cilium-docker.log}
PLUGIN_SOCK=${PLUGIN_SOCK:-/run/docker/plugins/cilium.sock}
IMAGE=${IMAGE:-pycilium/busybox:latest}
DRIVER_ARGS=${DRIVER_ARGS:-}
DRIVER=$VENV/bin/cilium-docker
# Start time (in clock ticks since boot) of the process we started: guards against a
# recycled pid, so `stop` can never signal a process that is not ours.
STARTFILE=$PIDFILE.starttime
START_TIMEOUT=${START_TIMEOUT:-60}
STOP_TIMEOUT=${STOP_TIMEOUT:-30}

# proc_stat_field PID N: field N of /proc/PID/stat (5 = process group, 22 = start time in
# clock ticks since boot). Field 2, the command name, may contain spaces: skip past it.
proc_stat_field() {
    local stat n=$2
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    # shellcheck disable=SC2086
    set -- $stat   # now $1 is field 3
    shift $((n - 3))
    echo "$1"
}

proc_starttime() { proc_stat_field "$1" 22; }

# Prints the pid of the driver we started, if it is still alive; fails otherwise.
our_pid() {
    local pid recorded
    [ -s "$PIDFILE" ] || return 1
    pid=$(head -n 1 "$PIDFILE")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    if [ -s "$STARTFILE" ]; then
        recorded=$(cat "$STARTFILE")
        [ "$(proc_starttime "$pid")" = "$recorded" ] || return 1
    else
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q cilium-docker || return 1
    fi
    echo "$pid"
}

activated() {
    curl -s --max-time 2 --unix-socket "$PLUGIN_SOCK" -X POST http://localhost/Plugin.Activate \
        2>/dev/null | grep -q NetworkDriver
}

show_log_tail() {
    echo "--- last lines of $LOG ---" >&2
    tail -n 40 "$LOG" >&2 || true
}

# Signal the whole process group when the driver leads its own (setsid: it does), so
# gunicorn workers or other children go with it; otherwise just the process.
signal_driver() {
    local sig=$1 pid=$2 pgid
    pgid=$(proc_stat_field "$pid" 5) || true
    if [ "$pgid" = "$pid" ]; then
        kill "-$sig" -- "-$pid" 2>/dev/null || true
    else
        kill "-$sig" "$pid" 2>/dev/null || true
    fi
}

# wait_exit PID TIMEOUT_SECONDS
wait_exit() {
    local pid=$1 deadline=$((SECONDS + $2))
    while kill -0 "$pid" 2>/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

next_steps() {
    cat <<EOF

cilium-docker is running (pid $1, log $LOG, socket $PLUGIN_SOCK). Try:

  $DOCKER network create --ipv6 -d cilium --ipam-driver cilium demo
  $DOCKER run -d --name web --net demo $IMAGE httpd -f -p 80 -h /www
  $DOCKER run --rm --net demo $IMAGE \\
      ping6 -c 3 \$($DOCKER inspect -f '{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}{{end}}' web)

Stop it with: make stop
EOF
}

cmd_start() {
    local pid
    if pid=$(our_pid); then
        if activated; then
            echo "cilium-docker already running (pid $pid, socket $PLUGIN_SOCK)"
            return 0
        fi
        # Ours but not answering (still starting, or wedged): wait like a fresh start.
        say "driver (pid $pid) is running but $PLUGIN_SOCK does not answer yet: waiting"
    else
        if [ -e "$PIDFILE" ]; then
            rm -f "$PIDFILE" "$STARTFILE"
            say "removed stale $PIDFILE"
        fi
        if activated; then
            die "something not started by 'make run' already answers on $PLUGIN_SOCK; stop it first"
        fi
        [ -x "$DRIVER" ] || die "$DRIVER not found: run 'make setup' (pip install -e .) first"
        mkdir -p "$(dirname "$PIDFILE")" "$(dirname "$LOG")"
        printf '\n==> %s: starting %s %s\n' "$(date -Is)" "$DRIVER" "$DRIVER_ARGS" >>"$LOG"
        # Not a process-group leader here, so setsid execs in place and $! is the driver.
        # shellcheck disable=SC2086
        setsid nohup "$DRIVER" $DRIVER_ARGS >>"$LOG" 2>&1 </dev/null &
        pid=$!
        echo "$pid" >"$PIDFILE"
        proc_starttime "$pid" >"$STARTFILE" || true
        say "started $DRIVER (pid $pid, log $LOG)"
    fi

    local deadline=$((SECONDS + START_TIMEOUT))
    until activated; do
        if ! kill -0 "$pid" 2>/dev/null; then
            show_log_tail
            rm -f "$PIDFILE" "$STARTFILE"
            die "cilium-docker (pid $pid) exited before answering on $PLUGIN_SOCK"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            show_log_tail
            die "no NetworkDriver answer to Plugin.Activate on $PLUGIN_SOCK within ${START_TIMEOUT} s" \
                "(driver pid $pid left running; 'make stop' stops it)"
        fi
        sleep 0.5
    done
    say "driver answers Plugin.Activate on $PLUGIN_SOCK"
    next_steps "$pid"
}

cmd_stop() {
    local pid
    if ! pid=$(our_pid); then
        if [ -e "$PIDFILE" ]; then
            rm -f "$PIDFILE" "$STARTFILE"
            say "removed stale $PIDFILE (no driver of ours behind it)"
        else
            echo "no driver started by 'make run' is running"
        fi
        return 0
    fi
    signal_driver TERM "$pid"
    if ! wait_exit "$pid" "$STOP_TIMEOUT"; then
        say "driver (pid $pid) still alive after ${STOP_TIMEOUT} s: sending SIGKILL"
        signal_driver KILL "$pid"
        wait_exit "$pid" 10 || die "driver (pid $pid) does not exit"
    fi
    rm -f "$PIDFILE" "$STARTFILE"
    say "stopped driver (pid $pid)"
}

cmd_status() {
    local pid
    if pid=$(our_pid); then
        echo "cilium-docker running (pid $pid)"
    else
        echo "cilium-docker not running (no live process in $PIDFILE)"
        return 1
    fi
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) die "usage: $0 start|stop|status" ;;
esac
