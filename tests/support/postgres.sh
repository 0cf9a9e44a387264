#!/usr/bin/env bash
# Start a private PostgreSQL server for the tests (Debian packages; installed if missing) and print
# `export STREAMGUARD_PG_DSN=...` (plus `export STREAMGUARD_PG_STARTED=1` when this call started it).
# Idempotent: a server already running in the folder is reused. `postgres.sh stop` stops it.
set -euo pipefail
PGROOT="${STREAMGUARD_PG_DIR:-/tmp/streamguard-pg}"
PORT="${STREAMGUARD_PG_PORT:-54329}"
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  echo "installing PostgreSQL from Debian packages ..." >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) >&2
fi
BIN="$(dirname "$(ls -d /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -1)")"
if [ "${1:-}" = "stop" ]; then
  RUNAS=()
  [ "$(id -u)" = "0" ] && RUNAS=(runuser -u postgres --)
  "${RUNAS[@]}" "$BIN/pg_ctl" -D "$PGROOT/data" -m fast -w stop >&2 || true
  exit 0
fi
RUNAS=()
if [ "$(id -u)" = "0" ]; then
  id postgres >/dev/null 2>&1 || useradd --system --home /var/lib/postgresql postgres >&2
  RUNAS=(runuser -u postgres --)
fi
mkdir -p "$PGROOT"
[ "$(id -u)" = "0" ] && chown postgres "$PGROOT"
if [ ! -f "$PGROOT/data/PG_VERSION" ]; then
  "${RUNAS[@]}" "$BIN/initdb" -D "$PGROOT/data" -U postgres --auth=trust -E UTF8 >/dev/null
fi
if ! "${RUNAS[@]}" "$BIN/pg_ctl" -D "$PGROOT/data" status >/dev/null 2>&1; then
  "${RUNAS[@]}" "$BIN/pg_ctl" -D "$PGROOT/data" -l "$PGROOT/server.log" -w -t 60 \
    -o "-p $PORT -k $PGROOT -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" start >&2
  echo "export STREAMGUARD_PG_STARTED=1"
fi
echo "export STREAMGUARD_PG_DSN='postgresql://postgres@127.0.0.1:$PORT/postgres'"
