#!/bin/bash
# balance.sh - sample Carina master context script: a TCP load balancer in front of the environment's slaves.
#
# Usage:
#   balance.sh [init]          set up the balancer, report to Carina (run by contextualization at boot)
#   balance.sh add <ip> [port] send traffic to a new slave (port defaults to BALANCE_PORT)
#   balance.sh delete <ip>     stop sending traffic to a slave
#   balance.sh show            list the slaves, one "<ip> <port>" per line
#   balance.sh poll            pull mode: apply Carina's notifications as they come (started by init): a long poll
#                              that Carina holds up to CARINA_POLL_WAIT seconds, answered as soon as there is news
#   balance.sh poll-once       pull mode: apply the pending notifications once and exit
#
# How the master learns about slaves (CONTEXT variable CARINA_NOTIFY):
#   pull  this script polls {CARINA_URL}/guest/v1/notifications and acknowledges what it applied (what Carina sets);
#   ssh   Carina 2012 ran "balance.sh add <ip> <slavedata>" / "balance.sh delete <ip>" over ssh. This Carina does not
#         push over ssh; the add/delete commands remain for that original and for running by hand.
# Guest protocol: docs/conventions.md. The balancer is HAProxy when installed; without it the slave list
# is still kept (and shown), which is enough for the simulated zone.
#
# Settings (environment): CARINA_CONTEXT_FILE (context file to read first), CARINA_STATE_DIR (default
# /var/lib/carina), CARINA_POLL_WAIT (seconds Carina may hold a poll, default 25, at most 30),
# CARINA_POLL_INTERVAL (seconds to pause after a failed poll, default 5).

set -u

STATE_DIR="${CARINA_STATE_DIR:-/var/lib/carina}"
BACKENDS="$STATE_DIR/backends"
LOCK="$STATE_DIR/balance.lock"
POLL_INTERVAL="${CARINA_POLL_INTERVAL:-5}"
POLL_WAIT="${CARINA_POLL_WAIT:-25}"
POLL_APPLIED=""  # the last notification the latest poll applied (empty: none)
HTTP_TIMEOUT=10

# log ... report_status are also in tomcat.sh, on purpose: a context script is the one file a VM fetches and runs
# (and this one copies itself for ssh mode), so it sources nothing. Change both together.
log() { echo "balance.sh: $*" >&2; }

# The context file defines CARINA_URL, CARINA_TOKEN, VMID, ENVID, SERVICE_NAME, IP, BALANCE_PORT, ...
load_context() {
    local file
    for file in ${CARINA_CONTEXT_FILE:-} /var/run/one-context/one_env /mnt/context.sh /mnt/context/context.sh; do
        if [ -r "$file" ]; then
            set -o allexport
            # shellcheck disable=SC1090
            . "$file"
            set +o allexport
            return 0
        fi
    done
    log "no context file found"
    return 1
}

# Percent-encode one query parameter value (':' is kept readable, as in MASTER_INIT_FAIL:<reason>).
urlencode() {
    local text=$1 out="" char i
    for ((i = 0; i < ${#text}; i++)); do
        char=${text:i:1}
        case $char in
            [A-Za-z0-9._~:-]) out+=$char ;;
            *) printf -v char '%%%02X' "'$char"; out+=$char ;;
        esac
    done
    printf '%s' "$out"
}

# http METHOD URL [BODY [HEADER...]]: prints the response body; fails on HTTP errors and after HTTP_TIMEOUT.
http() {
    local method=$1 url=$2 body=$3 header
    shift 3
    if command -v curl >/dev/null 2>&1; then
        local args=(-fsS --max-time "$HTTP_TIMEOUT" -X "$method")
        for header in "$@"; do args+=(-H "$header"); done
        [ "$method" = GET ] || args+=(--data-binary "$body")
        curl "${args[@]}" "$url"
    else
        local args=(-q -O - -T "$HTTP_TIMEOUT" -t 1 --method="$method")
        for header in "$@"; do args+=(--header="$header"); done
        [ "$method" = GET ] || args+=(--body-data="$body")
        wget "${args[@]}" "$url"
    fi
}

# Callbacks are retried a few times: the gateway may be restarting while the VM boots.
callback() {
    local url=$1 attempt
    for attempt in 1 2 3 4 5; do
        if http GET "$url" "" "X-Carina-Token: ${CARINA_TOKEN:-}" >/dev/null; then
            return 0
        fi
        sleep "$attempt"
    done
    log "callback failed: ${url%%\?*}"
    return 1
}

base_url() { printf '%s' "${CARINA_URL:-http://${CARINA_IP:-127.0.0.1}}"; }

common_query() {
    printf 'service=%s&vmid=%s&envid=%s&token=%s' "$(urlencode "${SERVICE_NAME:-}")" "$(urlencode "${VMID:-}")" \
        "$(urlencode "${ENVID:-}")" "$(urlencode "${CARINA_TOKEN:-}")"
}

report_network() {
    callback "$(base_url)/cgi-bin/updatevmstatus.sh?$(common_query)&newip=$(urlencode "${IP:-}")&name=$(urlencode "${HOSTNAME:-}")"
}

report_status() {
    callback "$(base_url)/cgi-bin/updateappstatus.sh?$(common_query)&status=$(urlencode "$1")"
}

valid_ip() { [[ $1 =~ ^[A-Za-z0-9.:-]+$ ]]; }
valid_port() { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le 65535 ]; }

