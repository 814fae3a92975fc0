"""cloud-init's logs are readable by root only, from their first byte.

cloud-init's init-local stage logs the network configuration it applies, Wi-Fi
password included ("Applying network configuration from ds ...", INFO, in
cloudinit/stages.py `Init.apply_network_config`), to /var/log/cloud-init.log. It creates that
log 0640 and gives it to group adm (`_initialize_filesystem`: `ensure_file(...,
mode=0o640, preserve_mode=True)`, then `syslog_fix_perms`), so every member of
adm could read the PSK. A log that already exists keeps its mode
(`preserve_mode=True`, and Python's FileHandler and `tee -a` open it for append),
so the image ships both logs empty and 0600: cloud-init appends to them and they
stay root's. Images without cloud-init are left alone.
"""

from __future__ import annotations

from builder.disk.entries import File
from builder.disk.image import Image
from builder.layout import CLOUD_INIT_LOGS
from builder.plan import Plan

PRIVATE_MODE = 0o600


def apply(image: Image, plan: Plan) -> None:
    if not plan.flavor.init_format.startswith("cloudinit"):
        return
    found = image.root.stat_many(list(CLOUD_INIT_LOGS))
    for path, inode in found.items():
        if inode is None:
            image.root.stage(File(path, PRIVATE_MODE, data=b""))
        elif inode.kind == "regular" and inode.mode & 0o077:
            kept = image.root.read(path) or b""
            image.root.stage(File(path, PRIVATE_MODE, data=kept, uid=inode.uid, gid=inode.gid))
