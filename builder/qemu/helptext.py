"""`pifleet boot-test --help`'s account of its two modes: what each substitutes, and why, and
what each proves (README "Proving an image boots" says the same at length)."""

MODES = """\
modes:
  -M virt (default)  QEMU's generic machine. The image's userland, its first-boot seed
      (cloud-init, firstrun.sh or rpi-preseed, init= included) and the agent run as on the
      device. Substituted: a Raspberry Pi kernel (kernel8.img, kernel7l.img, *-raspi) cannot
      boot here, so Debian's generic kernel for the image's architecture is booted, with its
      modules from a read-only second disk; the root device named in cmdline.txt (PARTUUID,
      LABEL, /dev/mmcblk0p2) is found on the virtual disk; the console is the virt UART.
      Proves: the userland, the seed and the agent. Not: the image's own kernel or device tree.
  --machine raspi3b (arm64), raspi2b (armhf)  QEMU's Raspberry Pi 3 and 2 boards boot the
      image's own kernel, initramfs and device tree as the firmware picks them from config.txt,
      with the image as the SD card and Ethernet over USB. Substituted, on QEMU's command line
      only: the watchdog stays unarmed (QEMU's BCM2835 resets the board the moment one is),
      drivers for hardware QEMU lacks are not loaded, the device timeout is raised.
      Proves also: the image's kernel, its device tree and cmdline.txt as the firmware reads
      them. About twice as slow as virt.
  arm64, both modes: the kernel hardening that only slows emulation is off on QEMU's command
  line, nokaslr mitigations=off (KASLR forces page-table isolation, a TLB flush in QEMU at
  every system call); a boot takes half the CPU time. A device keeps both.
  Neither proves Pi 4 or Pi 5 hardware: QEMU 7.2 has no Pi 4 model with networking and no
  Pi 5 model. In both modes the image is never written (a copy-on-write overlay).
"""
