"""
The policy and the value model: a small GPT in the style of nanoGPT, plus what RL and search need.

- GPT: nanoGPT's model (pre-LayerNorm blocks, learned absolute positions, weight tying, flash attention
  through F.scaled_dot_product_attention) with the same forward(idx, targets) interface.
- GPT.sample: batched sampling with a preallocated KV cache. Each prompt is prefilled once and its cache
  copied to its n samples (a GRPO group). Prompts may differ in length: rows are right-padded and each row
  keeps its own length, so every token sits at its true position (no left padding that would shift the
  learned position embeddings) and each row decodes exactly as it would alone.
- ValueModel: the same trunk with a scalar sigmoid head, for the value model (VM) and the ORM.
"""

import hashlib
import inspect
import math
import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pad_sequence


@dataclass
class GPTConfig:
    block_size: int = 256
    vocab_size: int = 512
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False  # no bias in Linears and LayerNorms: a little faster and no worse (nanoGPT)


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no bias=False until recently)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class KVCache:
    """Keys and values of every layer for B rows, preallocated to T positions; row b holds lengths[b]."""

    def __init__(self, n_layer, B, n_head, T, head_size, device, dtype):
        self.k = torch.zeros(n_layer, B, n_head, T, head_size, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.lengths = torch.zeros(B, dtype=torch.long, device=device)

    def repeat_rows(self, n):
        """Copy every row's cache to n consecutive rows (one prompt -> the n samples of its group)."""
        self.k = self.k.repeat_interleave(n, dim=1)
        self.v = self.v.repeat_interleave(n, dim=1)
        self.lengths = self.lengths.repeat_interleave(n)

    def keep_rows(self, keep):
        """Drop the rows where the bool mask `keep` is False (finished samples stop costing compute). The kept
        rows move to the front in place, and only the positions written so far are copied."""
        n, L = int(keep.sum()), int(self.lengths.max())
        for buf in (self.k, self.v):
            buf[:, :n, :, :L] = buf[:, keep, :, :L]
        self.k, self.v, self.lengths = self.k[:, :n], self.v[:, :n], self.lengths[keep]


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.dropout = config.dropout

    def forward(self, x, cache=None, layer=0, attn_mask=None, prefix=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if prefix is not None:  # x continues earlier tokens whose keys/values are given: attend to both
            y = F.scaled_dot_product_attention(q, torch.cat([prefix[0], k], 2), torch.cat([prefix[1], v], 2),
                                               attn_mask=attn_mask)  # mask (B, 1, T, Tp + T)
        elif cache is None:  # training / prefill: ordinary causal attention over the block
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0,
                                               is_causal=True)
        else:  # one decoding step (T == 1): write this token at each row's own position, attend to its past
            pos = cache.lengths.view(B, 1, 1, 1).expand(B, self.n_head, 1, k.size(-1))
            cache.k[layer].scatter_(2, pos, k)
            cache.v[layer].scatter_(2, pos, v)
            Tk = attn_mask.size(-1)
            y = F.scaled_dot_product_attention(q, cache.k[layer][:, :, :Tk], cache.v[layer][:, :, :Tk],
                                               attn_mask=attn_mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y)), (k, v)


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, layer=0, attn_mask=None, prefix=None):
        a, kv = self.attn(self.ln_1(x), cache, layer, attn_mask, prefix)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, kv


@dataclass
class Samples:
    tokens: torch.Tensor   # (R, T) generated ids, pad_id after a row's stop token
    logp: torch.Tensor     # (R, T) log pi(token) under the untempered policy; 0 at pads
    mask: torch.Tensor     # (R, T) True on generated tokens, the stop token included
    stopped: torch.Tensor  # (R,) True if the row emitted a stop token, False if cut at max_new_tokens

    def rows(self):
        """Generated ids of each row, stop token included, pads removed."""
        return [t[m].tolist() for t, m in zip(self.tokens, self.mask)]


