"""Does `ask`'s fixed prompt prefix hit the prompt cache? Three RAG-shaped prompts that differ from the first
source's title on, each prefilled once (max_new_tokens=1); prints prompt tokens, reused tokens and TTFT.

  python bench/rag_prefix_reuse.py /work/models/q05-q4

The engine reuses whole prefill chunks from position 0, so the fixed part (system prompt, template,
'<sources>') must reach a chunk boundary (128 tokens) for anything to be reused (edgeai/retrieval/rag.py).
"""
import sys

from edgeai import LLM
from edgeai.retrieval import rag as R


def main(folder: str) -> None:
    llm = LLM(folder)
    plain = R.plain_copy(llm.tokenizer)
    for topic in ("csv", "json", "heapq"):
        messages = [{"role": "system", "content": R.SYSTEM_PROMPT},
                    {"role": "user", "content": f'{R.CONTEXT_OPEN}\n<source id="1" title="{topic}.md: {topic}">\n'
                                                f'Some text about {topic}.\n{R.SOURCE_CLOSE}\n{R.CONTEXT_CLOSE}\n\n'
                                                f'Question: what is {topic}?'}]
        ids = R.chat_token_ids(llm.tokenizer, messages, plain)
        t = llm.generate(ids, max_new_tokens=1).timings
        print(f"{topic:6} prompt {len(ids)} tokens, reused {t['reused_prompt_tokens']}, TTFT {t['ttft_s']:.2f} s")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "qwen2.5-coder-0.5b")
