#!/usr/bin/env bash
# Make sure PostgreSQL (127.0.0.1:5432, trust auth, database `test`) and Redis
# (127.0.0.1:6379) answer, for the tests of Feast's production stores. Uses running
# servers when present; otherwise starts installed ones, installing them from Debian's
# packages if needed.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

apt_install() {
  command -v apt-get >/dev/null || { echo "cannot install $*: no apt-get" >&2; return 1; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_redis() {
  port_open 6379 && return 0
  command -v redis-server >/dev/null || apt_install redis-server
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no
  for _ in $(seq 50); do port_open 6379 && return 0; sleep 0.2; done
  echo "redis did not start on 127.0.0.1:6379" >&2; return 1
}

ensure_postgres() {
  if ! port_open 5432; then
    ls /etc/postgresql >/dev/null 2>&1 || apt_install postgresql
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    conf=/etc/postgresql/$version/main/pg_hba.conf
    # trust auth on loopback, as the test fixtures expect
    if ! grep -q '^host all all 127.0.0.1/32 trust' "$conf"; then
      sed -i '1i host all all 127.0.0.1/32 trust' "$conf"
    fi
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 50); do port_open 5432 && break; sleep 0.2; done
    port_open 5432 || { echo "postgresql did not start on 127.0.0.1:5432" >&2; return 1; }
  fi
  if ! psql -h 127.0.0.1 -U postgres -d test -c 'select 1' >/dev/null 2>&1; then
    psql -h 127.0.0.1 -U postgres -c 'create database test' >/dev/null 2>&1 ||
      su postgres -c "createdb test" >/dev/null 2>&1 || true
  fi
  psql -h 127.0.0.1 -U postgres -d test -c 'select 1' >/dev/null
}

ensure_redis
ensure_postgres
echo "services: redis 127.0.0.1:6379 and postgresql 127.0.0.1:5432/test are up"