def draw(logits, temperature, top_k=None, generator=None):
    """The next token of each row: the argmax at temperature 0, else a draw from softmax(logits / temperature)
    (top_k: among the k likeliest), by inverse CDF: one uniform per row (torch.multinomial draws one exponential
    per vocabulary entry)."""
    if temperature == 0:
        return logits.argmax(-1)
    scaled = logits / temperature
    if top_k is not None:
        kth = torch.topk(scaled, min(top_k, scaled.size(-1))).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, -float('inf'))
    cdf = torch.softmax(scaled, -1).cumsum(-1)  # (R, V)
    u = torch.rand(cdf.size(0), 1, device=logits.device, generator=generator) * cdf[:, -1:]  # u < total mass
    return torch.searchsorted(cdf, u)[:, 0]  # the first token with cdf >= u: never one of probability 0


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying (Press & Wolf, 2017)
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():  # scaled init of residual projections (GPT-2)
            if pn.endswith('c_proj.weight'):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding=True):
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def hidden(self, idx, keep_kv=False, extra=None):
        """Final hidden states (B, T, C) of a batch of sequences that all start at position 0; with keep_kv
        also every layer's keys and values [(k, v)], each (B, nh, T, hs), for continue_hidden. extra (B, T, C) is
        added to the input embeddings (the value model's log-prob input)."""
        B, T = idx.size()
        assert T <= self.config.block_size, f"sequence of {T} tokens > block_size {self.config.block_size}"
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
        x = self.transformer.drop(x if extra is None else x + extra)
        kvs = []
        for block in self.transformer.h:
            x, kv = block(x)
            kvs.append(kv)
        return (self.transformer.ln_f(x), kvs) if keep_kv else self.transformer.ln_f(x)

    def continue_hidden(self, idx, pos, kvs, attn_mask, extra=None):
        """Final hidden states (B, T, C) of tokens idx at positions pos (B, T) that continue earlier tokens
        whose per-layer keys/values kvs come from hidden(keep_kv=True) (B, nh, Tp, hs); attn_mask (B, 1, T, Tp + T)
        says which earlier and which new tokens each token sees. Differentiable through kvs: a prompt shared
        by a GRPO group is run once and its gradient sums over the group's completions. extra: as in hidden."""
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
        x = self.transformer.drop(x if extra is None else x + extra)
        for block, kv in zip(self.transformer.h, kvs):
            x, _ = block(x, attn_mask=attn_mask, prefix=kv)
        return self.transformer.ln_f(x)

    def forward(self, idx, targets=None):
        """Logits at every position (B, T, V) and, with targets (-1 = ignore), the mean cross-entropy."""
        logits = self.lm_head(self.hidden(idx))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def shared_prompt_hidden(self, prompts, completions, counts, pad, extra=None):
        """Hidden states of R completions that continue P prompts, counts[p] of them each (in order): each prompt
        runs once and its completions attend to its keys and values. Returns the hidden state after each row's
        prompt (R, C), the completions' (R, Tc, C) and the completions' mask (R, Tc). extra: (R, Tc, C) added to
        the completions' input embeddings."""
        dev = self.lm_head.weight.device
        counts = torch.tensor(counts, device=dev)
        owner = torch.arange(len(prompts), device=dev).repeat_interleave(counts)  # (R,) the prompt of each row
        Lp = torch.tensor([len(p) for p in prompts], device=dev)[owner]
        Lc = torch.tensor([len(c) for c in completions], device=dev)
        prompt_idx = pad_sequence([torch.tensor(p) for p in prompts], True, pad).to(dev)  # (P, Tp)
        comp_idx = pad_sequence([torch.tensor(c) for c in completions], True, pad).to(dev)  # (R, Tc)
        Tp, Tc = prompt_idx.size(1), comp_idx.size(1)
        h_prompt, kvs = self.hidden(prompt_idx, keep_kv=True)
        kvs = [(k[owner], v[owner]) for k, v in kvs]  # (R, nh, Tp, hs)
        j = torch.arange(Tc, device=dev)
        pos = (Lp[:, None] + j[None]).clamp(max=self.config.block_size - 1)  # (R, Tc); clamped ones are pads
        sees_prompt = (torch.arange(Tp, device=dev)[None, :] < Lp[:, None])[:, None, :].expand(-1, Tc, Tp)
        causal = torch.ones(Tc, Tc, dtype=torch.bool, device=dev).tril().expand(len(completions), Tc, Tc)
        h_comp = self.continue_hidden(comp_idx, pos, kvs, torch.cat([sees_prompt, causal], 2)[:, None], extra)
        return h_prompt[owner, Lp - 1], h_comp, j[None] < Lc[:, None]

    def logprobs(self, idx):
        """log pi(idx[:, t+1] | idx[:, :t+1]) for t < T-1, shape (B, T-1); differentiable."""
        logits, _ = self(idx[:, :-1])
        return torch.log_softmax(logits.float(), dim=-1).gather(-1, idx[:, 1:, None]).squeeze(-1)

    def _decode_step(self, tok, cache):
        """Feed one token per row at that row's position; return next-token logits (R, V)."""
        pos = cache.lengths  # (R,) each row's own position
        x = self.transformer.wte(tok[:, None]) + self.transformer.wpe(pos)[:, None]  # (R, 1, C)
        Tk = int(pos.max()) + 1
        attn_mask = (torch.arange(Tk, device=tok.device)[None, :] <= pos[:, None])[:, None, None, :]  # (R,1,1,Tk)
        for layer, block in enumerate(self.transformer.h):
            x, _ = block(x, cache, layer, attn_mask)
        # a row stopped but not yet dropped decodes junk past its own room: it keeps writing its last slot
        cache.lengths = (cache.lengths + 1).clamp(max=cache.k.size(3) - 1)
        return self.lm_head(self.transformer.ln_f(x))[:, 0]

    def _prefill(self, prompts, T_cache):
        """Run the right-padded prompts once, fill a KV cache; return it and the logits after each prompt."""
        P, Tp = len(prompts), max(len(p) for p in prompts)
        idx = torch.zeros(P, Tp, dtype=torch.long, device=self.lm_head.weight.device)
        lengths = torch.tensor([len(p) for p in prompts], device=idx.device)
        for i, p in enumerate(prompts):
            idx[i, :len(p)] = torch.tensor(p, dtype=torch.long)
        cfg = self.config
        cache = KVCache(cfg.n_layer, P, cfg.n_head, T_cache, cfg.n_embd // cfg.n_head, idx.device,
                        self.lm_head.weight.dtype)
        pos = torch.arange(Tp, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (P, Tp, C)
        for layer, block in enumerate(self.transformer.h):
            x, (k, v) = block(x)  # causal: a row's pads come after its prompt and never affect it
            cache.k[layer, :, :, :Tp] = k
            cache.v[layer, :, :, :Tp] = v
        cache.lengths = lengths
        last = self.transformer.ln_f(x[torch.arange(P, device=idx.device), lengths - 1])  # (P, C)
        return cache, self.lm_head(last)  # (P, V)

    def _room(self, prompts, max_new_tokens):
        """Per prompt the new tokens it may take: its limit, cut to what block_size leaves it."""
        if not prompts:
            raise ValueError("sample() got no prompts")
        if min(len(p) for p in prompts) == 0:
            raise ValueError("sample() got an empty prompt")
        caps = max_new_tokens if isinstance(max_new_tokens, (list, tuple)) else [max_new_tokens] * len(prompts)
        caps = [min(c, self.config.block_size - len(p)) for c, p in zip(caps, prompts)]
        if min(caps) <= 0:
            raise ValueError(f"a prompt of {len(prompts[caps.index(min(caps))])} tokens leaves no room in "
                             f"block_size {self.config.block_size}")
        return caps

    @torch.no_grad()
    def sample(self, prompts, n=1, max_new_tokens=64, temperature=1.0, top_k=None, stop_ids=(), pad_id=0,
               generator=None):
        """Sample n continuations of each prompt (list of token-id lists) with a KV cache.
        Row r continues prompts[r // n]. max_new_tokens: one limit, or one per prompt (a row whose prompt
        leaves less room in block_size gets that room). temperature 0 means greedy. Returns Samples."""
        caps = self._room(prompts, max_new_tokens)
        max_new_tokens, min_cap = max(caps), min(caps)
        cache, logits = self._prefill(prompts, max(len(p) + c for p, c in zip(prompts, caps)))
        cache.repeat_rows(n)
        logits = logits.repeat_interleave(n, dim=0)  # (R, V)
        R, dev = logits.size(0), logits.device
        tokens = torch.full((R, max_new_tokens), pad_id, dtype=torch.long, device=dev)  # the output, row r
        logps = torch.zeros(R, max_new_tokens, device=dev)
        lengths = torch.zeros(R, dtype=torch.long, device=dev)
        stopped = torch.zeros(R, dtype=torch.bool, device=dev)
        stops = torch.tensor(list(stop_ids), dtype=torch.long, device=dev)
        # the decoding batch: batch row i is output row rows[i]; finished rows leave it every so often
        rows = torch.arange(R, device=dev)
        cap = torch.tensor(caps, device=dev).repeat_interleave(n)  # (R,) new tokens each row may take
        b_tok, b_lp, b_len, b_stop = tokens.clone(), logps.clone(), lengths.clone(), stopped.clone()
        running = torch.ones(R, dtype=torch.bool, device=dev)  # batch rows still decoding

        def move_out(done):  # finished batch rows -> their output rows
            r = rows[done]
            tokens[r], logps[r], lengths[r], stopped[r] = b_tok[done], b_lp[done], b_len[done], b_stop[done]

        for t in range(max_new_tokens):
            logits = logits.float()
            nxt = draw(logits, temperature, top_k, generator)
            lp = torch.log_softmax(logits, -1).gather(-1, nxt[:, None])[:, 0]  # log pi(token), temperature 1
            b_tok[:, t], b_lp[:, t] = nxt, lp  # a finished row writes junk past its length: cut below
            b_len += running  # a running row took this token
            hit = torch.isin(nxt, stops) & running
            b_stop |= hit
            running &= ~hit
            if t + 1 >= min_cap:
                running &= cap[rows] > t + 1  # a row at its own limit is cut, not stopped
            n_running = int(running.sum())
            if n_running == 0 or t == max_new_tokens - 1:
                break
            # once half of the batch finished, compact: finished rows stop paying for every later step (on an RL
            # batch, 1.3x the tokens/s of never compacting, and faster than compacting at an eighth: results/README.md)
            if (running.numel() - n_running) * 2 >= running.numel():
                move_out(~running)
                cache.keep_rows(running)
                b_tok, b_lp, b_len, b_stop = b_tok[running], b_lp[running], b_len[running], b_stop[running]
                rows, nxt, running = rows[running], nxt[running], running[running]
            logits = self._decode_step(nxt, cache)  # finished rows not yet dropped decode junk, never recorded
        move_out(torch.ones_like(running))
        T = int(lengths.max())
        mask = torch.arange(T, device=dev)[None] < lengths[:, None]  # (R, T) the generated tokens
        return Samples(tokens[:, :T].masked_fill(~mask, pad_id), logps[:, :T].masked_fill(~mask, 0.0), mask, stopped)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """nanoGPT's generate: extend every row of idx (B, T) by max_new_tokens sampled tokens."""
        s = self.sample(idx.tolist(), 1, max_new_tokens, temperature, top_k)
        return torch.cat([idx, s.tokens], dim=1)

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        # decay 2D weights (matmuls, embeddings), not biases and norms (nanoGPT)
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{'params': [p for p in params if p.dim() >= 2], 'weight_decay': weight_decay},
                  {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}]
        fused = device_type == 'cuda' and 'fused' in inspect.signature(torch.optim.AdamW).parameters
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **({'fused': True} if fused else {}))

    def estimate_mfu(self, tokens_per_iter, dt, flops_promised=989e12):
        """Model FLOPs utilisation (PaLM appendix B): achieved FLOP/s over the device's peak
        (default: H100 SXM dense bf16, 989 TFLOP/s)."""
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        flops_per_token = 6 * self.num_params() + 12 * L * H * Q * T  # forward + backward
        return flops_per_token * tokens_per_iter / dt / flops_promised


