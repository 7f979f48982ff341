"""A chart of an `edgeai bench` result (needs matplotlib: `pip install matplotlib`).

Three panels: decode tokens/s per configuration at each context (bars, min-max whiskers, the share of the
memory-bandwidth bound reached), time to first token against prompt length (lines, min-max band), and peak
resident memory beside the model's size on disk.
"""
from __future__ import annotations


def _m(c, key):
    s = (c.get("metrics") or {}).get(key) or {}
    return (s.get("median"), s.get("min"), s.get("max")) if s else (None, None, None)


def plot(res: dict, path, title: str | None = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cfgs = [c for c in res["configs"] if c.get("installed") and c.get("metrics")]
    missing = [c["label"] for c in res["configs"] if not c.get("installed")]
    failed = [c["label"] for c in res["configs"] if c.get("installed") and not c.get("metrics")]
    if not cfgs:
        raise ValueError("nothing to plot: no configuration produced figures")
    C, L = res["decode_contexts"], res["prompt_lengths"]
    colors = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.6), gridspec_kw={"width_ratios": [1.3, 1.1, 1.0]})

    # 1. decode tok/s
    ax = axes[0]
    width = 0.8 / len(cfgs)
    x = np.arange(len(C))
    top = max([_m(c, f"tps@{k}")[2] or 0 for c in cfgs for k in C] or [1])
    for i, c in enumerate(cfgs):
        med = [_m(c, f"tps@{k}")[0] or 0 for k in C]
        lo = [med[j] - (_m(c, f"tps@{k}")[1] or med[j]) for j, k in enumerate(C)]
        hi = [(_m(c, f"tps@{k}")[2] or med[j]) - med[j] for j, k in enumerate(C)]
        xs = x + (i - (len(cfgs) - 1) / 2) * width
        ax.bar(xs, med, width * 0.92, yerr=[lo, hi], capsize=3, color=colors[i % 10], label=c["label"])
        bound = c.get("bandwidth_bound") or {}
        for j, (xx, k) in enumerate(zip(xs, C)):
            if not med[j]:
                continue
            b = bound.get(str(k)) or {}
            frac = f"\n{b['fraction'] * 100:.0f}%" if b.get("fraction") else ""
            ax.text(xx, med[j] + hi[j] + top * 0.01, f"{med[j]:.0f}{frac}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [f"after {k}-token prompt" for k in C])
    ax.set_ylabel("decode tokens/s (higher is better)")
    ax.set_title("Decode speed (median, whiskers min-max;\n% = share of the memory-bandwidth bound reached)",
                 fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.set_ylim(0, top * 1.4)
    ax.legend(fontsize=8, loc="upper right")

    # 2. TTFT vs prompt length
    ax = axes[1]
    for i, c in enumerate(cfgs):
        pts = [(n, *_m(c, f"ttft_ms@{n}")) for n in L if _m(c, f"ttft_ms@{n}")[0] is not None]
        if not pts:
            continue
        n, med, lo, hi = zip(*pts)
        ax.plot(n, med, "o-", color=colors[i % 10], label=c["label"], ms=4)
        ax.fill_between(n, lo, hi, color=colors[i % 10], alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(L, [str(n) for n in L])
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("time to first token, ms (lower is better)")
    ax.set_title("Time to first token", fontsize=10)
    ax.grid(alpha=0.3, which="both")

    # 3. memory
    ax = axes[2]
    y = np.arange(len(cfgs))
    rss = [_m(c, "peak_rss_mb")[0] or 0 for c in cfgs]
    size = [(c.get("size_bytes") or 0) / 2**20 for c in cfgs]
    ax.barh(y + 0.2, rss, 0.38, color=[colors[i % 10] for i in range(len(cfgs))], label="peak RSS")
    ax.barh(y - 0.2, size, 0.38, color="lightgray", edgecolor="gray", label="weights on disk")
    for yy, v in zip(y, rss):
        ax.text(v, yy + 0.2, f" {v:.0f}", va="center", fontsize=7)
    for yy, v in zip(y, size):
        ax.text(v, yy - 0.2, f" {v:.0f}", va="center", fontsize=7)
    ax.set_yticks(y, [c["label"] for c in cfgs], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(rss + size + [1]) * 1.2)
    ax.set_xlabel("MiB (lower is better)")
    ax.set_title("Memory: peak RSS of the run vs weights on disk", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    ax.grid(axis="x", alpha=0.3)

    meta = res.get("meta", {})
    sub = (f"{meta.get('reps')} reps, {meta.get('threads')} threads, {meta.get('new_tokens')} new tokens, "
           f"read bandwidth {res.get('bandwidth_gbps', 0):.1f} GB/s")
    if missing:
        sub += "; not installed: " + ", ".join(missing)
    if failed:
        sub += "; failed: " + ", ".join(failed)
    if res.get("noisy_configs") or res.get("busy_warnings"):
        sub += "\nWARNING: machine busy during some runs (see busy column / JSON): figures are noisy"
    fig.suptitle((title or "edgeai bench") + "\n" + sub, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
