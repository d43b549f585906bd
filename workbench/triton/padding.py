"""How a served text model pads and batches texts: the policy the Triton export serves and the accuracy stage
evaluates, so that the figures the workbench measures are the ones the server produces.

Real sentences are short (the bundled evaluation sentences average 30 MiniLM tokens, median 20): padding every
text to the evaluated sequence length (128) makes about 77% of what the served model computes padding. The
policy decides how many tokens a group of texts is padded to, and which texts share an engine call:

- mode "fixed": every text padded to `max_length` (what the workbench served before; any texts batch together);
- mode "buckets": every text padded to the smallest of `buckets` that holds it; only texts of one bucket share
  an engine call. A text's padding then depends on the text alone, never on its batch-mates;
- mode "longest": the texts of one engine call padded to the longest of them (padding depends on batch-mates).

and `batching` decides where Triton forms batches:

- "ensemble": the tokenizer, engine and post-processing models are steps of a Triton ensemble; the engine's
  dynamic batcher merges requests of the same shape (with "buckets": the same bucket; Triton cuts a batch where
  the shape of the next queued request differs);
- "bls": one Python model behind the dynamic batcher takes every queued text, tokenizes them together, groups
  them by padded length, and calls the engine (and the post-processing model) once per group through Triton's
  business-logic scripting (BLS).

`PaddingPolicy.encode` tokenizes texts exactly as the served repository does, in the groups a dynamic batch of
`batch_size` texts is split into, so that the accuracy of dynamically quantized models (whose activation scales
cover padding and batch-mates) is measured under the padding that is served.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from workbench.config import StageConfig, check_choice
from workbench.errors import ConfigError, DataError

PADDING_MODES = ("fixed", "buckets", "longest")
BATCHING_MODES = ("ensemble", "bls")
#: The smallest bucket the automatic bucket list starts from (then doubling up to max_length).
_FIRST_BUCKET = 16


def default_buckets(max_length: int) -> tuple[int, ...]:
    """16, 32, 64, ... below `max_length`, then `max_length` itself (e.g. 128 -> (16, 32, 64, 128))."""
    buckets, size = [], _FIRST_BUCKET
    while size < max_length:
        buckets.append(size)
        size *= 2
    return (*buckets, max_length)


@dataclass(frozen=True)
class PaddingPolicy(StageConfig):
    """How texts are padded and batched when served (and therefore when evaluated).

    Attributes:
        mode: "buckets" (default), "fixed" or "longest" (see the module docstring).
        max_length: Texts are truncated to this many tokens (the evaluated sequence length).
        buckets: With mode "buckets": the padded lengths, increasing, the last one `max_length`. Empty: 16, 32,
            64, ... up to `max_length` (`default_buckets`).
        batching: "ensemble" (default) or "bls" (see the module docstring). "ensemble" with mode "longest" is
            refused: each request would be padded to its own length, so the engine's batcher would almost never
            find two requests of one shape to merge.

    The defaults are the design measured fastest under load on this project's machine (`bench/serving.py
    --designs`, MiniLM, concurrency 8, two runs on a contended 2-core machine): bucketed padding in a Triton
    ensemble, 1.95x and 2.20x the texts/s of fixed padding, against 1.87x and 1.89x for buckets + BLS and 1.3-1.5x
    for BLS padded to the longest text. Re-measure on the deployment machine before changing them.
    """

    mode: str = "buckets"
    max_length: int = 128
    buckets: tuple[int, ...] = ()
    batching: str = "ensemble"

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {},
        # What the workbench served before: every text padded to max_length, the engine's batcher merges any.
        "fixed": {"mode": "fixed", "batching": "ensemble"},
        # Buckets in an ensemble: the tokenizer pads to a bucket, the engine's batcher merges one bucket's texts.
        "ensemble_buckets": {"mode": "buckets", "batching": "ensemble"},
        "bls_buckets": {"mode": "buckets", "batching": "bls"},
        # One engine call per dynamic batch, padded to its longest text.
        "bls_longest": {"mode": "longest", "batching": "bls"},
    }

    def __post_init__(self) -> None:
        check_choice(self, "mode", PADDING_MODES)
        check_choice(self, "batching", BATCHING_MODES)
        if not isinstance(self.max_length, int) or isinstance(self.max_length, bool) or self.max_length < 2:
            raise ConfigError(
                f"PaddingPolicy.max_length must be an integer >= 2, got {self.max_length!r}.",
                fix="pass the sequence length the model was evaluated at, for example 128",
            )
        buckets = self.buckets
        if isinstance(buckets, list):
            buckets = tuple(buckets)
            object.__setattr__(self, "buckets", buckets)
        if not isinstance(buckets, tuple) or any(not isinstance(b, int) or isinstance(b, bool) for b in buckets):
            raise ConfigError(f"PaddingPolicy.buckets must be a tuple of integers, got {buckets!r}.")
        if buckets:
            if self.mode != "buckets":
                raise ConfigError(
                    f"PaddingPolicy.buckets is set but mode is {self.mode!r}, which does not use buckets.",
                    fix="set mode='buckets', or leave buckets empty",
                )
            if list(buckets) != sorted(set(buckets)) or buckets[0] < 1 or buckets[-1] != self.max_length:
                raise ConfigError(
                    f"PaddingPolicy.buckets {list(buckets)} must increase strictly, start at 1 or more and end at "
                    f"max_length ({self.max_length}).",
                    expected=f"for example {list(default_buckets(self.max_length))}",
                    fix="list the padded lengths in increasing order, ending with max_length",
                )
        if self.batching == "ensemble" and self.mode == "longest":
            raise ConfigError(
                "PaddingPolicy mode 'longest' with batching 'ensemble' pads each request to its own length, so "
                "the engine's dynamic batcher (which merges only requests of one shape) would hardly ever batch.",
                fix="use mode='buckets' with batching='ensemble', or batching='bls' with mode='longest'",
            )

    @classmethod
    def fixed(cls, max_length: int) -> PaddingPolicy:
        """Every text padded to `max_length`, batched by the engine's dynamic batcher in an ensemble."""
        return cls(mode="fixed", max_length=max_length, batching="ensemble")

    @property
    def bucket_lengths(self) -> tuple[int, ...]:
        """The padded lengths a text can get: the buckets, (max_length,) for "fixed", () for "longest"."""
        if self.mode == "fixed":
            return (self.max_length,)
        if self.mode == "longest":
            return ()
        return self.buckets or default_buckets(self.max_length)

    def padded_length(self, tokens: int) -> int:
        """The length a group whose longest text has `tokens` tokens (after truncation) is padded to."""
        from workbench.triton.python_models.tokenizer_model import padded_length

        return padded_length(tokens, self.mode, self.max_length, self.bucket_lengths)

    def describe(self) -> str:
        """One line for tables and READMEs."""
        padding = {
            "fixed": f"every text padded to {self.max_length} tokens",
            "buckets": f"each text padded to the smallest of {list(self.bucket_lengths)} tokens",
            "longest": f"each engine call padded to its longest text (at most {self.max_length} tokens)",
        }
        batching = {
            "ensemble": "the engine's dynamic batcher merges same-shape requests (ensemble)",
            "bls": "one Python model batches every queued text and calls the engine per padded length (BLS)",
        }
        return f"{padding[self.mode]}; {batching[self.batching]}"

    def to_parameters(self) -> dict[str, str]:
        """The config.pbtxt string parameters that tell the served tokenizer (or BLS model) this policy."""
        return {
            "padding": self.mode,
            "max_length": str(self.max_length),
            "buckets": ",".join(str(b) for b in self.bucket_lengths),
            "batching": self.batching,
            "padding_policy": self.to_json(),
        }

    # ------------------------------------------------------------------------------------------ evaluation

    def token_lengths(self, tokenizer: Any, texts: Sequence[str]) -> list[int]:
        """Tokens of each text (special tokens included) after truncation to max_length."""
        if not texts:
            raise DataError("No texts to tokenize.", fix="pass at least one text")
        encoded = tokenizer(list(texts), padding=False, truncation=True, max_length=self.max_length)
        return [len(ids) for ids in encoded["input_ids"]]

    def batches(self, lengths: Sequence[int], batch_size: int) -> list[tuple[tuple[int, ...], int]]:
        """The engine calls a stream of texts becomes: (indices of the texts, padded length) per call.

        Texts arrive `batch_size` at a time (one dynamic batch); with mode "buckets" each dynamic batch is split
        into one call per bucket (in the order the buckets first appear), which is what both the BLS model and
        the engine's dynamic batcher in an ensemble do; "fixed" and "longest" make one call per dynamic batch.

        Args:
            lengths: Tokens of each text (`token_lengths`).
            batch_size: Texts per dynamic batch (>= 1).
        """
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise DataError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
        calls: list[tuple[tuple[int, ...], int]] = []
        for start in range(0, len(lengths), batch_size):
            chunk = range(start, min(start + batch_size, len(lengths)))
            if self.mode == "buckets":
                groups: dict[int, list[int]] = {}
                for index in chunk:
                    groups.setdefault(self.padded_length(lengths[index]), []).append(index)
                calls += [(tuple(indices), length) for length, indices in groups.items()]
            else:
                calls.append((tuple(chunk), self.padded_length(max(lengths[i] for i in chunk))))
        return calls

    def encode(
        self, tokenizer: Any, texts: Sequence[str], batch_size: int, *, input_names: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """Tokenize `texts` exactly as the served repository does: one int64 feed dict per engine call.

        The feed dicts follow `batches(token_lengths(tokenizer, texts), batch_size)`: with mode "buckets" the
        texts of a dynamic batch are regrouped by bucket, so feed dicts are not in text order (use `batches` for
        the indices). Each feed dict is padded to its call's length.

        Args:
            tokenizer: The model's Hugging Face tokenizer.
            texts: The texts, in arrival order.
            batch_size: Texts per dynamic batch (e.g. the evaluation batch size, at most max_batch_size).
            input_names: Keep only these inputs, in this order (e.g. the ONNX model's inputs).
        """
        import numpy as np

        calls = self.batches(self.token_lengths(tokenizer, texts), batch_size)
        feeds = []
        for indices, length in calls:
            encoded = tokenizer(
                [texts[i] for i in indices],
                padding="max_length",
                truncation=True,
                max_length=length,
                return_tensors="np",
            )
            names = list(input_names) if input_names is not None else list(encoded.keys())
            missing = [n for n in names if n not in encoded]
            if missing:
                raise DataError(
                    f"The tokenizer does not produce the model inputs {missing} (it gives {list(encoded.keys())}).",
                    fix="use the tokenizer that belongs to this model",
                )
            feeds.append({name: np.ascontiguousarray(encoded[name], dtype=np.int64) for name in names})
        return feeds

    def padded_tokens(self, lengths: Sequence[int], batch_size: int) -> tuple[int, int]:
        """(tokens the engine computes, tokens of the texts) for texts served `batch_size` at a time."""
        calls = self.batches(lengths, batch_size)
        return (sum(len(indices) * length for indices, length in calls), sum(min(n, self.max_length) for n in lengths))
