"""
The value model (VM) and the outcome reward model (ORM) of ReST-RL's VM-MCTS, and how well a scorer ranks.

V(s) = sigmoid(z), z = head(h) read at any position of a sequence: the policy's trunk and a scalar head
(model.ValueModel). The VM trains on the mcts stage's records, one program each, with Monte-Carlo targets at its
line ends (mcts.value_targets):
  mse   sum over the line ends t and the program's end of (V(prefix_t) - target_t)^2, averaged: the paper's
        regression on V(s)
  rank  for two programs of the same task with different rewards, -log sigmoid(z_better - z_worse) at the
        programs' ends (Bradley-Terry): a head trained by MSE alone learns what varies *between* tasks (a
        short program means an easy task) and ranked a task's own samples worse than chance (results/README.md)
The ORM is the same model and loss with one target per program, its reward (no line targets). With
vm_reads_logp both also read the policy's token log-probs (model.ValueModel: without them the head ranked a
task's samples worse than a random pick, results/README.md). A batch runs each task's prompt once for all its programs.
Which step to keep: the best within-task AUC on a pool of dev samples graded for the purpose (dev is the
tuning split), not the lowest MSE, which mostly measures differences between tasks.
"""
import os
import random
from dataclasses import asdict

import torch
import torch.nn.functional as F
from tqdm import tqdm

import ddp
import mcts
import sandbox
from tasks import pad_id, spread, step_seed
from model import GPTConfig, ValueModel, load_checkpoint, resume, save_checkpoint, weights_digest

BATCH_TASKS = 8     # tasks per batch, all their programs: the ranking loss compares programs of one task
LR = 3e-4
RANK_COEF = 1.0     # weight of the within-task Bradley-Terry loss next to the MSE (0: MSE only, the paper's)
TARGET = 'partial'  # Monte-Carlo targets: 'partial' (mean fraction of tests passed) or 'binary' (pass rate)
GRAD_CLIP = 1.0

# -----------------------------------------------------------------------------
# reading values


def encode_state(enc, prompt, text, complete, block_size):
    """A state as the value model reads it, and where its solution starts: a complete program ends with the
    end-of-solution token. The rare state longer than the context keeps its last block_size tokens."""
    p = enc.encode_ordinary(prompt)
    ids = p + enc.encode_ordinary(text) + ([enc.eot_token] if complete else [])
    return ids[-block_size:], max(0, len(p) - max(0, len(ids) - block_size))


