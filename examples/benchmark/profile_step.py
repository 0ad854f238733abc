"""Where a training step's time goes: torch.profiler's top operators for one model on real batches.

    python examples/benchmark/profile_step.py --data DATA_BIN [--source-lang de --target-lang en] -- --arch bahdanau_gru

Everything after ``--`` is passed to fairseq's parser as model flags.
"""

import argparse
import os
import sys

import torch
from fairseq import options, tasks
from torch.profiler import ProfilerActivity, profile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    argv = sys.argv[1:]
    model_flags = argv[argv.index("--") + 1 :] if "--" in argv else ["--arch", "bahdanau_gru"]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--source-lang")
    parser.add_argument("--target-lang")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--shapes", action="store_true", help="group operators by input shape")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)

    flags = [args.data, "--user-dir", os.path.join(ROOT, "fairseq_bahdanau"), "--task", "translation", "--cpu"]
    if args.source_lang:
        flags += ["--source-lang", args.source_lang, "--target-lang", args.target_lang]
    cfg = options.parse_args_and_arch(options.get_training_parser(), flags + model_flags)
    task = tasks.setup_task(cfg)
    model = task.build_model(cfg).train()
    task.load_dataset("train")
    itr = task.get_batch_iterator(task.dataset("train"), max_sentences=128, seed=1,
                                  required_batch_size_multiple=1).next_epoch_itr(shuffle=True)
    samples = [next(itr) for _ in range(args.steps + 1)]
    optimizer = torch.optim.Adam(model.parameters())
    pad = task.target_dictionary.pad()

    def step(sample) -> None:
        logits = model(**sample["net_input"])[0]
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), sample["target"].view(-1),
                                                 ignore_index=pad, reduction="sum")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step(samples[0])
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
        for sample in samples[1:]:
            step(sample)
    averages = prof.key_averages(group_by_input_shape=args.shapes)
    print(averages.table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=40))


if __name__ == "__main__":
    main()
