"""
restrl's one entry point: every stage of ReST-RL on the toy code benchmark, checkpointed and resumable.

    python train.py                                  # the whole pipeline, default config
    python train.py config/smoke.py                  # the same stages, tiny, in under a minute
    python train.py --stage=rl --method=grpo         # one stage, one RL method
    python train.py config/gpu.py --out_dir=out-gpu  # a config file, then --key=value overrides
    torchrun --standalone --nproc_per_node=4 train.py config/gpu.py   # data parallel over 4 GPUs (ddp.py)

Stages, in order (each writes into out_dir, beside each output a record <name>.json of what it was made
from; a rerun skips a complete output and refuses, before any work, one made from other values: outputs.py):
    data   check the task files and the tokenizer
    sft    supervised warm start on reference solutions                      -> sft.pt
    rl     ReST-GRPO (or --method=grpo | rest_dpo) from the SFT model   -> rl_<method>_seed<seed>.pt
    mcts   MCTS scored by the tests on the rl split: value targets, no labels -> value_targets.jsonl
    vm     value model and outcome reward model on those targets             -> vm.pt, orm.pt
    decode VM-MCTS against greedy, best-of-N rerankers, ORM-MCTS at N samples -> decode.jsonl
and then results.json (assembled from every finished record in out_dir), report.md (report.py) and a table.
"""

import glob
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from types import SimpleNamespace

import torch
from tqdm import tqdm

import ddp
import decode
import mcts
import outputs
import report
import restrl
from tasks import TOKENIZER_FILE, evaluate_greedy, format_bands, get_tokenizer, load_tasks, spread, step_seed
import value
from configurator import ConfigError, configure as parse_config, load_policy, pick_device, rl_path
from model import GPT, GPTConfig, autocast, resume, save_checkpoint

