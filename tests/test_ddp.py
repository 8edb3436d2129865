"""Data parallel (ddp.py) on CPU with gloo and 2 processes: SFT steps and RL (GRPO) steps give the weights one
process gives with the same global batch; the ranks' MCTS parts and decoding rows merge into one process's
files; a resume with another number of processes is refused."""
import copy
import json
import os
import socket
import sys
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
import ddp  # noqa: E402
import decode  # noqa: E402
import mcts  # noqa: E402
import outputs  # noqa: E402
import restrl  # noqa: E402
import train  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402


def _rank_main(rank, world, port, fn, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    ddp.setup('cpu')
    try:
        result = fn()
        if rank == 0:
            torch.save(result, out)
    finally:
        ddp.cleanup()


def run_distributed(fn, world, tmp_path):
    """fn() in `world` processes joined by gloo, as torchrun would start them; rank 0's return value."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    out = str(tmp_path / 'rank0.pt')
    mp.spawn(_rank_main, args=(world, port, fn, out), nprocs=world, join=True)
    return torch.load(out, weights_only=False)


def sft_steps():
    """Three SFT steps (2 length-sorted slices per rank) of a tiny GPT on a fixed random data set."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=50, n_layer=2, n_head=2, n_embd=32))
    wrapped = ddp.wrap(model, 'cpu')
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(4, 33, (40,), generator=g)
    x_all = torch.randint(0, 50, (40, 32), generator=g)
    y_all = torch.randint(0, 50, (40, 32), generator=g)
    y_all[torch.arange(32)[None, :] >= lengths[:, None] - 1] = -1  # no targets past a row's end
    y_all[:, :2] = -1  # nor on its 'prompt'
    for step in range(3):
        ix = torch.randint(40, (8,), generator=torch.Generator().manual_seed(10 + step))
        opt.zero_grad(set_to_none=True)
        train.sft_backward(wrapped, x_all, y_all, lengths, ix, 2, 'cpu')
        opt.step()
    return model.state_dict()


def grpo_steps():
    """GRPO updates (2 optimizer steps per batch, so the clip acts) on a fixed batch of 4 groups of 4, sequence-
    and token-level: every rank trains on its share (ddp.shard) of the batch."""
    out, kept = {}, (restrl.TOKEN_LEVEL, restrl.MICRO_BATCH)
    for token_level in (False, True):
        torch.manual_seed(0)
        policy = GPT(GPTConfig(block_size=64, vocab_size=50, n_layer=2, n_head=2, n_embd=32))
        ref = copy.deepcopy(policy)
        with torch.no_grad():
            for p in ref.parameters():
                p.add_(0.01 * torch.randn_like(p))
        g = torch.Generator().manual_seed(2)
        G, batch = 4, []
        for n in (6, 9, 4, 7):
            comps = [torch.randint(1, 50, (int(torch.randint(1, 10, (1,), generator=g)),), generator=g).tolist()
                     for _ in range(G)]
            batch.append(dict(state=dict(ids=torch.randint(1, 50, (n,), generator=g).tolist()), ids=comps,
                              logp=[torch.zeros(len(c)) for c in comps], reward=torch.rand(G, generator=g)))
        cfg = SimpleNamespace(rl_inner_steps=2, rl_kl_coef=0.02)
        restrl.TOKEN_LEVEL, restrl.MICRO_BATCH = token_level, G  # one group per micro-batch
        trainee = ddp.wrap(restrl.LogProbs(policy), 'cpu')
        opt = torch.optim.AdamW(policy.parameters(), lr=1e-2)
        stats = restrl.grpo_update(trainee, ref, opt, ddp.shard(batch), cfg, 0, nullcontext())
        out[token_level] = (policy.state_dict(), stats['loss'])
    restrl.TOKEN_LEVEL, restrl.MICRO_BATCH = kept
    return out


def test_sft_on_two_processes_equals_one(tmp_path):
    one = sft_steps()
    two = run_distributed(sft_steps, 2, tmp_path)
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-5, rtol=1e-4)
    assert any(not torch.equal(one[k], GPT(GPTConfig(block_size=32, vocab_size=50, n_layer=2, n_head=2,
                                                     n_embd=32)).state_dict()[k]) for k in one)  # it trained