class ValueModel(nn.Module):
    """V(s) = sigmoid(z) in (0, 1): the GPT trunk and a linear head z, read at every position.
    With reads_logp the model also reads the policy's log-prob of every solution token, from a frozen copy of the
    policy it carries: as an input (log-prob times a learned vector, added to the token's embedding), and as a
    learned multiple of the running mean log-prob added to z, so that it starts out ranking a task's programs
    by the policy's own likelihood and learns what to add to it."""

    def __init__(self, config, reads_logp=False):
        super().__init__()
        self.gpt = GPT(config)
        self.head = nn.Linear(config.n_embd, 1)
        torch.nn.init.zeros_(self.head.weight)  # start at V = 0.5 everywhere
        torch.nn.init.zeros_(self.head.bias)
        self.reads_logp = reads_logp
        if reads_logp:
            self.policy = GPT(config).requires_grad_(False)
            self.logp_in = nn.Parameter(torch.zeros(config.n_embd))
            self.logp_scale = nn.Parameter(torch.ones(()))

    @classmethod
    def from_policy(cls, gpt, reads_logp=False):
        vm = cls(gpt.config, reads_logp).to(gpt.lm_head.weight.device)
        vm.gpt.load_state_dict(gpt.state_dict())
        if reads_logp:
            vm.policy.load_state_dict(gpt.state_dict())
        return vm

    def forward(self, idx, start=None):
        """Logits z (B, T), V = sigmoid(z); with right padding, row b's is out[b, length_b - 1] (attention is causal).
        start (B,): where each row's solution begins (needed with reads_logp: the prompt's log-probs are not read)."""
        if not self.reads_logp:
            return self.head(self.gpt.hidden(idx)).squeeze(-1).float()
        with torch.no_grad():
            lp = F.pad(self.policy.logprobs(idx), (1, 0))  # (B, T): log pi(token t | tokens before it)
            solution = torch.arange(idx.size(1), device=idx.device)[None, :] >= start[:, None]
            lp = lp * solution
            mean_lp = lp.cumsum(1) / solution.cumsum(1).clamp(min=1)  # the running mean over the solution so far
        z = self.head(self.gpt.hidden(idx, extra=lp[..., None] * self.logp_in)).squeeze(-1).float()
        return z + self.logp_scale * mean_lp

    def program_logits(self, prompts, completions, counts, pad):
        """forward's logits at the completion tokens (R, Tc) of R programs that continue P prompts, counts[p] of
        them each, every prompt run once (GPT.shared_prompt_hidden): a task's programs, which share its prompt,
        pay for it once. The completions are the solutions (forward's start = each prompt's length)."""
        if not self.reads_logp:
            return self.head(self.gpt.shared_prompt_hidden(prompts, completions, counts, pad)[1]).squeeze(-1).float()
        comp_idx = pad_sequence([torch.tensor(c) for c in completions], True, pad).to(self.head.weight.device)
        with torch.no_grad():
            last, h, mask = self.policy.shared_prompt_hidden(prompts, completions, counts, pad)
            h = torch.cat([last[:, None], h[:, :-1]], 1)  # h[:, j] predicts completion token j
            lp = torch.log_softmax(self.policy.lm_head(h).float(), -1).gather(-1, comp_idx[..., None]).squeeze(-1)
            lp = lp * mask
            mean_lp = lp.cumsum(1) / torch.arange(1, lp.size(1) + 1, device=lp.device)  # running mean log-prob
        h = self.gpt.shared_prompt_hidden(prompts, completions, counts, pad, extra=lp[..., None] * self.logp_in)[1]
        return self.head(h).squeeze(-1).float() + self.logp_scale * mean_lp


