#!/bin/bash
# `systemctl` for the runbook drills, whose hosts have no systemd: starts and stops a unit of
# deploy/systemd as that unit says (ExecStart as User/Group, UMask, StateDirectory and
# RuntimeDirectory made with their modes, EnvironmentFile read), tracking its process in a
# pid file of the host. The host's service.env, if the drill wrote one, stands for what an
# instance role or a drop-in would give the service (AWS credentials, say).
# Not emulated: Restart=, the sandboxing options, dependencies.
set -euo pipefail
host=${TESTUDO_DRILL_HOST:?the drill sets TESTUDO_DRILL_HOST}
units=${TESTUDO_DRILL_UNITS:?the drill sets TESTUDO_DRILL_UNITS}

verb=${1:?usage: systemctl start|stop|restart|enable --now|disable --now|is-active|daemon-reload UNIT}
shift
if [[ ${1:-} == --now ]]; then
  case $verb in
    enable) verb=start ;;
    disable) verb=stop ;;
  esac
  shift
fi
[[ $verb == daemon-reload ]] && exit 0
unit=${1:?a unit name}
unit=${unit%.service}
file=$units/$unit.service
[[ -f $file ]] || { echo "Unit $unit.service not found." >&2; exit 5; }
pidfile=$host/pids/$unit
mkdir -p "$host/pids" "$host/log"

# The last value of `Key=` in the unit, or $2.
key() { local v; v=$(sed -n "s/^$1=//p" "$file" | tail -n 1); echo "${v:-${2:-}}"; }

running() { [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

start() {
  running && return 0
  local user group dir env_file
  user=$(key User root)
  group=$(key Group "$user")
  for dir in $(key StateDirectory); do
    install -d -o "$user" -g "$group" -m "$(key StateDirectoryMode 0755)" "/var/lib/$dir"
  done
  for dir in $(key RuntimeDirectory); do
    install -d -o "$user" -g "$group" -m "$(key RuntimeDirectoryMode 0755)" "/run/$dir"
  done
  env_file=$(key EnvironmentFile)
  (
    umask "$(key UMask 0022)"
    set -a
    for env in "$host/service.env" "${env_file#-}"; do
      # shellcheck disable=SC1090
      if [[ -n $env && -f $env ]]; then source "$env"; fi
    done
    set +a
    # shellcheck disable=SC2046
    exec setsid setpriv --reuid="$user" --regid="$group" --init-groups -- $(key ExecStart) \
      >>"$host/log/$unit.log" 2>&1 </dev/null
  ) &
  echo $! >"$pidfile"
}

stop() {
  running || { rm -f "$pidfile"; return 0; }
  local pid
  pid=$(cat "$pidfile")
  kill -TERM "$pid"
  for _ in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  for dir in $(key RuntimeDirectory); do
    find "/run/$dir" -mindepth 1 -delete
  done
}

case $verb in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  is-active) if running; then echo active; else echo inactive; exit 3; fi ;;
  *) echo "systemctl (runbook drill): '$verb' is not emulated" >&2; exit 1 ;;
esac
