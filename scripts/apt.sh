# Sourced by the scripts that install what the project needs (ensure-mariadb.sh,
# ensure-prometheus.sh, ensure-haproxy.sh, test-python.sh): Debian packages are installed one
# way, by root only; anyone else is told what to install.

# apt_install WHO [APT-OPTION...] PACKAGE...: installs the packages, or fails saying what to run.
apt_install() {
  local who="$1"
  shift
  local packages=()
  for argument in "$@"; do
    [[ "$argument" == -* ]] || packages+=("$argument")
  done
  if [ "$(id -u)" != 0 ]; then
    echo "$who: ${packages[*]} not installed and we are not root: install it (apt-get install ${packages[*]})" >&2
    return 1
  fi
  echo "$who: installing ${packages[*]}" >&2
  # Other jobs on the machine may hold the dpkg lock for a while.
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq "$@" >/dev/null
}
