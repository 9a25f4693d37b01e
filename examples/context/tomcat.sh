#!/bin/bash
# tomcat.sh - sample Carina slave context script: deploy a web application into Tomcat and report to Carina.
#
# Usage:
#   tomcat.sh [init]     deploy APP_PACKAGE, start Tomcat, report SLAVE_<i>_INIT_DONE / _FAIL (run at boot)
#   tomcat.sh metrics    push this VM's load to Carina once (OneGate style); init repeats it every
#                        CARINA_METRICS_INTERVAL seconds when that CONTEXT variable is set
#
# CONTEXT variables used: CARINA_URL, CARINA_TOKEN, ONEGATE_ENDPOINT, VMID, ENVID, SERVICE_NAME, IP, SLAVE_INDEX
# (Carina's examples also pass SLAVE_ID=%SLAVE_INDEX% through slave_context_var), APP_PACKAGE (a .war name),
# APP_REPO_URL (optional: where to download APP_PACKAGE from), and any <NAME>_URL given by group dependencies
# (e.g. HBASE_URL), which are handed to the application through Tomcat's setenv.sh.
# Guest protocol: docs/conventions.md.
#
# Settings (environment): CARINA_CONTEXT_FILE (context file to read first), CARINA_STATE_DIR (default
# /var/lib/carina), CATALINA_HOME (default: the first /usr/share/tomcat* or /opt/tomcat*), TOMCAT_PORT (8080),
# TOMCAT_START_TIMEOUT (seconds to wait for Tomcat to answer, default 120; 0 skips the check).

set -u

STATE_DIR="${CARINA_STATE_DIR:-/var/lib/carina}"
HTTP_TIMEOUT=10

# log ... report_status are also in balance.sh, on purpose: a context script is the one file a VM fetches and runs,
# so it sources nothing. Change both together.
log() { echo "tomcat.sh: $*" >&2; }

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

# http METHOD URL BODY [HEADER...]: prints the response body; fails on HTTP errors and after HTTP_TIMEOUT.
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

find_catalina_home() {
    local dir
    if [ -n "${CATALINA_HOME:-}" ]; then
        printf '%s' "$CATALINA_HOME"
        return 0
    fi
    for dir in /usr/share/tomcat* /opt/tomcat*; do
        if [ -d "$dir/webapps" ]; then
            printf '%s' "$dir"
            return 0
        fi
    done
    return 1
}

# Group dependencies arrive as <NAME>_URL context variables; the application reads them from its environment.
write_dependencies() {
    local home=$1 name
    local setenv="$home/bin/setenv.sh"
    mkdir -p "$home/bin"
    for name in $(compgen -e | grep -E '^[A-Z0-9_]+_URL$' | grep -vE '^(CARINA|ONEGATE|APP_REPO)_URL$'); do
        printf 'export %s=%q\n' "$name" "${!name}"
    done >"$setenv.carina"
    # keep whatever setenv.sh had, replacing only the block this script wrote before
    if [ -f "$setenv" ]; then
        sed '/^# carina dependencies >>>$/,/^# <<< carina dependencies$/d' "$setenv" >"$setenv.new"
    else
        : >"$setenv.new"
    fi
    { echo "# carina dependencies >>>"; cat "$setenv.carina"; echo "# <<< carina dependencies"; } >>"$setenv.new"
    mv "$setenv.new" "$setenv"
    rm -f "$setenv.carina"
}

