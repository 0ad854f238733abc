"""GPU checks (skipped without CUDA; ``make gpu-check`` runs them with a CUDA build of torch).

- the encoder on CUDA (cuDNN's packed bidirectional GRU) equals the CPU path in values and gradients;
- the decoder's step loop on CUDA equals CPU's, and beam search finds the same hypotheses with the same scores;
- fairseq-train's ``--amp`` and ``--fp16`` learn the synthetic task on the GPU, and fairseq-generate translates
  with the result;
- with two or more GPUs, ``torchrun --nproc_per_node 2 fairseq-train`` trains at world size 2 (NCCL).

TF32 is switched off so that float32 on the GPU means float32.
"""

import subprocess

import pytest
import torch
from fairseq.sequence_generator import SequenceGenerator

from helpers import USER_DIR, batch, build_model, run, tool_env, tool_path, valid_losses


pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

TRAIN = ["--user-dir", USER_DIR, "--arch", "bahdanau_gru_tiny", "--optimizer", "adam", "--lr", "0.01",
         "--clip-norm", "1.0", "--max-tokens", "600", "--log-format", "simple", "--seed", "1", "--num-workers", "0"]


@pytest.fixture(autouse=True)
def no_tf32():
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("left", [True, False], ids=["left-padded", "right-padded"])
def test_cudnn_encoder_equals_cpu_in_values_and_gradients(layers, left):
    cpu = build_model(encoder_layers=layers, dropout=0.0).train()
    gpu = build_model(encoder_layers=layers, dropout=0.0).train().cuda()
    _, src, lengths, _ = batch(cpu, left=left)
    outputs = []
    for model, device in ((cpu, "cpu"), (gpu, "cuda")):
        out = model.encoder(src.to(device), lengths.to(device))
        states = out["encoder_out"][0]
        (states.float() ** 2).sum().backward()
        outputs.append((states.detach().cpu(), {n: p.grad.cpu() for n, p in model.encoder.named_parameters()}))
    (cpu_states, cpu_grads), (gpu_states, gpu_grads) = outputs
    torch.testing.assert_close(gpu_states, cpu_states, atol=1e-5, rtol=1e-4)
    for name, grad in cpu_grads.items():
        torch.testing.assert_close(gpu_grads[name], grad, atol=1e-4, rtol=1e-3, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("attention_type", ["additive", "dot", "general"])
def test_full_forward_and_beam_search_on_gpu_equal_cpu(attention_type):
    cpu = build_model(attention_type=attention_type)
    gpu = build_model(attention_type=attention_type).cuda()
    _, src, lengths, prev = batch(cpu)
    with torch.no_grad():
        expected, _ = cpu(src, lengths, prev)
        actual, _ = gpu(src.cuda(), lengths.cuda(), prev.cuda())
    torch.testing.assert_close(actual.cpu(), expected, atol=1e-5, rtol=1e-4)
    results = []
    for model, device in ((cpu, "cpu"), (gpu, "cuda")):
        sample = {"net_input": {"src_tokens": src.to(device), "src_lengths": lengths.to(device)}}
        with torch.no_grad():
            generator = SequenceGenerator([model], model.decoder.dictionary, beam_size=5, max_len_b=8)
            results.append(generator.forward(sample))
    for cpu_hyps, gpu_hyps in zip(*results):
        assert cpu_hyps[0]["tokens"].tolist() == gpu_hyps[0]["tokens"].tolist()
        assert abs(cpu_hyps[0]["score"].item() - gpu_hyps[0]["score"].item()) < 1e-4


@pytest.fixture(scope="module")
def data(synthetic):
    """The shared corpus's directory (``raw/``, ``bin/``)."""
    return synthetic.raw.parent


@pytest.mark.parametrize("flag", ["--amp", "--fp16"])
def test_fairseq_train_reduced_precision_on_gpu_learns_and_generates(data, tmp_path, flag):
    out = run("fairseq-train", str(data / "bin"), *TRAIN, "--max-epoch", "4", "--save-dir", str(tmp_path), flag).stdout
    losses = valid_losses(out)
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.5, losses
    generated = run("fairseq-generate", str(data / "bin"), "--user-dir", USER_DIR, "--path",
                    str(tmp_path / "checkpoint_last.pt"), "--beam", "5", "--batch-size", "50", flag).stdout
    assert generated.count("\nH-") == 100


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_torchrun_two_gpus(data, tmp_path):
    proc = subprocess.run([tool_path("torchrun"), "--standalone", "--nproc_per_node", "2",
                           tool_path("fairseq-train"), str(data / "bin"), *TRAIN, "--max-epoch", "2",
                           "--save-dir", str(tmp_path)], capture_output=True, text=True, env=tool_env())
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "training on 2 devices" in out
    assert (tmp_path / "checkpoint_last.pt").exists()
