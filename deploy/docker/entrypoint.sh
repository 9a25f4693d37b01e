#!/bin/sh
# Entrypoint of the Carina image: the first argument names the service, e.g. `docker run carina envmgr`.
set -eu
usage() {
    echo "usage: carina <envmgr|scheduler|provisioner|policy|gateway|callback> | oneenv [args...]" >&2
}
if [ "$#" -eq 0 ]; then usage; exit 2; fi
service="$1"
shift
case "$service" in
    envmgr|scheduler|provisioner|policy|gateway|callback)
        exec python -m "services.${service}" "$@" ;;
    oneenv)
        exec oneenv "$@" ;;
    -h|--help|help)
        usage; exit 0 ;;
    *)
        echo "carina: unknown service '${service}'" >&2; usage; exit 2 ;;
esac
