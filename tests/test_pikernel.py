"""builder/qemu/pikernel.py: which root kernels are Raspberry Pi flavours -M virt cannot boot."""

from __future__ import annotations

import pytest

from builder.qemu.pikernel import is_pi_kernel


@pytest.mark.parametrize(
    "name",
    [
        "/boot/vmlinuz-6.8.0-1017-raspi",  # Ubuntu's linux-raspi
        "/boot/vmlinuz-5.4.0-1008-raspi2",  # Ubuntu 18.04/20.04's
        "vmlinuz-6.12.47+rpt-rpi-v8",  # Pi OS Trixie's
        "vmlinuz-6.12.47+rpt-rpi-2712",
        "vmlinuz-6.1.21-v8+",  # Pi OS Bullseye's
        "vmlinuz-6.1.21-v7l+",
        "vmlinuz-5.10.103+",  # Pi OS's ARMv6 kernel
    ],
)
def test_a_pi_flavour_is_a_pi_kernel(name: str) -> None:
    assert is_pi_kernel(name)


@pytest.mark.parametrize(
    "name",
    [
        "/boot/vmlinuz-6.12.117+deb13-arm64",  # Debian's generic kernels
        "/boot/vmlinuz-6.1.0-18-armmp-lpae",
        "/boot/vmlinuz-6.1.0-18-armmp",
        "/boot/vmlinuz-6.8.0-45-generic",  # Ubuntu's generic
        "/boot/vmlinuz",  # a name with no version says nothing
    ],
)
def test_a_generic_kernel_is_not(name: str) -> None:
    assert not is_pi_kernel(name)
