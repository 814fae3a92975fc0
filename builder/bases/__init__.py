"""Base images: a QEMU-bootable Debian laid out like Raspberry Pi OS (`pifleet base`), its
fast foreign-architecture bootstrap and the host-built initramfs it boots with. Gives a base
image file, as builder/sources gives a downloaded Pi OS one.
"""