# -----------------------------------------------------------------------------
# default config: the whole pipeline in about 32 minutes on 2 CPU cores (too few RL steps to gain: README)
out_dir = 'out'
stage = 'all'            # all | data | sft | rl | mcts | vm | decode
restart = ''             # a stage: move its outputs and those of the stages after it aside, and make them again
method = 'rest_grpo'     # RL method (restrl.METHODS), or several 'rest_grpo,grpo': the first is kept
seed = 1337
seeds = 1                # runs per RL method and per decoding budget, with seeds seed, seed+1, ... (repro: 3)
device = 'auto'          # auto picks cuda, then mps, then cpu
dtype = 'float32'        # float32 | bfloat16 (autocast, cuda only)
data_dir = 'data'        # sft.jsonl, rl.jsonl, dev.jsonl, test.jsonl and the tokenizer
eval_split = 'dev'       # the periodic evaluations and every knob choice read this split; only final tables read test
# model
n_layer = 4
n_head = 4
n_embd = 128
block_size = 384
# SFT warm start
sft_iters = 850          # calibrated on dev: all 0.466, one step 0.82, eight steps 0.03 (results/README.md)
sft_batch_size = 32
sft_lr = 2e-3            # peak learning rate, cosine decay to sft_lr / 10
sft_eval_interval = 250  # greedy pass@1 on eval_tasks tasks of eval_split, and a checkpoint
# evaluation (greedy pass@1 through the sandbox; sampled pass@1: tasks.EVAL_SAMPLES at tasks.EVAL_TEMPERATURE)
eval_tasks = 0           # eval_split tasks (spread over difficulties) for the periodic evaluations (0 = all)
final_eval_tasks = 0     # test tasks for the final evaluations of the SFT and RL models (0 = all)
eval_batch_size = 256
max_new_tokens = 160     # longest completion sampled anywhere (the longest solution: 149 tokens + end)
# RL (restrl.py): ReST-GRPO, naive GRPO, ReST-DPO; one iteration = one batch of rl_batch_groups items. The
# official constants (the filter's samples and prefixes, the clip, DPO's beta) are restrl.py's
rl_iters = 20            # RL iterations; each takes rl_inner_steps optimizer steps (the comparison's axis)
rl_lr = 5e-5             # chosen on dev (sweep_rl.py, results/README.md): 1e-4 drifts down, 2e-5-5e-5 gain 2-4 points
rl_batch_groups = 16     # training items per iteration: start states (G samples each) or DPO pairs
rl_group_size = 8        # G: completions sampled per state (official 8)
rl_temperature = 0.7     # sampling temperature (official; log-probs are those of the untempered policy)
rl_reward = 'partial'    # 'partial' (fraction of tests passed, official) or 'binary' (all tests pass)
rl_min_difficulty = 1    # the RL problem pool: rl tasks of at least this many steps (hard regime: 6, binary)
rl_filter_tasks = 512    # ReST: fresh problems per filter round (a round runs when the data set runs out)
rl_std_threshold = 0.05  # ReST: keep a problem when its population reward std >= this (official)
rl_kl_coef = 0.02        # beta on the k3 KL to the SFT reference
rl_inner_steps = 1       # optimizer steps per batch (1: the ratio is exactly 1 and the clip never acts)
rl_eval_interval = 5     # greedy eval_split pass@1 every N iterations
rl_test_interval = 0     # test pass@1 (greedy and sampled) every N iterations, for curves (0: start and end only)
# MCTS value targets (mcts.py, whose constants are the official search's): searches scored by the tests
mcts_batch_tasks = 32    # searches advanced in lock-step (one policy call for all their leaves)
mcts_collect_samples = 20  # complete samples per rl task when collecting (4 expansions)
mcts_collect_tasks = 512 # rl tasks searched, spread over difficulties (0 = all)
# value model and ORM (value.py)
vm_iters = 200           # optimizer steps (the ORM gets the same number and batch; repro: 400)
vm_reads_logp = True     # the VM and ORM also read the policy's token log-probs (model.ValueModel; False: text only)
vm_eval_interval = 50    # rank the dev pool and checkpoint every N steps; the best within-task AUC is kept
vm_dev_tasks = 200       # dev tasks x 16 samples, graded once: the pool checkpoints are chosen on
# decoding comparison (decode.py), every method sampling at mcts.TEMPERATURE
decode_samples = '1,4,16'  # budgets N: complete samples per task (repro: 1,4,8,16,32)
decode_tasks = 200       # test tasks, spread over difficulties (0 = all)
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))}
SFT_WARMUP_ITERS = 50
SFT_WEIGHT_DECAY = 0.1
SFT_MICRO_BATCHES = 4    # a batch runs as this many length-sorted slices, each padded to its own longest: 1.6x faster
GRAD_CLIP = 1.0
STAGES = ['data', 'sft', 'rl', 'mcts', 'vm', 'decode']
SPLITS = ('sft', 'rl', 'dev', 'test')


def configure(argv, defaults=DEFAULTS):
    """The config (configurator.py: config files, then --key=value), with the values that make no sense refused."""
    config = parse_config(argv, defaults)
    if config['stage'] not in ['all'] + STAGES:
        raise ConfigError(f"key 'stage' must be one of all, {', '.join(STAGES)}; got '{config['stage']}'")
    if config['restart'] not in ('',) + outputs.STAGES:
        raise ConfigError(f"key 'restart' must be one of {', '.join(outputs.STAGES)}; got '{config['restart']}'")
    if config['rl_iters'] < 1:
        raise ConfigError(f"key 'rl_iters' must be at least 1; got {config['rl_iters']}")
    if config['eval_split'] not in SPLITS:
        raise ConfigError(f"key 'eval_split' must be one of {', '.join(SPLITS)}; got '{config['eval_split']}'")
    if config['seeds'] < 1:
        raise ConfigError(f"key 'seeds' must be at least 1; got {config['seeds']}")
    if not all(n.strip().isdigit() and int(n) > 0 for n in config['decode_samples'].split(',')):
        raise ConfigError(f"key 'decode_samples' must be positive sample counts such as '1,4,16'; "
                          f"got '{config['decode_samples']}'")
    if config['vm_iters'] < 1 or config['vm_eval_interval'] < 1:
        raise ConfigError(f"keys 'vm_iters' and 'vm_eval_interval' must be at least 1; got {config['vm_iters']} and "
                          f"{config['vm_eval_interval']}")
    if not set(config['method'].split(',')) <= set(restrl.METHODS):
        raise ConfigError(f"key 'method' must be one of {', '.join(restrl.METHODS)} (or a comma-separated list of "
                          f"them); got '{config['method']}'")
    return config


