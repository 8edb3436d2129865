"""
VM-MCTS (ReST-RL, arXiv 2508.19576): a tree search over partial programs, one step = one line.

The official expansion (THUDM/ReST-RL): at a leaf the policy samples num_sample *complete* programs that
continue the leaf's state; their first lines become the leaf's children, and every sample is a candidate
answer. The budget is a number of complete samples. Collecting value targets scores the samples by running
the tests; decoding scores them with a value model (VM) or an outcome reward model (ORM), never with tests.

One iteration on one tree:
  select  from the root, the selectable child with the best UCT score, down to a node that has none: an
          unexpanded node, or one whose kept children are all complete programs (a complete program is never
          selected: revisiting it would cost nothing and stall the search; its parent is expanded again)
  expand  sample k = min(num_sample, samples left) complete programs from the node and score them
  value   a child counts once per sample through it (a line drawn 3 times in 5 gets 3 visits), each time with
          the score of that sample (tests, ORM: they judge whole samples, never a partial state) or the
          VM's value of the child's own state (VM-MCTS, as the official PRM-style search)
  backup  the node and its ancestors gain k visits and the sum of those k values
Searches for many tasks run in lock-step: one policy call expands one leaf of every tree, and one scorer
call scores all their new samples (and children). Simplifications: a line's node is complete if the first
sample to draw it ended there (as officially: later draws of the line join that node); and a node whose
samples all end at once (an empty continuation) gets no child and is simply drawn from again.
"""
import itertools
import json
import math
import os
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

import ddp
import outputs
import sandbox
from tasks import completion_text, pad_id, spread, step_seed

NUM_SAMPLE = 5      # complete programs sampled per expansion (official num_sample)
NUM_DECISION = 3    # children a decoding search keeps selectable per node, best valued first (official)
C_COLLECT = 0.2     # UCT constant when collecting (official)
C_DECODE = 0.1      # UCT constant when decoding (official)
EPS = 0.1           # UCT guard against division by zero (official)
TEMPERATURE = 0.7   # every search's and sample pool's sampling temperature, collecting and decoding (official)

# -----------------------------------------------------------------------------
# the search (model-free: the policy and the scorer are callables)


@dataclass
class Draw:
    """One continuation sampled by the policy."""
    text: str          # the code it adds to the state
    complete: bool     # the policy ended the program (else it was cut at the token limit)
    tokens: int        # tokens generated
    logp: float        # its mean token log-prob under the policy (the likelihood scorer's score)


@dataclass
class Sample:
    """A candidate answer: a complete program drawn by an expansion."""
    text: str          # the whole solution (without the prompt)
    at: str            # the state it was drawn from (a prefix of text, whole lines)
    complete: bool
    tokens: int
    logp: float
    score: float = 0.0  # the tests' reward (collecting) or the VM's / ORM's value (decoding)


class Node:
    """A partial solution of whole lines. Selection never enters a complete program (the policy ended it with
    this line) or a dead end (no room left in the context to continue it)."""

    def __init__(self, text='', line='', complete=False):
        self.text = text            # the solution so far (without the task prompt)
        self.line = line            # the step that led here from the parent
        self.complete = complete    # the first sample to draw this line ended the program with it
        self.dead_end = False
        self.state_value = None     # the VM's value of this state (VM-MCTS only)
        self.visit_count = 0
        self.value_sum = 0.0
        self.children = {}          # line -> Node, in the order first drawn
        self.kept = []              # the children selection may take: the best num_decision by value

    def value(self):
        return self.value_sum / self.visit_count if self.visit_count else 0.0


class Tree:
    """One search on one task and its accounting: `budget` complete samples, never more."""

    def __init__(self, task, budget):
        self.task = task            # dict with at least 'prompt'
        self.budget = budget
        self.root = Node()
        self.samples = []           # every Sample drawn, in order
        self.tokens = 0             # tokens generated for them
        self.expansions = 0

    def samples_left(self):
        return self.budget - len(self.samples)


def uct(parent, child, c, eps):
    return child.value() + c * math.sqrt((1 + math.log(parent.visit_count)) / (eps + child.visit_count))  # official


def select(root, c, eps):
    """Walk down the best-UCT selectable children to the node to expand; returns the path root..node."""
    node, path = root, [root]
    while choices := [ch for ch in node.kept if not (ch.complete or ch.dead_end)]:
        parent = node
        node = max(choices, key=lambda ch: uct(parent, ch, c, eps))  # ties: the first
        path.append(node)
    return path


