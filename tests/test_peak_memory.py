"""A stage task's peak memory is the kernel's count from the task's start: what ran before it in the same worker
process does not count, and a short allocation is never missed between samples."""

from eagle_recipes.peak_memory import peak_mib, reset_peak


def _touched(mib: int) -> bytearray:
    block = bytearray(mib * 2**20)
    block[::4096] = b"x" * len(block[::4096])  # every page written: resident
    return block


def test_the_peak_is_counted_from_the_reset_and_catches_a_short_allocation():
    held = _touched(200)  # what an earlier task of the same worker process used, then freed
    before = peak_mib()
    del held
    assert reset_peak()  # Linux, as every machine of this project is
    after_reset = peak_mib()
    assert after_reset < before - 150, (before, after_reset)  # the earlier 200 MiB no longer counts
    brief = _touched(64)  # allocated and freed at once: a sampler could miss it
    del brief
    assert peak_mib() >= after_reset + 60
