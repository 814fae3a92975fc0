"""One module per customization, each with one job and one function: `apply(image, plan)`.

Steps stage their changes on the image; the build commits them together. Every
step is idempotent: applied to an image it already customized, it stages
nothing that differs, so nothing is rewritten.
"""

from __future__ import annotations

from collections.abc import Callable

from builder.disk.image import Image
from builder.layout import CLOUD_INIT_LOGS, FSTAB, LOCALE_GEN
from builder.plan import Plan
from builder.steps import (
    agent,
    cloudlog,
    cmdline,
    config_txt,
    containerd,
    fstab,
    join,
    k3s,
    kubernetes,
    locale,
    registries,
    seed,
    timezone,
)

Step = Callable[[Image, Plan], None]
TZ_TABLES = ("tzdata.zi", "zone1970.tab", "zone.tab")  # what timezone.zone_names reads

# seed before cmdline: a `ds=nocloud;i=` override must match the meta-data written.
ORDER: tuple[tuple[str, Step], ...] = (
    ("seed", seed.apply),
    ("cmdline", cmdline.apply),
    ("config_txt", config_txt.apply),
    ("locale", locale.apply),
    ("fstab", fstab.apply),
    ("cloudlog", cloudlog.apply),
    ("runtime", lambda image, plan: runtime(plan)(image, plan)),
    ("registries", registries.apply),
    ("agent", agent.apply),
    ("join", join.apply),
)


def runtime(plan: Plan) -> Step:
    """What the devices run: K3s, or with cluster.kind kubeadm the Kubernetes binaries and
    the container runtime."""
    if plan.config.cluster.kind != "kubeadm":
        return k3s.apply

    def kubeadm_worker(image: Image, plan: Plan) -> None:
        kubernetes.apply(image, plan)
        containerd.apply(image, plan)

    return kubeadm_worker


def prefetch(image: Image, plan: Plan) -> None:
    """Read ahead what the steps read from the root filesystem, in one debugfs run."""
    image.root.prefetch([FSTAB, LOCALE_GEN, locale.SUPPORTED], CLOUD_INIT_LOGS)


def check_base(image: Image, plan: Plan) -> None:
    """The steps' read-only checks, on the base before it is copied: a timezone or locale
    the image lacks fails in a second, not after a multi-GB copy."""
    reads = [LOCALE_GEN, locale.SUPPORTED]
    if plan.config.timezone not in timezone.BUILT_IN:
        reads += [f"{timezone.ZONEINFO}/{table}" for table in TZ_TABLES]
    image.root.prefetch(reads)
    timezone.check(image, plan)
    registries.check(image, plan)
    if plan.config.cluster.kind == "kubeadm":
        kubernetes.check(plan)
    locale.check(image, plan)
