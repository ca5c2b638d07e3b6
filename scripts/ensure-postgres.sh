#!/usr/bin/env bash
# Makes sure PostgreSQL's initdb/pg_ctl exist for the registry tests, installing Debian's package if missing.
# The tests start their own throwaway server on 127.0.0.1; this only provides the binaries.
set -u
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing PostgreSQL for the registry tests..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
    || echo "could not install PostgreSQL; its tests will be skipped"
else
  echo "PostgreSQL is not installed and cannot be installed here; its tests will be skipped"
fi
exit 0