# -----------------------------------------------------------------------------
# SFT: next-token cross-entropy on prompt + solution, loss on the solution tokens only

def encode_sft(enc, task_list, block_size):
    """Pack tasks into right-padded (N, L) inputs and targets; targets are -1 on prompt and padding."""
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


def sft_backward(model, x_all, y_all, len_all, ix, micro_batches, dev, ctx=nullcontext()):
    """Accumulate the gradient of the batch's mean cross-entropy over all its target tokens, running the rows
    sorted by length in `micro_batches` slices, each cut to its own longest row: the same gradient as one
    padded pass, without computing the padding (a random batch is ~1.6x its real tokens when padded whole).
    Under torchrun (model DDP-wrapped) each rank runs every world-th row of the sorted batch. Returns the batch
    loss and its number of target tokens."""
    ix = ix[len_all[ix].argsort()]
    n_targets = int((y_all[ix] != -1).sum())  # the whole batch's, over every rank
    slices = ddp.shard(ix).chunk(micro_batches)
    loss_sum = 0.0
    for k, rows in enumerate(slices):
        L = int(len_all[rows].max())
        x, y = x_all[rows, :L].to(dev), y_all[rows, :L].to(dev)
        with ddp.no_sync(model, last=k == len(slices) - 1), ctx:  # one all-reduce per batch
            _, loss = model(x, y)  # mean over this slice's targets
            n = int((y != -1).sum())
            (loss * n / n_targets * ddp.world()).backward()  # sum of n_i * mean_i / n = the batch mean (DDP: / W)
        loss_sum += loss.item() * n
    return ddp.all_sum(loss_sum) / n_targets, n_targets


def cosine_lr(it, peak, warmup, total):
    if it < warmup:
        return peak * (it + 1) / warmup
    ratio = min(1.0, (it - warmup) / max(1, total - warmup))
    return peak / 10 + 0.5 * (1 + math.cos(math.pi * ratio)) * (peak - peak / 10)  # cosine to peak/10


def sft_step(wrapped, model, optimizer, data, it, cfg, ctx):
    """One SFT optimizer step on a batch drawn by (seed, iteration): a resumed run sees the batches it would
    have seen. Returns the batch loss and its number of target tokens."""
    x_all, y_all, len_all = data
    g = torch.Generator().manual_seed(step_seed(cfg.seed, it))
    ix = torch.randint(len(x_all), (cfg.sft_batch_size,), generator=g)
    for group in optimizer.param_groups:
        group['lr'] = cosine_lr(it, cfg.sft_lr, SFT_WARMUP_ITERS, cfg.sft_iters)
    optimizer.zero_grad(set_to_none=True)
    loss, n_targets = sft_backward(wrapped, x_all, y_all, len_all, ix, SFT_MICRO_BATCHES, cfg.device, ctx)
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    return loss, n_targets


def sft_test(model, enc, test_tasks, cfg, log):
    ev = evaluate_greedy(model, enc, spread(test_tasks, cfg.final_eval_tasks), cfg.device, cfg.max_new_tokens,
                           cfg.eval_batch_size)
    log(f"sft: greedy pass@1 {ev['pass1']:.3f} on {ev['n']} test tasks ({format_bands(ev)}); by difficulty "
        + ", ".join(f"{d}: {p:.2f}" for d, p in sorted(ev['by_difficulty'].items())))
    return ev


def same_shape(ckpt, model_args, path):
    """Refuse an sft.pt that holds a model of another shape (another run's out_dir) before touching it."""
    differ = [f"{k}={ckpt['model_args'][k]} (this run: {v})" for k, v in model_args.items() if ckpt['model_args'][k] != v]
    if differ:
        raise SystemExit(f"{path} holds a model with {', '.join(differ)}; use another --out_dir or delete it")


