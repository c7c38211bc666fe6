"""MARN's training step written plainly in PyTorch: the peer a user would pick instead, for
`ops/bench-peers.sh train`.

The same model as `model/src/modules/marn.rs` (variant `marn`, `MarnConfig::default()`), layer by
layer, at the widths of the Rust benchmark `model/benches/train_throughput.rs`, timed the same
way: one warm-up step on one fixed synthetic batch, then steps until the time budget; samples/s =
B / mean step time. A step is forward, `L = L_CTR + λ(p) (L_Ds + L_D0 + L_ADV)` at p = 0.5,
backward, the AdaGrad updates and the loss read back as a Python float. The batch's tensors are
built once, before the clock starts, as the Rust trainer builds them on its reader thread.

`--embeddings sparse` gives the embedding tables sparse gradients (`nn.Embedding(sparse=True)`)
and their own AdaGrad, which then touches only the rows the batch read (the Rust trainer's
row-wise AdaGrad); `dense` updates every row of every table each step.

Parameters (the Rust model's modules; burn stores a Linear weight as [in, out], torch as
[out, in]: the same count), 9,199,490 in all at image 512-d and 64-d words:

    embedding    8,536,952  item 200000x32, shop 20000x24, brand 10000x24, category 1000x16,
                            ids projection 96->128, image 512->128, title: words 20000x64,
                            Conv1d 64->32 of windows 2, 3, 4 (weight [32, 64, w], bias),
                            projection 96->128; statistic table 440x8 (4 statistics x
                            (10 + 100) buckets), projection 64->128; behavior type 3x8, time 8x8
    projection     165,120  S_1..S_4 128->256 each, I 128->256 (shared)
    fusion         263,168  MAF W_m 256->256, one per modality
    adversarial      2,056  D0 256->4, D1 256->4 (shared with D_s)
    sequence       149,888  APGRU: input [W^u; W^r; W^n] 256->384, P^u 16->128 (no bias),
                            recurrent [U^u; U^r; U^n] 128->384 (no bias)
    attention       24,705  candidate attention: A_h 128->64, A_x 256->64 (no bias), v 64->1
    head            57,601  MLP 384->128->64->1

    python ops/peers/train_torch.py --batch 32,1024 [--seconds 3] [--threads 2]
        [--embeddings sparse|dense|both] [--image-dim 512] [--word-dim 64] [--seed 42] [--json PATH]
"""

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# The benchmark's world (train_throughput.rs `world`) and the inputs synthetic.rs gives it.
SEQ_LEN = 50
N_ITEMS, N_CATEGORIES, N_SHOPS, N_BRANDS, N_STATS = 200_000, 1_000, 20_000, 10_000, 4
TITLE_VOCAB, MAX_TITLE_LEN, MIN_TITLE_LEN = 20_000, 16, 4
STAT_COARSE, STAT_FINE, N_BEHAVIOR_TYPES, N_TIME_BUCKETS = 10, 100, 3, 8
# MarnConfig::default() and ModalityEmbeddingConfig::default().
ITEM_DIM, SHOP_DIM, BRAND_DIM, CATEGORY_DIM, STAT_DIM = 32, 24, 24, 16, 8
TITLE_FILTERS, TITLE_WINDOWS, MODALITY_DIM = 32, (2, 3, 4), 128
BEHAVIOR_TYPE_DIM, TIME_DIM = 8, 8
REPRESENTATION_DIM, GRU_DIM, ATTENTION_DIM, HEAD_LAYERS = 256, 128, 64, (128, 64)
N_MODALITIES = 4  # IDs, image, title, statistic, in that order
GRL_WEIGHT, LAMBDA0, GAMMA, PROGRESS = 1.0, 0.05, 10.0, 0.5
# TrainConfig::default(). torch's Adagrad is TensorFlow's, as train.rs's: the accumulator starts
# at initial_accumulator_value, acc += g², θ -= lr · g / (√acc + ε) (eps is added after the root).
LEARNING_RATE, EPSILON, INITIAL_ACCUMULATOR, D0_INITIAL_ACCUMULATOR = 0.05, 1e-7, 1e-5, 0.1

