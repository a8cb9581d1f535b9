"""What a student costs to deploy: its parameters and its size on disk as a standalone model.

The size is measured, not computed: each student is written to a temporary directory the way it
would be shipped (as ``aiokd extract`` writes it for the PyTorch engine, as ``aiokd export
--quantization none`` writes it for CTranslate2) and the bytes of the files there are counted.
A CTranslate2 export given as the model is measured as it is.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from aiokd.config import ModelConfig
from aiokd.formats.export import (
    is_ctranslate2_export,
    read_export_info,
    write_ctranslate2,
    write_extracted,
)
from aiokd.model.checkpoint import load_model_files
from aiokd.model.transformer import Transformer
from aiokd.students import Student, student_name


@dataclass(frozen=True)
class Footprint:
    """Parameters (with and without the shared embedding) and bytes on disk of one student."""

    params: int
    params_no_embeddings: int
    size_bytes: int


@dataclass
class ModelFacts:
    """The footprint of each student, how sizes were measured, and the model's languages."""

    footprints: dict[str, Footprint]
    size_method: str
    languages: dict[str, str]


def directory_bytes(directory: Path) -> int:
    """Total size of the regular files below ``directory``."""
    return sum(Path(root, name).stat().st_size
               for root, _, names in os.walk(directory) for name in names)


def _parameters(model: Transformer, student: Student) -> tuple[int, int]:
    return model.num_parameters(student), model.num_parameters(student, embeddings=False)


def _export_facts(path: Path) -> ModelFacts:
    info = read_export_info(path)
    cfg = ModelConfig(**info["model"])
    with torch.device("meta"):
        model = Transformer(cfg)
    student = (cfg.enc_layers, cfg.dec_layers)
    footprint = Footprint(*_parameters(model, student), directory_bytes(path))
    method = (f"the CTranslate2 export directory as given ({info.get('quantization', 'none')} "
              "quantization)")
    languages = {k: info[k] for k in ("src_lang", "tgt_lang") if k in info}
    return ModelFacts({student_name(student): footprint}, method, languages)


def inspect_model(path: str | os.PathLike, students: list[Student], engine: str) -> ModelFacts:
    """Parameters and standalone size of each of ``students`` of the model at ``path``.

    ``engine`` (``torch`` or ``ctranslate2``) decides the standalone form that is measured.
    """
    path = Path(path)
    if is_ctranslate2_export(path):
        return _export_facts(path)
    files = load_model_files(path)
    footprints = {}
    for student in students:
        with tempfile.TemporaryDirectory(prefix="aiokd-size-") as directory:
            if engine == "ctranslate2":
                write_ctranslate2(Path(directory), files, student, "none")
            else:
                write_extracted(Path(directory), files, student)
            size = directory_bytes(Path(directory))
        footprints[student_name(student)] = Footprint(*_parameters(files.model, student), size)
    if engine == "ctranslate2":
        method = ("measured: the student exported for CTranslate2 with float32 weights "
                  "(aiokd export --quantization none), all files")
    else:
        method = ("measured: the student extracted as a standalone model directory "
                  "(aiokd extract: config.json, model.safetensors in float32, spm.model)")
    languages = {k: files.config[k] for k in ("src_lang", "tgt_lang") if k in files.config}
    return ModelFacts(footprints, method, languages)
