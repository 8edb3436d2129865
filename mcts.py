"""
VM-MCTS (ReST-RL, arXiv 2508.19576): a tree search over partial programs, one step = one line.

Collecting: leaves are scored by rollouts + the sandbox, and every node's mean value becomes a value
target V(s) with no human label. Decoding: the same search, leaves scored by the value model (VM).
Layout follows muzero-general: a small Node, selection down an explicit search_path, backup over
reversed(search_path). Searches for many tasks run in lock-step, so one policy call expands one leaf
of every tree (and one VM forward scores every new child of every tree).

One iteration on one tree (the official THUDM/ReST-RL loop, with lines instead of full samples):
  select    from the root, take the child with the best UCT score until a leaf (unexpanded or terminal)
  terminal  a complete program is scored once, at creation; revisiting it backs up the same score
  expand    sample num_sample next lines; the distinct ones become children and are ALL scored
            (rollout+tests when collecting, the VM when decoding); the best num_decision are kept
  backup    every new child score goes up the path: the leaf and its ancestors gain one visit each
"""
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict
from types import SimpleNamespace

import torch
from tqdm import tqdm

import sandbox
import tasks as T
from model import GPTConfig, ValueModel, save_checkpoint

# -----------------------------------------------------------------------------
# the search (model-free: the policy and the scorer are callables)


class Node:
    """A partial solution: whole lines, so text ends with '\\n' or is '' (a terminal may end without)."""

    def __init__(self, text='', line='', prior=1.0, terminal=False, complete=False):
        self.text = text            # the solution so far (without the task prompt)
        self.line = line            # the step that led here from the parent
        self.prior = prior          # pi(line | parent state) = exp(sum of the line's token log-probs)
        self.terminal = terminal    # complete program or dead end: scored, never expanded
        self.complete = complete    # the policy ended the program (end-of-solution token)
        self.reward = None          # a terminal's score, backed up again on every revisit
        self.visit_count = 0
        self.value_sum = 0.0
        self.children = []

    def expanded(self):
        return len(self.children) > 0

    def value(self):
        return self.value_sum / self.visit_count if self.visit_count else 0.0


class Tree:
    """One search on one task: its root and its accounting (tokens never exceed budget)."""

    def __init__(self, task, budget=None):
        self.task = task            # dict with at least 'prompt'
        self.budget = budget        # max generated tokens (expansions + rollouts); None = unlimited
        self.root = Node()
        self.tokens = 0             # generated tokens charged to this search
        self.calls = 0              # policy rounds this search took part in
        self.iterations = 0
        self.programs = []          # (solution text, score) of every complete program scored (children, rollouts)
        self.done = False


def uct(parent, child, c, eps, prior_sum=None):
    if prior_sum is not None:  # PUCT (AlphaZero): Q + c * P * sqrt(N) / (1 + n), P normalised over siblings
        return child.value() + c * (child.prior / prior_sum) * math.sqrt(parent.visit_count) / (1 + child.visit_count)
    # official ReST-RL UCT: V + c * sqrt((1 + ln N) / (eps + n))
    return child.value() + c * math.sqrt((1 + math.log(parent.visit_count)) / (eps + child.visit_count))


def select(root, c, eps, puct=False):
    """Walk down the best-UCT children to a leaf; returns the search path root..leaf (ties: first child)."""
    node, search_path = root, [root]
    while node.expanded():
        parent, prior_sum = node, (sum(ch.prior for ch in node.children) if puct else None)
        node = max(parent.children, key=lambda ch: uct(parent, ch, c, eps, prior_sum))
        search_path.append(node)
    return search_path


def backup(search_path, value_sum, visits):
    for node in reversed(search_path):
        node.value_sum += value_sum
        node.visit_count += visits