MASK64 = (1 << 64) - 1


def mix(items, salts):
    """synthetic.rs `mix`, bit for bit: the hash an item's derived features come from, `[n, salts]`."""
    s = np.array([(k * 0x9E3779B97F4A7C15) & MASK64 for k in salts], dtype=np.uint64)
    x = items[:, None] ^ s[None, :]
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def long(a):
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))


def flt(a):
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def synthetic_batch(batch_size, image_dim, seed):
    """synthetic.rs `SyntheticSpec::batch` at the benchmark's world, as tensors
    (batch_tensors.rs): Zipf(1.0) item ids, every sequence full, items deduplicated into a table
    of distinct items whose features derive from the id exactly as in Rust (only the random draws
    differ: numpy's generator, not ChaCha8)."""
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(1.0 / np.arange(1, N_ITEMS + 1))
    cdf /= cdf[-1]
    draws = np.minimum(np.searchsorted(cdf, rng.random((batch_size, SEQ_LEN + 1))), N_ITEMS - 1)
    history, candidate = draws[:, :SEQ_LEN], draws[:, SEQ_LEN]
    # A click is likelier when the candidate's category occurs in the history.
    hit = (history % N_CATEGORIES == (candidate % N_CATEGORIES)[:, None]).any(1)
    labels = rng.random(batch_size) < np.where(hit, 0.8, 0.2)
    behavior_type = rng.integers(0, N_BEHAVIOR_TYPES, (batch_size, SEQ_LEN))
    time_bucket = rng.integers(0, N_TIME_BUCKETS, (batch_size, SEQ_LEN))
    items, rows = np.unique(np.concatenate([candidate, history.ravel()]), return_inverse=True)
    items = items.astype(np.uint64)
    n = len(items)

    def derived(salts, buckets):
        """Each item's feature of every salt, `mix % buckets` as in synthetic.rs, `[n, salts]`."""
        return (mix(items, salts) % np.uint64(buckets)).astype(np.int64)

    # One flat statistic table: the coarse buckets of every statistic, then the fine ones.
    coarse = derived(range(10, 10 + N_STATS), STAT_COARSE) + np.arange(N_STATS) * STAT_COARSE
    fine = derived(range(10, 10 + N_STATS), STAT_FINE) + N_STATS * STAT_COARSE + np.arange(N_STATS) * STAT_FINE
    images = derived(range(100, 100 + image_dim), 1000).astype(np.float32) / np.float32(1000) - np.float32(0.5)
    # One item in ten has no image (its vector is there but masked), one in ten no title.
    image_present = derived([4], 10)[:, 0] != 0
    title_len = np.where(derived([5], 10)[:, 0] == 0, 0, 1 + derived([3], MAX_TITLE_LEN)[:, 0])
    width = max(int(title_len.max()), MIN_TITLE_LEN)
    word_mask = np.arange(width)[None, :] < title_len[:, None]
    tokens = np.where(word_mask, derived(range(200, 200 + width), TITLE_VOCAB), 0)
    ones = np.ones(n)

    return {
        "n_items": n,
        "item": long(items),
        "shop": long(derived([1], N_SHOPS)[:, 0]),
        "brand": long(derived([2], N_BRANDS)[:, 0]),
        "category": long(items % np.uint64(N_CATEGORIES)),
        "stat_rows": long(np.concatenate([coarse, fine], 1)),
        "images": flt(images),
        "title_tokens": long(tokens),
        "title_word_mask": flt(word_mask),
        # adversarial.rs `presence_of_all`: [n, M], 1 where the item has the modality.
        "present": flt(np.stack([ones, image_present, title_len > 0, ones], 1)),
        "candidate": long(rows[:batch_size]),
        "history": long(rows[batch_size:]),
        "behavior_type": long(behavior_type),
        "time_bucket": long(time_bucket),
        "padding": torch.zeros(batch_size, SEQ_LEN, dtype=torch.bool),  # every sequence full
        "mask": torch.ones(batch_size, SEQ_LEN),
        "labels": flt(labels),
    }


