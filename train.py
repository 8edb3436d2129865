"""
restrl's one entry point: every stage of ReST-RL on the toy code benchmark, checkpointed and resumable.

    python train.py                                  # the whole pipeline, default config
    python train.py config/smoke.py                  # the same stages, tiny, in a few minutes
    python train.py --stage=rl --method=grpo         # one stage, one RL method
    python train.py config/gpu.py --out_dir=out-gpu  # a config file, then --key=value overrides

Stages, in order (each writes into out_dir and is skipped on a rerun once complete):
    data   check the task files and the tokenizer
    sft    supervised warm start on reference solutions                      -> sft.pt
    rl     ReST-GRPO (or --method=grpo | rest_dpo) from the SFT model          -> rl_<method>.pt
    mcts   MCTS with rollouts on the rl split: value targets, no labels       -> value_targets.jsonl
    vm     value model and outcome reward model on those targets             -> vm.pt, orm.pt
    decode greedy, best-of-N (ORM), PRM, ORM-MCTS, VM-MCTS at equal budgets    -> decode.json
and then results.json and a table.
"""

import ast
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from types import SimpleNamespace

import torch
from tqdm import tqdm

import tasks as T
from model import GPT, GPTConfig

# -----------------------------------------------------------------------------
# default config: the whole pipeline in about 20 minutes on 2 CPU cores
out_dir = 'out'
stage = 'all'            # all | data | sft | rl | mcts | vm | decode
method = 'rest_grpo'     # RL method: rest_grpo | grpo | rest_dpo
seed = 1337
device = 'auto'          # auto picks cuda, then mps, then cpu
dtype = 'float32'        # float32 | bfloat16 (autocast, cuda only)
data_dir = 'data'        # sft.jsonl, rl.jsonl, test.jsonl and the tokenizer
# model
n_layer = 4
n_head = 4
n_embd = 128
block_size = 384
dropout = 0.0
bias = False
# SFT warm start
sft_iters = 1000
sft_batch_size = 32
sft_lr = 2e-3            # peak learning rate, cosine decay to sft_lr / 10
sft_warmup_iters = 50
sft_weight_decay = 0.1
sft_eval_interval = 250  # greedy pass@1 on eval_tasks test tasks, and a checkpoint
grad_clip = 1.0
# evaluation (greedy pass@1 through the sandbox)
eval_tasks = 600         # test tasks used for the periodic evaluations (0 = all); final evals use all
eval_batch_size = 256
max_new_tokens = 128     # longest completion sampled anywhere
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))}
STAGES = ['data', 'sft', 'rl', 'mcts', 'vm', 'decode']


class ConfigError(ValueError):
    pass


def configure(argv, defaults=DEFAULTS):
    """nanoGPT's configurator, strict: config files (python, assigning known keys) then --key=value."""
    config = dict(defaults)

    def setkey(key, value, where):
        if key not in defaults:
            raise ConfigError(f"{where}: unknown config key '{key}'")
        want = type(defaults[key])
        if want is float and type(value) is int:
            value = float(value)
        if type(value) is not want:
            raise ConfigError(f"{where}: key '{key}' wants {want.__name__}, got {value!r}")
        config[key] = value

    for arg in argv:
        if not arg.startswith('--'):
            if not os.path.isfile(arg):
                raise ConfigError(f"config file '{arg}' not found")
            scope = {}
            exec(compile(open(arg).read(), arg, 'exec'), scope)
            for key, value in scope.items():
                if not key.startswith('_') and not callable(value) and not isinstance(value, type(os)):
                    setkey(key, value, arg)
        else:
            key, eq, text = arg[2:].partition('=')
            if not eq:
                raise ConfigError(f"'{arg}': write overrides as --key=value")
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text  # a bare string such as --method=grpo
            setkey(key, value, arg)
    if config['stage'] not in ['all'] + STAGES:
        raise ConfigError(f"key 'stage' must be one of all, {', '.join(STAGES)}; got '{config['stage']}'")
    if config['method'] not in ('rest_grpo', 'grpo', 'rest_dpo'):
        raise ConfigError(f"key 'method' must be rest_grpo, grpo or rest_dpo; got '{config['method']}'")
    return config


def pick_device(name):
    if name != 'auto':
        return name
    if torch.cuda.is_available():
        return 'cuda'
    if getattr(torch.backends, 'mps', None) and torch.backends.mps.is_available():
        return 'mps'
    return 'cpu'


def save_checkpoint(obj, path):
    """Atomic: a crash while writing never leaves a half-written checkpoint behind."""
    tmp = path + '.tmp'
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise SystemExit(f"could not write checkpoint {path}: {e}. The previous checkpoint is intact.")


def load_policy(path, device):
    ckpt = torch.load(path, map_location=device, weights_only=False)
    model = GPT(GPTConfig(**ckpt['model_args'])).to(device)
    model.load_state_dict(ckpt['model'])
    return model, ckpt


# -----------------------------------------------------------------------------
# SFT: next-token cross-entropy on prompt + solution, loss on the solution tokens only

def encode_sft(enc, task_list, block_size):
    """Pack tasks into right-padded (N, T) inputs and targets; targets are -1 on prompt and padding."""
    seqs, n_prompt = [], []
    for t in task_list:
        p = enc.encode_ordinary(t['prompt'])
        s = enc.encode_ordinary(t['canonical_solution']) + [enc.eot_token]
        if len(p) + len(s) > block_size:
            raise ValueError(f"task {t['task_id']}: {len(p) + len(s)} tokens > block_size {block_size}")
        seqs.append(p + s)
        n_prompt.append(len(p))
    N, L = len(seqs), max(len(s) for s in seqs)
    x = torch.zeros(N, L, dtype=torch.long)
    y = torch.full((N, L), -1, dtype=torch.long)
    lengths = torch.tensor([len(s) for s in seqs])
    for i, (s, npr) in enumerate(zip(seqs, n_prompt)):
        x[i, :len(s)] = torch.tensor(s)
        y[i, npr - 1:len(s) - 1] = torch.tensor(s[npr:])  # predict solution tokens (and the end token)
    return x, y, lengths


