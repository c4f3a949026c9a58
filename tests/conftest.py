"""Test-session set-up.

torch.compile keeps compiled graphs in an on-disk cache whose key does not
cover a custom op's fake kernel, so a graph compiled against an older build
of these ops could be reused after its fake kernel changed. Each test session
therefore compiles into a cache of its own.
"""
import os
import tempfile

_CACHE = tempfile.TemporaryDirectory(prefix="tpt_ops_inductor_")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = _CACHE.name
