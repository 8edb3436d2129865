"""
ReST-GRPO (ReST-RL, arXiv 2508.19576) with naive GRPO and ReST-DPO as baselines, on one iteration loop.

An iteration takes rl_batch_groups training items, makes one batch of them and takes rl_inner_steps optimizer
steps, so every method is compared at the same number of optimizer steps (the paper's axis). What differs is
where the items come from and the loss (METHODS):
- grpo:      fresh RL problems, G completions each, every group trained on (a group whose G rewards are equal
             has zero advantage: compute spent for nothing);
- rest_grpo: the official offline ReST data set (THUDM/ReST-RL): a filter round samples FILTER_SAMPLES = 5
             programs of each of rl_filter_tasks fresh problems with the current policy, keeps the problems whose
             population reward std >= rl_std_threshold, and adds line prefixes of each kept problem's best program
             (reward >= PREFIX_MIN_REWARD) as new start states; the items are shuffled and trained on once (one
             epoch), G completions each; a new filter round, with the policy as it is then, starts when fewer than
             a batch are left (the official runs two such ReST iterations over its whole data set);
- rest_dpo:  the (best, worst) pair of the filter round's own samples of each kept problem, DPO loss;
- rest_grpo_filter: ReST-GRPO without the prefix states (an ablation: what the filter alone does).
Every sampled token counts in tokens_sampled, the filter rounds' too.
"""

import copy
import hashlib
import math
import os
import time
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm

import ddp
import sandbox
from tasks import (
    EVAL_SAMPLES, EVAL_TEMPERATURE, completion_text, evaluate_greedy, evaluate_sampled, pad_id, spread, step_seed)
from model import autocast, load_checkpoint, resume, save_checkpoint, weights_digest

# The official constants (THUDM/ReST-RL and its TRL GRPO): the config keys are what the experiments vary
FILTER_SAMPLES = 5        # ReST: programs sampled per problem in a filter round (official n = 5)
FILTER_TEMPERATURE = 0.7  # ReST: their sampling temperature (official)
PREFIX_MIN_REWARD = 0.9   # ReST: cut prefixes from a kept problem's best program when its reward >= this (official)
PREFIX_LINES_FRAC = 0.5   # ReST: draw ceil(frac * n_lines) prefixes per such program (official)
PREFIX_ALPHA = 0.95       # ReST: a k-line prefix is drawn with weight alpha**(k-1): short prefixes favoured (official)
CLIP_EPS = 0.2            # PPO clip (acts only from the second optimizer step on a batch)
ADV_EPS = 1e-4            # eps in A = (r - mean) / (std + eps)
DPO_BETA = 0.1            # ReST-DPO's beta
GRAD_CLIP = 1.0
MICRO_BATCH = 64          # rows per forward/backward (the batch mean is the same in any slicing)
TIMEOUT = 1.0             # sandbox seconds per program in rollouts
SCALE_BY_STD = True       # False: Dr. GRPO (no division by the group std)
TOKEN_LEVEL = False       # True: DAPO, the loss averaged over all tokens of the batch instead of per output

METHODS = {  # where a method's training items come from, and its loss
    'rest_grpo': dict(filtered=True, prefixes=True, loss='grpo'),
    'grpo': dict(filtered=False, prefixes=False, loss='grpo'),
    'rest_dpo': dict(filtered=True, prefixes=False, loss='dpo'),
    'rest_grpo_filter': dict(filtered=True, prefixes=False, loss='grpo'),  # an ablation: the filter, no prefix states
}

# -----------------------------------------------------------------------------
# losses


