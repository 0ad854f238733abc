"""An exported translator in ONNX Runtime: pieces in, pieces out, with scores and attention.

``OnnxTranslator(path)`` opens the folder (or archive) that ``fairseq_bahdanau.model.export`` wrote, one ONNX Runtime
session per graph. ``translate(sentences, beam, nbest)`` maps each sentence's pieces to source token ids (unknown
pieces to ``<unk>``, the end of sentence appended), encodes the batch right-padded (the graphs are exact for every
sentence of a padded batch), runs fairseq's beam search (``search.generate``) over the decoder step, and maps the
hypotheses back to target pieces without the symbols fairseq-interactive strips. The sessions are shared: any
number of threads may translate at once (``InferenceSession.run`` is thread-safe, and a translation keeps its
state in its own call).
"""

from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from .files import SPM_FILE, TranslatorFiles
from .search import SearchOptions, Vocabulary, generate


class Hypothesis(NamedTuple):
    """One hypothesis: target pieces, fairseq's score (the length-normalised log-probability) and the attention,
    T x (S + 1) (target pieces x source pieces and the source's end of sentence; None without attention)."""

    pieces: List[str]
    score: float
    attention: Optional[np.ndarray]


class _Model(NamedTuple):
    encoder: Any  # onnxruntime.InferenceSession of the whole encoder, or None where it comes in steps:
    encoder_layers: List[Tuple[Any, Any]]  # each layer's input and step graphs
    encoder_output: Any
    step: Any
    family: str  # additive, luong or none
    source_outputs: List[str]
    step_inputs: List[str]
    step_outputs: List[str]


class _State(NamedTuple):
    """The search's model state: per model, its hidden states (N x L x H), Luong's feed (N x H) or None, and its
    source side (one row per sentence with attention, per hypothesis without)."""

    beam: int
    hidden: List[np.ndarray]
    feed: List[Optional[np.ndarray]]
    source: List[Dict[str, np.ndarray]]


def _encode_steps(model: _Model, src_tokens: np.ndarray, src_lengths: np.ndarray) -> List[np.ndarray]:
    """The encoder graphs' outputs (``decoder_init`` and the source side) for a right-padded batch: each layer's
    two directions stepped together over the positions, the backward direction reading every sentence reversed
    within its own length; a sentence's state stays as it is past its length, and its annotations there are 0."""
    steps, bsz = src_tokens.shape[1], src_tokens.shape[0]
    time = np.arange(steps)[:, None]
    valid = time < src_lengths[None, :]  # S x B
    reverse = np.where(valid, src_lengths[None, :] - 1 - time, time)  # S x B, its own inverse
    columns = np.arange(bsz)[None, :]
    x: np.ndarray = src_tokens
    hidden = None
    for input_graph, step_graph in model.encoder_layers:
        gates = input_graph.run(None, {"x": x})[0]  # S x B x 2 x 3H
        gates = np.stack([gates[:, :, 0], gates[reverse, columns, 1]], axis=1)  # S x 2 x B x 3H, backward reversed
        size = gates.shape[-1] // 3
        hidden = np.zeros((2, bsz, size), dtype=np.float32)
        outputs = np.zeros((steps, 2, bsz, size), dtype=np.float32)
        for t in range(steps):
            new = step_graph.run(None, {"hidden": hidden, "gates": gates[t]})[0]
            keep = valid[t][None, :, None]
            hidden = np.where(keep, new, hidden)
            outputs[t] = np.where(keep, hidden, np.float32(0))
        x = np.concatenate([outputs[:, 0], outputs[reverse, 1, columns]], axis=2)  # S x B x 2H
    assert hidden is not None
    top = np.concatenate([hidden[0], hidden[1]], axis=1)  # [h->_Tx; h<-_1]
    return model.encoder_output.run(None, {"annotations": x, "top": top, "src_lengths": src_lengths})


