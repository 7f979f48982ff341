"""The exact prefix-reuse rule of the engines (csrc/prompt_cache.h), as the tests check it."""


def reusable_prefix(shared, prompt_len, chunk):
    """Twin of csrc/prompt_cache.h reusable_prefix: how many of `shared` cached prompt positions a prompt of
    prompt_len tokens reuses exactly (never the last token; a prefix ending mid-chunk leaves >= 2 rows to it)."""
    p = min(shared, prompt_len - 1)
    start = p - p % chunk
    if p != start and min(start + chunk, prompt_len) - p < 2:
        p = min(start + chunk, prompt_len) - 2
    return max(p, 0)