def group_advantages(rewards, eps=ADV_EPS, scale_by_std=True):
    """rewards (n_groups, G) -> advantages (n_groups, G); population std, as the official filter uses."""
    centered = rewards - rewards.mean(1, keepdim=True)  # r - mean(r)
    std = rewards.std(1, correction=0, keepdim=True)  # sqrt(mean((r - mean(r))^2))
    adv = centered / (std + eps) if scale_by_std else centered  # A = (r - mean) / (std + eps); Dr. GRPO: r - mean
    flat = rewards.amax(1, keepdim=True) == rewards.amin(1, keepdim=True)
    return adv.masked_fill(flat, 0.0)  # a flat group teaches nothing: exactly 0, not rounding noise


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, clip_eps=CLIP_EPS, kl_coef=0.02, token_level=False):
    """Clipped GRPO objective with a k3 KL penalty to the reference, per token, pads masked.
    logp, old_logp, ref_logp, mask: (R, L) over completion tokens; advantages: (R,) one per output.
    Averaged over the tokens of each output, then over outputs; token_level=True averages over all tokens (DAPO)."""
    A = advantages[:, None]  # (R, 1)
    log_ratio = torch.where(mask, logp - old_logp, 0.0)  # pads -> ratio 1 and KL 0, whatever garbage they hold
    rho = log_ratio.exp()  # rho = pi / pi_old
    pg = -torch.min(rho * A, rho.clamp(1 - clip_eps, 1 + clip_eps) * A)  # -min(rho A, clip(rho, 1-e, 1+e) A)
    log_ref = torch.where(mask, ref_logp - logp, 0.0)  # log(pi_ref / pi)
    kl = log_ref.exp() - log_ref - 1  # k3 = pi_ref/pi - log(pi_ref/pi) - 1 >= 0
    per_token = (pg + kl_coef * kl) * mask  # L_t = -min(...) + beta KL_t; the KL sits inside, per token
    if token_level:
        loss = per_token.sum() / mask.sum().clamp(min=1)  # DAPO: mean over all tokens of the batch
    else:
        loss = (per_token.sum(1) / mask.sum(1).clamp(min=1)).mean()  # GRPO: mean over tokens, then outputs
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        cut = ((rho < 1 - clip_eps) & (A < 0)) | ((rho > 1 + clip_eps) & (A > 0))  # the clip zeroes the gradient
        stats = dict(clip_frac=((cut & mask).sum() / n).item(), kl=((kl * mask).sum() / n).item(),
                     ratio=((rho * mask).sum() / n).item())
    return loss, stats


def dpo_loss(policy_chosen_logp, policy_rejected_logp, ref_chosen_logp, ref_rejected_logp, beta=DPO_BETA):
    """DPO (Rafailov et al., 2023) on sequence log-prob sums, each (P,). Returns (mean loss, stats)."""
    chosen = policy_chosen_logp - ref_chosen_logp  # log pi(y_w) / pi_ref(y_w)
    rejected = policy_rejected_logp - ref_rejected_logp  # log pi(y_l) / pi_ref(y_l)
    loss = -F.logsigmoid(beta * (chosen - rejected)).mean()  # L = -log sigmoid(beta (chosen - rejected))
    with torch.no_grad():
        stats = dict(reward_acc=(chosen > rejected).float().mean().item(),
                     margin=(beta * (chosen - rejected)).mean().item())
    return loss, stats


# -----------------------------------------------------------------------------
# ReST filtering (official: THUDM/ReST-RL experiment/process_gen_data.py)


def keep_groups(rewards, std_threshold=0.05):
    """(n_groups, G) -> (n_groups,) bool: population reward std >= threshold (drops all-pass / all-fail)."""
    return rewards.std(1, correction=0) >= std_threshold


def prefix_states(solution, rng, frac=PREFIX_LINES_FRAC, alpha=PREFIX_ALPHA):
    """Partial programs (the first k lines of a solution of n lines) to start from after the task's prompt, as
    the official code draws them: ceil(frac * n) draws with replacement, the k-line prefix with weight
    alpha**(k-1), k = 1..n (the full program too: from there the policy learns to stop)."""
    lines = solution.rstrip().split('\n')  # official: completion.rstrip().split('\n')
    n = len(lines)
    k = np.arange(1, n + 1)  # candidate prefix lengths 1..n
    w = alpha ** (k - 1.0)  # weight alpha^(k-1): short prefixes favoured
    picks = rng.choice(k, size=math.ceil(frac * n), replace=True, p=w / w.sum())
    return ['\n'.join(lines[:j]) + '\n' for j in picks]  # whole lines, so a state ends in '\n'


NO_SAMPLES = dict(tokens=0, t_sample=0.0, t_score=0.0, truncated=0)  # a rollout's info when nothing was sampled