def run_sft(cfg, enc, sft_tasks, eval_tasks, test_tasks, log=tqdm.write):
    """The SFT warm start (sft.pt): greedy pass@1 on eval_tasks and a checkpoint every sft_eval_interval steps,
    resumable; at the end greedy pass@1 on test_tasks. Returns (model, the test evaluation)."""
    path = os.path.join(cfg.out_dir, 'sft.pt')
    dev = cfg.device
    model_args = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                      vocab_size=enc.n_vocab, dropout=0.0, bias=False)
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(**model_args)).to(dev)
    wrapped = ddp.wrap(model, dev)  # under torchrun, DDP all-reduces the gradients (the same init: seeded alike)
    optimizer = model.configure_optimizers(SFT_WEIGHT_DECAY, cfg.sft_lr, (0.9, 0.95), dev.split(':')[0])
    it, history = 0, []
    ckpt = resume(path, dev, model, optimizer, check=lambda c: same_shape(c, model_args, path))
    if ckpt and ckpt['done']:
        log(f"sft: complete in {path}, skipping")
        return model, ckpt['eval']
    if ckpt:
        it, history = ckpt['iter_num'], ckpt['history']
        log(f"sft: resuming from iteration {it}")
    data = encode_sft(enc, sft_tasks, cfg.block_size)
    log(f"sft: {model.num_params() / 1e6:.2f}M parameters, {len(sft_tasks)} tasks, "
        f"{int(data[2].float().mean())} tokens per task on average")
    ctx = autocast(cfg.dtype)

    def checkpoint(done, eval_result=None):
        if ddp.is_main():
            save_checkpoint(dict(model=model.state_dict(), optimizer=optimizer.state_dict(), model_args=model_args,
                             iter_num=it, config=vars(cfg), history=history, done=done, eval=eval_result), path)

    t0, tokens_seen = time.time(), 0
    bar = tqdm(total=cfg.sft_iters, initial=it, desc='sft', dynamic_ncols=True, disable=not ddp.is_main())
    while it < cfg.sft_iters:
        loss, n_targets = sft_step(wrapped, model, optimizer, data, it, cfg, ctx)
        it += 1
        tokens_seen += n_targets
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        if ddp.is_main() and (it % cfg.sft_eval_interval == 0 or it == cfg.sft_iters):
            dt = time.time() - t0
            ev = evaluate_greedy(model, enc, spread(eval_tasks, cfg.eval_tasks), dev, cfg.max_new_tokens,
                                   cfg.eval_batch_size)
            history.append(dict(iter=it, loss=loss, eval_pass1=ev['pass1'], eval_by_difficulty=ev['by_difficulty']))
            log(f"sft iter {it}: loss {loss:.4f}, greedy pass@1 {ev['pass1']:.3f} on {ev['n']} {cfg.eval_split} "
                f"tasks ({format_bands(ev)}), {tokens_seen / dt:.0f} target tok/s, "
                f"{dt / max(1, it - bar.initial) * (cfg.sft_iters - it) / 60:.1f} min left")
            checkpoint(done=False)
    bar.close()
    ev = sft_test(model, enc, test_tasks, cfg, log) if ddp.is_main() else None  # rank 0 evaluates
    checkpoint(done=True, eval_result=ev)
    return model, ev


# -----------------------------------------------------------------------------

def policy_path(cfg):
    """The policy the search stages use: the RL model of the (first) method and seed when the rl stage made it or
    makes it in this run, else the SFT model."""
    path = rl_path(cfg.out_dir, cfg.method.split(',')[0], cfg.seed)
    return path if os.path.exists(path) or cfg.stage in ('all', 'rl') else os.path.join(cfg.out_dir, 'sft.pt')


def final_policy(cfg):
    """The search stages' policy, loaded: (model, file name)."""
    path = policy_path(cfg)
    if not os.path.exists(path):
        raise SystemExit(f"no policy in {cfg.out_dir}: run the sft stage first (python train.py --stage=sft)")
    return load_policy(path, cfg.device)[0].eval(), os.path.basename(path)


# -----------------------------------------------------------------------------
# the outputs a run makes or reuses, the checks before any work (outputs.py), and results.json from the records

