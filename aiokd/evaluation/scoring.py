"""Corpus-level translation scores: sacreBLEU BLEU and chrF, and the paper's tokenized BLEU.

sacreBLEU scores detokenized output against the raw references with its own tokenizer (``13a``,
or the one sacreBLEU picks for the target language); its signature says exactly how.  The
*tokenized* BLEU is the figure NMT papers such as AIO-KD report on IWSLT'14: hypotheses and
references are Moses-tokenized (sacremoses, no escaping), lowercased when the references are, and
BLEU is computed on those tokens as they are (``tokenize='none'``), as ``multi-bleu.perl`` does.
It is not comparable with sacreBLEU's figure.
"""

from __future__ import annotations

from dataclasses import dataclass

from sacrebleu.metrics import BLEU, CHRF
from sacremoses import MosesTokenizer


@dataclass(frozen=True)
class Score:
    """A corpus score and the signature that says how it was computed; for BLEU also the
    length ratio ``hyp_len / ref_len`` (in the score's tokens) behind its brevity penalty
    ``BP = min(1, exp(1 - 1 / ratio))``."""

    score: float
    signature: str
    length_ratio: float | None = None


def sacrebleu_scores(hypotheses: list[str], references: list[str],
                     tgt_lang: str | None) -> tuple[Score, Score]:
    """sacreBLEU's BLEU and chrF of ``hypotheses`` against one reference each."""
    bleu = BLEU(trg_lang=tgt_lang or "")
    bleu_score = bleu.corpus_score(hypotheses, [references])
    chrf = CHRF()
    chrf_score = chrf.corpus_score(hypotheses, [references])
    return (Score(bleu_score.score, str(bleu.get_signature()),
                  bleu_score.sys_len / bleu_score.ref_len),
            Score(chrf_score.score, str(chrf.get_signature())))


class TokenizedBleu:
    """The paper's tokenized BLEU against fixed ``references`` (see the module docstring)."""

    def __init__(self, references: list[str], tgt_lang: str | None):
        self.lang = tgt_lang or "en"
        self.lowercase = all(line == line.lower() for line in references)
        self._moses = MosesTokenizer(lang=self.lang)
        self._references = [self._tokenize(line) for line in references]

    @property
    def description(self) -> str:
        case = "lowercased, " if self.lowercase else ""
        return (f"tokenized BLEU: hypotheses and references Moses-tokenized (sacremoses, "
                f"lang={self.lang}, no escaping), {case}then BLEU with tokenize='none' "
                "(multi-bleu.perl convention of NMT papers; not comparable with sacreBLEU)")

    def _tokenize(self, line: str) -> str:
        tokens = self._moses.tokenize(line, escape=False, return_str=True)
        return tokens.lower() if self.lowercase else tokens

    def score(self, hypotheses: list[str]) -> Score:
        bleu = BLEU(tokenize="none", force=True)
        result = bleu.corpus_score([self._tokenize(line) for line in hypotheses],
                                   [self._references])
        return Score(result.score, str(bleu.get_signature()))
