"""Data-parallel training and determinism on CPU, at the module level (fairseq's own launcher and trainer under
torchrun are tested end to end in test_launch.py).

Two CPU processes with a gloo process group wrap the same model in fairseq's ``legacy_ddp`` wrapper
(``DistributedFairseqModel``,
i.e. ``LegacyDistributedDataParallel``) or in ``torch.nn.parallel.DistributedDataParallel`` with
``find_unused_parameters=False``, each trains on half of every batch, and the parameters after a few SGD steps must
equal those of one process that trains on the whole batches.

Determinism: the same seed gives bit-identical parameters after several updates, in process (dropout and scheduled
teacher forcing on) and through ``fairseq-train --cpu``.
"""

import argparse
import datetime
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from fairseq_bahdanau.analysis.synthetic import write_corpus
from helpers import USER_DIR, build_model, pad_batch, preprocess, random_sentences, run

WORLD_SIZE = 2
STEPS = 3
LR = 0.5
BATCH = 8  # examples per step, split into WORLD_SIZE halves
CASES = {
    "additive": {"attention_type": "additive"},
    "dot": {"attention_type": "dot"},
    "general": {"attention_type": "general"},
    "none": {"attention_type": "none"},
    "additive,teacher_forcing_ratio=0.5": {"attention_type": "additive", "teacher_forcing_ratio": 0.5},
    "general,teacher_forcing_ratio=0.5": {"attention_type": "general", "teacher_forcing_ratio": 0.5},
}
WRAPPERS = ["legacy_ddp", "pytorch_ddp"]


# ---------------------------------------------------------------------------------------------- data


def step_examples(model, step):
    """BATCH (source, target) token lists for one step, different at every step; targets end in EOS."""
    src_dict, tgt_dict = model.encoder.dictionary, model.decoder.dictionary
    g = torch.Generator().manual_seed(100 + step)
    src_lengths = torch.randint(2, 9, (BATCH,), generator=g).tolist()
    tgt_lengths = torch.randint(2, 8, (BATCH,), generator=g).tolist()
    sources = random_sentences(src_dict, src_lengths, seed=200 + step)
    targets = random_sentences(tgt_dict, tgt_lengths, seed=300 + step)
    return list(zip(sources, targets))


def collate(model, examples, tgt_len=None):
    """fairseq's layout: left-padded source, right-padded target, prev_output_tokens = [EOS] + target[:-1].

    ``tgt_len`` pads the target to a fixed length: scheduled teacher forcing draws ``torch.rand(T)``, one coin per
    target position, so the halves and the whole batch get the same T to draw the same coins. (On CPU at these sizes
    ``torch.rand(T)`` is a prefix of ``torch.rand(T')`` for T < T' and padded positions never feed a real one, so
    per-half lengths happen to work too; the fixed length does not rely on that detail of the generator.)"""
    src_dict, tgt_dict = model.encoder.dictionary, model.decoder.dictionary
    sources, targets = zip(*examples)
    width = tgt_len or max(len(t) for t in targets)
    src = pad_batch(sources, src_dict.pad(), left=True)
    target = torch.full((len(targets), width), tgt_dict.pad(), dtype=torch.long)
    prev = torch.full((len(targets), width), tgt_dict.pad(), dtype=torch.long)
    for b, t in enumerate(targets):
        target[b, : len(t)] = torch.tensor(t)
        prev[b, 0] = tgt_dict.eos()
        prev[b, 1 : len(t)] = torch.tensor(t[:-1])
    lengths = torch.tensor([len(s) for s in sources])
    return src, lengths, prev, target


def summed_loss(model, pad, src, lengths, prev, target):
    """Token-level cross entropy summed over the non-padding target tokens (``model`` may be a DDP wrapper)."""
    logits, _ = model(src, lengths, prev)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=pad,
                           reduction="sum")


def step_batches(model, step, part, overrides):
    """The batch of process ``part`` (0..WORLD_SIZE-1), or the whole batch (part None), and the total number of
    target tokens of the whole batch (the loss normaliser)."""
    examples = step_examples(model, step)
    tgt_len = max(len(t) for _, t in examples) if overrides.get("teacher_forcing_ratio", 1.0) < 1.0 else None
    n_total = sum(len(t) for _, t in examples)
    if part is not None:
        size = len(examples) // WORLD_SIZE
        examples = examples[part * size : (part + 1) * size]
    return collate(model, examples, tgt_len), n_total


def new_model(overrides):
    return build_model("bahdanau_gru_tiny", seed=0, dropout=0.0, **overrides).train()


# ---------------------------------------------------------------------------------------------- workers