def filter_round(method, policy, enc, pool, rl_tasks, cfg, generator, rng):
    """One offline ReST filtering pass (official: experiment/process_gen_data.py) over rl_filter_tasks fresh
    problems; appends the data set it builds (rest_grpo: (task, prefix program) start states; rest_dpo:
    (task, chosen ids, rejected ids) pairs) to the pool's queue in a shuffled order. Returns the round's info."""
    states = ddp.shard([make_state(i, '', rl_tasks, enc) for i in pool.fresh(cfg.rl_filter_tasks)])  # this rank's
    groups, info = [], dict(NO_SAMPLES)
    chunk = max(1, cfg.eval_batch_size // FILTER_SAMPLES)  # rows per sampler call as in an evaluation
    for k in range(0, len(states), chunk):
        g, chunk_info = rollout(policy, enc, states[k:k + chunk], FILTER_SAMPLES, cfg, generator, FILTER_TEMPERATURE)
        groups += [dict(task_idx=x['state']['task_idx'], reward=x['reward'], ids=x['ids'], texts=x['texts']) for x in g]
        info = {key: v + chunk_info[key] for key, v in info.items()}
    groups = ddp.unshard(ddp.gather(groups))  # every rank's problems, in order: every rank builds the same data set
    info['tokens'] = int(ddp.all_sum(info['tokens']))
    keep = keep_groups(torch.stack([g['reward'] for g in groups]), cfg.rl_std_threshold).tolist()
    items = []
    for g, kept in zip(groups, keep):
        if not kept:
            continue
        i, best, worst = g['task_idx'], int(g['reward'].argmax()), int(g['reward'].argmin())
        if METHODS[method]['loss'] == 'dpo':
            items.append((i, g['ids'][best], g['ids'][worst]))  # rewards differ: the std is above the threshold
            continue
        items.append((i, ''))
        if METHODS[method]['prefixes'] and g['reward'][best] >= PREFIX_MIN_REWARD:
            prompt = rl_tasks[i]['prompt']  # a state keeps room for one new token at least
            items += [(i, p) for p in prefix_states(g['texts'][best], rng)
                      if len(enc.encode_ordinary(prompt + p)) < policy.config.block_size]
    pool.queue += [items[j] for j in rng.permutation(len(items))]
    return dict(info, problems=len(groups), kept=sum(keep), items=len(items))


# -----------------------------------------------------------------------------
# start states, rollouts


class StatePool:
    """Where training items come from: fresh RL problems (task indices in `task_ids`) in a reshuffled order each
    epoch, and a queue of ready items (ReST's filtered data set) taken in order, each once. Its state_dict
    makes a resumed run exact."""

    def __init__(self, task_ids, seed):
        self.task_ids, self.seed = list(task_ids), seed
        self.epoch, self.cursor, self.queue = 0, 0, []

    def fresh(self, n):
        out = []
        while len(out) < n:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.task_ids))
            take = order[self.cursor:self.cursor + n - len(out)]
            out += [self.task_ids[j] for j in take]
            self.cursor += len(take)
            if self.cursor == len(self.task_ids):
                self.epoch, self.cursor = self.epoch + 1, 0
        return out

    def take(self, n):
        out, self.queue = self.queue[:n], self.queue[n:]
        return out

    def state_dict(self):
        return dict(epoch=self.epoch, cursor=self.cursor, queue=list(self.queue))

    def load_state_dict(self, d):
        self.epoch, self.cursor, self.queue = d['epoch'], d['cursor'], [tuple(s) for s in d['queue']]