def pad_right(seqs, pad, device):
    """(N, L) right-padded ids and the lengths (N,); the VM is causal, so V(row b) = out[b, length_b - 1]."""
    lengths = torch.tensor([len(s) for s in seqs], device=device)
    idx = torch.full((len(seqs), int(lengths.max())), pad, dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        idx[i, :len(s)] = torch.tensor(s, device=device)
    return idx, lengths


@torch.no_grad()
def values_at_positions(vm, seqs, starts, pad, batch_size=256):
    """The VM's value at every position of every sequence (starts: where each solution begins):
    (values (N, L), ids (N, L), lengths (N,))."""
    idx, lengths = pad_right(seqs, pad, next(vm.parameters()).device)
    start = torch.tensor(starts, device=idx.device)
    vals = torch.cat([torch.sigmoid(vm(idx[i:i + batch_size], start[i:i + batch_size]))
                      for i in range(0, len(seqs), batch_size)])
    return vals, idx, lengths


def state_values(vm, seqs, starts, pad):
    """V(s) of each sequence: the value at its last token, (N,) on the CPU."""
    vals, _, lengths = values_at_positions(vm.eval(), seqs, starts, pad)
    return vals[torch.arange(len(seqs)), lengths - 1].cpu()


def value_scorer(vm, enc):
    """score(jobs) for decoding searches (mcts.run_search): V(prompt + text [+ end token]) in one VM pass."""
    def score(jobs):
        if not jobs:
            return []
        seqs, starts = zip(*[encode_state(enc, task['prompt'], text, complete, vm.gpt.config.block_size)
                             for task, text, complete in jobs])
        return state_values(vm, seqs, starts, pad_id(enc)).tolist()
    return score


def load_value_model(path, device):
    ckpt = load_checkpoint(path, device)
    vm = ValueModel(GPTConfig(**ckpt['model_args']), ckpt['reads_logp']).to(device)
    vm.load_state_dict(ckpt['model'])
    return vm.eval()


# -----------------------------------------------------------------------------
# how well a scorer ranks a task's own samples (every sample graded afterwards, for measuring only)


def within_task_auc(scores, passed):
    """Over every (passing, failing) pair of samples of the same task, the share where the passing one scores
    higher (ties count half): the Mann-Whitney statistic pooled over the mixed tasks. scores, passed: per task a
    list (a score and a bool per sample). None when no task has both a passing and a failing sample."""
    wins = pairs = 0.0
    for s, p in zip(scores, passed):
        s, p = torch.tensor(s, dtype=torch.float64), torch.tensor(p, dtype=torch.bool)
        diff = s[p][:, None] - s[~p][None, :]  # (passing, failing): score of the passing minus the failing
        wins += float((diff > 0).sum()) + 0.5 * float((diff == 0).sum())
        pairs += diff.numel()
    return wins / pairs if pairs else None


def pick(scores, k, complete=None):
    """Index of the chosen one of the first k samples: the highest-scored complete program (a cut one only if
    none is complete; the first on ties); None when there is no sample. Reads no test result."""
    complete = complete or [True] * len(scores)
    return max(range(min(k, len(scores))), key=lambda i: (complete[i], scores[i]), default=None)


def pick_of_k(scores, passed, k, complete=None):
    """Best-of-k by a scorer: the mean over tasks of whether its pick among the first k samples passes.
    With random scores its expectation is random_of_k."""
    return sum(p[pick(s, k, c)] for s, p, c in zip(scores, passed, complete or [None] * len(scores))) / len(scores)


def random_of_k(passed, k):
    return sum(sum(p[:k]) / k for p in passed) / len(passed)  # a uniformly random pick of the first k


def oracle_of_k(passed, k):
    return sum(any(p[:k]) for p in passed) / len(passed)  # pass@k of these samples: the ceiling of any picker


def pearson(scores, passed):
    """Correlation of score and pass over all samples of all tasks: mostly differences between tasks."""
    x = torch.tensor([v for s in scores for v in s], dtype=torch.float64)
    y = torch.tensor([float(v) for p in passed for v in p], dtype=torch.float64)
    return torch.corrcoef(torch.stack([x, y]))[0, 1].item() if len(x) > 1 and x.std() > 0 else float('nan')


def ranking(scores, passed, ks=(1, 4, 16), complete=None):
    """A scorer's ranking figures on a pool: within-task AUC, Pearson, and best-of-k pass@1 for each k (picking
    as decoding does, complete programs first)."""
    out = dict(within_task_auc=within_task_auc(scores, passed), pearson=pearson(scores, passed))
    for k in (k for k in ks if k <= min(map(len, passed))):
        out[f'pick_of_{k}'] = pick_of_k(scores, passed, k, complete)
    return out


def sample_pool(policy, enc, tasks, n, max_tokens, temperature, generator, batch_tasks=32):
    """n programs per task sampled from the prompt (mcts.Draw: text, complete, tokens, mean log-prob)."""
    expand, pool = mcts.policy_expander(policy.eval(), enc, max_tokens, temperature, {}, generator), []
    for i in range(0, len(tasks), batch_tasks):
        pool += expand([t['prompt'] for t in tasks[i:i + batch_tasks]], [n] * len(tasks[i:i + batch_tasks]))
    return pool


def grade_pool(tasks, pool):
    """Whether each sample passes every hidden test: for measuring rankers and picks, never for choosing."""
    results = iter(sandbox.run_batch([(t['prompt'] + d.text, t['tests']) for t, draws in zip(tasks, pool)
                                      for d in draws]))
    return [[next(results).solved for _ in draws] for draws in pool]


def program_scores(vm, enc, tasks, pool):
    """The VM's value of every pool sample as a complete program (per task a list)."""
    jobs = [(t, d.text, d.complete) for t, draws in zip(tasks, pool) for d in draws]
    flat = iter(value_scorer(vm, enc)(jobs))
    return [[next(flat) for _ in draws] for draws in pool]


# -----------------------------------------------------------------------------
# stage vm: training the VM and the ORM


def training_items(records, enc, block_size, target=TARGET, only_complete=False):
    """Per task its programs as training items: ids, the positions read (each line end of `steps`, then the
    program's last token) and their targets ('partial': mean fraction of tests passed, 'binary': pass rate).
    The ORM (only_complete) reads the program's end only. The ranking loss compares programs by the same target."""
    newline, tasks = enc.encode_single_token('\n'), {}
    for r in records:
        if only_complete and not r['complete']:
            continue
        prompt, sol = enc.encode_ordinary(r['prompt']), enc.encode_ordinary(r['solution'])
        ids = (prompt + sol + ([enc.eot_token] if r['complete'] else []))[-block_size:]
        shift = len(prompt) + len(sol) + r['complete'] - len(ids)  # tokens cut from the front
        lines = [len(prompt) + j - shift for j, tok in enumerate(sol) if tok == newline]  # the k-th '\n' token
        pos, tgt = [], []
        key = 'value' if target == 'partial' else 'value_binary'
        for step in [] if only_complete else r['steps']:
            k = r['solution'].count('\n', 0, step['end']) - 1  # this line end is the solution's k-th newline
            if lines[k] >= 0:  # not cut off the front
                pos.append(lines[k])
                tgt.append(step[key])
        tasks.setdefault(r['task_id'], []).append(dict(ids=ids, start=max(0, len(prompt) - shift),
                                                       pos=pos + [len(ids) - 1], tgt=tgt + [r[key]], reward=r[key]))
    return list(tasks.values())


def shared_prompts(items):
    """A batch as prompts and the programs that continue them, in order: a task's programs share its prompt
    (one whose front was cut to fit the context has a prompt of its own). Returns prompts, counts, and per
    program (item, where its completion starts)."""
    prompts, counts, rows = [], [], []
    for task in items:
        for it in task:
            cut = max(it['start'], 1)
            if not prompts or prompts[-1] != it['ids'][:cut]:
                prompts.append(it['ids'][:cut])
                counts.append(0)
            counts[-1] += 1
            rows.append((it, cut))
    return prompts, counts, rows


def vm_loss(vm, items, rank_coef, pad, device):
    """mse + rank_coef * rank over a batch of tasks' programs (module docstring). items: per task a list.
    Each task's prompt runs through the model once for all its programs (ValueModel.program_logits)."""
    prompts, counts, programs = shared_prompts(items)
    z = vm.program_logits(prompts, [it['ids'][cut:] for it, cut in programs], counts, pad)  # (N, Tc) logits
    flat = [it for it, _ in programs]
    reads = torch.tensor([(r, p - cut) for r, (it, cut) in enumerate(programs) for p in it['pos']], device=device)
    y = torch.tensor([t for it in flat for t in it['tgt']], device=device)
    mse = F.mse_loss(torch.sigmoid(z[reads[:, 0], reads[:, 1]]), y)  # mean over read positions of (V - target)^2
    last = torch.tensor([len(it['pos']) for it in flat], device=device).cumsum(0) - 1  # each program's last read
    ends = z[reads[last, 0], reads[last, 1]]  # z at each program's end
    task = torch.tensor([i for i, t in enumerate(items) for _ in t], device=device)
    reward = torch.tensor([it['reward'] for it in flat], device=device)
    better = (task[:, None] == task[None, :]) & (reward[:, None] > reward[None, :])  # (i, j): i beats j, same task
    rank = F.softplus(-(ends[:, None] - ends[None, :])[better]).mean() if better.any() else z.sum() * 0
    return mse + rank_coef * rank, dict(mse=mse.item(), rank=rank.item())  # softplus(-d) = -log sigmoid(d)


def dev_pool(cfg, policy, enc, dev_tasks, path, device):
    """vm_dev_tasks dev tasks x 16 samples, graded once and kept in `path` (remade when the policy or a setting
    it was made with changed): where the VM's and ORM's checkpoints are chosen. Rank 0 makes it."""
    made_with = dict(policy=weights_digest(policy), seed=cfg.seed, tasks=cfg.vm_dev_tasks,
                     temperature=mcts.TEMPERATURE, max_new_tokens=cfg.max_new_tokens)
    if ddp.is_main() and not (os.path.exists(path) and load_checkpoint(path).get('made_with') == made_with):
        tasks = spread(dev_tasks, cfg.vm_dev_tasks)
        gen = torch.Generator(device=device).manual_seed(cfg.seed)
        pool = sample_pool(policy, enc, tasks, 16, cfg.max_new_tokens, mcts.TEMPERATURE, gen)
        save_checkpoint(dict(tasks=tasks, pool=pool, passed=grade_pool(tasks, pool), made_with=made_with), path)
    ddp.barrier()
    return load_checkpoint(path)


class Loss(torch.nn.Module):
    """vm_loss as a module's forward: the form DDP wraps (ddp.wrap) to all-reduce the VM's gradients."""

    def __init__(self, vm):
        super().__init__()
        self.vm = vm

    def forward(self, items, rank_coef, pad, device):
        return vm_loss(self.vm, items, rank_coef, pad, device)


def dev_ranking(vm, enc, dev):
    """How the model ranks the dev pool's samples (ranking's figures, named dev_...)."""
    scores = program_scores(vm.eval(), enc, dev['tasks'], dev['pool'])
    complete = [[d.complete for d in draws] for draws in dev['pool']]
    return {f'dev_{k}': v for k, v in ranking(scores, dev['passed'], complete=complete).items()}


def save_value_model(path, vm, optimizer, best, it, history, cfg, done):
    """A resumable checkpoint; a finished one holds the kept step's weights and metrics (rank 0 only)."""
    save_checkpoint(dict(model=vm.state_dict(), optimizer=optimizer.state_dict(), best=None if done else best,
                         model_args=asdict(vm.gpt.config), reads_logp=vm.reads_logp, iter_num=it, config=vars(cfg),
                         history=history, done=done, metrics=dict(best['metrics'], iters_trained=it)), path)


def train_value_model(cfg, policy, enc, records, dev, out_path, device, only_complete=False, log=tqdm.write):
    """The VM (or with only_complete the ORM: the same model, loss, steps and batch) on the mcts records, from
    the policy's weights. Validates every vm_eval_interval steps on the dev pool `dev` (dev_pool) and keeps the
    step with the best within-task AUC. Checkpoints to out_path and resumes from it. Returns the kept metrics.
    Under torchrun each rank takes its share of every batch's tasks and DDP averages the ranks' losses' gradients
    (each rank's mean: the one-process loss when the ranks hold equal numbers of lines and pairs, close otherwise);
    rank 0 validates, keeps the best step and writes the checkpoint."""
    name = 'orm' if only_complete else 'vm'
    items = training_items(records, enc, policy.config.block_size, only_complete=only_complete)
    if not items:
        raise ValueError(f"{name}: no training programs ({len(records)} records given)")
    vm = ValueModel.from_policy(policy, cfg.vm_reads_logp).to(device)
    trainee = ddp.wrap(Loss(vm), device)
    optimizer = torch.optim.AdamW([p for p in vm.parameters() if p.requires_grad], lr=LR, betas=(0.9, 0.95),
                                  weight_decay=0.0)
    it, history, best = 0, [], None
    ckpt = resume(out_path, device, vm, optimizer)
    if ckpt and ckpt['done']:
        log(f"{name}: complete in {out_path}, skipping")
        return ckpt['metrics']
    if ckpt:
        it, history, best = ckpt['iter_num'], ckpt['history'], ckpt['best']
        log(f"{name}: resuming from iteration {it}")
    log(f"{name}: {sum(map(len, items))} programs of {len(items)} tasks, {TARGET} targets"
        + ('' if only_complete else ' at every line end'))
    bar = tqdm(total=cfg.vm_iters, initial=it, desc=name, dynamic_ncols=True, disable=not ddp.is_main())
    while it < cfg.vm_iters:
        vm.train()
        rng = random.Random(step_seed(cfg.seed, it))  # batches depend on (seed, iteration) only
        batch = ddp.shard(rng.sample(items, min(BATCH_TASKS, len(items))))  # this rank's tasks of it
        loss, parts = trainee(batch, RANK_COEF, pad_id(enc), device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vm.parameters(), GRAD_CLIP)
        optimizer.step()
        it += 1
        bar.update(1)
        if ddp.is_main() and (it % cfg.vm_eval_interval == 0 or it == cfg.vm_iters):
            metrics = dict(iter=it, loss=loss.item(), **parts, **dev_ranking(vm, enc, dev))
            history.append(metrics)
            if best is None or (metrics['dev_within_task_auc'] or 0) > (best['metrics']['dev_within_task_auc'] or 0):
                best = dict(metrics=metrics, model={k: v.clone() for k, v in vm.state_dict().items()})
            save_value_model(out_path, vm, optimizer, best, it, history, cfg, done=False)
            log(f"{name} iter {it}: " + ', '.join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    bar.close()
    if not ddp.is_main():
        return {}
    vm.load_state_dict(best['model'])
    save_value_model(out_path, vm, optimizer, best, it, history, cfg, done=True)
    log(f"{name}: keeping step {best['metrics']['iter']} of {it} (the best dev within-task AUC)")
    return dict(best['metrics'], iters_trained=it)
