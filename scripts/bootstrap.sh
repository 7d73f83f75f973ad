#!/usr/bin/env bash
# bootstrap.sh - install the Debian packages phasegate needs to build and test.
#   bash scripts/bootstrap.sh [EXTRA_PACKAGE...]
#
# Fast no-op when everything is present (one dpkg-query per package, no apt
# call).  Otherwise `apt-get install -y` the missing ones; only if that fails,
# `apt-get update` and try once more.  Works as root, as a user with sudo,
# with no stdin and under CI=true.
#
# Note: installing the `postgresql` package may create and start a cluster on
# port 5432.  phasegate never uses it: the tests run their own throwaway
# server from /usr/lib/postgresql/*/bin (see tests/harness/pg.sh).
set -euo pipefail

PACKAGES=(
	build-essential cmake pkg-config
	libuv1-dev libpq-dev libcurl4-openssl-dev libyaml-dev libjansson-dev
	libcmocka-dev libssl-dev libpg-query-dev valgrind strace python3-jsonschema python3-yaml bsdutils
	postgresql postgresql-contrib
	curl clang
)

# extra packages a caller needs (tests/integration/test_core_report.sh: chromium)
PACKAGES+=("$@")

say() { printf 'bootstrap: %s\n' "$*"; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }

is_installed() {
	local status
	status=$(dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null) || return 1
	[[ $status == *" ok installed"* ]]
}

command -v dpkg-query >/dev/null 2>&1 ||
	die "dpkg-query not found: this script supports Debian and Ubuntu only"

missing=()
for pkg in "${PACKAGES[@]}"; do
	is_installed "$pkg" || missing+=("$pkg")
done

if [[ ${#missing[@]} -eq 0 ]]; then
	say "all ${#PACKAGES[@]} packages present, nothing to do"
	exit 0
fi

# Run as root: directly, or through sudo (non-interactive without a tty).
as_root=()
if [[ $(id -u) -ne 0 ]]; then
	command -v sudo >/dev/null 2>&1 ||
		die "not root and sudo is missing; install as root: ${missing[*]}"
	if [[ -t 0 ]]; then
		as_root=(sudo)
	else
		as_root=(sudo -n)
	fi
fi

apt_get() {
	"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
		apt-get -q -y -o DPkg::Lock::Timeout=300 "$@" </dev/null
}

say "installing ${missing[*]}"
if ! apt_get install "${missing[@]}"; then
	say "apt-get install failed; running apt-get update and retrying"
	apt_get update
	say "installing ${missing[*]} (second attempt)"
	apt_get install "${missing[@]}"
fi

still=()
for pkg in "${missing[@]}"; do
	is_installed "$pkg" || still+=("$pkg")
done
[[ ${#still[@]} -eq 0 ]] || die "still missing after install: ${still[*]}"
say "done: installed ${#missing[@]} package(s)"