def rollout(policy, enc, states, G, cfg, generator=None, temperature=1.0):
    """Sample G completions of each state (dict: task, text = prompt + prefix, ids) at `temperature` and
    score every program = text + completion on the task's hidden tests. A completion cut at max_new_tokens is
    scored as it is and gets no end token: training only ever sees tokens the policy sampled.
    Returns (groups, info): one group per state with its G completions, their sampler log-probs and rewards."""
    t0 = time.time()
    policy.eval()
    s = policy.sample([state['ids'] for state in states], n=G, max_new_tokens=cfg.max_new_tokens,
                      temperature=temperature, stop_ids=(enc.eot_token,), pad_id=pad_id(enc),
                      generator=generator)
    rows, stopped = s.rows(), s.stopped.tolist()
    logps = [lp[m].cpu() for lp, m in zip(s.logp, s.mask)]
    texts = [completion_text(enc, r) for r in rows]  # the end token is not code
    t1 = time.time()
    jobs = [(states[i // G]['text'] + texts[i], states[i // G]['task']['tests']) for i in range(len(rows))]
    # binary: all tests must pass, so the sandbox may stop at the first failure (no fork per test); a crash or
    # a hang is a Result with reward 0
    results = sandbox.run_batch(jobs, timeout=TIMEOUT, stop_at_failure=cfg.rl_reward == 'binary')
    t2 = time.time()
    binary = torch.tensor([float(r.solved) for r in results]).view(-1, G)  # every test passed
    reward = binary
    if cfg.rl_reward == 'partial':
        reward = torch.tensor([r.reward for r in results]).view(-1, G)  # fraction of tests passed
    groups = [dict(state=state, ids=rows[k * G:(k + 1) * G], logp=logps[k * G:(k + 1) * G],
                   texts=texts[k * G:(k + 1) * G], reward=reward[k], binary=binary[k])
              for k, state in enumerate(states)]
    info = dict(t_sample=t1 - t0, t_score=t2 - t1, tokens=sum(len(r) for r in rows),
                truncated=len(rows) - sum(stopped))
    return groups, info


def make_state(task_idx, prefix, rl_tasks, enc):
    """A start state: the task's prompt and the first lines of a program (prefix; '' for a fresh problem)."""
    task = rl_tasks[task_idx]
    text = task['prompt'] + prefix
    return dict(task=task, task_idx=task_idx, prefix=prefix, text=text, ids=enc.encode_ordinary(text))


# -----------------------------------------------------------------------------
# updates


def completion_logprobs(model, prompts, completions, pad):
    """log pi(c_j | prompt, c_<j) for every completion token: (R, Tc), and its mask (R, Tc).
    The R completions continue the P prompts in order, R // P each (a GRPO group: G samples of one state).
    Each prompt runs through the model once and its completions attend to its keys and values
    (GPT.shared_prompt_hidden), so a group of G pays for its prompt once instead of G times (the gradient
    through the prompt sums over the group)."""
    P, R = len(prompts), len(completions)
    assert R % P == 0, f"{R} completions do not split evenly over {P} prompts"
    last, h_comp, mask = model.shared_prompt_hidden(prompts, completions, [R // P] * P, pad)
    h = torch.cat([last[:, None], h_comp[:, :-1]], 1)  # (R, Tc, C): h[:, j] predicts completion token j
    comp_idx = pad_sequence([torch.tensor(c) for c in completions], True, pad).to(h.device)  # (R, Tc)
    lp = torch.log_softmax(model.lm_head(h).float(), -1).gather(-1, comp_idx[..., None]).squeeze(-1)
    return lp, mask  # (R, Tc), (R, Tc)


class LogProbs(torch.nn.Module):
    """The policy being trained, as a module whose forward is completion_logprobs: the form DDP wraps (ddp.wrap
    all-reduces the gradients of what runs through a wrapped forward). In one process it is just a call."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, prompts, completions, pad):
        return completion_logprobs(self.model, prompts, completions, pad)


def _slices(n, size):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _step(policy, optimizer):
    norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), GRAD_CLIP)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # micro-batches accumulate into .grad until the next step
    return float(norm)


def grpo_update(trainee, ref, optimizer, batch, cfg, pad, ctx):
    """GRPO on a batch of groups: rl_inner_steps optimizer steps, micro-batches of MICRO_BATCH rows weighted to
    give the batch mean. `trainee` is LogProbs(policy), DDP-wrapped under torchrun, where `batch` is this rank's
    share: the weights use the whole batch's counts, times the number of ranks, because DDP averages.
    Reference log-probs are computed once per batch under no_grad; the old policy's are the first step's own
    (detached), taken before any update, so that step has rho = 1 exactly and costs no extra pass.
    Dropout stays off (eval mode): it would make pi and pi_old differ by noise."""
    # groups of similar completion length share a micro-batch, so rows carry less padding (the batch mean is
    # the same in any order)
    batch = sorted(batch, key=lambda g: max(len(c) for c in g['ids']))
    prompts = [g['state']['ids'] for g in batch]  # one per group: computed once for its G rows
    comps = [c for g in batch for c in g['ids']]  # sampled tokens only, the end token when it was sampled
    G = len(comps) // len(batch)
    adv = group_advantages(torch.stack([g['reward'] for g in batch]), scale_by_std=SCALE_BY_STD).flatten()
    parts = _slices(len(batch), max(1, MICRO_BATCH // G))  # micro-batches of whole groups
    rows = [slice(s.start * G, s.stop * G) for s in parts]
    with torch.no_grad(), ctx:
        ref_lp = [completion_logprobs(ref, prompts[s], comps[r], pad) for s, r in zip(parts, rows)]  # [(lp, mask)]
    n_tok = ddp.all_sum(sum(int(mask.sum()) for _, mask in ref_lp))  # over every rank's groups
    n_groups, W = ddp.all_sum(len(batch)), ddp.world()
    old_lp = [None] * len(parts)
    tot = dict(loss=0.0, kl=0.0, clip_frac=0.0, ratio=0.0, grad_norm=0.0)
    for step in range(cfg.rl_inner_steps):
        for i, (s, r, (r_lp, mask)) in enumerate(zip(parts, rows, ref_lp)):
            with ddp.no_sync(trainee, last=i == len(parts) - 1), ctx:  # one all-reduce per step
                lp, _ = trainee(prompts[s], comps[r], pad)
                if step == 0:
                    old_lp[i] = lp.detach()  # pi_old = the policy that sampled the batch
                loss, stats = grpo_loss(lp, old_lp[i], r_lp, adv[r].to(lp.device), mask, kl_coef=cfg.rl_kl_coef,
                                     token_level=TOKEN_LEVEL)
                share = int(mask.sum()) / n_tok if TOKEN_LEVEL else (s.stop - s.start) / n_groups
                (loss * share * W).backward()  # the micro-batch's share of the batch mean (DDP divides by W)
            tot['loss'] += loss.item() * share
            for k, v in stats.items():
                tot[k] += v * int(mask.sum()) / n_tok  # token-weighted means
        tot['grad_norm'] += _step(trainee, optimizer)
    tot = {k: ddp.all_sum(v) / cfg.rl_inner_steps if k != 'grad_norm' else v / cfg.rl_inner_steps
           for k, v in tot.items()}
    # |log pi_old - log pi at sampling|: float noise, unless sampler and trainer disagree (a bug, or bfloat16)
    old = torch.cat([o_lp[mask].cpu() for o_lp, (_, mask) in zip(old_lp, ref_lp)])
    tot['sampler_logp_err'] = float((old - torch.cat([lp for g in batch for lp in g['logp']])).abs().max())
    return tot


def dpo_update(trainee, ref, optimizer, batch, cfg, pad, ctx):
    """DPO on the (best, worst) pair of every group against the frozen reference; rl_inner_steps steps. `trainee`
    and the weights as in grpo_update."""
    prompts = [g['state']['ids'] for g in batch]
    chosen = [g['ids'][int(g['reward'].argmax())] for g in batch]
    rejected = [g['ids'][int(g['reward'].argmin())] for g in batch]
    parts = _slices(len(batch), max(1, MICRO_BATCH // 2))  # a pair is two rows

    def seq_logp(logprobs, s):  # log-prob sums and per-token log-probs of chosen then rejected rows
        pairs = [c for pair in zip(chosen[s], rejected[s]) for c in pair]  # each prompt's two rows: (c, r)
        lp, mask = logprobs(prompts[s], pairs, pad)
        order = torch.cat([torch.arange(0, len(pairs), 2), torch.arange(1, len(pairs), 2)])  # chosen, rejected
        lp, mask = torch.where(mask, lp.float(), 0.0)[order], mask[order]
        return lp.sum(1), lp, mask

    with torch.no_grad(), ctx:
        ref_out = [seq_logp(lambda *a: completion_logprobs(ref, *a), s) for s in parts]
    tot = dict(loss=0.0, kl=0.0, reward_acc=0.0, margin=0.0, grad_norm=0.0)
    n_pairs, W = ddp.all_sum(len(batch)), ddp.world()
    for _ in range(cfg.rl_inner_steps):
        for i, (s, (r_seq, r_lp, mask)) in enumerate(zip(parts, ref_out)):
            with ddp.no_sync(trainee, last=i == len(parts) - 1), ctx:
                seq, lp, _ = seq_logp(trainee, s)
                P, share = s.stop - s.start, (s.stop - s.start) / n_pairs
                loss, stats = dpo_loss(seq[:P], seq[P:], r_seq[:P], r_seq[P:])
                (loss * share * W).backward()  # DDP divides by W
            log_ref = (r_lp - lp).detach()  # log(pi_ref / pi), 0 at pads
            stats['kl'] = float((log_ref.exp() - log_ref - 1).sum() / mask.sum())  # k3 KL, logged only
            tot['loss'] += loss.item() * share
            for k, v in stats.items():
                tot[k] += v * share
        tot['grad_norm'] += _step(trainee, optimizer)
    return {k: (v if k == 'grad_norm' else ddp.all_sum(v)) / cfg.rl_inner_steps for k, v in tot.items()}


# -----------------------------------------------------------------------------
# the iteration loop


def next_items(method, policy, enc, pool, rl_tasks, cfg, generator, rng):
    """The iteration's rl_batch_groups training items. When the queue holds fewer, one filter round first adds
    the next rl_filter_tasks problems' data set (a round that keeps too little gives a short batch, an empty
    one no step: a policy that solves nothing or everything has nothing to learn here).
    Returns (items, info of the filter round)."""
    B, info = cfg.rl_batch_groups, dict(tokens=0, t_sample=0.0, t_score=0.0, rounds=0, problems=0, kept=0, items=0)
    if not METHODS[method]['filtered']:
        return [(i, '') for i in pool.fresh(B)], info
    if len(pool.queue) < B:
        info.update(filter_round(method, policy, enc, pool, rl_tasks, cfg, generator, rng), rounds=1)
    return pool.take(B), info


def train_step(method, trainee, ref, optimizer, items, enc, rl_tasks, cfg, generator, ctx):
    """One batch of items -> rl_inner_steps optimizer steps; under torchrun each rank samples, scores and trains
    on its share of the items. Returns (every rank's sampled groups, in brief; rollout info; update stats)."""
    pad, policy = pad_id(enc), trainee.module.model if hasattr(trainee, 'module') else trainee.model
    mine = ddp.shard(items)
    if METHODS[method]['loss'] == 'dpo':  # a pair is a two-row group whose first row won
        pairs = [dict(state=make_state(i, '', rl_tasks, enc), ids=[c, r], reward=torch.tensor([1.0, 0.0]))
                 for i, c, r in mine]
        return [], dict(NO_SAMPLES), dpo_update(trainee, ref, optimizer, pairs, cfg, pad, ctx)
    states = [make_state(i, p, rl_tasks, enc) for i, p in mine]
    with ctx:
        groups, info = rollout(policy, enc, states, cfg.rl_group_size, cfg, generator, cfg.rl_temperature)
    stats = grpo_update(trainee, ref, optimizer, groups, cfg, pad, ctx)
    brief = [dict(reward=g['reward'], binary=g['binary'], fresh=g['state']['prefix'] == '',
                  difficulty=g['state']['task']['difficulty']) for g in groups]  # what the iteration record reads
    info.update(tokens=int(ddp.all_sum(info['tokens'])), truncated=int(ddp.all_sum(info['truncated'])))
    return ddp.unshard(ddp.gather(brief)), info, stats


def _effective_by_difficulty(groups):
    """{difficulty: [informative, all]} over the groups of fresh problems (prefix states are easier)."""
    out = {}
    for g in groups:
        if g['fresh']:
            counts = out.setdefault(g['difficulty'], [0, 0])
            counts[0] += int(g['reward'].max() > g['reward'].min())
            counts[1] += 1
    return dict(sorted(out.items()))


def iteration_record(it, prev, groups, n_items, sample_info, filter_info, stats, wall, cfg):
    """The history record of iteration `it` (cumulative counts carried on from `prev`)."""
    steps = cfg.rl_inner_steps if stats else 0  # no items (nothing informative left): no step taken
    rec = dict(iter=it, optimizer_steps=prev['optimizer_steps'] + steps, items=n_items,
               tokens_iter=sample_info['tokens'] + filter_info['tokens'],
               tokens_sampled=prev['tokens_sampled'] + sample_info['tokens'] + filter_info['tokens'],
               wall=wall, wall_total=prev['wall_total'] + wall,
               filter_rounds=prev.get('filter_rounds', 0) + filter_info['rounds'],
               filter_problems=prev.get('filter_problems', 0) + filter_info['problems'],
               filter_kept=prev.get('filter_kept', 0) + filter_info['kept'], **stats)
    if groups:  # the training samples (not rest_dpo's, which trains on the filter's own)
        rewards = torch.stack([g['reward'] for g in groups])  # (items, G)
        fresh = torch.tensor([g['fresh'] for g in groups])
        rec.update(reward=rewards.mean().item(),
                   reward_binary=torch.stack([g['binary'] for g in groups]).mean().item(),
                   effective_group_frac=(rewards.amax(1) > rewards.amin(1)).float().mean().item(),  # a gradient
                   prefix_frac=1 - fresh.float().mean().item(),  # share of trained groups that start mid-program
                   effective_groups_by_difficulty=_effective_by_difficulty(groups),
                   truncated_frac=sample_info['truncated'] / rewards.numel())
    t_sample, t_score = sample_info['t_sample'] + filter_info['t_sample'], sample_info['t_score'] + filter_info['t_score']
    rec.update(sample_share=t_sample / wall, score_share=t_score / wall, update_share=1 - (t_sample + t_score) / wall)
    return rec


def rl_task_ids(rl_tasks, cfg):
    """The RL problem pool: the rl split's tasks of difficulty >= rl_min_difficulty (the hard regime)."""
    ids = [i for i, t in enumerate(rl_tasks) if t['difficulty'] >= cfg.rl_min_difficulty]
    if not ids:
        raise ValueError(f"config key 'rl_min_difficulty' = {cfg.rl_min_difficulty}: no rl task is that hard")
    return ids


RESUME_FREE = ('rl_iters', 'rl_eval_interval', 'rl_test_interval')  # may change on a resume


def start_eval_path(policy, cfg, with_test, path):
    """Where the starting policy's evaluation is kept, beside the run's checkpoint: the name hashes the weights and
    every setting the evaluation reads, so a file is reused only for the very same evaluation."""
    settings = [cfg.seed, cfg.eval_split, cfg.eval_tasks, cfg.final_eval_tasks, cfg.max_new_tokens, EVAL_TEMPERATURE,
                EVAL_SAMPLES, cfg.data_dir, with_test]
    h = hashlib.sha1((weights_digest(policy) + repr(settings)).encode())
    return os.path.join(os.path.dirname(path) or '.', f'rl_start_{h.hexdigest()[:16]}.pt')


def refuse_other_run(ckpt, cfg, path):
    """Stop before resuming a checkpoint that another setting (or an earlier restrl) wrote: its weights and data
    queue would silently mix into this run."""
    if 'queue' not in ckpt['pool']:
        raise SystemExit(f"{path} was written by an earlier restrl (online ReST filter); delete it or use another "
                         "out_dir")
    keys = [k for k in vars(cfg) if (k.startswith('rl_') or k == 'seed') and k not in RESUME_FREE]
    differ = [f"{k}={ckpt['config'].get(k)!r} (this run: {getattr(cfg, k)!r})" for k in keys
              if ckpt['config'].get(k) != getattr(cfg, k)]
    if differ:
        raise SystemExit(f"{path} was trained with {', '.join(differ)}; rerun with those settings, or use another "
                         "out_dir")


def check_settings(cfg, method):
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got '{method}'")
    if cfg.rl_reward not in ('binary', 'partial'):
        raise ValueError(f"config key 'rl_reward' must be 'binary' or 'partial'; got '{cfg.rl_reward}'")
    for key, least in (('rl_eval_interval', 1), ('rl_group_size', 2)):
        if getattr(cfg, key) < least:  # a group of one sample has no reward std to go by
            raise ValueError(f"config key '{key}' must be at least {least}; got {getattr(cfg, key)}")


class Evaluator:
    """Greedy pass@1 on the eval split (dev), and on test greedy and sampled (tasks.EVAL_SAMPLES programs a task
    at tasks.EVAL_TEMPERATURE); each call adds its figures to an iteration record and returns a log fragment."""

    def __init__(self, policy, enc, eval_tasks, test_tasks, cfg, device):
        self.policy, self.enc, self.cfg, self.device = policy, enc, cfg, device
        self.eval_tasks = spread(eval_tasks, cfg.eval_tasks)
        self.test_tasks = None if test_tasks is None else spread(test_tasks, cfg.final_eval_tasks)

    def dev(self, rec):
        cfg = self.cfg
        ev = evaluate_greedy(self.policy, self.enc, self.eval_tasks, self.device, cfg.max_new_tokens,
                               cfg.eval_batch_size)
        rec.update(eval_pass1=ev['pass1'], eval_by_difficulty=ev['by_difficulty'])
        return f", {cfg.eval_split} pass@1 {ev['pass1']:.3f}"

    def at(self, it, rec):
        """The evaluations due at iteration `it`: dev every rl_eval_interval, test every rl_test_interval, both at
        the end."""
        cfg, last = self.cfg, it == self.cfg.rl_iters
        said = self.dev(rec) if it % cfg.rl_eval_interval == 0 or last else ''
        if self.test_tasks is not None and (last or cfg.rl_test_interval and it % cfg.rl_test_interval == 0):
            said += self.test(rec)
        return said

    def test(self, rec):
        cfg, tasks = self.cfg, self.test_tasks
        ev = evaluate_greedy(self.policy, self.enc, tasks, self.device, cfg.max_new_tokens, cfg.eval_batch_size)
        sampled = evaluate_sampled(self.policy, self.enc, tasks, self.device, cfg.max_new_tokens,
                                     cfg.eval_batch_size, seed=cfg.seed)
        rec.update(test_pass1=ev['pass1'], test_by_difficulty=ev['by_difficulty'],
                   test_pass1_sampled=sampled['pass1'], test_by_difficulty_sampled=sampled['by_difficulty'])
        return f", test pass@1 {ev['pass1']:.3f} (sampled at {EVAL_TEMPERATURE:g}: {sampled['pass1']:.3f})"


def start_record(name, evaluator, path, log):
    """Iteration 0: the starting policy's evaluation, made once per (weights, seed, evaluation settings) and kept
    beside the run: every method of a seed starts from the same model, so its start is the same."""
    start = dict(iter=0, optimizer_steps=0, tokens_sampled=0, wall_total=0.0)
    if not ddp.is_main():  # rank 0 evaluates; the others keep a bare start record
        return start
    with_test = evaluator.test_tasks is not None
    cache = start_eval_path(evaluator.policy, evaluator.cfg, with_test, path)
    if os.path.exists(cache):
        log(f"{name}: start evaluation reused from {cache}")
        return load_checkpoint(cache)
    log(f"{name}: evaluating the starting policy ({len(evaluator.eval_tasks)} {evaluator.cfg.eval_split} tasks"
        + (f", {len(evaluator.test_tasks)} test tasks greedy and {EVAL_SAMPLES} samples each)" if with_test else ")"))
    said = evaluator.dev(start) + (evaluator.test(start) if with_test else '')
    save_checkpoint(start, cache)
    log(f"{name}: start{said}")
    return start


def train_rl(cfg, policy, enc, rl_tasks, eval_tasks, test_tasks, path, device, method, log=tqdm.write):
    """RL from `policy` (the starting, e.g. SFT, model; a frozen copy of it is the KL reference) with `method`.
    Checkpoints every iteration to `path` and resumes from it; every iteration draws from its own seeds
    (seed, iteration), so a resumed run equals an uninterrupted one. Greedy pass@1 on eval_tasks (the dev split)
    at the start and every rl_eval_interval iterations; on test_tasks (greedy, and sampled) at the start, every
    rl_test_interval iterations (0: none between) and at the end; test_tasks=None (a sweep) never reads the test
    split. Returns the history."""
    check_settings(cfg, method)
    name = f"rl {method} seed {cfg.seed}"
    policy.eval()  # no dropout anywhere in RL: it would make pi, pi_old and the sampler disagree by noise
    ref = copy.deepcopy(policy).requires_grad_(False)
    trainee = ddp.wrap(LogProbs(policy), device)  # under torchrun, DDP all-reduces the update's gradients
    optimizer = policy.configure_optimizers(0.0, cfg.rl_lr, (0.9, 0.95), device.split(':')[0])  # no weight decay
    pool = StatePool(rl_task_ids(rl_tasks, cfg), cfg.seed)
    history, it0 = [], 0
    ckpt = resume(path, device, policy, optimizer, check=lambda c: refuse_other_run(c, cfg, path))
    if ckpt:
        pool.load_state_dict(ckpt['pool'])
        history, it0 = ckpt['history'], ckpt['iter_num']
        log(f"{name}: resuming from iteration {it0} of {path}")
    evaluator = Evaluator(policy, enc, eval_tasks, test_tasks, cfg, device)
    if not history:
        history.append(start_record(name, evaluator, path, log))
        ddp.barrier()
    ctx = autocast(cfg.dtype)
    bar = tqdm(total=cfg.rl_iters, initial=it0, desc=name, dynamic_ncols=True, disable=not ddp.is_main())
    for it in range(it0 + 1, cfg.rl_iters + 1):
        t0 = time.time()
        # this rank's samples (rank 0's are one process's); the filter's shuffle (rng) is the same on every rank
        generator = torch.Generator(device=device).manual_seed(step_seed(cfg.seed, it + 7_777_777_777 * ddp.rank()))
        rng = np.random.default_rng([cfg.seed, it])
        with ctx:
            items, filter_info = next_items(method, policy, enc, pool, rl_tasks, cfg, generator, rng)
        groups, sample_info, stats = [], dict(NO_SAMPLES), {}
        if len(items) >= ddp.world():  # none only when no problem in the pool is informative any more (each
            groups, sample_info, stats = train_step(method, trainee, ref, optimizer, items, enc, rl_tasks, cfg,
                                                    generator, ctx)  # rank needs one item, or DDP would wait)
        rec = iteration_record(it, history[-1], groups, len(items), sample_info, filter_info, stats,
                               time.time() - t0, cfg)
        said = evaluator.at(it, rec) if ddp.is_main() else ''
        ddp.barrier()
        history.append(rec)
        if ddp.is_main():
            save_checkpoint(dict(model=policy.state_dict(), optimizer=optimizer.state_dict(), iter_num=it, method=method,
                                 model_args=asdict(policy.config), pool=pool.state_dict(), history=history,
                                 config=vars(cfg)), path)
            log(describe(name, rec) + said)
        bar.update(1)
    bar.close()
    return history


def describe(name, rec):
    """One log line for an iteration's record: what it learned from, then what it cost."""
    out = f"{name} iter {rec['iter']}:"
    if 'reward' in rec:
        out += (f" reward {rec['reward']:.3f}, effective groups {rec['effective_group_frac']:.2f}, "
                f"prefix states {rec['prefix_frac']:.2f},")
    if 'kl' in rec:
        out += f" kl {rec['kl']:.4f}," + (f" clip {rec['clip_frac']:.3f}," if 'clip_frac' in rec else '')
    if rec['filter_rounds']:
        out += f" filter kept {rec['filter_kept']}/{rec['filter_problems']},"
    return out + (f" {rec['tokens_sampled'] / 1e6:.2f}M tokens, {rec['wall']:.1f}s (sample {rec['sample_share']:.0%}, "
                  f"score {rec['score_share']:.0%}, update {rec['update_share']:.0%})")