def output(cfg, stage, name, data, made=(), policy=False, method=None):
    """One stage output: its path, the config that makes it (for RL with the run's seed) and its inputs {name:
    path}: files of data_dir and of out_dir by file name, and the search stages' model as 'policy'."""
    inputs = {n: os.path.join(cfg.data_dir, n) for n in data}
    inputs.update({n: os.path.join(cfg.out_dir, n) for n in made})
    if policy:
        inputs['policy'] = policy_path(cfg)
    return SimpleNamespace(stage=stage, path=os.path.join(cfg.out_dir, name), cfg=cfg, inputs=inputs, method=method)


def rl_output(cfg, method, seed):
    return output(SimpleNamespace(**{**vars(cfg), 'seed': seed}), 'rl', f'rl_{method}_seed{seed}.pt',
                  ['rl.jsonl', f'{cfg.eval_split}.jsonl', 'test.jsonl', TOKENIZER_FILE], made=['sft.pt'],
                  method=method)


def planned_outputs(cfg):
    """Every output of every stage this config names, in pipeline order."""
    tok, ev = TOKENIZER_FILE, f'{cfg.eval_split}.jsonl'
    return ([output(cfg, 'sft', 'sft.pt', ['sft.jsonl', ev, 'test.jsonl', tok])]
            + [rl_output(cfg, m, s) for m in cfg.method.split(',') for s in range(cfg.seed, cfg.seed + cfg.seeds)]
            + [output(cfg, 'mcts', 'value_targets.jsonl', ['rl.jsonl', tok], policy=True)]
            + [output(cfg, 'vm', f'{n}.pt', [ev, tok], made=['value_targets.jsonl'], policy=True) for n in ('vm', 'orm')]
            + [output(cfg, 'decode', 'decode.jsonl', ['test.jsonl', tok], made=['vm.pt', 'orm.pt'], policy=True)])


def wanted(o):
    return outputs.made_from(o.cfg, o.stage, o.inputs)


def finished(o):
    """Whether output o is complete (its record says done; an RL run has rl_iters iterations). An RL run with more
    iterations than rl_iters asks for is stale: a resumed run may extend a finished one, not cut it."""
    rec = outputs.read_record(o.path)
    if not (rec and rec.get('done') and os.path.exists(o.path)):
        return False
    if o.stage == 'rl' and rec['result']['iters'] != o.cfg.rl_iters:
        if rec['result']['iters'] > o.cfg.rl_iters:
            raise outputs.Stale(f"{o.path} holds {rec['result']['iters']} iterations and rl_iters={o.cfg.rl_iters}: "
                                "use another --out_dir, or --restart=rl to redo rl and the stages after it")
        return False
    return True


def restart_from(cfg, plan):
    """--restart=STAGE: move the outputs of that stage and of every later one aside, so they are made again."""
    later = outputs.STAGES[outputs.STAGES.index(cfg.restart):]
    paths = [o.path for o in plan if o.stage in later]
    if cfg.restart == 'sft':  # every RL run in out_dir, of any method or seed, started from sft.pt
        paths += glob.glob(os.path.join(cfg.out_dir, 'rl_*_seed*.pt'))
    dest, moved = outputs.move_aside(sorted(set(paths)), cfg.out_dir)
    print(f"restart {cfg.restart}: " + (f"moved {', '.join(moved)} to {dest}" if moved else "nothing to move"))


def preflight(plan, todo):
    """Stop before any work if an output this run would resume or reuse (those of the stages it runs and of
    the stages before them) was made from other values, or from an input this run rewrites first. An earlier
    stage's output is reused whatever `seed` it was made with: `--stage=rl --seed=1338 --seeds=1` asks for RL
    seed 1338 from the SFT model there is, not for another SFT model. A finished output is reused whatever
    number of processes made it; only a resume must keep that number (each rank's share of a batch)."""
    last = max(outputs.STAGES.index(s) for s in todo)
    rewritten = set()
    for o in plan:
        if outputs.STAGES.index(o.stage) > last:
            break
        ignore = (() if o.stage in todo else ('seed',)) + (('world_size',) if finished(o) else ())
        outputs.check(o.path, o.stage, wanted(o), [n for n, p in o.inputs.items() if p in rewritten], ignore)
        if o.stage in todo and not finished(o):
            rewritten.add(o.path)