def table(rows, dim, sparse):
    """modality_embedding.rs `embedding`: a table initialised from Normal(0, 0.1)."""
    e = nn.Embedding(rows, dim, sparse=sparse)
    nn.init.normal_(e.weight, 0.0, 0.1)
    return e


class TitleCnn(nn.Module):
    """modality_embedding.rs `TitleCnn`: word vectors, a valid Conv1d per window, ReLU, max over
    the real windows, concatenation, projection."""

    def __init__(self, word_dim, sparse):
        super().__init__()
        self.words = table(TITLE_VOCAB, word_dim, sparse)
        self.convs = nn.ModuleList(nn.Conv1d(word_dim, TITLE_FILTERS, w) for w in TITLE_WINDOWS)
        self.projection = nn.Linear(TITLE_FILTERS * len(TITLE_WINDOWS), MODALITY_DIM)

    def forward(self, tokens, word_mask):
        # Padding words are zero vectors, so a window overlapping them sees only real words.
        x = (self.words(tokens) * word_mask.unsqueeze(2)).transpose(1, 2)  # [n, word_dim, L]
        pooled = []
        for conv, w in zip(self.convs, TITLE_WINDOWS):
            # A window is real when its last word is; window 0 always counts.
            real = word_mask[:, w - 1:].clone()
            real[:, 0] = 1.0
            features = F.relu(conv(x)) + (real - 1.0).mul(1e9).unsqueeze(1)
            pooled.append(features.amax(2))
        return self.projection(torch.cat(pooled, 1))


class ModalityEmbedding(nn.Module):
    """modality_embedding.rs `ModalityEmbedding`: `e_m` of every modality of the distinct items,
    and the behavior property of every slot."""

    def __init__(self, image_dim, word_dim, sparse):
        super().__init__()
        self.item = table(N_ITEMS, ITEM_DIM, sparse)
        self.shop = table(N_SHOPS, SHOP_DIM, sparse)
        self.brand = table(N_BRANDS, BRAND_DIM, sparse)
        self.category = table(N_CATEGORIES, CATEGORY_DIM, sparse)
        self.ids_projection = nn.Linear(ITEM_DIM + SHOP_DIM + BRAND_DIM + CATEGORY_DIM, MODALITY_DIM)
        self.image = nn.Linear(image_dim, MODALITY_DIM)
        self.title = TitleCnn(word_dim, sparse)
        self.stat = table(N_STATS * (STAT_COARSE + STAT_FINE), STAT_DIM, sparse)
        self.stat_projection = nn.Linear(2 * N_STATS * STAT_DIM, MODALITY_DIM)
        self.behavior_type = table(N_BEHAVIOR_TYPES, BEHAVIOR_TYPE_DIM, sparse)
        self.time = table(N_TIME_BUCKETS, TIME_DIM, sparse)

    def forward(self, x):
        ids = torch.cat([self.item(x["item"]), self.shop(x["shop"]), self.brand(x["brand"]),
                         self.category(x["category"])], 1)
        # `standardize`: every image vector to zero mean and unit (population) variance.
        var, mean = torch.var_mean(x["images"], 1, correction=0, keepdim=True)
        images = (x["images"] - mean) / (var + 1e-5).sqrt()
        stat = self.stat(x["stat_rows"]).flatten(1)
        return [
            self.ids_projection(ids),
            self.image(images),
            self.title(x["title_tokens"], x["title_word_mask"]),
            self.stat_projection(stat),
        ]

    def property(self, x):
        """The behavior property `p_t` = [behavior type embedding, time bucket embedding], `[B, T, 16]`."""
        return torch.cat([self.behavior_type(x["behavior_type"]), self.time(x["time_bucket"])], 2)


