#!/bin/sh
# Stand-in for the official redis image's entrypoint: `redis-server` arguments may come without the
# program name; as root, own /data and drop to the redis user; without a config file, protected mode
# is off (the container's network decides who can connect, as in the official image).
set -eu

case "${1:-}" in -*|*.conf) set -- redis-server "$@" ;; esac
[ "${1:-}" = redis-server ] || exec "$@"

if [ "$(id -u)" = 0 ]; then
    find . \! -user redis -exec chown redis '{}' +
    exec setpriv --reuid redis --regid redis --init-groups "$0" "$@"
fi

case "${2:-}" in *.conf) ;; *) set -- "$@" --protected-mode no ;; esac
exec "$@"
