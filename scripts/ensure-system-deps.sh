#!/usr/bin/env bash
# System packages the real-component tests need: Java 17 (HiveServer2 = Spark Thrift Server)
# and Chromium (dashboard browser tests); in CI also PostgreSQL and Redis (the Celery
# production-topology test, tests/topology). In CI (CI=true) missing ones are installed with apt;
# elsewhere we say what is missing and the tests that need it are skipped with that reason.
set -euo pipefail
missing=()
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ "${CI:-}" = "true" ] || [ "${MODEL_FACTORY_INSTALL_SYSTEM_DEPS:-}" = "1" ]; then
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
fi
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "${CI:-}" = "true" ] || [ "${MODEL_FACTORY_INSTALL_SYSTEM_DEPS:-}" = "1" ]; then
  echo "installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "note: missing ${missing[*]}; Hive/browser tests will be skipped." >&2
  echo "      install them (apt-get install ${missing[*]}) or run with MODEL_FACTORY_INSTALL_SYSTEM_DEPS=1" >&2
fi
