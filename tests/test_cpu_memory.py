"""dpfast.cpu_memory: glibc keeps freed memory for reuse (the CPU sampler's large batches)."""
import subprocess
import sys

import pytest

from dpfast import cli, cpu_memory, experiments

# Allocate and free 256 MiB, then print how much of it is still resident. In a fresh process:
# glibc's settings are process-wide.
CYCLE = """
import sys, torch
if sys.argv[1] == "keep":
    from dpfast.cpu_memory import keep_freed_memory
    assert keep_freed_memory()
def resident_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
before = resident_mib()
block = torch.ones(64 * 1024 * 1024)  # 256 MiB, touched
del block
print(resident_mib() - before)
"""


def _resident_after_free(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", CYCLE, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_memory_stays_in_the_process_only_when_kept():
    """By default glibc unmaps a 256 MiB block when it is freed; kept, the pages stay for reuse."""
    assert _resident_after_free("default") < 64
    assert _resident_after_free("keep") > 192


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_keeping_freed_memory_can_be_asked_twice():
    assert cpu_memory.keep_freed_memory() and cpu_memory.keep_freed_memory()


@pytest.mark.parametrize("setting, calls", [(None, 1), ("0", 0)], ids=["default", "disabled"])
@pytest.mark.parametrize("entry", ["dpfast", "experiments"])
def test_the_commands_keep_freed_memory_unless_told_not_to(tmp_path, monkeypatch, entry, setting, calls):
    asked = []
    monkeypatch.setattr(cpu_memory, "keep_freed_memory", lambda: asked.append(1) or True)
    if setting is None:
        monkeypatch.delenv("DPFAST_KEEP_FREED_MEMORY", raising=False)
    else:
        monkeypatch.setenv("DPFAST_KEEP_FREED_MEMORY", setting)
    if entry == "dpfast":
        with pytest.raises(SystemExit):  # --help: the memory setting comes before any parsing
            cli.main(["restore", "--help"])
    else:
        assert experiments.main(["images", "--status", "-o", str(tmp_path)]) == 0
    assert len(asked) == calls
