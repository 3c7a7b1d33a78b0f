#!/usr/bin/env bash
# `make demo` / `make demo-down`: the docker-compose.yml stack with demo/policy.yaml and a
# service VIP in front of the api replicas; prints which connections pass.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Debian's docker-compose (installed with docker.io), else the engine's compose v2 plugin.
if command -v docker-compose >/dev/null; then
    COMPOSE=(docker-compose)
else
    COMPOSE=("${DOCKER:-docker}" compose)
fi
COMPOSE+=(-p pycilium-demo -f docker-compose.yml)
CILIUM=${CILIUM:-.venv/bin/cilium}
VIP=${DEMO_VIP:-fd00:5::80}

up() {
    "${COMPOSE[@]}" up -d
    "$CILIUM" policy import demo/policy.yaml
    "$CILIUM" service update --frontend "[$VIP]:80" --name demo-api \
        --selector com.docker.compose.project=pycilium-demo,com.docker.compose.service=api
    echo
    matrix
    echo
    service_map
    echo "Flows: $CILIUM observe --last 20 (--follow, --verdict DROPPED, --to-label tier=db...)"
    echo "Watch drops with: $CILIUM monitor --type drop     Tear down with: make demo-down"
}

service_map() {  # where the driver serves the service map page
    local ui
    ui=$("$CILIUM" status -o json 2>/dev/null |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["flows"]["ui_address"] or "")' ||
        true)
    if [ -n "$ui" ]; then
        echo "Service map: http://$ui/ui/"
    else
        echo "Service map: /ui/ on the API socket; for a browser, run the driver with a loopback"
        echo "  address: make stop && make demo DRIVER_ARGS='--ui-address 127.0.0.1:12000'"
    fi
}

address() {  # the IPv6 address of service $1's first container
    "${DOCKER:-docker}" inspect -f '{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}{{end}}' \
        "$("${COMPOSE[@]}" ps -q "$1" | head -n 1)"
}

try() {  # try FROM LABEL URL: one line saying whether FROM reached URL
    local from=$1 label=$2 url=$3 answer
    if answer=$("${COMPOSE[@]}" exec -T "$from" timeout 2 wget -qO- "$url" 2>/dev/null); then
        printf '%-10s -> %-22s allowed (answered by %s)\n' "$from" "$label" "$answer"
    else
        printf '%-10s -> %-22s DROPPED\n' "$from" "$label"
    fi
}

matrix() {
    local api db frontend
    api=$(address api)
    db=$(address db)
    frontend=$(address frontend)
    echo "Connections (policy: frontend -> api:80 -> db:5432, nothing else to api or db):"
    try frontend "api VIP :80" "http://[$VIP]/"
    try frontend "api VIP :80" "http://[$VIP]/"
    try frontend "api :80" "http://[$api]/"
    try frontend "db :5432" "http://[$db]:5432/"
    try api "db :5432" "http://[$db]:5432/"
    try db "api :80" "http://[$api]/"
    try api "frontend :80" "http://[$frontend]/"
}

down() {
    "$CILIUM" service delete demo-api 2>/dev/null || true
    "$CILIUM" policy delete demo-api 2>/dev/null || true
    "$CILIUM" policy delete demo-db 2>/dev/null || true
    "${COMPOSE[@]}" down
}

case "${1:-up}" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
