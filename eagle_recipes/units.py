"""Byte sizes as people read them (plan, validate and the feature modes' lines share one spelling)."""

GiB = 1024 ** 3


def gib(size: float) -> str:
    if size >= 1024 * GiB:
        return f"{size / 1024 / GiB:.1f} TiB"
    return f"{size / GiB:.1f} GiB" if size >= GiB / 10 else f"{size / 1024 ** 2:.0f} MiB"