def backup(path, value_sum, visits):
    for node in reversed(path):
        node.value_sum += value_sum
        node.visit_count += visits


def first_line(text, complete):
    """(line, complete) of a continuation: its first whole line, complete when the program ends with it;
    (None, False) for a fragment cut before its first line ended."""
    cut = text.find('\n') + 1
    if cut == 0:
        return (text, True) if complete and text else (None, False)
    return text[:cut], complete and not text[cut:].strip()


def grow(tree, leaf, draws):
    """Record one expansion's draws as samples and add their first lines as children (new or not).
    Returns [(sample, child or None)] and the children that are new."""
    out, new = [], []
    for d in draws:
        sample = Sample(leaf.text + d.text, leaf.text, d.complete, d.tokens, d.logp)
        line, complete = first_line(d.text, d.complete)
        child = None
        if line is not None:
            if line not in leaf.children:
                leaf.children[line] = Node(leaf.text + line, line, complete)  # later draws of it join it
                new.append(leaf.children[line])
            child = leaf.children[line]
        tree.samples.append(sample)
        tree.tokens += d.tokens
        out.append((sample, child))
    tree.expansions += 1
    return out, new


def run_search(trees, expand, score, num_sample=NUM_SAMPLE, num_decision=None, c=C_COLLECT, eps=EPS,
               value_states=False):
    """
    Advance all trees in lock-step until each has spent its budget of complete samples.
    expand(states, ns) -> per state a list of at most ns[i] Draws continuing it (fewer: no room left).
    score(jobs) -> a float per job (task, solution text, complete): the tests' reward, a VM's or an ORM's value.
    value_states: children take the scorer's value of their own state (VM) instead of their samples' scores.
    num_decision: children each node keeps selectable, best valued first (None: all, as when collecting).
    """
    while active := [t for t in trees if t.samples_left() > 0]:
        paths = [select(t.root, c, eps) for t in active]
        ns = [min(num_sample, t.samples_left()) for t in active]
        draws = expand([t.task['prompt'] + p[-1].text for t, p in zip(active, paths)], ns)
        grown = [grow(t, p[-1], d) for t, p, d in zip(active, paths, draws)]
        jobs = [(t.task, s.text, s.complete) for t, (pairs, _) in zip(active, grown) for s, _ in pairs]
        if value_states:
            jobs += [(t.task, ch.text, ch.complete) for t, (_, new) in zip(active, grown) for ch in new]
        scores = iter(score(jobs) if jobs else [])
        for pairs, _ in grown:
            for sample, _ in pairs:
                sample.score = next(scores)
        for _, new in grown:
            for child in new if value_states else []:
                child.state_value = next(scores)
        for tree, path, (pairs, _) in zip(active, paths, grown):
            leaf = path[-1]
            if not pairs:  # no room left in the context: a dead end; at the root the search is over
                leaf.dead_end = True
                if leaf is tree.root:
                    tree.budget = len(tree.samples)
                continue
            values = [child.state_value if value_states and child else sample.score for sample, child in pairs]
            for (_, child), v in zip(pairs, values):
                if child is not None:
                    child.visit_count += 1
                    child.value_sum += v
            backup(path, sum(values), len(values))
            ranked = sorted(leaf.children.values(), key=Node.value, reverse=True)  # stable: ties by order drawn
            leaf.kept = ranked[:num_decision] if num_decision else ranked  # complete ones too, as officially
    return trees


def best_sample(tree):
    """The answer: the highest-scored complete sample (a cut one only if none is complete; first on ties)."""
    return max(tree.samples, key=lambda s: (s.complete, s.score), default=None)


def format_tree(root, label='ROOT'):
    """Text drawing of a search tree: each node's line, visits N, mean value V (and the VM's value of it)."""
    out, stack = [], [(root, '', '')]  # (node, prefix of its own row, prefix of its children's rows)
    while stack:
        node, head, tail = stack.pop()
        name = label if node is root else repr(node.line)
        vm = '' if node.state_value is None else f' VM={node.state_value:.3f}'
        tag = ' [complete]' if node.complete else ' [dead end]' if node.dead_end else ''
        out.append(f'{head}{name}  N={node.visit_count} V={node.value():.3f}{vm}{tag}')
        kids = list(node.children.values())
        for i in reversed(range(len(kids))):
            last = i == len(kids) - 1
            stack.append((kids[i], tail + ('`-- ' if last else '|-- '), tail + ('    ' if last else '|   ')))
    return '\n'.join(out)