def _train_worker(rank, init_method, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=60))
    try:
        from fairseq.distributed import LegacyDistributedDataParallel, utils as distributed_utils
        from fairseq.models.distributed_fairseq_model import DistributedFairseqModel
        from torch.nn.parallel import DistributedDataParallel

        for name, overrides in CASES.items():
            for wrapper in WRAPPERS:
                model = new_model(overrides)
                if wrapper == "legacy_ddp":
                    # fairseq's own factory for --ddp-backend legacy_ddp (its CUDA-only launcher is bypassed)
                    args = argparse.Namespace(tpu=False, ddp_backend="legacy_ddp")
                    wrapped = DistributedFairseqModel(args, model, distributed_utils.get_data_parallel_group(),
                                                      torch.device("cpu"))
                    assert isinstance(wrapped.module, LegacyDistributedDataParallel)
                else:
                    wrapped = DistributedDataParallel(model, device_ids=None, find_unused_parameters=False)
                optimizer = torch.optim.SGD(model.parameters(), lr=LR)
                pad = model.decoder.dictionary.pad()
                without_grad = set()
                for step in range(STEPS):
                    (src, lengths, prev, target), n_total = step_batches(model, step, rank, overrides)
                    torch.manual_seed(1000 + step)  # the same teacher-forcing coins in every process
                    optimizer.zero_grad(set_to_none=True)
                    # DDP averages gradients over the world: scale so that the average is loss_sum / n_total
                    loss = summed_loss(wrapped, pad, src, lengths, prev, target) / n_total * WORLD_SIZE
                    loss.backward()
                    # before legacy_ddp's all-reduce, which fills missing gradients with zeros
                    without_grad.update(n for n, p in model.named_parameters() if p.grad is None)
                    if hasattr(wrapped, "all_reduce_grads"):
                        wrapped.all_reduce_grads()
                    optimizer.step()
                torch.save(
                    {"params": {n: p.detach().clone() for n, p in model.named_parameters()},
                     "without_grad": sorted(without_grad)},
                    os.path.join(out_dir, f"{name}.{wrapper}.{rank}.pt"),
                )
                dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    """Train every case with both wrappers in one pair of spawned processes (start-up dominates the cost)."""
    root = tmp_path_factory.mktemp("ddp")
    init_method = "file://" + str(root / "rendezvous")
    mp.spawn(_train_worker, args=(init_method, str(root)), nprocs=WORLD_SIZE, join=True)
    return root


def train_single_process(overrides):
    model = new_model(overrides)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    pad = model.decoder.dictionary.pad()
    for step in range(STEPS):
        (src, lengths, prev, target), n_total = step_batches(model, step, None, overrides)
        torch.manual_seed(1000 + step)
        optimizer.zero_grad(set_to_none=True)
        loss = summed_loss(model, pad, src, lengths, prev, target) / n_total
        loss.backward()
        optimizer.step()
    return initial, {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("wrapper", WRAPPERS)
@pytest.mark.parametrize("case", list(CASES))
def test_data_parallel_training_equals_single_process_training(distributed_results, case, wrapper):
    initial, expected = train_single_process(CASES[case])
    moved = max((expected[n] - initial[n]).abs().max().item() for n in expected)
    assert moved > 1e-2, "the updates are too small for the comparison to mean anything"
    for rank in range(WORLD_SIZE):
        result = torch.load(distributed_results / f"{case}.{wrapper}.{rank}.pt")
        assert not result["without_grad"], f"parameters without gradient on rank {rank}: {result['without_grad']}"
        assert result["params"].keys() == expected.keys()
        for name, value in expected.items():
            torch.testing.assert_close(result["params"][name], value, atol=1e-6, rtol=1e-5,
                                       msg=lambda m: f"{name} (rank {rank}): {m}")


# ---------------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("attention_type", ["additive", "dot", "general"])
def test_same_seed_gives_bit_identical_parameters(attention_type):
    """Dropout and scheduled teacher forcing on: all randomness comes from the seeded global generator."""
    overrides = {"attention_type": attention_type, "dropout": 0.3, "teacher_forcing_ratio": 0.5}
    runs = []
    for training_seed in (11, 11, 12):
        model = build_model("bahdanau_gru_tiny", seed=5, **overrides).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        pad = model.decoder.dictionary.pad()
        torch.manual_seed(training_seed)
        for step in range(3):
            (src, lengths, prev, target), n_total = step_batches(model, step, None, overrides)
            optimizer.zero_grad()
            (summed_loss(model, pad, src, lengths, prev, target) / n_total).backward()
            optimizer.step()
        runs.append(dict(model.named_parameters()))
    first, second, other_seed = runs
    for name in first:
        assert torch.equal(first[name], second[name]), name
    # the training really draws random numbers (dropout masks, teacher-forcing coins), and the updates moved the weights
    assert not all(torch.equal(first[name], other_seed[name]) for name in first)
    assert not torch.equal(first["decoder.output_projection.weight"],
                           build_model("bahdanau_gru_tiny", seed=5, **overrides).decoder.output_projection.weight)


def test_fairseq_train_is_deterministic_on_cpu(tmp_path):
    write_corpus(str(tmp_path / "raw"), train=300, valid=50, test=50)
    preprocess(tmp_path / "raw", tmp_path / "bin")

    def train(save_dir):
        # --max-epoch, not a --max-update that stops mid-epoch (fairseq then occasionally aborts at exit)
        return run("fairseq-train", str(tmp_path / "bin"), "--user-dir", USER_DIR, "--arch", "bahdanau_gru_tiny",
                   "--max-epoch", "2", "--seed", "7", "--cpu", "--num-workers", "0", "--optimizer", "adam",
                   "--lr", "0.01", "--max-tokens", "600", "--save-dir", str(save_dir))

    saves = [tmp_path / "run1", tmp_path / "run2"]
    with ThreadPoolExecutor(2) as pool:  # two independent processes, one core each
        list(pool.map(train, saves))
    checkpoints = [torch.load(str(save / "checkpoint_last.pt"), map_location="cpu") for save in saves]
    first, second = (c["model"] for c in checkpoints)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    updates = [c["optimizer_history"][-1]["num_updates"] for c in checkpoints]
    assert updates[0] == updates[1] > 0
