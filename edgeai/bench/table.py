"""Terminal tables for `edgeai bench` results."""
from __future__ import annotations

def _fmt(m, key, scale=1.0, digits=0):
    s = (m.get(key) or {})
    if not s:
        return "-"
    med, lo, hi = s["median"] * scale, s["min"] * scale, s["max"] * scale
    if s["n"] > 1 and hi > lo:
        return f"{med:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"
    return f"{med:.{digits}f}"


def format_table(res: dict) -> str:
    L, C = res["prompt_lengths"], res["decode_contexts"]
    head = (["config", "size MB", "load s"] + [f"TTFT@{x} ms" for x in L] + [f"decode@{x} tok/s" for x in C]
            + [f"fwd/other ms@{C[0]}", "peak RSS MB", f"bound@{C[0]} tok/s (reached)", "busy"])
    rows = []
    for c in res["configs"]:
        if not c["installed"]:
            rows.append([c["label"], "-", c.get("note") or "not installed"] + [""] * (len(head) - 3))
            continue
        m = c.get("metrics", {})
        size = f"{c['size_bytes'] / 1e6:.0f}" if c.get("size_bytes") else "-"
        fo = "-"
        if m.get(f"fwd_ms@{C[0]}"):
            fo = f"{m[f'fwd_ms@{C[0]}']['median']:.2f}/{m[f'other_ms@{C[0]}']['median']:.2f}"
        b = (c.get("bandwidth_bound") or {}).get(str(C[0])) or {}
        bound = f"{b['bound_tps']:.0f} ({b['fraction'] * 100:.0f}%)" if b.get("fraction") else "-"
        busy = c.get("busy_cores") or {}
        busy_s = f"{busy.get('max', 0):.2f}" + (" NOISY" if c.get("noisy") else "")
        rows.append([c["label"], size, _fmt(m, "load_s", 1, 2)] + [_fmt(m, f"ttft_ms@{x}") for x in L]
                    + [_fmt(m, f"tps@{x}", 1, 1) for x in C] + [fo, _fmt(m, "peak_rss_mb"), bound, busy_s])
        if c.get("errors"):
            rows.append(["  error: " + "; ".join(c["errors"])[:150]] + [""] * (len(head) - 1))
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w)  # noqa: E731
                               for i, (x, w) in enumerate(zip(r, widths)))
    out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
    bw = res["bandwidth"]
    out.append("read bandwidth: " + ", ".join(f"{k.replace('_', ' ')} {v['gbps']:.1f} GB/s" for k, v in bw.items())
               + f"; medians (min-max) of {res['meta']['reps']} reps, {res['meta']['threads']} threads, "
               f"{res['meta']['new_tokens']} new tokens; busy = max cores used by other processes during a run")
    for w in res.get("busy_warnings", []):
        out.append("WARNING: " + w)
    if res.get("noisy_configs"):
        out.append("WARNING: every run of " + ", ".join(res["noisy_configs"]) + f" was disturbed (> "
                   f"{res['meta']['max_busy']} busy cores): those figures are noisy")
    return "\n".join(out)


