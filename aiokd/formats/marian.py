"""Marian (OPUS-MT) models in Hugging Face's layout: import as an aiokd model, export back.

A Marian directory holds ``config.json`` (``model_type: marian``), ``model.safetensors``,
``source.spm``, ``target.spm``, ``vocab.json`` and ``tokenizer_config.json``.  Its network is a
post-norm Transformer whose one embedding matrix ``E`` serves the encoder input, the decoder input
and the output projection, with ``logits = E h + final_logits_bias``, the embeddings scaled by
``sqrt(C)`` (``scale_embedding``), Marian's sinusoidal positions (``model.positions=marian``),
decoding started from ``decoder_start_token_id`` (the pad token) and ended by ``</s>``.

**Import** (:func:`import_marian`) maps it onto :class:`~aiokd.model.transformer.Transformer`:
separate query, key and value projections ``W_q, W_k, W_v`` (``C x C`` each) become the fused
``qkv = [W_q; W_k; W_v]`` (``3C x C``) of self-attention and ``kv = [W_k; W_v]`` of
cross-attention; layer norms and feed-forward layers keep their weights.  The teacher is the whole
model and every student ``l_e-l_d`` is a prefix of it, as for any aiokd model.  The tokenizer is
kept as it is (:mod:`aiokd.data.tokenizer`, kind ``marian``).

**Export** (:func:`write_marian`) is the inverse, for any student of a post-norm model with
Marian's positions; an aiokd model with one joint SentencePiece model writes it as both
``source.spm`` and ``target.spm`` and its pieces as ``vocab.json``.  ``MarianMTModel`` and
``MarianTokenizer`` load the result with ``from_pretrained``.

Only safetensors, JSON and SentencePiece files are read; nothing is unpickled, and Hugging Face's
``transformers`` is not needed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from aiokd.config import ACTIVATIONS, Config, ModelConfig
from aiokd.data.tokenizer import FILES, MARIAN, TokenizerFiles
from aiokd.errors import UserError
from aiokd.io import atomic_directory, atomic_write_json
from aiokd.model.checkpoint import ModelFiles, load_model_files, model_config_json, save_model_dir
from aiokd.model.transformer import Transformer, marian_positions
from aiokd.students import CandidateSpace, Student, choose_student, student_name

EMBEDDINGS = ("model.shared.weight", "model.encoder.embed_tokens.weight",
              "model.decoder.embed_tokens.weight", "lm_head.weight")
"""Names the one shared embedding matrix may be stored under (save_pretrained keeps the first)."""
POSITIONS = ("model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight")
REFUSED = {"normalize_before": True, "normalize_embedding": True, "add_bias_logits": True,
           "add_final_layer_norm": True, "static_position_embeddings": False,
           "share_encoder_decoder_embeddings": False, "tie_word_embeddings": False,
           "separate_vocabs": False}
"""Config values of Marian-like variants that do not map onto this Transformer."""
ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
NORMS = {"self_attn_block": "self_attn_layer_norm", "cross_attn_block": "encoder_attn_layer_norm",
         "ffn_block": "final_layer_norm"}
"""Our residual blocks -> Marian's layer norm names."""


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: missing: not a Marian model directory ({what})")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{path}: not valid JSON") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object")
    return value


