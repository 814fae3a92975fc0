"""Where pifleet's files go in an image: the one list of the paths it writes (and of the image's
own helpers its seeds call), so no other module spells them.

Constants only, and no imports: every stage, the image engine included, may read them.
Boot-partition paths are from the FAT partition's root (the device sees them under its boot
mount, /boot/firmware or /boot). The agent's own contract with the builder (join.json, the
token, the boot partition's pifleet/ folder) is firstboot/joinconfig.py's: the device half
never imports builder/.
"""

from __future__ import annotations

# The boot partition: the first-boot seed, one set of files per format (builder/seed/).
USER_DATA = "/user-data"  # cloud-init NoCloud
META_DATA = "/meta-data"
NETWORK_CONFIG = "/network-config"
SSH_SWITCH = "/ssh"  # Raspberry Pi OS enables sshd at first boot when this file exists
FIRSTRUN_NAME = "firstrun.sh"  # the systemd format's script, run by `systemd.run=`
FIRSTRUN = f"/{FIRSTRUN_NAME}"
PRESEED = "/rpi-preseed.toml"  # the rpi-preseed format's one file

# The root filesystem: the first-boot agent and its two units.
AGENT_DIR = "/usr/lib/pifleet"
UNIT_DIR = "/etc/systemd/system"
WANTS_DIR = f"{UNIT_DIR}/multi-user.target.wants"
UNIT_NAME = "pifleet-firstboot.service"
UNIT_PATH = f"{UNIT_DIR}/{UNIT_NAME}"
WANTS_LINK = f"{WANTS_DIR}/{UNIT_NAME}"
# Runs on every boot, before the network: moves secrets off the boot partition.
CUSTODY_NAME = "pifleet-custody.service"
CUSTODY_PATH = f"{UNIT_DIR}/{CUSTODY_NAME}"
CUSTODY_LINK = f"{WANTS_DIR}/{CUSTODY_NAME}"
PIFLEET_ETC = "/etc/pifleet"  # the join config and the token (firstboot/joinconfig.py)

# K3s, as its install.sh lays it out.
BIN_DIR = "/usr/local/bin"
K3S_PATH = f"{BIN_DIR}/k3s"
AIRGAP_DIR = "/var/lib/rancher/k3s/agent/images"
RANCHER_DIR = "/var/lib/rancher"
K3S_DATA_DIR = f"{RANCHER_DIR}/k3s"
SERVER_DIR = f"{K3S_DATA_DIR}/server"  # a server's custom CA goes under its tls/
RANCHER_ETC = "/etc/rancher"
K3S_ETC = f"{RANCHER_ETC}/k3s"

# System configuration the steps edit.
FSTAB = "/etc/fstab"
LOCALE_GEN = "/etc/locale.gen"
CLOUD_INIT_LOGS = ("/var/log/cloud-init.log", "/var/log/cloud-init-output.log")
NM_CONNECTIONS = "/etc/NetworkManager/system-connections"  # firstrun.sh's keyfiles

# The image's own helpers the seeds call, when it ships them (raspberrypi-sys-mods, userconf-pi).
IMAGER_CUSTOM = "/usr/lib/raspberrypi-sys-mods/imager_custom"
USERCONF = "/usr/lib/userconf-pi/userconf"
