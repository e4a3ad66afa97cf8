#!/usr/bin/env bash
# Install the Debian packages the tests use, each only when its command is missing, with one
# `apt-get update` first. Services are not started (policy-rc.d): the tests start their own on loopback.
set -euo pipefail

# command the tests need -> Debian package that provides it
declare -A packages=(
  [promtool]=prometheus
  [amtool]=prometheus-alertmanager
  [victoria-metrics]=victoria-metrics
  [iperf3]=iperf3
  [fping]=fping
  [ping]=iputils-ping
  [nft]=nftables
  [dnsmasq]=dnsmasq-base
  [dig]=bind9-dnsutils
  [curl]=curl
  [ip]=iproute2
  [prometheus]=prometheus
  [prometheus-alertmanager]=prometheus-alertmanager
  [openssl]=openssl
  # peers of the path kind (tests/netlab/test_path_trace.py, bench/path.py)
  [mtr]=mtr-tiny
  [traceroute]=traceroute
  # peers in the benchmarks (bench/icmp_scale.py)
  [prometheus-smokeping-prober]=prometheus-smokeping-prober
  [prometheus-blackbox-exporter]=prometheus-blackbox-exporter
)

missing=()
for command in "${!packages[@]}"; do
  command -v "$command" >/dev/null 2>&1 || [ -x "/usr/sbin/$command" ] || [ -x "/usr/bin/$command" ] \
    || missing+=("${packages[$command]}")
done
[ ${#missing[@]} -eq 0 ] && { echo "install-deps: all test tools present"; exit 0; }

if [ "$(id -u)" != 0 ]; then
  echo "install-deps: missing ${missing[*]}; run as root (or install them) for the tests that need them" >&2
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
policy=/usr/sbin/policy-rc.d
had_policy=0; [ -e "$policy" ] && had_policy=1
if [ "$had_policy" = 0 ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; fi
trap '[ "$had_policy" = 0 ] && rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
