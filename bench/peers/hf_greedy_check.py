#!/usr/bin/env python3
"""Check a peer's Hugging Face folder (gguf_to_hf.py) against edgeai's fp32 folder of the same GGUF: the chat
prompt transformers renders and tokenizes from the folder equals edgeai's ids, and greedy tokens agree.

Needs edgeai, torch and transformers in one Python (edgeai's venv with `pip install torch==2.13.0 transformers`).

    python bench/peers/hf_greedy_check.py HF_DIR EDGEAI_FP32_DIR [--new 32]
"""
import argparse
import sys

PROMPTS = ["Write a Python function that reverses a string.", "What does `os.path.join` do?",
           "Explain list comprehensions in one sentence."]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("hf_dir")
    ap.add_argument("edgeai_dir")
    ap.add_argument("--new", type=int, default=32)
    a = ap.parse_args(argv)

    import torch
    import transformers

    import edgeai

    tok = transformers.AutoTokenizer.from_pretrained(a.hf_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(a.hf_dir, dtype=torch.float32).eval()
    bad = 0
    with edgeai.LLM(a.edgeai_dir, threads=2, prompt_cache=False) as llm:
        for q in PROMPTS:
            msgs = [{"role": "user", "content": q}]
            ids = llm.tokenizer.encode(llm.tokenizer.apply_chat_template(msgs))
            theirs_ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            theirs_ids = list(theirs_ids["input_ids"] if hasattr(theirs_ids, "keys") else theirs_ids)
            ours = llm.generate(ids, max_new_tokens=a.new, temperature=0.0, prompt_lookup=0).token_ids
            with torch.no_grad():
                out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                  do_sample=False, max_new_tokens=a.new, pad_token_id=tok.pad_token_id)
            theirs = out[0, len(ids):].tolist()
            cut = next((i + 1 for i, t in enumerate(theirs) if t in llm.eos_token_ids), len(theirs))
            same = next((i for i, (x, y) in enumerate(zip(ours, theirs[:cut])) if x != y), min(len(ours), cut))
            ok = theirs_ids == ids and ours == theirs[:cut]
            bad += not ok
            print(f"{'same' if ok else 'DIFFERENT'}: prompt ids {'equal' if theirs_ids == ids else 'DIFFER'}, "
                  f"greedy tokens agree for {same}/{len(ours)}: {q!r} -> {llm.tokenizer.decode(ours)[:60]!r}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
