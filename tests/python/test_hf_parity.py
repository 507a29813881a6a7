"""Parity of memo with Hugging Face transformers' LlamaForCausalLM (fp32, CPU).

Small random models (GQA; tied and untied embeddings; Llama 3.1 rope
scaling) are built with transformers and saved; memo loads them and dumps the
first batch's logits, loss and gradients (hidden `memo eval --dump-logits /
--dump-grads` flags), which must match transformers' forward and PyTorch
autograd within 1e-5. A checkpoint memo writes must load back with
LlamaForCausalLM.from_pretrained and give memo's logits. Nothing is downloaded.
Run by ctest with MEMO_BINARY set to the built binary.
"""

import json
import os
import subprocess

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

MEMO = os.environ.get("MEMO_BINARY", "build/memo")
SEQ, BATCH, VOCAB = 32, 2, 96
TOL = 1e-5

LLAMA31_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,  # small, so scaling changes frequencies at SEQ
}

CASES = {
    "gqa_untied": dict(tie_word_embeddings=False, rope_scaling=None, rope_theta=10000.0),
    "gqa_tied": dict(tie_word_embeddings=True, rope_scaling=None, rope_theta=10000.0),
    "llama31_rope_scaling": dict(tie_word_embeddings=False, rope_scaling=LLAMA31_ROPE, rope_theta=500000.0),
}


def build_model(path, case):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=112,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rms_norm_eps=1e-5,
        max_position_embeddings=128,
        initializer_range=0.1,
        **CASES[case],
    )
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config).float().eval()
    with torch.no_grad():  # norms away from 1 so that their weights matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    model.save_pretrained(path, safe_serialization=True)
    return model


def write_tokens(path, count, seed=1):
    ids = np.random.default_rng(seed).integers(0, VOCAB, size=count).astype("<u2")
    ids.tofile(path)
    return torch.from_numpy(ids.astype(np.int64))


def memo_eval(model_dir, tokens_path, out_dir, grads=True):
    logits_path = os.path.join(out_dir, "logits.safetensors")
    grads_path = os.path.join(out_dir, "grads.safetensors")
    cmd = [MEMO, "eval", "--model", str(model_dir), "--data", str(tokens_path), "--data-dtype", "uint16",
           "--seq-len", str(SEQ), "--batch", str(BATCH), "--max-batches", "1", "--device", "cpu",
           "--dump-logits", logits_path]
    if grads:
        cmd += ["--dump-grads", grads_path]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return load_file(logits_path), (load_file(grads_path) if grads else None)


def windows(ids):
    w = torch.stack([ids[b * SEQ: b * SEQ + SEQ + 1] for b in range(BATCH)])
    return w[:, :-1], w[:, 1:]


def hf_loss(model, inputs, targets):
    logits = model(input_ids=inputs).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
    return logits, loss


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_and_loss_match(tmp_path, case):
    model = build_model(tmp_path / "hf", case)
    ids = write_tokens(tmp_path / "tokens.bin", BATCH * SEQ + 1)
    dump, _ = memo_eval(tmp_path / "hf", tmp_path / "tokens.bin", tmp_path, grads=False)
    inputs, targets = windows(ids)
    assert torch.equal(dump["tokens"], inputs)
    with torch.no_grad():
        logits, loss = hf_loss(model, inputs, targets)
    assert (dump["logits"] - logits).abs().max().item() <= TOL
    assert abs(dump["loss"].item() - loss.item()) <= TOL


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradients_match_autograd(tmp_path, case):
    model = build_model(tmp_path / "hf", case)
    ids = write_tokens(tmp_path / "tokens.bin", BATCH * SEQ + 1)
    _, grads = memo_eval(tmp_path / "hf", tmp_path / "tokens.bin", tmp_path)
    inputs, targets = windows(ids)
    _, loss = hf_loss(model, inputs, targets)
    loss.backward()
    params = dict(model.named_parameters())  # a tied lm_head is the embedding itself
    assert set(grads) == set(params), set(grads) ^ set(params)
    for name, p in params.items():
        diff = (grads[name] - p.grad).abs().max().item()
        assert diff <= TOL, f"{name}: max |memo - autograd| = {diff}"


@pytest.mark.parametrize("case", ["gqa_tied", "llama31_rope_scaling"])
def test_memo_checkpoint_loads_in_transformers(tmp_path, case):
    build_model(tmp_path / "hf", case)
    write_tokens(tmp_path / "tokens.bin", 4096)
    out = tmp_path / "run"
    r = subprocess.run([MEMO, "train", "--model", str(tmp_path / "hf"), "--data", str(tmp_path / "tokens.bin"),
                        "--data-dtype", "uint16", "--steps", "2", "--seq-len", str(SEQ), "--batch", str(BATCH),
                        "--device", "cpu", "--out", str(out), "--checkpoint-every", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    ckpt = out / "checkpoints" / "step-00000002"
    reloaded = LlamaForCausalLM.from_pretrained(ckpt, attn_implementation="eager").float().eval()
    saved = json.loads((ckpt / "config.json").read_text())
    assert saved["tie_word_embeddings"] == CASES[case]["tie_word_embeddings"]
    assert reloaded.config.tie_word_embeddings == CASES[case]["tie_word_embeddings"]
    ids = write_tokens(tmp_path / "eval.bin", BATCH * SEQ + 1, seed=2)
    dump, _ = memo_eval(ckpt, tmp_path / "eval.bin", tmp_path, grads=False)
    inputs, targets = windows(ids)
    with torch.no_grad():
        logits, _ = hf_loss(reloaded, inputs, targets)
    assert (dump["logits"] - logits).abs().max().item() <= TOL
    # training moved the weights away from the original model
    original = LlamaForCausalLM.from_pretrained(tmp_path / "hf").float().eval()
    with torch.no_grad():
        before = original(input_ids=inputs).logits
    assert (before - logits).abs().max().item() > 1e-4