def test_grpo_on_two_processes_equals_one(tmp_path):
    one = grpo_steps()
    two = run_distributed(grpo_steps, 2, tmp_path)
    for token_level in (False, True):
        (w1, loss1), (w2, loss2) = one[token_level], two[token_level]
        assert loss2 == pytest.approx(loss1, rel=1e-4, abs=1e-6)  # the logged loss is the whole batch's
        for k in w1:
            torch.testing.assert_close(w2[k], w1[k], atol=1e-5, rtol=1e-4)


def test_mcts_parts_merge_in_batch_order(tmp_path):
    """Rank r searched batches r, r + 2, ...: the merged file is what one process writes, batch after batch."""
    path = str(tmp_path / 'value_targets.jsonl')
    lines = {b: ''.join(json.dumps(dict(batch=b, i=i)) + '\n' for i in range(b + 1)) for b in range(5)}
    for r in range(2):
        text, ends = '', []
        for b in range(r, 5, 2):
            text += lines[b]
            ends.append(len(text))
        open(f'{path}.rank{r}', 'w').write(text)
        open(f'{path}.rank{r}.progress', 'w').write(json.dumps(dict(world=2, ends=ends)))
    mcts.merge_parts(path, 5, 2)
    assert open(path).read() == ''.join(lines[b] for b in range(5))
    assert not [f for f in os.listdir(tmp_path) if 'rank' in f]
    assert json.load(open(path + '.progress'))['ends'][-1] == os.path.getsize(path)


def test_decode_rows_of_the_ranks_merge(tmp_path):
    path = str(tmp_path / 'decode.jsonl')
    open(path, 'w').write(json.dumps(dict(method='greedy', n=0, seed=1)) + '\n')  # made before a kill
    open(path + '.rank0', 'w').write(json.dumps(dict(method='vm_mcts', n=4, seed=1)) + '\n')
    open(path + '.rank1', 'w').write(''.join(json.dumps(dict(method=m, n=4, seed=1)) + '\n'
                                             for m in ('greedy', 'orm_mcts')))
    decode.merge_rows(path, 2)
    got = [(r['method'], r['n']) for r in decode.read_rows(path)]
    assert got == [('greedy', 0), ('vm_mcts', 4), ('greedy', 4), ('orm_mcts', 4)]


def test_a_resume_with_another_number_of_processes_is_refused_a_reuse_is_not(tmp_path, monkeypatch):
    cfg = SimpleNamespace(**train.configure([os.path.join(os.path.dirname(__file__), '..', 'config', 'smoke.py'),
                                             f'--out_dir={tmp_path}', '--device=cpu']))
    o = train.planned_outputs(cfg)[0]  # sft.pt, as one process started it
    outputs.start(o.path, 'sft', train.wanted(o), 'cpu')
    open(o.path, 'w').write('a partial checkpoint')
    monkeypatch.setattr(ddp, 'world', lambda: 2)
    with pytest.raises(outputs.Stale, match=r"world_size: '\(not recorded\)' then, 2 now"):
        train.preflight(train.planned_outputs(cfg), ['sft'])
    os.remove(outputs.record_path(o.path))
    outputs.start(o.path, 'sft', train.wanted(o), 'cpu')  # 2 processes start it;
    monkeypatch.setattr(ddp, 'world', lambda: 1)  # one process would resume it
    with pytest.raises(outputs.Stale, match=r"world_size: 2 then, '\(missing\)' now"):
        train.preflight(train.planned_outputs(cfg), ['sft'])
    rec = outputs.read_record(o.path)
    outputs.finish(o.path, rec, 1.0, {})  # a finished SFT model is reused by another number of processes' RL
    train.preflight(train.planned_outputs(cfg), ['rl'])
    assert 'sft' in train.assemble_results(cfg)['stages']  # and reported
