#!/usr/bin/env python3
"""The text-model measurements of `kd bench`, in PyTorch + transformers, for a side-by-side
comparison on one machine (`kd bench --vs-pytorch` runs it alternately with its own).

BERT of all-MiniLM-L6-v2's width (hidden 384, 12 heads, FFN 1536, vocab 30522) with `bert-LN`'s
layer count, as `transformers.BertForSequenceClassification`, dropout 0 (kd-bench's BERT has no
dropout, so both run the same computation; the pooler is the one extra 384 x 384 layer here):
- training step (the GLUE students, `bert-L2`): forward, CE + KD loss (T=4, alpha=0.9, against a
  fixed teacher-logit tensor), backward, AdamW (lr 5e-5, wd 0.01) at the training batch size;
- inference (the GLUE teacher, `bert-L6`): eval mode, no grad, at the inference batch size.
The token ids, type ids and mask are the ones `kd bench` builds. Median examples/s over
--repeats timed repeats after one warm-up; tokens/s is examples/s x --seq-len.

    python3 benchmarks/perf/bert_step.py --threads 2 --archs bert-L2,bert-L6
    cargo run --release -p kd-cli --bin kd -- bench --archs bert-L2,bert-L6
"""
import argparse
import json
import statistics
import time

try:
    import torch
    import torch.nn.functional as F
    from transformers import BertConfig, BertForSequenceClassification
except ImportError as e:  # pragma: no cover
    raise SystemExit(f"needs torch and transformers ({e}): pip install torch transformers")


def inputs(n, seq_len, device):
    """kd bench's deterministic token ids (away from BERT's special tokens), type ids 0, mask 1."""
    b = torch.arange(n).unsqueeze(1)
    t = torch.arange(seq_len).unsqueeze(0)
    ids = 1000 + (b * 7919 + t * 104_729) % 29_000
    return ids.to(device), torch.zeros_like(ids).to(device), torch.ones_like(ids).to(device)


def model(arch, classes, device):
    layers = int(arch.removeprefix("bert-L"))
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
    return BertForSequenceClassification(cfg).to(device)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--archs", default="bert-L2,bert-L6")
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--eval-batch", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]; on a GPU each timing waits for it")
    p.add_argument("--json", action="store_true", help="one JSON object per line (what kd bench reads)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else torch.backends.cpu.get_cpu_capability()
    import transformers

    if a.json:
        print(json.dumps({"torch": f"{torch.__version__} + transformers {transformers.__version__}",
                          "threads": torch.get_num_threads(), "device": f"{a.device} {where}"}))
    else:
        print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
              f"{torch.get_num_threads()} threads, {a.device} {where}")
        print(f"{'model':<12} {'batch':>6} {'train ex/s':>16} {'batch':>6} {'infer ex/s':>16}")
    for arch in a.archs.split(","):
        m = model(arch, a.num_classes, dev)
        opt = torch.optim.AdamW(m.parameters(), lr=5e-5, weight_decay=0.01)
        ids, types, mask = inputs(a.train_batch, a.seq_len, dev)
        y = torch.arange(a.train_batch, device=dev) % a.num_classes
        t_logits = torch.randn(a.train_batch, a.num_classes, device=dev)
        train = []
        m.train()
        for i in range(a.repeats + 1):
            t0 = time.perf_counter()
            s = m(input_ids=ids, token_type_ids=types, attention_mask=mask).logits
            kd = F.kl_div(F.log_softmax(s / 4, 1), F.softmax(t_logits / 4, 1), reduction="batchmean") * 16
            loss = 0.1 * F.cross_entropy(s, y) + 0.9 * kd
            opt.zero_grad()
            loss.backward()
            opt.step()
            sync()
            if i:
                train.append(a.train_batch / (time.perf_counter() - t0))
        m.eval()
        ids, types, mask = inputs(a.eval_batch, a.seq_len, dev)
        infer = []
        with torch.no_grad():
            for i in range(a.repeats + 1):
                t0 = time.perf_counter()
                m(input_ids=ids, token_type_ids=types, attention_mask=mask).logits.sum().item()
                if i:
                    infer.append(a.eval_batch / (time.perf_counter() - t0))
        tr, inf = statistics.median(train), statistics.median(infer)
        if a.json:
            print(json.dumps({"arch": arch, "train": tr, "infer": inf}))
        else:
            print(f"{arch:<12} {a.train_batch:>6} {tr:>16.1f} {a.eval_batch:>6} {inf:>16.1f}")


if __name__ == "__main__":
    main()