def make(o, device, work):
    """Make (or finish) output o with work(), between the records that say what it is made from; a finished
    output is not made again. Returns the output's result."""
    if finished(o):
        tqdm.write(f"{o.stage}: complete in {o.path}, skipping")
        return outputs.read_record(o.path)['result']
    rec = outputs.start(o.path, o.stage, wanted(o), device) if ddp.is_main() else None  # rank 0 keeps the records
    t0 = time.time()
    result = json.loads(json.dumps(work()))  # the record's view: what JSON keeps (dict keys become strings)
    if ddp.is_main():
        outputs.finish(o.path, rec, time.time() - t0, result)
    ddp.barrier()
    return result


HISTORY_KEYS = ('iter', 'optimizer_steps', 'tokens_sampled', 'wall_total', 'reward', 'effective_group_frac', 'kl',
                'filter_problems', 'filter_kept', 'prefix_frac', 'eval_pass1', 'test_pass1', 'test_pass1_sampled',
                'test_by_difficulty')


def effective_by_source(runs):
    """The effective-group fraction (groups whose rewards vary) of fresh problems and of prefix states, pooled
    over every iteration and seed, and the prefix states' share of the trained groups: a prefix of a program
    that passed is easier than its problem, so its group is more often all-pass."""
    fresh, every = [0, 0], [0, 0]  # [effective, all]
    for h in runs.values():
        for r in h[1:]:
            if 'effective_groups_by_difficulty' in r:
                for eff, n in r['effective_groups_by_difficulty'].values():
                    fresh = [fresh[0] + eff, fresh[1] + n]
                every = [every[0] + round(r['effective_group_frac'] * r['items']), every[1] + r['items']]
    prefix = [every[0] - fresh[0], every[1] - fresh[1]]
    share = lambda c: c[0] / c[1] if c[1] else None  # noqa: E731
    return dict(fresh=share(fresh), prefix=share(prefix), prefix_share=share([prefix[1], every[1]]))


def rl_summary(runs):
    """results.json's train.<method>: test pass@1 of the starting model and at the end (greedy, and sampled at
    tasks.EVAL_TEMPERATURE), mean and SE over seeds; the effective-group fraction per iteration averaged over seeds;
    and every seed's history (the keys above, per iteration; test_pass1 where the test split was evaluated)."""
    per_seed = {str(seed): dict(start_pass1=h[0]['test_pass1'], test_pass1=h[-1]['test_pass1'],
                                test_pass1_sampled=h[-1]['test_pass1_sampled'], by_difficulty=h[-1]['test_by_difficulty'],
                                history=[{k: r[k] for k in HISTORY_KEYS if k in r} for r in h])
                for seed, h in runs.items()}
    rs = list(per_seed.values())
    out = {}
    for key in ('start_pass1', 'test_pass1', 'test_pass1_sampled'):
        out[key], out[key + '_se'] = report.mean_se([r[key] for r in rs])
    effs = [[r['effective_group_frac'] for r in run['history'][1:] if 'effective_group_frac' in r] for run in rs]
    out['effective_group_frac'] = [report.mean_se([e[i] for e in effs if i < len(e)])[0]
                                   for i in range(max(map(len, effs)))]
    out['by_difficulty'] = {d: report.mean_se([r['by_difficulty'][d] for r in rs])[0] for d in rs[0]['by_difficulty']}
    out['effective_by_source'] = effective_by_source(runs)
    last = [run['history'][-1] for run in rs]
    for key in ('optimizer_steps', 'tokens_sampled', 'wall_total'):
        out[key] = report.mean_se([h[key] for h in last])[0]
    return dict(out, seeds=per_seed)