def affordable_rows(tree, num_sample, row_cost, reserve):
    """How many samples this tree may draw now so that even the worst case stays within its budget."""
    if tree.budget is None:
        return num_sample
    left = tree.budget - tree.tokens - (0 if tree.programs else reserve)
    return max(0, min(num_sample, left // row_cost))


def run_search(trees, expand, evaluate, iterations, num_sample=5, num_decision=3, c=0.2, eps=0.1,
               puct=False, line_tokens=32, eval_tokens=0, reserve=0):
    """
    Advance all trees in lock-step until each has done `iterations` iterations or cannot afford one.
    expand(states, ns) -> per state ([(line, prior, is_terminal)], generated_tokens): ns[i] samples of
        at most line_tokens each; lines that did not end (cut at the limit) are left out.
    evaluate(jobs) -> per job (value, generated_tokens, rollout_text | None); a job is
        (task, text, complete); a rollout costs at most eval_tokens.
    reserve: tokens kept back until a complete program is found (for a final greedy finish).
    """
    row_cost = line_tokens + eval_tokens  # worst case of one sample: its line, then its rollout
    while True:
        jobs = []  # (tree, search_path, rows) of the trees that expand a leaf this round
        for tree in trees:
            if tree.done or tree.iterations >= iterations:
                tree.done = True
                continue
            search_path = select(tree.root, c, eps, puct)
            leaf = search_path[-1]
            if leaf.terminal:  # scored at creation, never expanded again
                backup(search_path, leaf.reward, 1)
                tree.iterations += 1
                continue
            rows = affordable_rows(tree, num_sample, row_cost, reserve)
            if rows == 0:
                tree.done = True
                continue
            jobs.append((tree, search_path, rows))
        if all(tree.done for tree in trees):
            return trees
        if not jobs:
            continue
        # expansion: one policy round for the leaves of all trees
        samples = expand([t.task['prompt'] + p[-1].text for t, p, _ in jobs], [rows for _, _, rows in jobs])
        new_children = []
        for (tree, search_path, _), (lines, tokens) in zip(jobs, samples):
            leaf, distinct = search_path[-1], {}
            tree.tokens += tokens
            tree.calls += 1
            for line, prior, terminal in lines:
                distinct.setdefault((line, terminal), Node(leaf.text + line, line, prior, terminal, terminal))
            new_children.append(list(distinct.values()))
        # evaluation: one scorer call for every new child of every tree
        flat = [(t.task, ch.text, ch.complete) for (t, _, _), kids in zip(jobs, new_children) for ch in kids]
        scores = iter(evaluate(flat) if flat else [])
        for (tree, search_path, _), kids in zip(jobs, new_children):
            leaf = search_path[-1]
            if not kids:  # no line fits (cut at line_tokens or at the context): a dead end scored 0
                leaf.terminal, leaf.reward = True, 0.0
                backup(search_path, 0.0, 1)
            for child in kids:
                value, tokens, rollout = next(scores)
                tree.tokens += tokens
                child.visit_count, child.value_sum = 1, value
                if child.terminal:
                    child.reward = value
                    tree.programs.append((child.text, value))
                if rollout is not None:
                    tree.programs.append((rollout, value))
            leaf.children = sorted(kids, key=Node.value, reverse=True)[:num_decision]  # stable: ties by order
            if kids:
                backup(search_path, sum(ch.value_sum for ch in kids), len(kids))
            tree.iterations += 1


def format_tree(root, label='ROOT'):
    """Text drawing of a search tree: each node's line, visits N, mean value V and prior p."""
    out, stack = [], [(root, '', '')]  # (node, prefix of its own row, prefix of its children's rows)
    while stack:
        node, head, tail = stack.pop()
        name = label if node is root else f'{node.line!r}  p={node.prior:.2f}'
        tag = ' [complete]' if node.complete else (' [dead end]' if node.terminal else '')
        out.append(f'{head}{name}  N={node.visit_count} V={node.value():.3f}{tag}')
        for i in reversed(range(len(node.children))):
            last = i == len(node.children) - 1
            stack.append((node.children[i], tail + ('`-- ' if last else '|-- '), tail + ('    ' if last else '|   ')))
    return '\n'.join(out)


def value_targets(tree):
    """(text, value, visits, complete): every expanded state with its mean value, every distinct complete
    program with its mean score (visits = how many times it was scored)."""
    out, stack = [], [tree.root]
    while stack:
        node = stack.pop()
        if node.expanded():
            out.append((node.text, node.value(), node.visit_count, False))
        stack.extend(node.children)
    programs = {}
    for text, score in tree.programs:
        total, count = programs.get(text, (0.0, 0))
        programs[text] = (total + score, count + 1)
    return out + [(text, total / count, count, True) for text, (total, count) in programs.items()]


def best_program(tree):
    """The complete program with the highest score (first on ties), or None."""
    return max(tree.programs, key=lambda p: p[1], default=(None, None))[0]


# -----------------------------------------------------------------------------
# adapters: the policy as an expander, and the scorers (rollout + sandbox, value model)


def sample_groups(policy, prompts, ns, max_new_tokens, stats, **kw):
    """policy.sample for prompts wanting different numbers of samples: one call per distinct n, each row
    limited to min(max_new_tokens (int or one per prompt), block_size - len(prompt)). Returns per prompt its
    rows (ids with the stop token, sum of log-probs, stopped); no room, no rows."""
    caps = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
    rooms = [min(cap, policy.config.block_size - len(p)) for cap, p in zip(caps, prompts)]
    out, groups = [[] for _ in prompts], {}
    for i, (n, room) in enumerate(zip(ns, rooms)):
        if n > 0 and room > 0:
            groups.setdefault(n, []).append(i)
    for n, idx in groups.items():
        s = policy.sample([prompts[i] for i in idx], n=n, max_new_tokens=[rooms[i] for i in idx], **kw)
        logp = (s.logp * s.mask).sum(1).tolist()  # log pi(row) = sum of its token log-probs (temperature 1)
        for r, (ids, stopped) in enumerate(zip(s.rows(), s.stopped.tolist())):
            out[idx[r // n]].append((ids, logp[r], stopped))
        stats['calls'] = stats.get('calls', 0) + 1
        stats['tokens'] = stats.get('tokens', 0) + int(s.mask.sum())
    return out


def policy_expander(policy, enc, line_tokens, temperature, stats, generator=None):
    """expand(states, ns): sample ns[i] next lines of each state (stop at '\\n' or end of solution).
    A line is terminal if it ended with the end-of-solution token (the program is complete); a sample
    cut at line_tokens is no line and is dropped. prior = pi(line) = exp(sum of its token log-probs)."""
    newline, eot, pad = enc.encode_single_token('\n'), enc.eot_token, T.pad_id(enc)

    def expand(states, ns):
        prompts = [enc.encode_ordinary(s) for s in states]
        rows = sample_groups(policy, prompts, ns, line_tokens, stats, temperature=temperature,
                             stop_ids=(newline, eot), pad_id=pad, generator=generator)
        return [([(T.completion_text(enc, ids), math.exp(logp), ids[-1] == eot)
                  for ids, logp, stopped in r if stopped], sum(len(ids) for ids, _, _ in r)) for r in rows]
    return expand


def rollout_scorer(policy, enc, max_tokens, temperature, stats, generator=None):
    """evaluate(jobs) for collecting: a complete program is run as it is; a partial one is completed by
    one policy rollout first. Value = fraction of the task's hidden tests passed (sandbox)."""
    eot, pad = enc.eot_token, T.pad_id(enc)

    def evaluate(jobs):
        todo = [i for i, (_, _, complete) in enumerate(jobs) if not complete]
        rows = sample_groups(policy, [enc.encode_ordinary(jobs[i][0]['prompt'] + jobs[i][1]) for i in todo],
                             [1] * len(todo), max_tokens, stats, temperature=temperature, stop_ids=(eot,),
                             pad_id=pad, generator=generator)
        solutions, tokens, rollouts = [text for _, text, _ in jobs], [0] * len(jobs), [None] * len(jobs)
        for i, r in zip(todo, rows):
            ids, _, stopped = r[0] if r else ([], 0.0, False)
            solutions[i] = jobs[i][1] + T.completion_text(enc, ids)
            tokens[i], rollouts[i] = len(ids), (solutions[i] if stopped else None)  # only finished ones are programs
        results = sandbox.run_batch([(task['prompt'] + sol, task['tests'])
                                     for (task, _, _), sol in zip(jobs, solutions)])
        return [(res.reward, n, roll) for res, n, roll in zip(results, tokens, rollouts)]
    return evaluate


def encode_state(enc, prompt_and_text, complete, block_size):
    """A state as the value model reads it: a complete program ends with the end-of-solution token.
    The rare state longer than the context keeps its last block_size tokens."""
    return (enc.encode_ordinary(prompt_and_text) + ([enc.eot_token] if complete else []))[-block_size:]


def pad_right(seqs, pad_id, device):
    """(N, T) right-padded ids and the lengths (N,); the VM is causal, so V(row b) = out[b, length_b - 1]."""
    lengths = torch.tensor([len(s) for s in seqs], device=device)
    idx = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        idx[i, :len(s)] = torch.tensor(s, device=device)
    return idx, lengths


@torch.no_grad()
def value_at_positions(vm, seqs, pad_id, batch_size=256):
    """The VM's value at every position of every sequence: (values (N, T), ids (N, T), lengths (N,))."""
    idx, lengths = pad_right(seqs, pad_id, next(vm.parameters()).device)
    vals = torch.cat([vm(idx[i:i + batch_size]) for i in range(0, len(seqs), batch_size)])  # (N, T)
    return vals, idx, lengths


def value_scorer(vm, enc):
    """evaluate(jobs) for decoding: V(prompt + text [+ end token]) from one VM forward for all jobs."""
    pad = T.pad_id(enc)

    def evaluate(jobs):
        seqs = [encode_state(enc, task['prompt'] + text, complete, vm.gpt.config.block_size)
                for task, text, complete in jobs]
        vals, _, lengths = value_at_positions(vm.eval(), seqs, pad)
        return [(v, 0, None) for v in vals[torch.arange(len(seqs)), lengths - 1].tolist()]  # value at length-1
    return evaluate


# -----------------------------------------------------------------------------
# stage mcts: value targets from searches with rollouts on the rl split (no human labels)


def search_params(cfg, decode):
    return dict(num_sample=cfg.mcts_num_sample, num_decision=cfg.mcts_num_decision, eps=cfg.mcts_eps,
                puct=cfg.mcts_puct, line_tokens=cfg.mcts_line_tokens,
                c=cfg.mcts_c_decode if decode else cfg.mcts_c_collect)


def read_jsonl(path):
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None


def collect_value_targets(cfg, policy, enc, rl_tasks, out_dir, device, log=print):
    """Search mcts_collect_tasks rl tasks (spread over difficulties) with rollouts + sandbox; append their
    pairs {task_id, state, value, visits, complete} to out_dir/value_targets.jsonl; a rerun skips tasks
    already written. Returns all pairs in the file."""
    path = os.path.join(out_dir, 'value_targets.jsonl')
    if os.path.exists(path):  # a run killed mid-write leaves a torn last line: cut it, its task reruns
        with open(path, 'rb+') as f:
            data = f.read()
            f.truncate(data.rfind(b'\n') + 1)
    done = {p['task_id'] for p in read_jsonl(path)} if os.path.exists(path) else set()
    todo = [t for t in T.spread(rl_tasks, cfg.mcts_collect_tasks) if t['task_id'] not in done]
    log(f"mcts: {len(done)} tasks already searched, {len(todo)} to go, {cfg.mcts_collect_iters} iterations each")
    policy.eval()
    stats, gen = {}, torch.Generator(device=device).manual_seed(cfg.seed + len(done))
    expand = policy_expander(policy, enc, cfg.mcts_line_tokens, cfg.mcts_temperature, stats, gen)
    evaluate = rollout_scorer(policy, enc, cfg.max_new_tokens, cfg.mcts_temperature, stats, gen)
    t0, roots, expansions = time.time(), [], []
    for i in tqdm(range(0, len(todo), cfg.mcts_batch_tasks), desc='mcts', dynamic_ncols=True):
        trees = run_search([Tree(t) for t in todo[i:i + cfg.mcts_batch_tasks]], expand, evaluate,
                           iterations=cfg.mcts_collect_iters, **search_params(cfg, decode=False))
        records = [dict(task_id=tree.task['task_id'], state=tree.task['prompt'] + text, value=value,
                        visits=visits, complete=complete)
                   for tree in trees for text, value, visits, complete in value_targets(tree)]
        with open(path, 'a') as f:  # one write per batch of tasks, then the next batch
            f.write(''.join(json.dumps(r) + '\n' for r in records))
        roots += [tree.root.value() for tree in trees]
        expansions += [tree.calls for tree in trees]
    pairs = list(read_jsonl(path)) if os.path.exists(path) else []
    dt = max(time.time() - t0, 1e-9)
    if todo:
        log(f"mcts: {len(todo)} searches in {dt:.0f}s ({len(todo) / dt * 60:.1f}/min), "
            f"{stats.get('tokens', 0) / dt:.0f} generated tok/s, {stats.get('calls', 0)} policy calls, "
            f"{sum(expansions) / len(todo):.1f} expansions per search (other iterations revisit complete "
            f"programs); mean root value {sum(roots) / len(roots):.3f}")
    log(f"mcts: {len(pairs)} pairs ({sum(p['complete'] for p in pairs)} complete programs) in {path}")
    return pairs


# -----------------------------------------------------------------------------
# stage vm: the value model (and the ORM: the same, on complete programs only) by MSE on the targets


def load_value_model(path, device):
    ckpt = torch.load(path, map_location=device, weights_only=False)
    vm = ValueModel(GPTConfig(**ckpt['model_args'])).to(device)
    vm.load_state_dict(ckpt['model'])
    return vm.eval()


def pearson(x, y):
    return torch.corrcoef(torch.stack([x, y]))[0, 1].item() if len(x) > 1 else float('nan')


def value_metrics(vm, enc, pairs, prefix='val_'):
    """MSE and Pearson correlation of V(s) with the targets: on all pairs, on intermediate states (target =
    the empirical success rate of rollouts through the state) and on complete programs (target = reward)."""
    if not pairs:
        return {}
    seqs = [encode_state(enc, p['state'], p['complete'], vm.gpt.config.block_size) for p in pairs]
    vals, _, lengths = value_at_positions(vm.eval(), seqs, T.pad_id(enc))
    v = vals[torch.arange(len(seqs)), lengths - 1].cpu()
    y = torch.tensor([float(p['value']) for p in pairs])
    complete = torch.tensor([bool(p['complete']) for p in pairs])
    out = {f'{prefix}n': len(pairs), f'{prefix}mse_of_mean': (y - y.mean()).pow(2).mean().item()}  # baseline
    for name, m in (('', torch.ones_like(complete)), ('_states', ~complete), ('_complete', complete)):
        if m.any():
            out[f'{prefix}mse{name}'] = (v[m] - y[m]).pow(2).mean().item()  # mean (V(s) - target)^2
            out[f'{prefix}pearson{name}'] = pearson(v[m], y[m])
    return out


def held_out_tasks(pairs, frac, seed):
    """Validation is by task: pairs of one search are correlated, so whole tasks are held out."""
    task_ids = sorted({p['task_id'] for p in pairs})
    random.Random(seed).shuffle(task_ids)
    return set(task_ids[:round(len(task_ids) * frac)])


def train_value_model(cfg, policy, enc, pairs, out_path, device, only_complete=False, log=print):
    """V(s) = sigmoid head on the policy trunk, MSE to the targets (visit-weighted if vm_visit_weight).
    Validation pairs are those of held-out tasks (vm_val_frac). only_complete=True trains the ORM: the
    same model, steps and batch size (so the same number of examples), on complete programs only.
    Keeps the weights of the validation step with the lowest MSE (on complete programs for the ORM, the
    states it will score): with few targets the head overfits long before vm_iters."""
    name = 'orm' if only_complete else 'vm'
    select = 'val_mse_complete' if only_complete else 'val_mse'
    val_ids = held_out_tasks(pairs, cfg.vm_val_frac, cfg.seed)
    train = [p for p in pairs if p['task_id'] not in val_ids and (p['complete'] or not only_complete)]
    val = [p for p in pairs if p['task_id'] in val_ids]
    if not train:
        raise ValueError(f"{name}: no training pairs ({len(pairs)} pairs given, only_complete={only_complete})")
    vm = ValueModel.from_policy(policy).to(device)
    optimizer = torch.optim.AdamW(vm.parameters(), lr=cfg.vm_lr, betas=(0.9, 0.95), weight_decay=0.0)
    it, history, metrics, best = 0, [], {}, None
    if os.path.exists(out_path):
        ckpt = torch.load(out_path, map_location=device, weights_only=False)
        vm.load_state_dict(ckpt['model'])
        if ckpt['done']:
            log(f"{name}: complete in {out_path}, skipping")
            return ckpt['metrics']
        optimizer.load_state_dict(ckpt['optimizer'])
        it, history, best = ckpt['iter_num'], ckpt['history'], ckpt.get('best')
        log(f"{name}: resuming from iteration {it}")
    seqs = [encode_state(enc, p['state'], p['complete'], policy.config.block_size) for p in train]
    y = torch.tensor([float(p['value']) for p in train], device=device)
    w = torch.tensor([float(p['visits']) if cfg.vm_visit_weight else 1.0 for p in train], device=device)
    pad = T.pad_id(enc)
    log(f"{name}: {len(train)} training pairs, {len(val)} validation pairs ({len(val_ids)} held-out tasks)")
    while it < cfg.vm_iters or not metrics:  # the second test closes a run resumed past a lowered vm_iters
        vm.train()
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + it)  # batches depend on (seed, iteration) only
        ix = torch.randint(len(seqs), (cfg.vm_batch_size,), generator=g).tolist()
        idx, lengths = pad_right([seqs[i] for i in ix], pad, device)
        v = vm(idx)[torch.arange(len(ix), device=device), lengths - 1]  # V(s) at the state's last token
        loss = (w[ix] * (v - y[ix]) ** 2).sum() / w[ix].sum()  # sum_i w_i (V(s_i) - y_i)^2 / sum_i w_i
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vm.parameters(), cfg.grad_clip)
        optimizer.step()
        it += 1
        if it % cfg.vm_eval_interval == 0 or it >= cfg.vm_iters:
            metrics = dict(iter=it, train_loss=loss.item(), **value_metrics(vm, enc, val))
            history.append(metrics)
            if best is None or metrics.get(select, 0) <= best['metrics'].get(select, 0):  # no validation: the last
                best = dict(metrics=metrics, model={k: v.clone() for k, v in vm.state_dict().items()})
            done = it >= cfg.vm_iters
            if done:  # the finished checkpoint holds the best step's weights, and its metrics
                vm.load_state_dict(best['model'])
                metrics = dict(best['metrics'], iters_trained=it)
            save_checkpoint(dict(model=vm.state_dict(), optimizer=optimizer.state_dict(), best=None if done else best,
                                 model_args=asdict(vm.gpt.config), iter_num=it, config=vars(cfg), history=history,
                                 done=done, metrics=metrics), out_path)
            log(f"{name} iter {it}: "
                + ', '.join(f"{k} {v:.4f}" for k, v in history[-1].items() if isinstance(v, float))
                + (f"; keeping step {best['metrics']['iter']}" if done else ''))
    return metrics


# -----------------------------------------------------------------------------
# python mcts.py --task TASK_ID [--ckpt PATH] [--vm PATH] [--key=value ...]: watch one search


def main(argv):
    import argparse
    import train
    ap = argparse.ArgumentParser(description="Run one MCTS on one task and print the tree; other --key=value "
                                 "arguments are train.py config overrides (e.g. --mcts_collect_iters=30).")
    ap.add_argument('--task', required=True, help='a task_id such as dev/12 (SPLIT/N; sft, rl, dev or test)')
    ap.add_argument('--ckpt', help='policy checkpoint (default: out_dir/rl_<method>_seed<seed>.pt, else out_dir/sft.pt)')
    ap.add_argument('--vm', help='score leaves with this value model (decoding) instead of rollouts + tests')
    ap.add_argument('--iters', type=int, default=20, help='search iterations (collecting: 100, decoding: 15)')
    args, overrides = ap.parse_known_args(argv)
    try:
        cfg = SimpleNamespace(**train.configure(overrides))
    except train.ConfigError as e:
        raise SystemExit(f"config error: {e}")
    device = train.pick_device(cfg.device)
    enc = T.get_tokenizer(os.path.join(cfg.data_dir, T.TOKENIZER_FILE))
    split = args.task.split('/')[0]
    path = os.path.join(cfg.data_dir, f'{split}.jsonl')
    found = [t for t in T.load_tasks(path) if t['task_id'] == args.task] if split in train.SPLITS else []
    if not found:
        raise SystemExit(f"task '{args.task}' not found: task ids are SPLIT/N with SPLIT one of "
                         f"{', '.join(train.SPLITS)} ({cfg.data_dir}/SPLIT.jsonl)")
    ckpt = args.ckpt or next((p for p in (train.rl_path(cfg.out_dir, cfg.method.split(',')[0], cfg.seed),
                                          os.path.join(cfg.out_dir, 'sft.pt')) if os.path.exists(p)), None)
    if ckpt is None:
        raise SystemExit(f"no policy checkpoint in {cfg.out_dir}; train one (python train.py) or pass --ckpt")
    policy = train.load_policy(ckpt, device)[0].eval()
    stats, gen = {}, torch.Generator(device=device).manual_seed(cfg.seed)
    temperature = cfg.decode_temperature if args.vm else cfg.mcts_temperature  # decoding or collecting
    expand = policy_expander(policy, enc, cfg.mcts_line_tokens, temperature, stats, gen)
    evaluate = (value_scorer(load_value_model(args.vm, device), enc) if args.vm else
                rollout_scorer(policy, enc, cfg.max_new_tokens, cfg.mcts_temperature, stats, gen))
    t0 = time.time()
    (tree,) = run_search([Tree(found[0])], expand, evaluate, iterations=args.iters,
                         **search_params(cfg, decode=bool(args.vm)))
    print(found[0]['prompt'] + format_tree(tree.root, label=f"ROOT ({args.task})"))
    best = best_program(tree)
    print(f"\n{tree.iterations} iterations, {tree.tokens} generated tokens, {stats.get('calls', 0)} policy calls, "
          f"{time.time() - t0:.1f}s; scorer: {'value model ' + args.vm if args.vm else 'rollouts + hidden tests'}")
    if best is not None:
        result = sandbox.run(found[0]['prompt'] + best, found[0]['tests'])
        print(f"best-scored complete program (graded after the search: reward {result.reward:.2f}):\n"
              f"{found[0]['prompt']}{best}")


if __name__ == '__main__':
    main(sys.argv[1:])