class ModalityProjection(nn.Module):
    """modality_embedding.rs `ModalityProjection`: `s_m = tanh(S_m e_m)`, `c_m = tanh(I e_m)`."""

    def __init__(self):
        super().__init__()
        self.specific = nn.ModuleList(nn.Linear(MODALITY_DIM, REPRESENTATION_DIM) for _ in range(N_MODALITIES))
        self.invariant = nn.Linear(MODALITY_DIM, REPRESENTATION_DIM)

    def specific_features(self, e):
        return [torch.tanh(s(e_m)) for s, e_m in zip(self.specific, e)]


class GradientReversal(torch.autograd.Function):
    """adversarial.rs `gradient_reversal`: the identity forward, −weight × the gradient backward."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * -ctx.weight, None


def weighted_modality_nll(logits, weights):
    """adversarial.rs `weighted_modality_nll`: Σ w · (−log p_true) / (Σ w + 1e-6), where
    `logits[m]` (`[M, n, M]`) holds the rows whose true class is m and `weights` is `[n, M]`."""
    log_p_true = F.log_softmax(logits, 2).diagonal(dim1=0, dim2=2)  # [n, M]
    return -(log_p_true * weights).sum() / (weights.sum() + 1e-6)


class Adversarial(nn.Module):
    """adversarial.rs `Adversarial` (DDMA): D0, the importance discriminator, and D1, the modality
    discriminator whose matrix D_s shares."""

    def __init__(self):
        super().__init__()
        self.importance = nn.Linear(REPRESENTATION_DIM, N_MODALITIES)
        self.modality = nn.Linear(REPRESENTATION_DIM, N_MODALITIES)


class ApGru(nn.Module):
    """apgru.rs `ApGru`: a GRU whose update gate also sees the behavior property,
    `u_t = σ(W^u rep_t + P^u p_t + U^u h + b^u)`, gates in the order [u; r; n]."""

    def __init__(self):
        super().__init__()
        self.input = nn.Linear(REPRESENTATION_DIM, 3 * GRU_DIM)
        self.property = nn.Linear(BEHAVIOR_TYPE_DIM + TIME_DIM, GRU_DIM, bias=False)
        self.recurrent = nn.Linear(GRU_DIM, 3 * GRU_DIM, bias=False)

    def forward(self, projected, prop):
        """`projected`: `[B, T, 3g]`, the rows of `input(rep)` per slot; output `[B, T, g]`."""
        g = GRU_DIM
        gates_in = torch.cat([projected[..., :g] + self.property(prop), projected[..., g:]], 2)
        h = projected.new_zeros(projected.shape[0], g)
        states = []
        for x_t in gates_in.unbind(1):
            rec = self.recurrent(h)
            u, r = torch.sigmoid(x_t[:, :2 * g] + rec[:, :2 * g]).chunk(2, 1)
            n = torch.tanh(x_t[:, 2 * g:] + r * rec[:, 2 * g:])
            h = h + u * (n - h)  # (1 − u) h + u n
            states.append(h)
        return torch.stack(states, 1)


class CandidateAttention(nn.Module):
    """apgru.rs `CandidateAttention`: `score_t = v^T tanh(A_h h_t + A_x rep_X + a)`, softmax over
    the real positions, the weighted sum of the states."""

    def __init__(self):
        super().__init__()
        self.state = nn.Linear(GRU_DIM, ATTENTION_DIM)
        self.candidate = nn.Linear(REPRESENTATION_DIM, ATTENTION_DIM, bias=False)
        self.score = nn.Linear(ATTENTION_DIM, 1)

    def forward(self, states, candidate, padding, mask):
        hidden = torch.tanh(self.state(states) + self.candidate(candidate).unsqueeze(1))
        scores = self.score(hidden).squeeze(2).masked_fill(padding, -1e9)
        weights = torch.softmax(scores, 1) * mask.sum(1, keepdim=True).clamp(max=1.0)
        return torch.bmm(weights.unsqueeze(1), states).squeeze(1)


class Marn(nn.Module):
    """marn.rs `Marn`, variant `marn`: MAF + DDMA + APGRU, training forward."""

    def __init__(self, image_dim, word_dim, sparse):
        super().__init__()
        self.embedding = ModalityEmbedding(image_dim, word_dim, sparse)
        self.projection = ModalityProjection()
        self.fusion = nn.ModuleList(nn.Linear(REPRESENTATION_DIM, REPRESENTATION_DIM) for _ in range(N_MODALITIES))
        self.adversarial = Adversarial()
        self.sequence = ApGru()
        self.attention = CandidateAttention()
        layers, width = [], GRU_DIM + REPRESENTATION_DIM
        for w in HEAD_LAYERS:  # ctr_head.rs: ReLU MLP ending in one logit
            layers += [nn.Linear(width, w), nn.ReLU()]
            width = w
        self.head = nn.Sequential(*layers, nn.Linear(width, 1))

    def item_representations(self, x):
        """marn.rs `item_representations`: `rep = s + c` of the distinct items and L_Ds, L_D0, L_ADV."""
        present = x["present"]  # [n, M]
        e = self.embedding(x)
        specific = self.projection.specific_features(e)
        # MAF (attention_fusion.rs): s = Σ_m present_m · tanh(W_m s_m) ⊙ s_m.
        s = sum(present[:, m:m + 1] * torch.tanh(w(s_m)) * s_m
                for m, (w, s_m) in enumerate(zip(self.fusion, specific)))
        # I, D0 and D1 are shared by the modalities: run them on the stacked [M, n, ·] tensors.
        e = torch.stack(e)
        c = torch.tanh(self.projection.invariant(e))
        # D0 on c.detach() (no gradient into I); w_m = 1 − D0_m(c_m), a constant, 0 where absent.
        d0 = self.adversarial.importance(c.detach())
        weights = (1.0 - torch.softmax(d0.detach(), 2).diagonal(dim1=0, dim2=2)) * present
        importance_loss = weighted_modality_nll(d0, present)
        # D1 behind the GRL on I(e.detach()): the reversed gradient updates I, not the embeddings.
        adversary_in = torch.tanh(self.projection.invariant(e.detach()))
        d1 = self.adversarial.modality(GradientReversal.apply(adversary_in, GRL_WEIGHT))
        adversarial_loss = weighted_modality_nll(d1, weights)
        # D_s: D1's matrix on S_m(e_m.detach()), over the pairs that exist.
        specific_detached = torch.stack(self.projection.specific_features(e.detach().unbind(0)))
        specific_loss = weighted_modality_nll(self.adversarial.modality(specific_detached), present)
        # c = max_m(w_m ⊙ c_m); a modality the item lacks enters as −1e9.
        pooled = (c * weights.T.unsqueeze(2) + (present.T.unsqueeze(2) - 1.0) * 1e9).amax(0)
        return s + pooled, specific_loss + importance_loss + adversarial_loss

    def forward(self, x):
        """marn.rs `forward`: click logits `[B]` and the auxiliary loss sum."""
        rep, aux = self.item_representations(x)
        batch = x["candidate"].shape[0]
        candidate = rep.index_select(0, x["candidate"])
        # W rep once per distinct item, gathered per slot (baselines/mod.rs `slots`).
        projected = self.sequence.input(rep).index_select(0, x["history"]).view(batch, SEQ_LEN, 3 * GRU_DIM)
        states = self.sequence(projected, self.embedding.property(x))
        user = self.attention(states, candidate, x["padding"], x["mask"])
        return self.head(torch.cat([user, candidate], 1)).squeeze(1), aux


def aux_loss_weight(progress):
    """marn.rs `aux_loss_weight`: λ(p) = λ0 (2 / (1 + exp(−γ p)) − 1)."""
    return LAMBDA0 * (2.0 / (1.0 + math.exp(-GAMMA * progress)) - 1.0)


def optimizers(model, sparse):
    """train.rs `Trainer::new`: D0 on its own AdaGrad (initial accumulator 0.1), everything else on
    the main one (1e-5); with sparse embeddings the tables get a sparse AdaGrad of the same
    settings. The dense parameters use torch's fused CPU AdaGrad (2.9: 5-10x its foreach one on
    the 9.2M parameters of `dense`); it takes no sparse gradients."""
    d0 = list(model.adversarial.importance.parameters())
    tables = [m.weight for m in model.modules() if isinstance(m, nn.Embedding)] if sparse else []
    apart = {id(p) for p in d0 + tables}
    rest = [p for p in model.parameters() if id(p) not in apart]

    def adagrad(params, initial_accumulator, **kw):
        return torch.optim.Adagrad(params, lr=LEARNING_RATE, eps=EPSILON,
                                   initial_accumulator_value=initial_accumulator, **kw)

    opts = [adagrad(rest, INITIAL_ACCUMULATOR, fused=True), adagrad(d0, D0_INITIAL_ACCUMULATOR, fused=True)]
    if sparse:
        opts.append(adagrad(tables, INITIAL_ACCUMULATOR))
    return opts


def run_case(x, args, sparse):
    """train_throughput.rs `run_case`: a fresh model, one warm-up step, steps until the budget."""
    torch.manual_seed(args.seed)
    model = Marn(args.image_dim, args.word_dim, sparse)
    opts = optimizers(model, sparse)
    lam = aux_loss_weight(PROGRESS)

    def step():
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        logits, aux = model(x)
        loss = F.binary_cross_entropy_with_logits(logits, x["labels"]) + lam * aux
        loss.backward()
        for opt in opts:
            opt.step()
        return loss.item()

    step()  # warm-up
    start, steps = time.perf_counter(), 0
    while steps < 2 or time.perf_counter() - start < args.seconds:
        step()
        steps += 1
    step_s = (time.perf_counter() - start) / steps
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in model.named_children()}
    return step_s, params


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", default="32", help="batch sizes, comma-separated")
    p.add_argument("--seconds", type=float, default=3.0, help="time budget per case")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--embeddings", choices=["sparse", "dense", "both"], default="both")
    p.add_argument("--image-dim", type=int, default=512)
    p.add_argument("--word-dim", type=int, default=64)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", help="also write the cases here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set: inter-op work has started
    settings = ["dense", "sparse"] if args.embeddings == "both" else [args.embeddings]
    cases = []
    for batch in [int(b) for b in args.batch.split(",")]:
        x = synthetic_batch(batch, args.image_dim, args.seed)
        print(f"batch {batch}: {x['n_items']:,} distinct items of {batch * (SEQ_LEN + 1):,} slots", flush=True)
        for setting in settings:
            step_s, params = run_case(x, args, setting == "sparse")
            total = sum(params.values())
            if not cases:
                print("parameters: " + ", ".join(f"{k} {v:,}" for k, v in params.items()) + f"; total {total:,}")
            print(f"torch {torch.__version__} | embeddings {setting} | batch {batch} | distinct {x['n_items']:,} | "
                  f"params {total:,} | step {step_s * 1e3:.1f} ms | {batch / step_s:,.0f} samples/s", flush=True)
            cases.append({"embeddings": setting, "batch": batch, "distinct_items": x["n_items"], "params": total,
                          "step_ms": step_s * 1e3, "samples_per_s": batch / step_s})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": args.threads, "cases": cases}, f, indent=2)


if __name__ == "__main__":
    main()