class _Ensemble:
    """The graphs of every model as ``search.StepModel``: log-probabilities averaged in probability space and
    attention averaged, as fairseq's ``EnsembleModel`` does."""

    def __init__(self, models: Sequence[_Model], temperature: float) -> None:
        self.models = list(models)
        self.temperature = np.array([temperature], dtype=np.float32)

    def start(self, src_tokens: np.ndarray, src_lengths: np.ndarray, beam: int) -> _State:
        hidden, feed, source = [], [], []
        for model in self.models:
            if model.encoder is not None:
                init, *side = model.encoder.run(None, {"src_tokens": src_tokens, "src_lengths": src_lengths})
            else:
                init, *side = _encode_steps(model, src_tokens, src_lengths)
            hidden.append(np.repeat(init, beam, axis=0))
            feed.append(np.zeros((hidden[-1].shape[0], init.shape[2]), dtype=np.float32)
                        if model.family == "luong" else None)
            arrays = dict(zip(model.source_outputs, side))
            if model.family == "none":  # one row per hypothesis
                arrays = {name: np.repeat(value, beam, axis=0) for name, value in arrays.items()}
            source.append(arrays)
        return _State(beam, hidden, feed, source)

    def step(self, state: _State, prev_tokens: np.ndarray):
        lprobs: List[np.ndarray] = []
        attn_sum: Optional[np.ndarray] = None
        hidden, feed = [], []
        for i, model in enumerate(self.models):
            feeds = {"prev_tokens": prev_tokens, "hidden": state.hidden[i], "temperature": self.temperature,
                     **state.source[i]}
            if model.family == "luong":
                feeds["feed"] = state.feed[i]
            out = dict(zip(model.step_outputs, model.step.run(None, feeds)))
            lprobs.append(out["lprobs"])
            hidden.append(out["hidden_out"])
            feed.append(out.get("feed_out"))
            if "attn" in out:
                attn_sum = out["attn"] if attn_sum is None else attn_sum + out["attn"]
        new_state = _State(state.beam, hidden, feed, state.source)
        if len(self.models) == 1:
            top = (out["top_values"], out["top_indices"]) if "top_values" in out else None
            return lprobs[0], attn_sum, new_state, top
        stacked = np.stack(lprobs)  # torch.logsumexp(stack) - log(models)
        top = stacked.max(axis=0)
        top = np.where(np.isfinite(top), top, np.float32(0))
        average = np.log(np.exp(stacked - top).sum(axis=0)) + top - np.float32(np.log(len(self.models)))
        if attn_sum is not None:
            attn_sum = attn_sum / np.float32(len(self.models))
        return average.astype(np.float32), attn_sum, new_state, None

    def reorder(self, state: _State, order: np.ndarray) -> _State:
        sentences = order[:: state.beam] // state.beam
        keep = sentences.size == state.hidden[0].shape[0] // state.beam and bool(
            (sentences == np.arange(sentences.size)).all())
        source = []
        for model, arrays in zip(self.models, state.source):
            if model.family == "none":
                arrays = {name: value[order] for name, value in arrays.items()}
            elif not keep:
                arrays = {name: value[sentences] for name, value in arrays.items()}
            source.append(arrays)
        return _State(state.beam, [h[order] for h in state.hidden],
                      [None if f is None else f[order] for f in state.feed], source)