def value_targets(tree):
    """A record per sample of a collecting search: the program's reward, and at each of its line ends from the
    state it was drawn from on, the mean reward of every sample through that prefix drawn there or above: an
    on-policy Monte-Carlo estimate of V(prefix), duplicates counted (samples drawn below the prefix are left
    out: the search chose where to draw them, so they are not the policy's own continuations of it)."""
    def line_ends(s):
        return [i + 1 for i, ch in enumerate(s.text) if ch == '\n' and i + 1 >= len(s.at)]
    through = {}  # prefix -> the samples through it, drawn at it or above
    for s in tree.samples:
        for end in line_ends(s):
            through.setdefault(s.text[:end], []).append(s.score)

    def step(s, end):
        scores = through[s.text[:end]]
        return dict(end=end, value=sum(scores) / len(scores), value_binary=sum(x == 1.0 for x in scores) / len(scores),
                    n=len(scores))
    return [dict(solution=s.text, complete=s.complete, value=s.score, value_binary=float(s.score == 1.0),
                 steps=[step(s, end) for end in line_ends(s)]) for s in tree.samples]


# -----------------------------------------------------------------------------
# adapters: the policy as an expander, the tests as a scorer (the VM's: value.value_scorer)


def sample_continuations(policy, prompts, ns, max_new_tokens, stats, **kw):
    """policy.sample for prompts wanting different numbers of samples: one call per distinct n, each row
    limited to min(max_new_tokens (int or one per prompt), block_size - len(prompt)). Returns per prompt its
    rows (ids with the stop token, per-token log-probs at temperature 1, stopped); no room, no rows."""
    caps = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
    rooms = [min(cap, policy.config.block_size - len(p)) for cap, p in zip(caps, prompts)]
    out, groups = [[] for _ in prompts], {}
    for i, (n, room) in enumerate(zip(ns, rooms)):
        if n > 0 and room > 0:
            groups.setdefault(n, []).append(i)
    for n, idx in groups.items():
        s = policy.sample([prompts[i] for i in idx], n=n, max_new_tokens=[rooms[i] for i in idx], **kw)
        for r, (ids, lp, m, stopped) in enumerate(zip(s.rows(), s.logp, s.mask, s.stopped.tolist())):
            out[idx[r // n]].append((ids, lp[m].tolist(), stopped))
        stats['calls'] = stats.get('calls', 0) + 1
        stats['tokens'] = stats.get('tokens', 0) + int(s.mask.sum())
    return out


def policy_expander(policy, enc, max_tokens, temperature, stats, generator=None):
    """expand(states, ns): ns[i] complete programs continuing each state (stop at the end-of-solution token,
    or cut at max_tokens)."""
    eot, pad = enc.eot_token, pad_id(enc)

    def expand(states, ns):
        rows = sample_continuations(policy, [enc.encode_ordinary(s) for s in states], ns, max_tokens, stats,
                             temperature=temperature, stop_ids=(eot,), pad_id=pad, generator=generator)
        return [[Draw(completion_text(enc, ids), stopped, len(ids), sum(lp) / len(lp)) for ids, lp, stopped in r]
                for r in rows]
    return expand


def test_scorer(timeout=1.0):
    """score(jobs) for collecting: each program's fraction of hidden tests passed (the sandbox)."""
    def score(jobs):
        return [r.reward for r in sandbox.run_batch([(task['prompt'] + text, task['tests'])
                                                     for task, text, _ in jobs], timeout=timeout)]
    return score


# -----------------------------------------------------------------------------
# stage mcts: value targets from searches scored by the tests, on the rl split (no human labels)


def read_jsonl(path):
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None


def collect_value_targets(cfg, policy, enc, rl_tasks, out_dir, device, log=tqdm.write):
    """Search mcts_collect_tasks rl tasks (spread over difficulties; tasks the RL stage trained on are fine: the
    VM is trained on the policy's own samples) with mcts_collect_samples samples each, scored by the tests;
    append a record per sample (value_targets) with its task_id and prompt to out_dir/value_targets.jsonl, one
    batch of mcts_batch_tasks searches at a time. Each batch draws from its own seed (seed, batch), and a
    progress file says where each finished batch ends, so a run killed anywhere resumes to the file an
    uninterrupted run writes. Under torchrun the batches go round-robin to the ranks, each writing its own part,
    and rank 0 merges the parts in batch order: the same file as one process's. Returns all records."""
    path = os.path.join(out_dir, 'value_targets.jsonl')
    tasks = spread(rl_tasks, cfg.mcts_collect_tasks)
    batches = [tasks[i:i + cfg.mcts_batch_tasks] for i in range(0, len(tasks), cfg.mcts_batch_tasks)]
    merged = os.path.exists(path + '.progress') and len(json.load(open(path + '.progress'))['ends']) == len(batches)
    part = path if ddp.world() == 1 or merged else f'{path}.rank{ddp.rank()}'
    mine = list(range(len(batches)))[ddp.rank()::ddp.world()]
    ends = resume_part(part)
    left = [] if merged else mine[len(ends):]  # merged: every batch is in path
    log(f"mcts: {len(mine) - len(left)} of {len(mine)} batches of {cfg.mcts_batch_tasks} tasks already searched"
        + (f" by rank {ddp.rank()}" if ddp.world() > 1 else '') + f", {cfg.mcts_collect_samples} samples each")
    policy.eval()
    stats, t0, roots = {}, time.time(), []
    for b in tqdm(left, desc='mcts', dynamic_ncols=True, disable=not ddp.is_main()):
        gen = torch.Generator(device=device).manual_seed(step_seed(cfg.seed, b))
        expand = policy_expander(policy, enc, cfg.max_new_tokens, TEMPERATURE, stats, gen)
        trees = run_search([Tree(t, cfg.mcts_collect_samples) for t in batches[b]], expand, test_scorer(),
                           num_sample=NUM_SAMPLE, c=C_COLLECT)
        records = [dict(task_id=tree.task['task_id'], prompt=tree.task['prompt'], **r)
                   for tree in trees for r in value_targets(tree)]
        with open(part, 'a') as f:
            f.write(''.join(json.dumps(r) + '\n' for r in records))
        ends.append(os.path.getsize(part))
        outputs.write_atomic(part + '.progress', json.dumps(dict(world=ddp.world(), ends=ends)))  # batch finished
        roots += [tree.root.value() for tree in trees]
    if ddp.world() > 1 and not merged:
        ddp.barrier()
        if ddp.is_main():
            merge_parts(path, len(batches), ddp.world())
        ddp.barrier()
    records = list(read_jsonl(path))
    dt = max(time.time() - t0, 1e-9)
    if roots:
        log(f"mcts: {len(roots)} searches in {dt:.0f}s ({len(roots) / dt * 60:.1f}/min), "
            f"{stats.get('tokens', 0) / dt:.0f} generated tok/s, {stats.get('calls', 0)} policy calls; "
            f"mean reward {sum(roots) / len(roots):.3f}")
    n = [step['n'] for r in records for step in r['steps']]
    log(f"mcts: {len(records)} programs of {len({r['task_id'] for r in records})} tasks in {path}; "
        f"{len(n)} line-end targets, {sum(k > 1 for k in n) / max(1, len(n)):.0%} of them on 2+ rollouts")
    return records


def resume_part(part):
    """The end offsets of the batches already finished in `part` (from its progress file); what a killed run
    wrote after the last of them is cut."""
    progress = json.load(open(part + '.progress')) if os.path.exists(part) and os.path.exists(part + '.progress') \
        else dict(world=ddp.world(), ends=[])
    if progress['world'] != ddp.world():
        raise SystemExit(f"{part} was being written by {progress['world']} processes, this run has {ddp.world()}: "
                         "resume with as many, or --restart=mcts")
    with open(part, 'ab') as f:
        f.truncate(progress['ends'][-1] if progress['ends'] else 0)
    return progress['ends']


def merge_parts(path, n_batches, world):
    """Rank 0: the ranks' parts (rank r holds batches r, r + world, ...) into `path` in batch order."""
    parts = [f'{path}.rank{r}' for r in range(world)]  # a rank with no batch (fewer batches than ranks) has none
    ends = [[0] + (json.load(open(p + '.progress'))['ends'] if os.path.exists(p + '.progress') else []) for p in parts]
    data = [open(p, 'rb').read() if os.path.exists(p) else b'' for p in parts]
    chunks = [data[b % world][ends[b % world][b // world]:ends[b % world][b // world + 1]] for b in range(n_batches)]
    with open(path + '.tmp', 'wb') as f:
        f.write(b''.join(chunks))
    os.replace(path + '.tmp', path)
    outputs.write_atomic(path + '.progress', json.dumps(dict(world=world, ends=list(itertools.accumulate(map(len, chunks))))))
    for f in parts + [p + '.progress' for p in parts]:
        if os.path.exists(f):
            os.remove(f)
