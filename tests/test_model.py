"""model.py: the KV-cache sampler against full recompute, per-row lengths, stops, log-probs, value head."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
from model import GPT, GPTConfig, KVCache, ValueModel  # noqa: E402


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=64, vocab_size=40, n_layer=2, n_head=2, n_embd=32)).eval()


def greedy_full_recompute(model, prompt, steps):
    """Reference decoder: no cache, the whole sequence through forward() at every step."""
    idx = torch.tensor([prompt])
    for _ in range(steps):
        logits, _ = model(idx)
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx[0, len(prompt):].tolist()


def test_greedy_kv_cache_equals_full_recompute(model):
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    out = model.generate(torch.tensor([prompt]), 30, temperature=0)
    assert out[0, len(prompt):].tolist() == greedy_full_recompute(model, prompt, 30)


def test_mixed_length_batch_rows_decode_as_alone(model):
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12], [13], [7, 7]]
    batch = model.sample(prompts, n=2, max_new_tokens=20, temperature=0)
    for r, row in enumerate(batch.rows()):
        alone = model.sample([prompts[r // 2]], n=1, max_new_tokens=20, temperature=0).rows()[0]
        assert row == alone == greedy_full_recompute(model, prompts[r // 2], 20)


def test_per_prompt_limits_cut_each_row_at_its_own(model):
    # [13] leaves room for 63 only; [7] * 60 for 4, and keeps decoding junk past them while the others run
    prompts, caps = [[1, 2, 3], [4, 5, 6, 7], [13], [7] * 60], [5, 12, 70, 30]
    batch = model.sample(prompts, n=2, max_new_tokens=caps, temperature=0)
    for r, (row, stopped) in enumerate(zip(batch.rows(), batch.stopped.tolist())):
        cap = min(caps[r // 2], 64 - len(prompts[r // 2]))
        assert row == greedy_full_recompute(model, prompts[r // 2], cap) and not stopped


def test_sampled_logprobs_equal_full_forward(model):
    g = torch.Generator().manual_seed(0)
    prompts = [[5, 6], [1, 2, 3, 4, 5, 6, 7]]
    s = model.sample(prompts, n=3, max_new_tokens=15, temperature=1.3, top_k=10, generator=g)
    for r, row in enumerate(s.rows()):
        p = prompts[r // 3]
        ref = model.logprobs(torch.tensor([p + row]))[0, len(p) - 1:]  # log pi at temperature 1
        torch.testing.assert_close(s.logp[r][s.mask[r]], ref, atol=1e-5, rtol=1e-5)
    assert not s.logp.requires_grad  # sampling builds no autograd graph (the update recomputes what it needs)


def test_stop_token_and_padding_per_row(model):
    g = torch.Generator().manual_seed(1)
    stop, pad = 7, 0
    s = model.sample([[1, 2], [3]], n=8, max_new_tokens=25, temperature=2.0, stop_ids=(stop,), pad_id=pad,
                     generator=g)
    assert s.stopped.any() and not s.stopped.all()  # the seed gives both kinds of rows
    for r in range(s.tokens.size(0)):
        row, m = s.tokens[r], s.mask[r]
        n_valid = int(m.sum())
        assert m[:n_valid].all() and not m[n_valid:].any()  # valid tokens form a prefix
        assert (row[n_valid:] == pad).all() and (s.logp[r][n_valid:] == 0).all()
        if s.stopped[r]:
            assert row[n_valid - 1] == stop and stop not in row[:n_valid - 1].tolist()
        else:
            assert stop not in row[:n_valid].tolist() and n_valid == 25


def test_finished_rows_are_dropped_and_the_rest_decode_as_alone(model, monkeypatch):
    """One row runs to max_new_tokens while the others stop early: the batch is compacted as rows finish,
    and every row still decodes exactly as its prompt alone (and as full recompute, up to its stop)."""
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [13], [7, 7], [9, 3, 9], [2], [30, 31, 32, 33], [5, 5, 5, 5, 5, 5]]
    free = [greedy_full_recompute(model, p, 30) for p in prompts]
    stops = {f[0] for f in free[1:4]}  # rows 1-3 stop at once (this random model repeats itself)
    ends = [next((i + 1 for i, tok in enumerate(f) if tok in stops), 30) for f in free]
    assert min(ends) == 1 and max(ends) == 30  # the seed gives early stops and a row that runs to the limit
    compactions = []
    real = KVCache.keep_rows

    def counted(self, keep):
        compactions.append(int(keep.sum()))
        real(self, keep)
    monkeypatch.setattr(KVCache, 'keep_rows', counted)
    batch = model.sample(prompts, n=1, max_new_tokens=30, temperature=0, stop_ids=stops, pad_id=0)
    assert compactions and compactions[-1] < len(prompts)  # rows really left the batch
    assert not batch.stopped.all() and batch.stopped.any()
    for r, row in enumerate(batch.rows()):
        alone = model.sample([prompts[r]], n=1, max_new_tokens=30, temperature=0, stop_ids=stops, pad_id=0)
        assert row == alone.rows()[0] == free[r][:ends[r]]
        assert bool(batch.stopped[r]) == (row[-1] in stops)


def test_top_k_one_is_greedy(model):
    g = torch.Generator().manual_seed(2)
    a = model.sample([[1, 2, 3]], n=2, max_new_tokens=10, temperature=1.0, top_k=1, generator=g).rows()
    assert a[0] == a[1] == greedy_full_recompute(model, [1, 2, 3], 10)


def test_block_size_is_respected(model):
    s = model.sample([list(range(1, 40)) + [1] * 20], n=1, max_new_tokens=50, temperature=0)
    assert s.tokens.size(1) == 64 - 59  # cut to what fits in block_size
    with pytest.raises(ValueError, match='block_size'):
        model.sample([[1] * 64], max_new_tokens=5)


def test_value_model_reads_each_rows_last_token_under_right_padding(model):
    torch.manual_seed(3)
    vm = ValueModel.from_policy(model)
    torch.nn.init.normal_(vm.head.weight)
    short, long = [4, 5, 6], [9, 8, 7, 6, 5]
    batch = torch.tensor([short + [0, 0], long])
    v = vm(batch)  # logits; V = sigmoid(v)
    assert v.shape == (2, 5) and v.std() > 0
    torch.testing.assert_close(v[0, 2], vm(torch.tensor([short]))[0, -1])
    torch.testing.assert_close(v[1, 4], vm(torch.tensor([long]))[0, -1])
    for a, b in zip(vm.gpt.parameters(), model.parameters()):  # trunk initialised from the policy
        assert torch.equal(a, b)
