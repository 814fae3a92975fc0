#!/bin/sh
# Installed by pifleet {{ version }}, doing what K3s's install.sh puts in
# {{ script }}: stop and remove K3s ({{ unit }}), its files, data and tools.
[ "$(id -u)" -eq 0 ] || exec sudo "$0" "$@"
set -x

/usr/local/bin/k3s-killall.sh

systemctl disable {{ unit }}
systemctl reset-failed {{ unit }}
systemctl daemon-reload
rm -f /etc/systemd/system/{{ unit }} /etc/systemd/system/{{ unit }}.env

# the tools that point at k3s, and only those
for tool in kubectl crictl ctr; do
    [ "$(readlink /usr/local/bin/$tool)" = k3s ] && rm -f /usr/local/bin/$tool
done

rm -rf /etc/rancher/k3s /run/k3s /run/flannel /var/lib/rancher/k3s /var/lib/kubelet
rm -f /usr/local/bin/k3s /usr/local/bin/k3s-killall.sh
rm -f "$0"
