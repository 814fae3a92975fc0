"""QEMU: the VM runner (QMP), power-on and console, and `pifleet boot-test`.
Takes a built image; gives a booted guest and the proof that it seeded and joined.
"""
