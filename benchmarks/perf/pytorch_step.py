#!/usr/bin/env python3
"""The same measurements as `kd bench`, in PyTorch, for a side-by-side comparison on one machine.
`kd bench --vs-pytorch` runs this script (built into the binary, with --json) alternately with
its own measurement; run it by hand as

    python3 benchmarks/perf/pytorch_step.py --threads 2 --archs resnet20,resnet56
    python3 benchmarks/perf/pytorch_step.py --threads 2 --archs bert-L2,bert-L6 --train-batch 32 --eval-batch 128
    cargo run --release -p kd-cli --bin kd -- bench --archs resnet20,resnet56,bert-L2,bert-L6

Models, on random inputs:
- `resnetN`: CIFAR ResNet (akamaster layout, option-A shortcuts), --image-size images;
- `bert-LN`: `transformers.BertForSequenceClassification` of all-MiniLM-L6-v2's width (hidden
  384, 12 heads, FFN 1536, vocab 30522) with N layers and dropout 0 (kd-bench's BERT has no
  dropout, so both run the same computation; the pooler is the one extra 384 x 384 layer), on
  kd bench's deterministic token ids, --seq-len tokens; tokens/s is examples/s x --seq-len.
The training step is the recipes' KD step: forward, CE + KD loss (T=4, alpha=0.9, against a fixed
teacher-logit tensor), backward, SGD (momentum 0.9, wd 5e-4) for ResNets or AdamW (lr 5e-5,
wd 0.01) for BERTs, at the training batch size; inference is eval mode, no grad, at the
inference batch size. Median examples/s over --repeats timed repeats after one warm-up.
Run both sides alternately in the same period on an idle machine (machines drift; PyTorch's
threads slow down many times over when another process shares the cores); compare medians.
"""
import argparse
import json
import statistics
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:  # pragma: no cover
    raise SystemExit("PyTorch is not installed: pip install torch (CPU build is enough)")


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout // 4 if (stride != 1 or cin != cout) else 0

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = x
        if self.pad:
            sc = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + sc)


class ResNet(nn.Module):
    def __init__(self, depth, classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for i, c in enumerate([16, 32, 64]):
            for j in range(n):
                layers.append(Block(cin, c, 2 if (i > 0 and j == 0) else 1))
                cin = c
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(64, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


def bert(layers, classes):
    try:
        from transformers import BertConfig, BertForSequenceClassification
    except ImportError as e:  # pragma: no cover
        raise SystemExit(f"BERTs need transformers ({e}): pip install transformers")
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=layers,
        num_attention_heads=12,
        intermediate_size=1536,
        hidden_act="gelu",
        max_position_embeddings=512,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout=0.0,
        num_labels=classes,
    )
    return BertForSequenceClassification(cfg)


def token_inputs(n, seq_len, device):
    """kd bench's token ids (away from BERT's special tokens), type ids 0, mask 1."""
    b = torch.arange(n).unsqueeze(1)
    t = torch.arange(seq_len).unsqueeze(0)
    ids = (1000 + (b * 7919 + t * 104_729) % 29_000).to(device)
    return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": torch.ones_like(ids)}


def workload(arch, a, dev):
    """(model, optimiser, inputs(n): n examples, forward(inputs): logits) for `arch`."""
    if arch.startswith("bert-L"):
        m = bert(int(arch.removeprefix("bert-L")), a.num_classes).to(dev)
        opt = torch.optim.AdamW(m.parameters(), lr=5e-5, weight_decay=0.01)
        return m, opt, lambda n: token_inputs(n, a.seq_len, dev), lambda x: m(**x).logits
    if arch.startswith("resnet"):
        m = ResNet(int(arch.removeprefix("resnet")), a.num_classes).to(dev)
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        return m, opt, lambda n: torch.randn(n, 3, a.image_size, a.image_size, device=dev), m
    raise SystemExit(f"no PyTorch model for `{arch}` (resnetN, bert-LN)")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--archs", default="resnet20,resnet56")
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--eval-batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]; on a GPU each timing waits for it")
    p.add_argument("--json", action="store_true", help="one JSON object per line (what kd bench reads)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else torch.backends.cpu.get_cpu_capability()
    if a.json:
        print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "device": f"{a.device} {where}"}))
    else:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {a.device} {where}")
        print(f"{'model':<12} {'batch':>6} {'train ex/s':>16} {'batch':>6} {'infer ex/s':>16}")
    for arch in a.archs.split(","):
        m, opt, inputs, forward = workload(arch, a, dev)
        x = inputs(a.train_batch)
        y = torch.arange(a.train_batch, device=dev) % a.num_classes
        t_logits = torch.randn(a.train_batch, a.num_classes, device=dev)
        train = []
        m.train()
        for i in range(a.repeats + 1):
            t0 = time.perf_counter()
            s = forward(x)
            kd = F.kl_div(F.log_softmax(s / 4, 1), F.softmax(t_logits / 4, 1), reduction="batchmean") * 16
            loss = 0.1 * F.cross_entropy(s, y) + 0.9 * kd
            opt.zero_grad()
            loss.backward()
            opt.step()
            sync()
            if i:
                train.append(a.train_batch / (time.perf_counter() - t0))
        m.eval()
        x = inputs(a.eval_batch)
        infer = []
        with torch.no_grad():
            for i in range(a.repeats + 1):
                t0 = time.perf_counter()
                forward(x).sum().item()
                if i:
                    infer.append(a.eval_batch / (time.perf_counter() - t0))
        tr, inf = statistics.median(train), statistics.median(infer)
        if a.json:
            print(json.dumps({"arch": arch, "train": tr, "infer": inf}))
        else:
            print(f"{arch:<12} {a.train_batch:>6} {tr:>16.1f} {a.eval_batch:>6} {inf:>16.1f}")


if __name__ == "__main__":
    main()
