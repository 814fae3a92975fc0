"""First-boot seed formats, one module each: cloudinit (cloudinit, cloudinit-rpi), systemd
(firstrun.sh), preseed (rpi-preseed.toml), behind one interface (base.py); formats.py picks one.
"""
