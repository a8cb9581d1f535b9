"""``aiokd extract`` and ``aiokd export``: one student as a model of its own.

* **extract** writes a model directory (``config.json``, ``model.safetensors``, tokenizer)
  holding a Transformer with ``l_e`` encoder and ``l_d`` decoder layers: the teacher's embedding,
  its bottom layers (and, pre-norm, its final layer norms), whose only student is itself.
* **export --format ctranslate2** writes a CTranslate2 model directory built with CTranslate2's
  ``TransformerSpec`` from the student's weights (``model.bin``, CTranslate2's ``config.json``,
  ``shared_vocabulary.json``), plus the tokenizer's files (``spm.model``, or a Marian model's
  three) and ``aiokd.json``, which :func:`aiokd.load` reads.
* **export --format hf** writes a Hugging Face Marian directory (:mod:`aiokd.formats.marian`)
  that ``MarianMTModel`` and ``MarianTokenizer`` load with ``from_pretrained``.

The CTranslate2 model is the same network: post-norm (or pre-norm) layers with the model's layer
norm epsilon and feed-forward activation; the embedding, scaled by ``sqrt(C)`` (unless
``model.scale_embedding`` is false), serves the source, the target and the output projection
(whose bias is the model's fixed logits bias, if it has one); the position table is the model's
own sinusoidal table (either layout), row ``t`` for position ``t``; self-attention keeps its
fused query/key/value projection (``linear[0]``), cross-attention its query (``linear[0]``) and
fused key/value (``linear[1]``) projections.  The
vocabulary is the tokenizer's pieces by id; the source gets the EOS appended and decoding starts
from BOS (``model.bos_id``), as in :mod:`aiokd.inference.generate`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import sentencepiece as spm
from torch import Tensor, nn

from aiokd.config import Config, ModelConfig
from aiokd.data.tokenizer import SENTENCEPIECE
from aiokd.errors import UserError
from aiokd.formats.marian import export_marian
from aiokd.io import atomic_directory, atomic_write_json
from aiokd.model.checkpoint import ModelFiles, load_model_files, model_config_json, save_model_dir
from aiokd.model.transformer import DecoderLayer, EncoderLayer, Transformer
from aiokd.students import (
    CandidateSpace,
    Student,
    choose_student,
    parse_student,
    student_name,
)

FORMATS = ("ctranslate2", "hf")
"""What ``aiokd export --format`` writes."""
EXPORT_INFO = "aiokd.json"
EXPORT_FORMAT = "aiokd-ctranslate2"


def is_ctranslate2_export(path: Path) -> bool:
    return path.is_dir() and (path / EXPORT_INFO).is_file()


def read_export_info(directory: Path) -> dict[str, Any]:
    """The ``aiokd.json`` of a CTranslate2 export: its student, model config and source."""
    path = directory / EXPORT_INFO
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        if info["format"] != EXPORT_FORMAT:
            raise ValueError("not an aiokd export")
        cfg = ModelConfig(**info["model"])
        if parse_student(info["student"]) != (cfg.enc_layers, cfg.dec_layers):
            raise ValueError("the student is not the exported model")
    except (ValueError, KeyError, TypeError, UserError):
        raise UserError(f"{path}: not a valid aiokd export description") from None
    return info


def _check_not_export(path: str | Path) -> None:
    if is_ctranslate2_export(Path(path)):
        raise UserError(f"{path} is a CTranslate2 export; give the run directory, checkpoint or "
                        "extracted student it came from")


def load_source(path: str | Path) -> ModelFiles:
    """A model to extract or export from; a CTranslate2 export cannot be one."""
    _check_not_export(path)
    return load_model_files(path)


def _check_free(out: Path) -> None:
    if out.exists() or out.is_symlink():
        raise UserError(f"--out {out} exists; choose a new directory")


def student_model(model: Transformer, student: Student) -> Transformer:
    """A Transformer of ``l_e`` encoder and ``l_d`` decoder layers holding the teacher's
    embedding, bottom layers and final norms."""
    small = Transformer(dataclasses.replace(model.cfg, enc_layers=student[0],
                                            dec_layers=student[1]))
    wanted = small.state_dict().keys()
    small.load_state_dict({k: v for k, v in model.state_dict().items() if k in wanted})
    return small.eval()


def write_extracted(directory: Path, files: ModelFiles, student: Student) -> Transformer:
    """Write ``student`` of ``files`` as a model directory holding only its layers."""
    small = student_model(files.model, student)
    space = CandidateSpace(*student, *student, dec_le_enc=False)
    languages = {k: files.config[k] for k in ("src_lang", "tgt_lang") if k in files.config}
    config = model_config_json(Config(model=small.cfg), space, languages,
                               {"extracted_from": str(Path(files.source).resolve()),
                                "student": student_name(student)})
    save_model_dir(directory, small, config, files.tokenizer)
    return small


def extract(model: str | Path, out: str | Path, student: str) -> Path:
    """``aiokd extract``: write ``student`` of ``model`` as the standalone model directory
    ``out``; returns ``out``.

    Raises:
        UserError: an unreadable model, an untrained student, or an existing ``out``.
    """
    files = load_source(model)
    chosen = choose_student(student, files.students, files.source)
    out = Path(out)
    _check_free(out)
    with atomic_directory(out) as directory:
        small = write_extracted(directory, files, chosen)
    print(f"wrote {out}: student {student_name(chosen)} of {files.source}, "
          f"{small.num_parameters():,} parameters", file=sys.stderr)
    return out


# ----------------------------------------------------------------------------------------------
# CTranslate2


def _array(tensor: Tensor):
    return tensor.detach().cpu().float().numpy()


def _set_linear(spec, linear: nn.Linear) -> None:
    spec.weight = _array(linear.weight)
    spec.bias = _array(linear.bias)


def _set_norm(spec, norm: nn.LayerNorm) -> None:
    spec.gamma = _array(norm.weight)
    spec.beta = _array(norm.bias)


def _set_ffn(spec, layer: EncoderLayer | DecoderLayer) -> None:
    _set_linear(spec.linear_0, layer.ffn.fc1)
    _set_linear(spec.linear_1, layer.ffn.fc2)
    _set_norm(spec.layer_norm, layer.ffn_block.norm)


def _set_self_attention(spec, layer: EncoderLayer | DecoderLayer) -> None:
    _set_linear(spec.linear[0], layer.self_attn.qkv)
    _set_linear(spec.linear[1], layer.self_attn.out)
    _set_norm(spec.layer_norm, layer.self_attn_block.norm)


def _set_cross_attention(spec, layer: DecoderLayer) -> None:
    _set_linear(spec.linear[0], layer.cross_attn.q)
    _set_linear(spec.linear[1], layer.cross_attn.kv)
    _set_linear(spec.linear[2], layer.cross_attn.out)
    _set_norm(spec.layer_norm, layer.cross_attn_block.norm)


def ctranslate2_spec(model: Transformer, student: Student, pieces: list[str], unk_id: int):
    """The ``ctranslate2.specs.TransformerSpec`` of ``student``, every weight set; ``pieces[i]`` is
    the SentencePiece piece of id ``i``."""
    from ctranslate2.specs import TransformerSpec, common_spec

    cfg = model.cfg
    le, ld = student
    activation = {"relu": common_spec.Activation.RELU, "gelu": common_spec.Activation.GELU,
                  "swish": common_spec.Activation.SWISH, "silu": common_spec.Activation.SWISH}
    spec = TransformerSpec.from_config((le, ld), cfg.heads, pre_norm=cfg.pre_norm,
                                       activation=activation[cfg.activation])
    config = spec.config
    config.unk_token = pieces[unk_id]
    config.bos_token = config.decoder_start_token = pieces[cfg.bos_id]
    config.eos_token = pieces[cfg.eos_id]
    config.add_source_bos, config.add_source_eos = False, True
    config.layer_norm_epsilon = model.encoder[0].ffn_block.norm.eps

    embedding, positions = _array(model.embed.weight), _array(model.positions)
    spec.encoder.embeddings[0].weight = spec.decoder.embeddings.weight = embedding
    spec.decoder.projection.weight = embedding
    if model.logits_bias is not None:
        spec.decoder.projection.bias = _array(model.logits_bias)
    spec.encoder.scale_embeddings = spec.decoder.scale_embeddings = cfg.scale_embedding
    spec.encoder.position_encodings.encodings = positions
    spec.decoder.position_encodings.encodings = positions
    for layer_spec, layer in zip(spec.encoder.layer, model.encoder[:le], strict=True):
        _set_self_attention(layer_spec.self_attention, layer)
        _set_ffn(layer_spec.ffn, layer)
    for layer_spec, layer in zip(spec.decoder.layer, model.decoder[:ld], strict=True):
        _set_self_attention(layer_spec.self_attention, layer)
        _set_cross_attention(layer_spec.attention, layer)
        _set_ffn(layer_spec.ffn, layer)
    if cfg.pre_norm:
        _set_norm(spec.encoder.layer_norm, model.encoder_norm)
        _set_norm(spec.decoder.layer_norm, model.decoder_norm)
    spec.register_source_vocabulary(pieces)
    spec.register_target_vocabulary(pieces)
    return spec


def sentencepiece_pieces(spm_bytes: bytes) -> tuple[list[str], int]:
    """The pieces of a SentencePiece model by id, and its unknown-token id."""
    processor = spm.SentencePieceProcessor(model_proto=spm_bytes)
    return [processor.id_to_piece(i) for i in range(processor.get_piece_size())], processor.unk_id()


def write_ctranslate2(directory: Path, files: ModelFiles, student: Student,
                      quantization: str) -> None:
    """Write the CTranslate2 model of ``student`` into the empty ``directory``.

    ``quantization``: ``none`` (float32), ``int8``, ``int8_float32`` or ``float16`` weights.
    """
    tokenizer = files.tokenizer.load(files.source)
    pieces = tokenizer.pieces
    if len(pieces) != files.model.cfg.vocab_size:
        raise UserError(f"{files.source}: the tokenizer has {len(pieces)} pieces but the model "
                        f"{files.model.cfg.vocab_size}")
    spec = ctranslate2_spec(files.model, student, pieces, tokenizer.unk_id)
    spec.validate()
    spec.optimize(quantization=None if quantization == "none" else quantization)
    spec.save(str(directory))
    model = dataclasses.replace(files.model.cfg, enc_layers=student[0], dec_layers=student[1])
    files.tokenizer.write(directory)
    kind = {} if files.tokenizer.kind == SENTENCEPIECE else {"tokenizer": files.tokenizer.kind}
    atomic_write_json(directory / EXPORT_INFO, {
        "format": EXPORT_FORMAT,
        "version": 1,
        **kind,
        "student": student_name(student),
        "quantization": quantization,
        "exported_from": str(files.source.resolve()),
        "model": dataclasses.asdict(model),
        **{k: files.config[k] for k in ("src_lang", "tgt_lang") if k in files.config},
    })


def export(model: str | Path, out: str | Path, *, student: str | None = None,
           format: str = "ctranslate2", quantization: str = "none") -> Path:
    """``aiokd export``: write ``student`` of ``model`` (None: the full model) for deployment as
    the directory ``out``; returns ``out``.

    Args:
        format: ``ctranslate2``, or ``hf`` (a Marian directory for Hugging Face's
            ``MarianMTModel``: :func:`aiokd.formats.marian.export_marian`).
        quantization: ctranslate2: as :func:`write_ctranslate2`.

    Raises:
        UserError: an unreadable model, an untrained student, an existing ``out``, an unknown
            format, or (hf) an architecture that Marian does not have.
    """
    if format not in FORMATS:
        raise UserError(f"--format {format}: unknown format; known: {', '.join(FORMATS)}")
    if format == "hf":
        if quantization != "none":
            raise UserError(f"--quantization {quantization}: only for --format ctranslate2; "
                            "the hf format is written in float32")
        _check_not_export(model)
        return export_marian(model, out, student)
    files = load_source(model)
    chosen = choose_student(student, files.students, files.source)
    out = Path(out)
    _check_free(out)
    with atomic_directory(out) as directory:
        write_ctranslate2(directory, files, chosen, quantization)
    print(f"wrote {out}: student {student_name(chosen)} of {files.source} for CTranslate2 "
          f"({quantization} quantization)", file=sys.stderr)
    return out
