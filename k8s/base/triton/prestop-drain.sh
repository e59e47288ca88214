#!/bin/bash
# preStop drain for Triton: run by kubelet before it sends SIGTERM.
#
# 1. Keep serving for DRAIN_MIN_SECONDS: a terminating pod leaves the headless Service's
#    DNS at once, but Envoy re-resolves only every few seconds and keeps sending to it
#    until then.
# 2. Then wait until Triton reports no pending requests (sum of
#    nv_inference_pending_request_count on its metrics port), polling every
#    DRAIN_POLL_SECONDS, until DRAIN_MAX_SECONDS have passed since the start.
# 3. Exit 0 either way; kubelet then sends SIGTERM and Triton finishes what is in flight
#    within --exit-timeout-secs. terminationGracePeriodSeconds covers both bounds.
#
# Only bash built-ins (the HTTP GET uses /dev/tcp): no curl needed in the image. Messages
# go to PID 1's stdout, so they appear in `kubectl logs` (preStop output is discarded).
set -u
min=${DRAIN_MIN_SECONDS:-10}
max=${DRAIN_MAX_SECONDS:-60}
poll=${DRAIN_POLL_SECONDS:-1}
host=${DRAIN_METRICS_HOST:-127.0.0.1}
port=${DRAIN_METRICS_PORT:-8002}
log_to=${DRAIN_LOG:-/proc/1/fd/1}
[ -w "$log_to" ] || log_to=/dev/stderr

log() { echo "prestop-drain: $*" >>"$log_to"; }

# Milliseconds since the start ($EPOCHREALTIME: bash >= 5; whole seconds otherwise).
started_ms=
now_ms() {
    if [ -n "${EPOCHREALTIME:-}" ]; then
        local us=${EPOCHREALTIME//[^0-9]/}
        echo $((10#$us / 1000))
    else
        echo $((SECONDS * 1000))
    fi
}
elapsed() { echo $(( ($(now_ms) - started_ms) / 1000 )); }

# Print the total of nv_inference_pending_request_count; fail when Triton does not answer.
pending() {
    local line value total=0 seen=0
    exec 3<>"/dev/tcp/$host/$port" 2>/dev/null || return 1
    printf 'GET /metrics HTTP/1.0\r\nHost: %s\r\n\r\n' "$host" >&3
    while IFS= read -r -t 5 line <&3; do
        line=${line%$'\r'}
        case $line in
            nv_inference_pending_request_count*)
                value=${line##* }
                value=${value%%.*}
                [[ $value =~ ^[0-9]+$ ]] || continue
                total=$((total + value))
                seen=1
                ;;
        esac
    done
    exec 3<&-
    [ "$seen" = 1 ] || [ "$total" = 0 ] || return 1
    echo "$total"
}

started_ms=$(now_ms)
log "draining: serving for ${min}s while the endpoint leaves DNS, then up to ${max}s in all"
sleep "$min"
while :; do
    if ! count=$(pending); then
        log "metrics endpoint not answering after $(elapsed)s: nothing left to drain"
        exit 0
    fi
    if [ "$count" -eq 0 ]; then
        log "drained after $(elapsed)s: no pending requests"
        exit 0
    fi
    if [ $(($(now_ms) - started_ms)) -ge $((max * 1000)) ]; then
        log "gave up after $(elapsed)s with $count pending requests"
        exit 0
    fi
    sleep "$poll"
done