class OnnxTranslator:
    """The translator in ``path`` (see the module docstring). ``threads``: ONNX Runtime's intra-op threads per
    session (default: its own choice, the machine's cores)."""

    def __init__(self, path: str, threads: Optional[int] = None) -> None:
        import onnxruntime

        self.files = TranslatorFiles(path)
        self.path = path
        self.meta: Dict[str, Any] = self.files.meta()
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3

        def session(name: str):
            return onnxruntime.InferenceSession(self.files.read(name), options, providers=["CPUExecutionProvider"])

        def model(m: Dict[str, Any]) -> _Model:
            files = m["files"]
            if "encoder" in files:
                return _Model(session(files["encoder"]), [], None, session(files["step"]), m["family"],
                              list(m["source_outputs"]), list(m["step_inputs"]), list(m["step_outputs"]))
            layers = [(session(layer["input"]), session(layer["step"])) for layer in files["encoder_layers"]]
            return _Model(None, layers, session(files["encoder_output"]), session(files["step"]), m["family"],
                          list(m["source_outputs"]), list(m["step_inputs"]), list(m["step_outputs"]))

        self.models = [model(m) for m in self.meta["models"]]
        self.source_index: Dict[str, int] = {s: i for i, s in enumerate(self.meta["source_symbols"])}
        self.target_symbols: List[str] = list(self.meta["target_symbols"])
        source, target = self.meta["source_special"], self.meta["target_special"]
        self.pad, self.eos, self.unk = int(source["pad"]), int(source["eos"]), int(source["unk"])
        self.vocabulary = Vocabulary(int(target["pad"]), int(target["eos"]), int(target["unk"]),
                                     len(self.target_symbols))
        self.strip = set(int(s) for s in self.meta["strip"])
        self.max_source_positions = int(self.meta["max_source_positions"])
        self.max_decoder_positions = int(self.meta["max_decoder_positions"])
        generation = dict(self.meta.get("generation") or {})
        self.options = SearchOptions(**{k: v for k, v in generation.items() if k in SearchOptions._fields})
        self.ensemble = _Ensemble(self.models, self.options.temperature)
        self.sentencepiece: Optional[bytes] = self.files.read(SPM_FILE) if self.meta.get("sentencepiece") else None

    @property
    def default_beam(self) -> int:
        return self.options.beam

    @property
    def has_attention(self) -> bool:
        return bool(self.meta.get("attention"))

    def encode(self, sentences: List[List[str]]) -> Tuple[np.ndarray, np.ndarray]:
        """Right-padded B x S token ids (each sentence ending in end of sentence) and B lengths."""
        lengths = np.array([len(pieces) + 1 for pieces in sentences], dtype=np.int64)
        width = int(lengths.max())
        if width > self.max_source_positions:
            raise ValueError(f"a sentence of {width} tokens (with end of sentence) is longer than the model's "
                             f"{self.max_source_positions} source positions: split it")
        tokens = np.full((len(sentences), width), self.pad, dtype=np.int64)
        for row, pieces in enumerate(sentences):
            ids = [self.source_index.get(piece, self.unk) for piece in pieces] + [self.eos]
            tokens[row, : len(ids)] = ids
        return tokens, lengths

    def translate(self, sentences: List[List[str]], beam: Optional[int] = None, nbest: int = 1,
                  stop: Optional[Callable[[], bool]] = None) -> List[List[Hypothesis]]:
        """The ``nbest`` (at most ``beam``) best hypotheses of each sentence, best first, searched with a beam of
        ``beam`` (default: the exported one). ``stop``: see ``search.generate``."""
        if not sentences:
            return []
        options = self.options if beam is None else self.options._replace(beam=beam)
        tokens, lengths = self.encode(sentences)
        found = generate(self.ensemble, tokens, lengths, self.vocabulary, options, self.max_decoder_positions, stop)
        out: List[List[Hypothesis]] = []
        for row, hypotheses in enumerate(found):
            length = int(lengths[row])
            kept_list: List[List[Hypothesis]] = []
            for hypothesis in hypotheses[: max(1, nbest)]:
                ids = hypothesis.tokens.tolist()
                kept = [t for t, i in enumerate(ids) if i not in self.strip]
                attention = None
                if hypothesis.attention is not None:  # S x T (padded source x target) -> kept T x real S
                    attention = hypothesis.attention[:length, :].T[kept]
                kept_list.append(Hypothesis([self.target_symbols[ids[t]] for t in kept], hypothesis.score,
                                            attention))
            out.append(kept_list)
        return out
