"""
Decoding at equal budgets (ReST-RL's second claim): VM-MCTS against greedy, best-of-N by an ORM,
PRM-style best-of-N (VM step scores, min or last) and ORM-MCTS.

Budget = generated tokens per task (policy samples of every kind; the VM/ORM forward passes are not
counted). It is a cap that is never exceeded: a policy call is made only if its worst case fits (every
row at its max length), and what a call leaves unused is spent by the next. The tokens actually used
are reported next to each result. Greedy decoding has no budget: one sample per task.
No method runs a test to choose its answer; only the chosen program is graded (grade()).
"""
import os
import sys
import time
from types import SimpleNamespace

import torch

import sandbox
import tasks as T
from report import mean_se
from mcts import (Tree, best_program, policy_expander, run_search, sample_groups, search_params,
                  value_at_positions, value_scorer)

METHODS = ('greedy', 'bon_orm', 'prm', 'prm_last', 'orm_mcts', 'vm_mcts')  # prm: min over steps


def sample_programs(policy, enc, tasks, budget, max_tokens, temperature, stats, gen):
    """Best-of-N draws under a budget: per task as many samples as fit at max_tokens each, then again
    with what is left. Returns per task [(solution, complete)] and the tokens it used."""
    eot, pad = enc.eot_token, T.pad_id(enc)
    prompts = [enc.encode_ordinary(t['prompt']) for t in tasks]
    programs, used = [[] for _ in tasks], [0] * len(tasks)
    while any(ns := [(budget - u) // max_tokens for u in used]):
        rows = sample_groups(policy, prompts, ns, max_tokens, stats, temperature=temperature, stop_ids=(eot,),
                             pad_id=pad, generator=gen)
        if not any(rows):  # no room left in the context
            break
        for i, r in enumerate(rows):
            for ids, _, stopped in r:
                used[i] += len(ids)
                programs[i].append((T.completion_text(enc, ids), stopped))
    return programs, used


@torch.no_grad()
def step_scores(vm, enc, tasks, programs):
    """PRM-style: the VM's value at the end of every line of a program (and at its last token);
    returns per program (min over those, last)."""
    newline, block = enc.encode_single_token('\n'), vm.gpt.config.block_size
    seqs, starts = [], []
    for task, (sol, complete) in zip(tasks, programs):
        p, s = enc.encode_ordinary(task['prompt']), enc.encode_ordinary(sol) + ([enc.eot_token] if complete else [])
        seqs.append((p + s)[-block:])
        starts.append(max(len(p) - max(len(p) + len(s) - block, 0), 0))  # where the solution starts after cropping
    vals, idx, lengths = value_at_positions(vm.eval(), seqs, T.pad_id(enc))
    pos = torch.arange(idx.size(1), device=idx.device)[None, :]  # (1, T)
    start = torch.tensor(starts, device=idx.device)[:, None]
    last = pos == lengths[:, None] - 1
    step_end = ((idx == newline) & (pos >= start) & (pos < lengths[:, None])) | last  # (N, T)
    v_min = vals.masked_fill(~step_end, float('inf')).min(1).values  # min over steps of V(prefix)
    v_last = vals[last]  # V(whole program)
    return list(zip(v_min.tolist(), v_last.tolist()))


def pick(programs, scores):
    """The highest-scored complete program (a cut one only if none is complete; first on ties)."""
    if not programs:
        return ''
    return max(zip(programs, scores), key=lambda ps: (ps[0][1], ps[1]))[0][0]


def mcts_answers(cfg, policy, model, enc, tasks, budget, stats, gen):
    """The search with `model` (VM or ORM) scoring the leaves; the answer is the complete program it scored
    highest. A search that found none finishes greedily from its best-valued node with its reserve."""
    expand = policy_expander(policy, enc, cfg.mcts_line_tokens, cfg.decode_temperature, stats, gen)
    trees = run_search([Tree(t, budget) for t in tasks], expand, value_scorer(model, enc),
                       iterations=cfg.decode_max_iters, reserve=cfg.decode_reserve, **search_params(cfg, decode=True))
    answers, todo = [best_program(t) for t in trees], []
    for i, tree in enumerate(trees):
        if answers[i] is None:
            node = tree.root
            while node.children:
                node = max(node.children, key=lambda ch: ch.value())
            todo.append((i, node.text))
    eot, pad = enc.eot_token, T.pad_id(enc)
    rows = sample_groups(policy, [enc.encode_ordinary(tasks[i]['prompt'] + text) for i, text in todo],
                         [1] * len(todo), [trees[i].budget - trees[i].tokens for i, _ in todo], stats,
                         temperature=0.0, stop_ids=(eot,), pad_id=pad)
    for (i, text), r in zip(todo, rows):
        ids = r[0][0] if r else []
        trees[i].tokens += len(ids)
        answers[i] = text + T.completion_text(enc, ids)
    return answers, [t.tokens for t in trees]


def answers_for_chunk(cfg, policy, vm, orm, enc, tasks, budget, gen):
    """Every budgeted method's answers on a chunk of tasks: {method: (answers, tokens per task, seconds)}."""
    out, stats = {}, {}
    t0 = time.time()
    programs, used = sample_programs(policy, enc, tasks, budget, cfg.max_new_tokens, cfg.decode_temperature, stats, gen)
    t_sample = time.time() - t0
    flat = [(t, p) for t, ps in zip(tasks, programs) for p in ps]
    t0 = time.time()
    orm_scores = [v for v, _, _ in value_scorer(orm, enc)([(t, s, c) for t, (s, c) in flat])] if flat else []
    t_orm = time.time() - t0
    t0 = time.time()
    prm = step_scores(vm, enc, [t for t, _ in flat], [p for _, p in flat]) if flat else []
    t_prm = time.time() - t0
    for name, scores, secs in (('bon_orm', orm_scores, t_orm), ('prm', [m for m, _ in prm], t_prm),
                               ('prm_last', [l for _, l in prm], t_prm)):
        it, answers = iter(scores), []
        for ps in programs:
            answers.append(pick(ps, [next(it) for _ in ps]))
        out[name] = (answers, used, t_sample + secs)
    for name, model in (('orm_mcts', orm), ('vm_mcts', vm)):
        t0 = time.time()
        answers, tokens = mcts_answers(cfg, policy, model, enc, tasks, budget, stats, gen)
        out[name] = (answers, tokens, time.time() - t0)
    return out


def greedy_answers(cfg, policy, enc, tasks):
    eot, pad = enc.eot_token, T.pad_id(enc)
    rows = sample_groups(policy, [enc.encode_ordinary(t['prompt']) for t in tasks], [1] * len(tasks),
                         cfg.max_new_tokens, {}, temperature=0.0, stop_ids=(eot,), pad_id=pad)
    ids = [r[0][0] if r else [] for r in rows]
    return [T.completion_text(enc, x) for x in ids], [len(x) for x in ids]


def grade(tasks, answers):
    """The only place tests run: each chosen program once. pass = every hidden test passes."""
    results = sandbox.run_batch([(t['prompt'] + a, t['tests']) for t, a in zip(tasks, answers)])
    return [float(r.reward == 1.0) for r in results]


def decode_compare(cfg, policy, vm, orm, enc, test_tasks, device, log=print):
    """pass@1 of every method at every budget (decode_budgets, tokens per task) and seed (seeds: seed, seed+1, ...)
    on decode_tasks test tasks spread over the split.
    Returns {'unit', 'rows': one per (method, budget, seed), 'summary': see summarise}."""
    tasks = T.spread(test_tasks, cfg.decode_tasks)
    budgets = [int(b) for b in str(cfg.decode_budgets).split(',')]
    B, rows = cfg.mcts_batch_tasks, []
    policy.eval(), vm.eval(), orm.eval()

    def record(method, budget, seed, answers, tokens, secs):
        passed, secs = grade(tasks, answers), max(secs, 1e-9)
        by_diff = {d: sum(p for p, t in zip(passed, tasks) if t['difficulty'] == d) /
                   sum(t['difficulty'] == d for t in tasks) for d in sorted({t['difficulty'] for t in tasks})}
        r = dict(method=method, budget=budget, seed=seed, pass1=sum(passed) / len(tasks), by_difficulty=by_diff,
                 tokens=sum(tokens) / len(tasks), seconds=secs, tokens_per_s=sum(tokens) / secs,
                 searches_per_min=len(tasks) / secs * 60)
        rows.append(r)
        log(f"decode {method:8s} budget {budget}: pass@1 {r['pass1']:.3f}, {r['tokens']:.0f} tokens/task, "
            f"{r['tokens_per_s']:.0f} tok/s, {r['searches_per_min']:.0f} tasks/min")

    t0 = time.time()
    answers, tokens = [], []
    for i in range(0, len(tasks), B):
        a, n = greedy_answers(cfg, policy, enc, tasks[i:i + B])
        answers, tokens = answers + a, tokens + n
    record('greedy', 0, 0, answers, tokens, time.time() - t0)
    for budget in budgets:
        for seed in range(cfg.seed, cfg.seed + cfg.seeds):
            gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + budget)
            acc = {m: ([], [], 0.0) for m in METHODS[1:]}
            for i in range(0, len(tasks), B):
                for m, (a, n, s) in answers_for_chunk(cfg, policy, vm, orm, enc, tasks[i:i + B], budget, gen).items():
                    acc[m] = (acc[m][0] + a, acc[m][1] + n, acc[m][2] + s)
            for m, (a, n, s) in acc.items():
                record(m, budget, seed, a, n, s)
    return dict(unit='generated tokens per task (cap; "tokens" = mean used)', rows=rows, summary=summarise(rows))


def summarise(rows):
    """{method: {budget: {pass1, pass1_se (standard error over seeds), tokens, seeds, by_difficulty}}}."""
    out = {}
    for r in rows:
        out.setdefault(r['method'], {}).setdefault(r['budget'], []).append(r)
    for m, per_budget in out.items():
        for b, rs in per_budget.items():
            pass1, se = mean_se([r['pass1'] for r in rs])
            per_budget[b] = dict(pass1=pass1, pass1_se=se,
                                 tokens=sum(r['tokens'] for r in rs) / len(rs), seeds=len(rs),
                                 by_difficulty={d: sum(r['by_difficulty'][d] for r in rs) / len(rs)
                                                for d in rs[0]['by_difficulty']})
    return out


def headroom(policy, enc, tasks, n, temperature, max_tokens, gen):
    """A diagnostic, not a method (it runs the hidden tests on every candidate): the share of samples that
    pass (pass@1) and of tasks where at least one of n samples passes (pass@n), the ceiling of any picker."""
    programs = []
    for i in range(0, len(tasks), 32):
        chunk = tasks[i:i + 32]
        prompts = [enc.encode_ordinary(t['prompt']) for t in chunk]
        rows = sample_groups(policy, prompts, [n] * len(chunk), max_tokens, {}, temperature=temperature,
                             stop_ids=(enc.eot_token,), pad_id=T.pad_id(enc), generator=gen)
        programs += [[T.completion_text(enc, ids) for ids, _, _ in r] for r in rows]
    results = iter(sandbox.run_batch([(t['prompt'] + p, t['tests']) for t, ps in zip(tasks, programs) for p in ps]))
    passed = [[next(results).reward == 1.0 for _ in ps] for ps in programs]
    return dict(pass1=sum(map(sum, passed)) / sum(map(len, passed)), pass_n=sum(map(any, passed)) / len(tasks))


# -----------------------------------------------------------------------------
# how well a scorer ranks a task's own samples (graded afterwards, for the diagnostic only)


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


def pick_of_k(scores, passed, k):
    """Best-of-k by a scorer: the mean over tasks of whether the highest-scored of its first k samples
    passes (ties: the first). With random scores its expectation is random_of_k."""
    return sum(p[max(range(k), key=lambda i: s[i])] for s, p in zip(scores, passed)) / len(scores)


def random_of_k(passed, k):
    return sum(sum(p[:k]) / k for p in passed) / len(passed)  # a uniformly random pick of the first k


def oracle_of_k(passed, k):
    return sum(any(p[:k]) for p in passed) / len(passed)  # pass@k of these samples: the ceiling of any picker


# -----------------------------------------------------------------------------
# python decode.py [--n 4] [--temperatures 0.1,0.3] [--key=value ...]: how much could a perfect picker gain (dev)?


def main(argv):
    import argparse
    import train
    ap = argparse.ArgumentParser(description="pass@1 and pass@n of the search stages' policy on decode_tasks tasks "
                                 "of eval_split (dev: a tuning tool reads no test task): the headroom of reranking. "
                                 "Other --key=value arguments are train.py config overrides (e.g. --out_dir=out-repro "
                                 "--decode_tasks=300).")
    ap.add_argument('--n', type=int, default=4, help='samples per task')
    ap.add_argument('--temperatures', default='0.1,0.3,0.7', help='comma-separated sampling temperatures')
    args, overrides = ap.parse_known_args(argv)
    try:
        config = train.configure(overrides)
    except train.ConfigError as e:
        raise SystemExit(f"config error: {e}")
    cfg = SimpleNamespace(**{**config, 'device': train.pick_device(config['device'])})
    enc = T.get_tokenizer(os.path.join(cfg.data_dir, T.TOKENIZER_FILE))
    tasks = T.spread(T.load_tasks(os.path.join(cfg.data_dir, f'{cfg.eval_split}.jsonl')), cfg.decode_tasks)
    policy, name = train.final_policy(cfg)
    greedy = grade(tasks, greedy_answers(cfg, policy, enc, tasks)[0])
    print(f"{name} on {len(tasks)} {cfg.eval_split} tasks: greedy pass@1 {sum(greedy) / len(tasks):.3f}")
    for temperature in [float(t) for t in args.temperatures.split(',')]:
        gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
        h = headroom(policy, enc, tasks, args.n, temperature, cfg.max_new_tokens, gen)
        print(f"temperature {temperature}: a sample passes {h['pass1']:.3f}; "
              f"at least one of {args.n} passes on {h['pass_n']:.3f} of the tasks")


if __name__ == '__main__':
    main(sys.argv[1:])