def _model_config(hf: dict[str, Any], path: Path) -> ModelConfig:
    """Our :class:`ModelConfig` of a Marian ``config.json``, or a UserError naming the variant."""
    if hf.get("model_type") != "marian":
        raise UserError(f"{path}: not a Marian model (model_type is {hf.get('model_type')!r})")
    for key, refused in REFUSED.items():
        if hf.get(key, not refused) == refused:
            raise UserError(f"{path}: unsupported Marian variant ({key}={json.dumps(refused)})")
    for theirs in ("attention_heads", "ffn_dim"):
        if hf.get(f"encoder_{theirs}") != hf.get(f"decoder_{theirs}"):
            raise UserError(f"{path}: unsupported Marian variant (encoder_{theirs} differs from "
                            f"decoder_{theirs})")
    if hf.get("decoder_vocab_size") not in (None, hf.get("vocab_size")):
        raise UserError(f"{path}: unsupported Marian variant (decoder_vocab_size differs from "
                        "vocab_size)")
    if hf.get("activation_function", "gelu") not in ACTIVATIONS:
        raise UserError(f"{path}: unsupported Marian variant (activation_function "
                        f"{hf.get('activation_function')!r}; supported: {', '.join(ACTIVATIONS)})")
    try:
        return ModelConfig(
            vocab_size=hf["vocab_size"], d_model=hf["d_model"], ffn_dim=hf["encoder_ffn_dim"],
            heads=hf["encoder_attention_heads"], enc_layers=hf["encoder_layers"],
            dec_layers=hf["decoder_layers"], dropout=hf.get("dropout", 0.1),
            attention_dropout=hf.get("attention_dropout", 0.0),
            activation_dropout=hf.get("activation_dropout", 0.0), pre_norm=False,
            max_positions=hf.get("max_position_embeddings", 1024), pad_id=hf["pad_token_id"],
            bos_id=hf.get("decoder_start_token_id", hf["pad_token_id"]),
            eos_id=hf["eos_token_id"], activation=hf.get("activation_function", "gelu"),
            positions="marian", scale_embedding=bool(hf.get("scale_embedding", False)),
            final_logits_bias=True)
    except KeyError as error:
        raise UserError(f"{path}: not a Marian model config (no {error.args[0]})") from None
    except (TypeError, UserError) as error:
        raise UserError(f"{path}: unsupported Marian config ({error})") from None