def assemble_results(cfg):
    """results.json, from the finished records in out_dir in a fixed order: sft, RL by method (restrl.METHODS) and
    seed (every seed in out_dir, however many processes made them), mcts, vm, orm, decode; with each record's
    machines, wall time and config under 'stages'. A finished output made from other values than this config's
    (an RL seed run with another learning rate, say) is left out and named under 'left_out'."""
    results, stages, left_out = dict(config=vars(cfg)), {}, {}

    def take(o, name):
        rec = outputs.read_record(o.path)
        if not (rec and rec.get('done') and os.path.exists(o.path)):
            return None
        # as in preflight: a finished output whatever number of processes made it; the SFT model whatever seed
        why = outputs.differences(rec['made_from'], wanted(o), ('world_size',) + (('seed',) if o.stage == 'sft' else ()))
        if why:
            left_out[os.path.basename(o.path)] = [w.strip() for w in why]
            return None
        stages[name] = dict(machines=rec['machines'], wall_seconds=rec['wall_seconds'], config=rec['made_from']['config'])
        return rec['result']

    plan = {os.path.basename(o.path): o for o in planned_outputs(cfg)}
    if sft := take(plan['sft.pt'], 'sft'):
        results['sft'] = sft
    for method in restrl.METHODS:
        found = glob.glob(os.path.join(cfg.out_dir, f'rl_{method}_seed*.pt'))
        seeds = sorted(int(p.rsplit('seed', 1)[1][:-3]) for p in found if p.rsplit('seed', 1)[1][:-3].isdigit())
        runs = {s: r['history'] for s in seeds if (r := take(rl_output(cfg, method, s), f'rl {method} seed {s}'))
                and r['iters'] == cfg.rl_iters}
        if runs:
            results.setdefault('train', {})[method] = rl_summary(runs)
    for name in ('value_targets.jsonl', 'vm.pt', 'orm.pt'):
        if r := take(plan[name], name.split('.')[0]):
            results['mcts' if name == 'value_targets.jsonl' else name[:-3]] = r
    if out := take(plan['decode.jsonl'], 'decode'):
        keep = ('pass1', 'pass1_se', 'samples', 'tokens', 'seeds', 'by_difficulty')
        results['decode'] = {m: {n: {k: v[k] for k in keep} for n, v in per.items()} for m, per in out['summary'].items()}
        results['ranking'] = out['ranking']  # on the test pools: AUC, Pearson, pick of k (random and oracle beside)
        for name in ('vm', 'orm'):
            results.setdefault(name, {})['test_within_task_auc'] = out['ranking'][name]['within_task_auc']
    return dict(results, stages=stages, **({'left_out': left_out} if left_out else {}))


def write_results(cfg, results):
    outputs.write_atomic(os.path.join(cfg.out_dir, 'results.json'), json.dumps(results, indent=1))


def print_table(results):
    print("\n== restrl results ==")
    if 'sft' in results:
        print(f"{'SFT greedy pass@1':<34}{results['sft']['test_pass1']:.3f}")
    for m, r in results.get('train', {}).items():
        eff = r['effective_group_frac']  # none for ReST-DPO, which samples only in its filter
        print(f"{m + ' greedy pass@1':<34}{report.fmt(r['start_pass1'], r['start_pass1_se'])} -> "
              f"{report.fmt(r['test_pass1'], r['test_pass1_se'])}   (seeds: {len(r['seeds'])}, "
              f"{r['optimizer_steps']:.0f} optimizer steps"
              + (f"; effective groups, mean over {len(eff)} iterations: {sum(eff) / len(eff):.2f})" if eff else ")"))
    for m, per_budget in results.get('decode', {}).items():
        print(f"{'decode ' + m:<34}" + "   ".join(f"{b}: {report.fmt(v['pass1'], v['pass1_se'])}"
                                                 for b, v in per_budget.items()))