# Serialise changes: ssh calls from Carina and the poller may arrive together.
with_lock() {
    mkdir -p "$STATE_DIR" && touch "$BACKENDS" || return 1
    if command -v flock >/dev/null 2>&1; then
        (flock -w 30 9 || exit 1; "$@") 9>"$LOCK"
    else
        "$@"
    fi
}

# Rewrite the HAProxy configuration from the slave list and reload it without dropping connections.
apply_backends() {
    command -v haproxy >/dev/null 2>&1 || return 0
    local cfg="$STATE_DIR/haproxy.cfg" pidfile="$STATE_DIR/haproxy.pid" ip port n=0
    {
        printf 'global\n  daemon\n  pidfile %s\n' "$pidfile"
        printf 'defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n'
        printf 'frontend carina\n  bind *:%s\n  default_backend slaves\n' "$BALANCE_PORT"
        printf 'backend slaves\n  balance roundrobin\n'
        while read -r ip port; do
            n=$((n + 1))
            printf '  server slave%d %s:%s check\n' "$n" "$ip" "$port"
        done <"$BACKENDS"
    } >"$cfg.new"
    haproxy -c -q -f "$cfg.new" || { log "refusing an invalid HAProxy configuration"; return 1; }
    mv "$cfg.new" "$cfg"
    if [ -s "$pidfile" ]; then
        haproxy -f "$cfg" -p "$pidfile" -sf "$(cat "$pidfile")"
    else
        haproxy -f "$cfg" -p "$pidfile"
    fi
}

do_add() {
    local ip=$1 port=$2 others
    others=$(awk -v ip="$ip" '$1 != ip' "$BACKENDS")
    { [ -n "$others" ] && printf '%s\n' "$others"; printf '%s %s\n' "$ip" "$port"; } >"$BACKENDS.new"
    mv "$BACKENDS.new" "$BACKENDS"
    apply_backends
}

do_delete() {
    local ip=$1
    awk -v ip="$ip" '$1 != ip' "$BACKENDS" >"$BACKENDS.new"
    mv "$BACKENDS.new" "$BACKENDS"
    apply_backends
}

cmd_add() {
    local ip=${1:-} port=${2:-}
    [ -n "$port" ] || port=${BALANCE_PORT:-8080}
    valid_ip "$ip" || { log "add: invalid address '$ip'"; return 2; }
    valid_port "$port" || { log "add: invalid port '$port'"; return 2; }
    with_lock do_add "$ip" "$port"
}

cmd_delete() {
    local ip=${1:-}
    valid_ip "$ip" || { log "delete: invalid address '$ip'"; return 2; }
    with_lock do_delete "$ip"
}

cmd_show() {
    [ -f "$BACKENDS" ] && cat "$BACKENDS"
    return 0
}

# One notification object per line: "<seq> <op> <ip> <data>". The notifications carry only simple values
# (numbers, addresses, ports), which lets plain sed read the JSON without jq.
parse_notifications() {
    tr -d '\n' | tr '}' '\n' | while IFS= read -r item; do
        local seq op ip data
        seq=$(printf '%s' "$item" | sed -n 's/.*"seq": *\([0-9][0-9]*\).*/\1/p')
        op=$(printf '%s' "$item" | sed -n 's/.*"op": *"\([^"]*\)".*/\1/p')
        ip=$(printf '%s' "$item" | sed -n 's/.*"ip": *"\([^"]*\)".*/\1/p')
        data=$(printf '%s' "$item" | sed -n 's/.*"data": *"\{0,1\}\([^",]*\)"\{0,1\}.*/\1/p')
        [ -n "$seq" ] && [ -n "$op" ] && printf '%s %s %s %s\n' "$seq" "$op" "${ip:--}" "${data:--}"
    done | sort -n
}

