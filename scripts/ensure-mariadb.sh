#!/usr/bin/env bash
# Makes sure a MariaDB answers at $DATABASE_URL's host and port (default 127.0.0.1:3306):
# if nothing answers, starts the local server, installing mariadb-server first when it is
# missing and we are root. Then checks that root can log in over TCP without a password
# and that the database exists. Idempotent; prints what it does.
set -euo pipefail
. "$(dirname "$0")/apt.sh"

url="${DATABASE_URL:-mysql://root@127.0.0.1:3306/test}"
rest="${url#mysql://}"
rest="${rest#*@}"
hostport="${rest%%/*}"
hostport="${hostport%%\?*}"
host="${hostport%%:*}"
port=3306
[[ "$hostport" == *:* ]] && port="${hostport##*:}"
database="${rest#*/}"
database="${database%%\?*}"
[ -n "$database" ] && [ "$database" != "$rest" ] || database=test

say() { echo "ensure-mariadb: $*" >&2; }

answers() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }

if answers; then
  exit 0
fi

case "$host" in
  127.0.0.1|localhost|::1) ;;
  *) say "nothing answers at $host:$port and it is not local; start it yourself"; exit 1 ;;
esac

if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; then
  apt_install ensure-mariadb mariadb-server mariadb-client
fi

say "starting mariadbd on port $port"
mkdir -p /run/mysqld
chown mysql:mysql /run/mysqld 2>/dev/null || true
if [ ! -d /var/lib/mysql/mysql ]; then
  mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
fi
if command -v start-stop-daemon >/dev/null 2>&1; then
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql --port="$port"
else
  nohup /usr/sbin/mariadbd --user=mysql --port="$port" >/tmp/mariadbd.log 2>&1 &
fi

for _ in $(seq 1 120); do
  answers && break
  sleep 0.5
done
answers || { say "mariadbd did not come up on $host:$port"; exit 1; }

# A fresh Debian install lets root in through the Unix socket only; the broker and the
# tests log in over TCP with an empty password, as the default database_url says.
if ! mariadb -h127.0.0.1 -P"$port" -uroot -e 'SELECT 1' >/dev/null 2>&1; then
  say "allowing root over TCP with an empty password"
  mariadb -uroot -e "ALTER USER root@localhost IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket; FLUSH PRIVILEGES;"
fi
mariadb -h127.0.0.1 -P"$port" -uroot -e "CREATE DATABASE IF NOT EXISTS \`$database\`"
say "MariaDB is up at $host:$port"
