#!/bin/sh
# Installs the Debian packages the tests run (tests/debian-packages.txt) when they are missing:
# as root with apt-get (as CI runs), else through `sudo -n` when that needs no password. Otherwise it only
# says which command installs them; the test run repeats that command at its end for every test it skipped.
set -eu
cd "$(dirname "$0")"
missing=""
while read -r binary package _; do
  case "$binary" in ''|'#'*) continue ;; esac
  command -v "$binary" >/dev/null 2>&1 || [ -x "/usr/sbin/$binary" ] || missing="$missing $package"
done < debian-packages.txt
[ -n "$missing" ] || exit 0
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  echo "missing Debian packages:$missing; install them with: sudo apt-get install -y --no-install-recommends$missing" >&2
  exit 0
fi
echo "installing Debian packages the tests need:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
# The dovecot package starts a system-wide server on port 143; the tests run their own on a free port.
case "$missing" in *dovecot*)
  $SUDO systemctl stop dovecot >/dev/null 2>&1 || $SUDO service dovecot stop >/dev/null 2>&1 || true ;;
esac
