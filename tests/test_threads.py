"""CPU runtime settings (injcert.threads): thread counts and glibc's allocator."""

from __future__ import annotations

import subprocess
import sys

import pytest

from injcert.errors import ConfigError
from injcert.threads import apply_threads, default_threads, keep_freed_heap


def test_keep_freed_heap_respects_the_users_choice(monkeypatch):
    monkeypatch.setenv("INJCERT_MALLOC", "default")
    assert keep_freed_heap() is False
    monkeypatch.delenv("INJCERT_MALLOC")
    for var in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"):
        monkeypatch.setenv(var, "1")
        assert keep_freed_heap() is False
        monkeypatch.delenv(var)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_keep_freed_heap_applies_on_glibc_and_python_m_injcert_still_runs():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert keep_freed_heap() is True
    out = subprocess.run([sys.executable, "-m", "injcert", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "certify" in out.stdout


def test_thread_counts(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    with pytest.raises(ConfigError, match="threads"):
        apply_threads(0)
