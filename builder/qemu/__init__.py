"""QEMU: base images laid out like Pi OS, the VM runner (QMP) and `pifleet boot-test`.
Takes a built image; gives a booted guest and the proof that it seeded and joined.
"""