def _weights(directory: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The tensors of ``model.safetensors``; a pickle-only model is refused."""
    path = directory / "model.safetensors"
    if not path.is_file():
        if (directory / "pytorch_model.bin").is_file():
            raise UserError(f"{directory / 'pytorch_model.bin'}: a pickle, which aiokd does not "
                            "load; convert it on a machine you trust: MarianMTModel."
                            "from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)")
        if (directory / "model.safetensors.index.json").is_file():
            raise UserError(f"{directory / 'model.safetensors.index.json'}: sharded weights are "
                            "not supported; save the model as one model.safetensors")
        raise UserError(f"{path}: missing: not a Marian model directory (no weights)")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError):
        raise UserError(f"{path}: not a valid safetensors file") from None
    prefixed = any(name.startswith("model.") for name in tensors)
    if not prefixed:  # a bare MarianModel: no "model." prefix, no output layer
        tensors = {f"model.{name}": value for name, value in tensors.items()}
    return {name: value.float() for name, value in tensors.items()}, path


def _take(tensors: dict[str, torch.Tensor], name: str, path: Path) -> torch.Tensor:
    if name not in tensors:
        raise UserError(f"{path}: missing tensor {name!r}")
    return tensors.pop(name)


def _shared_embedding(tensors: dict[str, torch.Tensor], path: Path) -> torch.Tensor:
    found = [tensors.pop(name) for name in EMBEDDINGS if name in tensors]
    if not found:
        raise UserError(f"{path}: missing tensor 'model.shared.weight'")
    if any(not torch.equal(found[0], other) for other in found[1:]):
        raise UserError(f"{path}: unsupported Marian variant (embeddings not shared)")
    return found[0]


def _layer_state(tensors: dict[str, torch.Tensor], side: str, i: int, kind: str,
                 path: Path) -> dict[str, torch.Tensor]:
    """Our ``weight`` or ``bias`` (``kind``) tensors of layer ``i`` of the encoder or decoder
    (``side``), taken out of ``tensors``."""
    def get(name: str) -> torch.Tensor:
        return _take(tensors, f"model.{side}.layers.{i}.{name}.{kind}", path)

    ours, state = f"{side}.{i}.", {}
    q, k, v, out = (get(f"self_attn.{p}") for p in ATTENTION)
    state[f"{ours}self_attn.qkv.{kind}"] = torch.cat([q, k, v])
    state[f"{ours}self_attn.out.{kind}"] = out
    if side == "decoder":
        q, k, v, out = (get(f"encoder_attn.{p}") for p in ATTENTION)
        state[f"{ours}cross_attn.q.{kind}"] = q
        state[f"{ours}cross_attn.kv.{kind}"] = torch.cat([k, v])
        state[f"{ours}cross_attn.out.{kind}"] = out
    state[f"{ours}ffn.fc1.{kind}"] = get("fc1")
    state[f"{ours}ffn.fc2.{kind}"] = get("fc2")
    for block, norm in NORMS.items():
        if side == "decoder" or block != "cross_attn_block":
            state[f"{ours}{block}.norm.{kind}"] = get(norm)
    return state


def marian_state(tensors: dict[str, torch.Tensor], cfg: ModelConfig,
                 path: Path) -> dict[str, torch.Tensor]:
    """Our state dict of a Marian model's tensors (see the module docstring); every tensor must
    be used, and a stored position table must be Marian's."""
    tensors = dict(tensors)
    state = {"embed.weight": _shared_embedding(tensors, path),
             "logits_bias": tensors.pop("final_logits_bias",
                                        torch.zeros(1, cfg.vocab_size)).reshape(-1)}
    table = marian_positions(cfg.max_positions, cfg.d_model)
    for name in POSITIONS:
        if name in tensors and not torch.allclose(tensors.pop(name), table, atol=1e-5):
            raise UserError(f"{path}: {name} is not Marian's sinusoidal position table")
    for side, count in (("encoder", cfg.enc_layers), ("decoder", cfg.dec_layers)):
        for i in range(count):
            for kind in ("weight", "bias"):
                state.update(_layer_state(tensors, side, i, kind, path))
    if tensors:
        raise UserError(f"{path}: unexpected tensor {sorted(tensors)[0]!r} (not a Marian model "
                        "of this shape)")
    return state


def _tokenizer(directory: Path, cfg: ModelConfig) -> TokenizerFiles:
    """The Marian tokenizer's files, checked against the model config."""
    for name in FILES[MARIAN]:
        if not (directory / name).is_file():
            raise UserError(f"{directory / name}: missing (a Marian model's tokenizer is "
                            f"{', '.join(FILES[MARIAN])})")
    if (directory / "target_vocab.json").is_file():
        raise UserError(f"{directory / 'target_vocab.json'}: unsupported Marian variant "
                        "(separate source and target vocabularies)")
    files = TokenizerFiles.read(directory, MARIAN)
    pieces = files.load(directory).pieces
    if len(pieces) != cfg.vocab_size:
        raise UserError(f"{directory / 'vocab.json'}: {len(pieces)} pieces but config.json says "
                        f"vocab_size {cfg.vocab_size}")
    for name, index in (("<pad>", cfg.pad_id), ("</s>", cfg.eos_id)):
        if pieces[index] != name:
            raise UserError(f"{directory / 'vocab.json'}: id {index} is {pieces[index]!r}, "
                            f"config.json makes it {name}")
    return files


def read_marian(directory: str | Path) -> ModelFiles:
    """A Marian directory as an aiokd model (teacher = the whole model), in memory.

    Raises:
        UserError: not a Marian model, an unsupported variant, a pickle-only or damaged weights
            file, or a missing or inconsistent tokenizer file (each naming the file).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory}: no such directory")
    config_path = directory / "config.json"
    cfg = _model_config(_read_json(config_path, "no config.json"), config_path)
    tokenizer = _tokenizer(directory, cfg)
    tensors, weights_path = _weights(directory)
    model = Transformer(cfg)
    model.load_state_dict(marian_state(tensors, cfg, weights_path))
    extra = _read_json(directory / "tokenizer_config.json", "no tokenizer_config.json")
    if extra.get("separate_vocabs"):
        raise UserError(f"{directory / 'tokenizer_config.json'}: unsupported Marian variant "
                        "(separate_vocabs)")
    languages = {ours: extra[theirs] for ours, theirs in (("src_lang", "source_lang"),
                                                          ("tgt_lang", "target_lang"))
                 if isinstance(extra.get(theirs), str)}
    space = CandidateSpace(cfg.enc_layers, cfg.dec_layers, min(2, cfg.enc_layers),
                           min(2, cfg.dec_layers), dec_le_enc=cfg.dec_layers <= cfg.enc_layers)
    config = model_config_json(Config(model=cfg), space, languages,
                               {"imported_from": str(directory.resolve())})
    return ModelFiles(model.eval(), config, tokenizer, directory)


def import_marian(directory: str | Path, out: str | Path) -> Path:
    """``aiokd import``: write the Marian model ``directory`` as the aiokd model directory
    ``out`` (new); returns ``out``."""
    files = read_marian(directory)
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise UserError(f"--out {out} exists; choose a new directory")
    with atomic_directory(out) as temporary:
        save_model_dir(temporary, files.model, files.config, files.tokenizer)
    print(f"wrote {out}: {files.model.num_parameters():,} parameters, "
          f"students {' '.join(student_name(s) for s in files.students)}", file=sys.stderr)
    return out


# ----------------------------------------------------------------------------------------------
# Export


def _check_exportable(files: ModelFiles) -> None:
    cfg = files.model.cfg
    if cfg.pre_norm:
        raise UserError(f"{files.source}: a pre-norm model does not map to Marian (post-norm "
                        "only); train with model.pre_norm=false model.positions=marian (the "
                        "small preset has both)")
    if cfg.positions != "marian":
        raise UserError(f"{files.source}: model.positions={cfg.positions} does not map to "
                        "Marian, which computes its own table; train with "
                        "model.positions=marian (the small preset uses it)")
    if cfg.layer_norm_eps != 1e-5:
        raise UserError(f"{files.source}: model.layer_norm_eps={cfg.layer_norm_eps} does not "
                        "map to Marian (1e-5)")


def hf_state(model: Transformer, student: Student) -> dict[str, torch.Tensor]:
    """The tensors ``MarianMTModel.save_pretrained`` writes for ``student`` of ``model``:
    :func:`marian_state` inverted."""
    state = model.state_dict()
    cfg = model.cfg
    bias = state.get("logits_bias", torch.zeros(cfg.vocab_size))
    out = {"model.shared.weight": state["embed.weight"],
           "final_logits_bias": bias.reshape(1, -1)}
    for side, count in (("encoder", student[0]), ("decoder", student[1])):
        for i in range(count):
            ours, theirs = f"{side}.{i}.", f"model.{side}.layers.{i}."
            for kind in ("weight", "bias"):
                q, k, v = state[f"{ours}self_attn.qkv.{kind}"].chunk(3)
                parts = {"q_proj": q, "k_proj": k, "v_proj": v,
                         "out_proj": state[f"{ours}self_attn.out.{kind}"]}
                out.update({f"{theirs}self_attn.{p}.{kind}": t for p, t in parts.items()})
                if side == "decoder":
                    k, v = state[f"{ours}cross_attn.kv.{kind}"].chunk(2)
                    parts = {"q_proj": state[f"{ours}cross_attn.q.{kind}"], "k_proj": k,
                             "v_proj": v, "out_proj": state[f"{ours}cross_attn.out.{kind}"]}
                    out.update({f"{theirs}encoder_attn.{p}.{kind}": t for p, t in parts.items()})
                out[f"{theirs}fc1.{kind}"] = state[f"{ours}ffn.fc1.{kind}"]
                out[f"{theirs}fc2.{kind}"] = state[f"{ours}ffn.fc2.{kind}"]
                for block, norm in NORMS.items():
                    if f"{ours}{block}.norm.{kind}" in state:
                        out[f"{theirs}{norm}.{kind}"] = state[f"{ours}{block}.norm.{kind}"]
    return {name: tensor.detach().cpu().float().contiguous() for name, tensor in out.items()}


def _hf_config(cfg: ModelConfig, student: Student) -> dict[str, Any]:
    return {
        "architectures": ["MarianMTModel"], "model_type": "marian",
        "vocab_size": cfg.vocab_size, "decoder_vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model, "encoder_layers": student[0], "decoder_layers": student[1],
        "encoder_attention_heads": cfg.heads, "decoder_attention_heads": cfg.heads,
        "encoder_ffn_dim": cfg.ffn_dim, "decoder_ffn_dim": cfg.ffn_dim,
        "activation_function": "swish" if cfg.activation == "silu" else cfg.activation,
        "dropout": cfg.dropout, "attention_dropout": cfg.attention_dropout,
        "activation_dropout": cfg.activation_dropout,
        "max_position_embeddings": cfg.max_positions, "scale_embedding": cfg.scale_embedding,
        "pad_token_id": cfg.pad_id, "eos_token_id": cfg.eos_id,
        "forced_eos_token_id": cfg.eos_id, "decoder_start_token_id": cfg.bos_id,
        "bad_words_ids": [[cfg.pad_id]], "share_encoder_decoder_embeddings": True,
        "tie_word_embeddings": True, "is_encoder_decoder": True, "dtype": "float32",
    }


def _marian_tokenizer(files: ModelFiles) -> TokenizerFiles:
    """The model's tokenizer as Marian's three files."""
    if files.tokenizer.kind == MARIAN:
        return files.tokenizer
    spm_bytes = files.tokenizer.spm_bytes(files.source)
    pieces = files.tokenizer.load(files.source).pieces
    vocab = json.dumps({piece: i for i, piece in enumerate(pieces)}, ensure_ascii=False, indent=2)
    return TokenizerFiles(MARIAN, {"source.spm": spm_bytes, "target.spm": spm_bytes,
                                   "vocab.json": vocab.encode("utf-8")})


def write_marian(directory: Path, files: ModelFiles, student: Student) -> None:
    """Write ``student`` of ``files`` as a Marian directory into the empty ``directory``.

    Raises:
        UserError: the architecture does not map to Marian (pre-norm, tensor2tensor positions,
            another layer norm epsilon).
    """
    _check_exportable(files)
    cfg = files.model.cfg
    tokenizer = _marian_tokenizer(files)
    tokenizer.write(directory)
    save_file(hf_state(files.model, student), str(directory / "model.safetensors"),
              metadata={"format": "pt"})
    atomic_write_json(directory / "config.json", _hf_config(cfg, student))
    pieces = tokenizer.load(directory).pieces
    atomic_write_json(directory / "tokenizer_config.json", {
        "tokenizer_class": "MarianTokenizer",
        "source_lang": files.config.get("src_lang"), "target_lang": files.config.get("tgt_lang"),
        "unk_token": "<unk>", "eos_token": pieces[cfg.eos_id], "pad_token": pieces[cfg.pad_id],
        "model_max_length": cfg.max_positions, "separate_vocabs": False,
    })


def export_marian(model: str | Path, out: str | Path, student: str | None = None) -> Path:
    """``aiokd export --format hf``: write ``student`` (default: the teacher) of ``model`` as the
    new Marian directory ``out``; returns ``out``."""
    files = load_model_files(model)
    chosen = choose_student(student, files.students, files.source)
    _check_exportable(files)
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise UserError(f"--out {out} exists; choose a new directory")
    with atomic_directory(out) as temporary:
        write_marian(temporary, files, chosen)
    print(f"wrote {out}: student {student_name(chosen)} of {files.source} as a Marian model "
          "(MarianMTModel / MarianTokenizer)", file=sys.stderr)
    return out