def weights_digest(model):
    """A short hash of a model's weights: names a result computed from exactly these weights."""
    h = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode() + tensor.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]


def save_checkpoint(obj, path):
    """torch.save to path + '.tmp', then rename: a crash while writing never leaves a broken checkpoint."""
    try:
        os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
        tmp = f'{path}.{os.getpid()}.tmp'  # this process's own: runs side by side share start-evaluation files
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except OSError as e:  # a full disk, say: stop with the reason; the previous checkpoint is intact
        raise SystemExit(f"could not write checkpoint {path}: {e}. The previous checkpoint is intact.")


def autocast(dtype):
    """bfloat16 autocast on CUDA when the config's dtype says so; otherwise nothing (float32)."""
    return torch.autocast('cuda', dtype=torch.bfloat16) if dtype == 'bfloat16' else nullcontext()


def resume(path, device, model, optimizer, check=None):
    """A training loop's checkpoint at `path`, or None when there is none. Its weights go into model and, unless
    the run there finished (ckpt['done']), its optimizer state into optimizer; check(ckpt) runs first, to refuse
    another run's file before anything is loaded."""
    if not os.path.exists(path):
        return None
    ckpt = load_checkpoint(path, device)
    if check:
        check(ckpt)
    model.load_state_dict(ckpt['model'])
    if not ckpt.get('done'):
        optimizer.load_state_dict(ckpt['optimizer'])
    return ckpt


def load_checkpoint(path, device='cpu'):
    """torch.load, with a truncated or corrupt file named in a clear error instead of a torch traceback."""
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for a damaged file
        raise SystemExit(f"{path} is truncated or corrupt ({type(e).__name__}: {str(e)[:80]}); move it away to "
                         "redo what it holds, or rerun with --restart=STAGE") from None
