#!/usr/bin/env bash
# The system packages the project needs (Debian/Ubuntu), installed when any is missing.
#
#   scripts/system-deps.sh [--dry-run]
#
# `make test`, `make demo` (through `make venv`) and `.ci/run` call it first. When every tool is on
# PATH it exits 0 at once. Otherwise it installs the missing packages with apt-get, as root or
# through non-interactive sudo (`sudo -n`); where it cannot (no root, no password-less sudo, no
# apt-get) it stops with one message naming the exact command to run. `--dry-run` prints what it
# would run (or the message) and changes nothing. `PYTHON` names the interpreter the venv is made
# with (default python3). kustomize (the manifest checks) comes from kubectl or `go install` when
# Go is there; without either those checks skip, so it only notes that.
set -euo pipefail

dry_run=0
case "${1:-}" in
  --dry-run) dry_run=1 ;;
  "") ;;
  *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac

KUSTOMIZE_MODULE=sigs.k8s.io/kustomize/kustomize/v5@v5.5.0
JAVA_MIN=17  # Kafka 4 runs on Java 17 or newer

# Major version of the `java` on PATH (8 for "1.8.0_x"), empty when there is none.
java_major() {
  local version
  version=$(java -version 2>&1) || return 0
  if [[ $version =~ version\ \"1\.([0-9]+) ]] || [[ $version =~ version\ \"([0-9]+) ]]; then
    echo "${BASH_REMATCH[1]}"
  fi
}

# The first Java runtime package the apt lists offer (openjdk 17, else 21, else the default).
java_package() {
  local package
  for package in openjdk-17-jre-headless openjdk-21-jre-headless; do
    if apt-cache show "${package}" >/dev/null 2>&1; then
      echo "${package}"
      return
    fi
  done
  echo default-jre-headless
}

# Packages whose command is missing; "JAVA" stands for the Java runtime package.
missing_packages() {
  command -v redis-server >/dev/null || echo redis-server
  command -v kcat >/dev/null || echo kcat
  command -v ffmpeg >/dev/null || echo ffmpeg
  local major
  major=$(java_major)
  if [[ -z $major ]] || ((major < JAVA_MIN)); then echo JAVA; fi
  command -v mvn >/dev/null || echo maven
  command -v promtool >/dev/null || echo prometheus
  command -v g++ >/dev/null || echo g++ # torch.compile (inductor) builds C++ on CPU
  "${PYTHON:-python3}" -c 'import ensurepip, venv' 2>/dev/null || echo python3-venv
}

# Resolve "JAVA" to a package name in the list read from stdin.
resolve() {
  local package
  while read -r package; do
    if [[ $package == JAVA ]]; then java_package; else echo "${package}"; fi
  done
}

stop() {
  echo "$*" >&2
  exit 1
}

run() {
  if ((dry_run)); then
    echo "would run: $*"
  else
    "$@"
  fi
}

install_kustomize() {
  if command -v kubectl >/dev/null || command -v kustomize >/dev/null \
    || [[ -x ${HOME}/go/bin/kustomize ]]; then
    return
  fi
  if command -v go >/dev/null; then
    run go install "${KUSTOMIZE_MODULE}"
  else
    echo "note: no kubectl, kustomize or Go: the Kubernetes manifest checks will skip" >&2
  fi
}

mapfile -t missing < <(missing_packages)
if ((${#missing[@]} == 0)); then
  install_kustomize
  exit 0
fi

if ! command -v apt-get >/dev/null; then
  stop "missing system tools for: ${missing[*]/JAVA/Java ${JAVA_MIN}+}." \
    "This set-up installs them on Debian/Ubuntu only (apt-get); install them with your" \
    "system's package manager, then run the command again."
fi

mapfile -t packages < <(printf '%s\n' "${missing[@]}" | resolve)
if [[ $(id -u) == 0 ]]; then
  as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  if command -v sudo >/dev/null; then
    command="sudo apt-get update && sudo apt-get install -y ${packages[*]}"
  else
    command="su -c 'apt-get update && apt-get install -y ${packages[*]}'"
  fi
  stop "missing system packages: ${packages[*]}. Install them (needs root), then run the" \
    "command again:  ${command}"
fi

echo "installing system packages: ${packages[*]}" >&2
run "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
if [[ " ${missing[*]} " == *" JAVA "* ]]; then  # the lists are fresh now: choose the JDK again
  mapfile -t packages < <(printf '%s\n' "${missing[@]}" | resolve)
fi
run "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}"
if ((!dry_run)); then
  hash -r
  mapfile -t still < <(missing_packages)
  if ((${#still[@]})); then
    stop "apt-get installed ${packages[*]}, but these are still not found on PATH" \
      "(${PATH}): ${still[*]/JAVA/java ${JAVA_MIN}+}"
  fi
fi
install_kustomize