def main(argv):
    try:
        config = configure(argv)
    except ConfigError as e:
        raise SystemExit(f"config error: {e}")
    config['device'] = ddp.setup(pick_device(config['device']))  # under torchrun: this rank's device
    if not ddp.is_main():  # rank 0 speaks for all (their errors still reach stderr)
        sys.stdout = open(os.devnull, 'w')
    cfg = SimpleNamespace(**config)
    os.makedirs(cfg.out_dir, exist_ok=True)
    torch.manual_seed(cfg.seed)
    try:
        enc = get_tokenizer(os.path.join(cfg.data_dir, TOKENIZER_FILE))
        splits = {name: load_tasks(os.path.join(cfg.data_dir, f'{name}.jsonl')) for name in SPLITS}
    except (OSError, ValueError) as e:
        raise SystemExit(f"data error: {e}")
    if ddp.is_main():
        print("data: " + ", ".join(f"{k} {len(v)} tasks" for k, v in splits.items()) + f"; vocab {enc.n_vocab}; "
              f"device {cfg.device}" + (f", {ddp.world()} processes" if ddp.world() > 1 else ''))
    if cfg.stage == 'data':
        return {}
    todo = [s for s in outputs.STAGES if cfg.stage in ('all', s)]
    plan = planned_outputs(cfg)
    try:
        if cfg.restart and ddp.is_main():
            restart_from(cfg, plan)
        ddp.barrier()
        preflight(plan, todo)  # every check before any work
    except outputs.Stale as e:
        raise SystemExit(str(e))
    search = {}  # the search stages' models, loaded once

    def policy():
        if 'policy' not in search:
            search['policy'], name = final_policy(cfg)
            tqdm.write(f"search stages use the policy in {name}")
        return search['policy']

    for o in (o for o in plan if o.stage in todo):
        make(o, cfg.device, lambda: run_stage(o, cfg, enc, splits, policy))
    if not ddp.is_main():
        ddp.cleanup()
        return {}
    with outputs.locked(cfg.out_dir):  # side-by-side runs: one assembles at a time, the last sees every record
        results = assemble_results(cfg)
        write_results(cfg, results)
        report_path = report.write_report(results, cfg.out_dir)
    print_table(results)
    print(f"results written to {os.path.join(cfg.out_dir, 'results.json')} and {report_path}")
    ddp.cleanup()
    return results


def run_stage(o, cfg, enc, splits, policy):
    """Make output o (see planned_outputs); returns what its record keeps as the result."""
    if o.stage == 'sft':
        _, ev = run_sft(cfg, enc, splits['sft'], splits[cfg.eval_split], splits['test'])
        if ev is None:  # a rank other than 0: it does not evaluate
            return {}
        return dict(test_pass1=ev['pass1'], by_difficulty=ev['by_difficulty'], by_band=ev['by_band'])
    if o.stage == 'rl':  # every method and seed starts from the same SFT model
        start = os.path.join(cfg.out_dir, 'sft.pt')
        if not os.path.exists(start):
            raise SystemExit(f"rl starts from the SFT model, and {start} does not exist: run --stage=sft first")
        history = restrl.train_rl(o.cfg, load_policy(start, cfg.device)[0], enc, splits['rl'], splits[cfg.eval_split],
                                  splits['test'], o.path, cfg.device, o.method)
        return dict(iters=history[-1]['iter'], history=history)
    if o.stage == 'mcts':
        records = mcts.collect_value_targets(cfg, policy(), enc, splits['rl'], cfg.out_dir, cfg.device)
        n = [step['n'] for r in records for step in r['steps']]  # rollouts behind each line-end target
        return dict(programs=len(records), tasks=len({r['task_id'] for r in records}),
                    mean_reward=sum(r['value'] for r in records) / max(1, len(records)),
                    line_targets=len(n), multi_rollout_frac=sum(k > 1 for k in n) / max(1, len(n)))
    if o.stage == 'vm':
        records = list(mcts.read_jsonl(os.path.join(cfg.out_dir, 'value_targets.jsonl')))
        dev = value.dev_pool(cfg, policy(), enc, splits[cfg.eval_split], os.path.join(cfg.out_dir, 'vm_dev_pool.pt'),
                             cfg.device)
        return value.train_value_model(cfg, policy(), enc, records, dev, o.path, cfg.device,
                                       only_complete=o.path.endswith('orm.pt'))
    vm, orm = (value.load_value_model(os.path.join(cfg.out_dir, f'{n}.pt'), cfg.device) for n in ('vm', 'orm'))
    return decode.decode_compare(cfg, policy(), vm, orm, enc, splits['test'], cfg.device, o.path)


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except OSError as e:  # a full disk, a read-only out_dir: say which file; every finished file is intact
        raise SystemExit(f"error: {e}\nCompleted stages and the last checkpoints are intact: rerun to resume.")
