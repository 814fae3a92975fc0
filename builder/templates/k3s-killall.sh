#!/bin/sh
# Installed by pifleet {{ version }}, doing what K3s's install.sh puts in k3s-killall.sh:
# stop every K3s unit, kill the container shims K3s started, unmount what K3s and the
# kubelet mounted, delete the CNI network devices and the K3s/CNI firewall rules.
[ "$(id -u)" -eq 0 ] || exec sudo "$0" "$@"
set -x

for unit in /etc/systemd/system/k3s*.service; do
    [ -s "$unit" ] && systemctl stop "$(basename "$unit")"
done

# containerd-shim processes K3s started, and everything below them
shims=$(ps -e -o pid= -o args= | sed -e 's/^ *//' \
    | grep -E '^[0-9]+ /var/lib/rancher/k3s/data/[^/]+/bin/containerd-shim' | cut -d' ' -f1)
kill_tree() {
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do kill_tree "$child"; done
    kill -9 "$1" 2>/dev/null
}
for pid in $shims; do kill_tree "$pid"; done

unmount_and_remove() {
    # deepest mount points first, then the directories themselves
    awk -v prefix="$1" '$2 ~ "^" prefix { print $2 }' /proc/self/mounts | sort -r \
        | xargs -r -n 1 sh -c 'umount -f "$0" && rm -rf "$0"'
}
unmount_and_remove /run/k3s
unmount_and_remove /var/lib/rancher/k3s
unmount_and_remove /var/lib/kubelet/pods
unmount_and_remove /var/lib/kubelet/plugins
unmount_and_remove /run/netns/cni-

# network namespaces and devices made by flannel and the CNI plugins
ip netns show 2>/dev/null | grep cni- | xargs -r -n 1 ip netns delete
ip link show 2>/dev/null | grep 'master cni0' | while read -r _ iface _; do
    ip link delete "${iface%%@*}"
done
for iface in cni0 flannel.1 flannel-v6.1 kube-ipvs0 flannel-wg flannel-wg-v6; do
    ip link delete "$iface" 2>/dev/null
done
rm -rf /var/lib/cni/

# firewall rules K3s, kube-proxy, flannel and the network policy controller added
for table in iptables ip6tables; do
    command -v "$table-save" >/dev/null || continue
    "$table-save" | grep -v KUBE- | grep -v CNI- | grep -iv flannel | "$table-restore"
done
exit 0
