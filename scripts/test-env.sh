# Sourced by `make test`: point the tests at PostgreSQL and Redis when they are running.
# DATABASE_URL / CELERY_BROKER_URL already set win; TUNERY_TEST_SERVICES=off forces SQLite and
# the filesystem broker.
_port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [ "${TUNERY_TEST_SERVICES:-auto}" != "off" ]; then
  if [ -z "${DATABASE_URL:-}" ] && _port_open 5432; then
    export DATABASE_URL="postgres://postgres@127.0.0.1:5432/tunery"
  fi
  if [ -z "${CELERY_BROKER_URL:-}" ] && _port_open 6379; then
    # A Redis db of its own, flushed by the worker fixture: no stale messages from other runs.
    export CELERY_BROKER_URL="redis://127.0.0.1:6379/15"
  fi
else
  unset DATABASE_URL CELERY_BROKER_URL
fi
echo "tests: database ${DATABASE_URL:-sqlite (DATA_DIR)}, broker ${CELERY_BROKER_URL:-filesystem}"