deploy_package() {
    local home=$1
    [ -n "${APP_PACKAGE:-}" ] || return 0
    case $APP_PACKAGE in
        */* | .* | "") log "APP_PACKAGE must be a plain file name, got '$APP_PACKAGE'"; return 1 ;;
    esac
    local target="$home/webapps/$APP_PACKAGE"
    mkdir -p "$home/webapps"
    if [ -n "${APP_REPO_URL:-}" ]; then
        http GET "${APP_REPO_URL%/}/$APP_PACKAGE" "" >"$target.part" && mv "$target.part" "$target" && return 0
        rm -f "$target.part"
        log "could not download $APP_PACKAGE from $APP_REPO_URL"
        return 1
    fi
    # without a repository, the package may have come with the context FILES
    local dir
    for dir in /mnt /mnt/context /var/lib/one-context; do
        if [ -f "$dir/$APP_PACKAGE" ]; then
            cp "$dir/$APP_PACKAGE" "$target" && return 0
        fi
    done
    [ -f "$target" ] && return 0
    log "$APP_PACKAGE not found (set APP_REPO_URL or add it to the context FILES)"
    return 1
}

start_tomcat() {
    local home=$1 port=${TOMCAT_PORT:-8080} deadline
    if [ -x "$home/bin/startup.sh" ]; then
        "$home/bin/startup.sh" >/dev/null || return 1
    elif command -v systemctl >/dev/null 2>&1; then
        systemctl restart "$(basename "$home")" || return 1
    else
        log "no way to start Tomcat in $home"
        return 1
    fi
    [ "${TOMCAT_START_TIMEOUT:-120}" -gt 0 ] || return 0
    deadline=$((SECONDS + ${TOMCAT_START_TIMEOUT:-120}))
    while [ $SECONDS -lt $deadline ]; do
        if http GET "http://127.0.0.1:$port/" "" >/dev/null 2>&1; then
            return 0
        fi
        sleep 2
    done
    log "Tomcat did not answer on port $port within ${TOMCAT_START_TIMEOUT:-120}s"
    return 1
}

# OneGate-style metrics push: one "KEY = VALUE" line per metric.
cmd_metrics() {
    local load cpus cpu_load
    read -r load _ </proc/loadavg
    cpus=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
    cpu_load=$(awk -v l="$load" -v c="$cpus" 'BEGIN { printf "%.1f", (l / c) * 100 }')
    http PUT "${ONEGATE_ENDPOINT:-$(base_url)}/vm" "CPU_LOAD = $cpu_load" \
        "X-ONEGATE-TOKEN: ${CARINA_TOKEN:-}" "X-ONEGATE-VMID: ${VMID:-}" >/dev/null
}

cmd_init() {
    mkdir -p "$STATE_DIR" || { log "cannot write $STATE_DIR"; exit 1; }
    report_network || true
    local index=${SLAVE_INDEX:-${SLAVE_ID:-}}
    if ! [[ $index =~ ^[0-9]+$ ]]; then
        # Reporting "SLAVE__INIT_DONE" (no index) was a bug of Carina's samples; better to say nothing.
        log "neither SLAVE_INDEX nor SLAVE_ID is set; cannot report my status"
        exit 1
    fi
    local home reason=""
    if ! home=$(find_catalina_home); then
        reason=NO_TOMCAT
    elif ! deploy_package "$home"; then
        reason=APP_PACKAGE
    elif ! write_dependencies "$home"; then
        reason=DEPENDENCIES
    elif ! start_tomcat "$home"; then
        reason=TOMCAT_START
    fi
    if [ -n "$reason" ]; then
        report_status "SLAVE_${index}_INIT_FAIL:$reason"
        exit 1
    fi
    report_status "SLAVE_${index}_INIT_DONE" || exit 1
    if [[ ${CARINA_METRICS_INTERVAL:-} =~ ^[1-9][0-9]*$ ]]; then
        nohup bash -c "while true; do \"$0\" metrics; sleep $CARINA_METRICS_INTERVAL; done" \
            >>"$STATE_DIR/tomcat.log" 2>&1 &
    fi
}

main() {
    load_context || exit 1
    case ${1:-init} in
        init) cmd_init ;;
        metrics) cmd_metrics ;;
        *) log "usage: tomcat.sh [init] | metrics"; exit 2 ;;
    esac
}

main "$@"