# poll_once [wait]: with a wait, Carina holds the request until there is something to apply or the wait ends.
poll_once() {
    local wait=${1:-0} headers=("X-ONEGATE-TOKEN: ${CARINA_TOKEN:-}" "X-ONEGATE-VMID: ${VMID:-}") body seq op ip data
    local applied="" HTTP_TIMEOUT=$((HTTP_TIMEOUT + wait))  # seen by http(): a held poll is not a timeout
    local done_seq
    done_seq=$(cat "$STATE_DIR/applied_seq" 2>/dev/null || echo 0)
    body=$(http GET "$(base_url)/guest/v1/notifications?wait=$wait" "" "${headers[@]}") || return 1
    while read -r seq op ip data; do
        [ "$seq" -le "$done_seq" ] 2>/dev/null && continue  # applied and acknowledged before
        [ "$data" = "-" ] && data=""
        case $op in
            add) cmd_add "$ip" "$data" ;;
            delete) cmd_delete "$ip" ;;
            *) log "ignoring notification $seq: unknown op '$op'"; true ;;
        esac
        local rc=$?
        # 2 = the notification itself is invalid and never will apply: log it and move on;
        # anything else (e.g. HAProxy refused to reload) is retried on the next poll.
        if [ $rc -ne 0 ] && [ $rc -ne 2 ]; then
            break
        fi
        applied=$seq
    done < <(printf '%s' "$body" | parse_notifications)
    POLL_APPLIED=$applied
    if [ -n "$applied" ]; then
        http POST "$(base_url)/guest/v1/notifications/ack" "{\"seq\": $applied}" "${headers[@]}" \
            "Content-Type: application/json" >/dev/null || return 1
        echo "$applied" >"$STATE_DIR/applied_seq"
    fi
    return 0
}

cmd_poll() {
    local started
    while true; do
        started=$(date +%s)
        if ! poll_once "$POLL_WAIT"; then
            log "poll failed; retrying in ${POLL_INTERVAL}s"
            sleep "$POLL_INTERVAL"
        elif [ -z "$POLL_APPLIED" ] && [ $(($(date +%s) - started)) -lt $((POLL_WAIT / 2)) ]; then
            sleep "$POLL_INTERVAL"  # an empty answer well before the wait: a server that does not hold polls
        fi
    done
}

cmd_init() {
    mkdir -p "$STATE_DIR" && touch "$BACKENDS" || { log "cannot write $STATE_DIR"; exit 1; }
    report_network || true
    if ! valid_port "${BALANCE_PORT:-}"; then
        report_status "MASTER_INIT_FAIL:BALANCE_PORT_MISSING"
        exit 1
    fi
    # ssh mode: Carina runs /home/<adminuser>/<script> add|delete, so leave a copy there.
    local admin=${ADMINUSER:-${DEFUSER:-}}
    if [ -n "$admin" ] && [ -d "/home/$admin" ]; then
        install -m 0755 "$0" "/home/$admin/balance.sh" 2>/dev/null || log "could not copy myself to /home/$admin"
    fi
    if ! with_lock apply_backends; then
        report_status "MASTER_INIT_FAIL:BALANCER_START"
        exit 1
    fi
    report_status MASTER_INIT_DONE || exit 1
    if [ "${CARINA_NOTIFY:-ssh}" = pull ]; then
        nohup "$0" poll >>"$STATE_DIR/balance.log" 2>&1 &
    fi
}

main() {
    load_context || { [ "${1:-init}" = init ] && exit 1; }
    local action=${1:-init}
    [ $# -gt 0 ] && shift
    case $action in
        init) cmd_init ;;
        add) cmd_add "$@" ;;
        delete | remove) cmd_delete "$@" ;;  # the seed's docs say "remove", Carina's code sends "delete"
        show) cmd_show ;;
        poll) cmd_poll ;;
        poll-once) poll_once ;;
        *) log "usage: balance.sh [init] | add <ip> [port] | delete <ip> | show | poll | poll-once"; exit 2 ;;
    esac
}

main "$@"
