#!/usr/bin/env bash
# Installs what the tests and `make run` need and a clean machine lacks.
# Idempotent and quiet when everything is present.
set -euo pipefail
cd "$(dirname "$0")/../.."

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v chromium >/dev/null || need+=(chromium)
command -v libvirtd >/dev/null || need+=(libvirt-daemon-system)
command -v virsh >/dev/null || need+=(libvirt-clients)
command -v websockify >/dev/null || need+=(websockify)
[[ -d /usr/share/novnc ]] || need+=(novnc)
[[ -f /usr/share/nova-common/nova.conf ]] || need+=(nova-common)    # Nova's own sample nova.conf
/usr/bin/python3 -c 'import tempest' 2>/dev/null || need+=(python3-tempest) # OpenStack's console tests
command -v stress-ng >/dev/null || need+=(stress-ng)                 # load beside the suite
command -v haproxy >/dev/null || need+=(haproxy)                     # PROXY protocol in front of xvp-proxy
command -v systemd-analyze >/dev/null || need+=(systemd)            # checks the units in deploy/systemd
if ((${#need[@]})); then
	echo "install-deps: apt-get install ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq "${need[@]}" >/dev/null
fi
[[ -x /usr/bin/keystone-wsgi-public ]] || { echo "install-deps: apt-get install --no-install-recommends python3-keystone"; apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-keystone >/dev/null; } # a real Keystone for consoleauth's tests; not package keystone, whose postinst starts a server on :5000

# npm packages, pinned by package-lock.json, into ignored node_modules folders.
for dir in services/novnc-proxy/web deploy/e2e/browser; do
	if [[ -f $dir/package-lock.json && ! -d $dir/node_modules ]]; then
		echo "install-deps: npm ci in $dir"
		(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
	fi
done