def cosine_lr(it, peak, warmup, total):
    if it < warmup:
        return peak * (it + 1) / warmup
    ratio = min(1.0, (it - warmup) / max(1, total - warmup))
    return peak / 10 + 0.5 * (1 + math.cos(math.pi * ratio)) * (peak - peak / 10)  # cosine to peak/10


def run_sft(cfg, enc, sft_tasks, test_tasks, log=print):
    path = os.path.join(cfg.out_dir, 'sft.pt')
    dev = cfg.device
    model_args = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                      vocab_size=enc.n_vocab, dropout=cfg.dropout, bias=cfg.bias)
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(**model_args)).to(dev)
    optimizer = model.configure_optimizers(cfg.sft_weight_decay, cfg.sft_lr, (0.9, 0.95), dev.split(':')[0])
    it, history = 0, []
    if os.path.exists(path):
        ckpt = torch.load(path, map_location=dev, weights_only=False)
        if ckpt.get('done'):
            log(f"sft: complete in {path}, skipping")
            model.load_state_dict(ckpt['model'])
            return model, ckpt['eval']
        model.load_state_dict(ckpt['model'])
        optimizer.load_state_dict(ckpt['optimizer'])
        it, history = ckpt['iter_num'], ckpt['history']
        log(f"sft: resuming from iteration {it}")
    x_all, y_all, len_all = encode_sft(enc, sft_tasks, cfg.block_size)
    log(f"sft: {model.num_params() / 1e6:.2f}M parameters, {len(sft_tasks)} tasks, "
        f"{int(len_all.float().mean())} tokens per task on average")
    ctx = torch.autocast('cuda', dtype=torch.bfloat16) if cfg.dtype == 'bfloat16' else nullcontext()

    def checkpoint(done, eval_result=None):
        save_checkpoint(dict(model=model.state_dict(), optimizer=optimizer.state_dict(), model_args=model_args,
                             iter_num=it, config=vars(cfg), history=history, done=done, eval=eval_result), path)

    t0, tokens_seen = time.time(), 0
    bar = tqdm(total=cfg.sft_iters, initial=it, desc='sft', dynamic_ncols=True)
    while it < cfg.sft_iters:
        # the batch depends only on (seed, iteration), so a resumed run sees the batches it would have seen
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + it)
        ix = torch.randint(len(x_all), (cfg.sft_batch_size,), generator=g)
        L = int(len_all[ix].max())
        x, y = x_all[ix, :L].to(dev), y_all[ix, :L].to(dev)
        for group in optimizer.param_groups:
            group['lr'] = cosine_lr(it, cfg.sft_lr, cfg.sft_warmup_iters, cfg.sft_iters)
        with ctx:
            _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        it += 1
        tokens_seen += int((y != -1).sum())
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if it % cfg.sft_eval_interval == 0 or it == cfg.sft_iters:
            dt = time.time() - t0
            ev = T.evaluate_greedy(model, enc, test_tasks[:cfg.eval_tasks or None], dev,
                                   cfg.max_new_tokens, cfg.eval_batch_size)
            history.append(dict(iter=it, loss=loss.item(), test_pass1=ev['pass1']))
            left = dt / max(1, it - bar.initial) * (cfg.sft_iters - it)
            log(f"sft iter {it}: loss {loss.item():.4f}, greedy pass@1 {ev['pass1']:.3f} on {ev['n']} tasks, "
                f"{tokens_seen / dt:.0f} target tok/s, {left / 60:.1f} min left")
            checkpoint(done=False)
    bar.close()
    ev = T.evaluate_greedy(model, enc, test_tasks, dev, cfg.max_new_tokens, cfg.eval_batch_size)
    log(f"sft: greedy pass@1 {ev['pass1']:.3f} on all {ev['n']} test tasks; by difficulty "
        + ", ".join(f"{d}: {p:.2f}" for d, p in sorted(ev['by_difficulty'].items())))
    checkpoint(done=True, eval_result=ev)
    return model, ev


# -----------------------------------------------------------------------------

def main(argv):
    try:
        config = configure(argv)
    except ConfigError as e:
        raise SystemExit(f"config error: {e}")
    config['device'] = pick_device(config['device'])
    cfg = SimpleNamespace(**config)
    os.makedirs(cfg.out_dir, exist_ok=True)
    torch.manual_seed(cfg.seed)
    t_start = time.time()
    try:
        enc = T.get_tokenizer(os.path.join(cfg.data_dir, T.TOKENIZER_FILE))
        splits = {name: T.load_tasks(os.path.join(cfg.data_dir, f'{name}.jsonl')) for name in ('sft', 'rl', 'test')}
    except (OSError, ValueError) as e:
        raise SystemExit(f"data error: {e}")
    print(f"data: " + ", ".join(f"{k} {len(v)} tasks" for k, v in splits.items()) + f"; vocab {enc.n_vocab}; "
          f"device {cfg.device}")
    todo = STAGES if cfg.stage == 'all' else [cfg.stage]
    results = {}
    if 'sft' in todo:
        _, results['sft'] = run_sft(cfg, enc, splits['sft'], splits['test'])
    for name in todo:
        if name not in ('data', 'sft'):
            print(f"{name}: not built yet")
    results['wall_seconds'] = time.time() - t_start
    return results


if __name__ == '__main__':
    main(sys.argv[1:])
