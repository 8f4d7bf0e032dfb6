"""SASRec (Kang & McAuley, ICDM 2018), small and CPU-trainable, as a harness baseline.

Trained on the training windows (history of up to `history_len` items -> next item) with full-softmax
cross-entropy at the last position, Adam; scores the K candidates by their logits. With `valid` rows
(a validation split with its frozen candidates), the number of epochs is chosen by early stopping: after
each epoch HR@1 on those rows is measured, training stops after `patience` epochs without a gain (or at
`epochs`), and the weights of the best epoch are kept - SASRec compared at its best, never tuned on test.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from adaptrec_prompts.data.schema import column


class SASRec(nn.Module):
    def __init__(self, n_items: int, dim: int = 64, layers: int = 2, heads: int = 2, max_len: int = 10,
                 dropout: float = 0.2):
        super().__init__()
        self.items = nn.Embedding(n_items + 1, dim, padding_idx=0)  # index 0 = padding
        self.positions = nn.Embedding(max_len, dim)
        block = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=dim * 2, dropout=dropout, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.max_len = max_len

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """seq: (B, L) item indices, left-padded with 0 -> (B, n_items + 1) next-item logits."""
        return self.norm(self.encoder(self.items(seq) + self.positions(torch.arange(seq.shape[1])),
                                      mask=attention_mask(seq, self.encoder.layers[0].self_attn.num_heads))[:, -1]
                         ) @ self.items.weight.T


def attention_mask(seq: torch.Tensor, heads: int) -> torch.Tensor:
    """(B * heads, L, L) boolean mask, True = may not attend: causal, and no real position attends to padding.

    A padding position attends to itself only, so no row of the mask is all True: a fully masked row gives
    NaN in softmax, which in eval mode reached the last position of every history shorter than L (the
    separate causal and key-padding masks left the padding rows empty) and made every score NaN.
    """
    length = seq.shape[1]
    causal = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
    mask = causal.unsqueeze(0) | (seq == 0).unsqueeze(1)  # (B, L, L): key j is padding
    mask = mask & ~torch.eye(length, dtype=torch.bool).unsqueeze(0)  # every position may attend to itself
    return mask.repeat_interleave(heads, dim=0)


class SASRecBaseline:
    """Train on a prepared train split; rank candidates by SASRec logits."""

    def __init__(self, train, epochs: int = 5, dim: int = 64, batch_size: int = 256, lr: float = 1e-3,
                 history_len: int = 10, seed: int = 0, valid=None, patience: int = 3):
        torch.manual_seed(seed)
        hist, targets = column(train, "history_item_ids"), column(train, "target_item_id")
        items = sorted({i for h in hist for i in h} | set(targets))
        self.index = {item: k + 1 for k, item in enumerate(items)}
        self.history_len = history_len
        self.model = SASRec(len(items), dim=dim, max_len=history_len)
        layer = self.model.encoder.layers[0]
        self.params = {"name": "sasrec", "epochs": epochs, "dim": dim, "batch_size": batch_size, "lr": lr,
                       "seed": seed, "training_windows": len(targets), "history_len": history_len,
                       "layers": len(self.model.encoder.layers), "heads": layer.self_attn.num_heads,
                       "dropout": layer.dropout.p}
        if valid is not None:  # a different model from the fixed-epoch one: its identity says so
            self.params.update({"max_epochs": epochs, "epochs_chosen_on": "valid HR@1", "patience": patience,
                                "valid_rows": len(valid)})
            del self.params["epochs"]
        x = self._encode(hist)
        y = torch.tensor([self.index[t] for t in targets])
        opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        started = time.perf_counter()
        self.losses, self.valid_hr1, best = [], [], None
        for epoch in range(epochs):
            self.model.train()
            order = torch.randperm(len(y))
            total = 0.0
            for start in range(0, len(y), batch_size):
                idx = order[start : start + batch_size]
                loss = nn.functional.cross_entropy(self.model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            self.losses.append(total / len(y))
            if valid is not None:
                self.model.eval()
                self.valid_hr1.append(sum(self.predict_row(r)["ranking"][0] == r["target_item_id"] for r in valid)
                                      / max(1, len(valid)))
                if best is None or self.valid_hr1[-1] > self.valid_hr1[best[0]]:
                    best = (epoch, {k: v.clone() for k, v in self.model.state_dict().items()})
                elif epoch - best[0] >= patience:
                    break
        if best is not None:
            self.model.load_state_dict(best[1])
        self.best_epoch = best[0] + 1 if best is not None else None
        self.train_seconds = time.perf_counter() - started
        self.model.eval()

    def _encode(self, histories) -> torch.Tensor:
        rows = []
        for h in histories:
            ids = [self.index.get(i, 0) for i in h][-self.history_len :]
            rows.append([0] * (self.history_len - len(ids)) + ids)
        return torch.tensor(rows)

    def config(self) -> dict:
        """What identifies the model (a resumed run must match it); how its training went is
        `training_record()`."""
        return dict(self.params)

    def training_record(self) -> dict:
        """Recorded in the run manifest, outside the run's identity: seconds differ on every retraining."""
        record = {"train_seconds": round(self.train_seconds, 1), "final_loss": round(self.losses[-1], 4)}
        if self.best_epoch is not None:
            record.update({"epochs_trained": len(self.losses), "best_epoch": self.best_epoch,
                           "valid_hr1_per_epoch": [round(v, 4) for v in self.valid_hr1]})
        return record

    @torch.no_grad()
    def predict_row(self, row: dict) -> dict:
        logits = self.model(self._encode([row["history_item_ids"]]))[0]
        cands = row["candidate_item_ids"]
        known = [logits[self.index[c]].item() for c in cands if c in self.index]
        if not all(math.isfinite(s) for s in known):  # a ranking from NaN would be the candidate order, silently
            raise FloatingPointError(f"SASRec gave non-finite scores for example {row['example_id']} (history of "
                                     f"{len(row['history_item_ids'])} items): the trained model is broken; this is a "
                                     "bug, please report it with the run's manifest.json")
        floor = min(known, default=0.0) - 1.0  # items never seen in training rank below every seen item
        scores = [logits[self.index[c]].item() if c in self.index else floor for c in cands]
        order = sorted(range(len(cands)), key=lambda i: (-scores[i], i))
        return {"raw": None, "answer": None, "ranking": [cands[i] for i in order], "valid": True, "reason": "",
                "selection": None}
