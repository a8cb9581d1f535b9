"""aiokd: All-In-One Knowledge Distillation for neural machine translation.

One training run gives a Transformer teacher and every depth student ``l_e-l_d`` of it (the first
``l_e`` encoder and ``l_d`` decoder layers), trained jointly with knowledge distillation, dynamic
gradient detaching and mutual learning (Miao et al., EMNLP 2023).
"""

__version__ = "0.1.0"


def load(path, device=None, engine=None, dtype=None, threads=None):
    """Load a model to translate with; see :func:`aiokd.inference.api.load`.

    ``aiokd.load(PATH).translate(lines, student="6-2")``.
    """
    from aiokd.inference.api import load as load_model

    return load_model(path, device=device, engine=engine, dtype=dtype, threads=threads)
