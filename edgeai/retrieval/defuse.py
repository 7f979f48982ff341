"""Retrieved text is data: `defuse(text)` is a chunk as the RAG prompt shows it, with whatever in it tries to act
as a turn of the conversation or as an instruction to the assistant taken out.

Encoding alone does not stop an injection: the 0.5B Qwen model obeyed a fake system turn even as plain text
(tools/injection_check.py, docs/robustness.md), and it obeys a plain-English order too. So the prompt never
shows such text. From where it starts to the end of its paragraph (a blank line), it is replaced by QUARANTINED:
- chat-template markup of any model family: `<|im_start|>`, `<|start_header_id|>`, `<|user|>`, `[INST]`,
  `<<SYS>>`, `<start_of_turn>`, `[SYSTEM]` ... (also when a chunk's edge cuts it);
- a line that opens a turn: "System:", "Assistant:", "USER:", "**AI instructions:**", "### Instruction",
  a JSON chat message (`{"role": "system", ...`), or "System:" right after a sentence;
- a short label naming the AI or assistant, in English or the commonest European languages ("Note for the
  AI:", "Hinweis für den Assistenten:", "Instrucción para la IA:"), at a line or sentence start;
- from the start of its sentence, an order to the assistant: a note addressed to an AI, assistant or language
  model; "ignore / disregard / forget ... previous instructions (the rules, the question, everything above)";
  "reply / respond / answer (to) every question", "... with exactly / only", "your answer must be", "the only
  allowed answer"; a new persona ("you are now a ...", "pretend you are", "new system prompt").
A paragraph holding nothing but a turn header ("### Instruction:", Llama 3's header line) takes the next
paragraph with it (the turn's content), and once something was quarantined, a paragraph opening with an
Alpaca-style "### Response:" / "### Input:" header is too. HTML comments are dropped: no reader of the page
sees them. What is left still has its tag look-alikes (`<source`, `</sources>`) and `<|` defused ('<' becomes
'‹'), so a document cannot close its source or the block.

Orders are matched in English, plus "ignore / forget ... instructions" in German, French, Spanish, Italian and
Portuguese; one in another wording or language reaches the model (a reminder after the sources did not stop
the 0.5B model obeying one: docs/robustness.md). The rules are narrow so that documentation passes unchanged:
no paragraph of the Python 3.11 docs corpus, nor of /usr/share/doc's and the Python library's text files, is
touched; a document about chat templates or prompt writing does lose those lines from the prompt (the stored
chunk and the index are unchanged)."""
from __future__ import annotations

import re
from typing import Optional

QUARANTINED = "[…]"

_HIDDEN = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_MARKUP = re.compile(
    r"<\|[^|<>\n]{1,40}\|>"                       # ChatML, Llama 3, Phi: <|im_start|>, <|eot_id|>, <|user|>
    r"|<\|[\w.-]{1,40}\s*\Z|\A\|?[\w.-]{1,40}\|>"       # ... cut in two by a chunk's end or start
    r"|\[/?INST\]|<</?SYS>>"                      # Llama 2, Mistral
    r"|\[(?-i:SYSTEM|ASSISTANT|USER)(?-i:[ _][A-Z ]{1,30})?\]"  # [SYSTEM], [SYSTEM OVERRIDE]; not INI's [System]
    r"|</?(?:im_start|im_end|start_of_turn|end_of_turn|bos|eos|eot)>", re.I)  # Gemma; not <s>: HTML's too
_ROLES = r"(?:system|assistant|user|human|ai|bot|chatbot|developer|instructions?)"
_ROLE_LINE = re.compile(
    r"^(?:>[ \t]*)*(?:#{1,6}[ \t]*)?(?:[*_]{1,2})?(?:the[ \t]+)?" + _ROLES +  # not indented: code is
    r"(?:[ \t]+(?:prompt|message|instructions?|note|says?))?(?:[*_]{1,2})?[ \t]*[:：]"
    r"|^[ \t]*#{1,6}[ \t]*(?:instruction|system|assistant|human|user)[ \t]*$", re.I | re.M)
_ROLE_MID = re.compile(r"(?<=[.!?] )(?:system|assistant|user|human)[ \t]*:[ \t]", re.I)  # "... fever. System: ..."
_JSON_ROLE = re.compile(r'"role"\s*:\s*"(?:system|assistant|user|developer|tool|model)"', re.I)
_AFTER_TURN = re.compile(r"^[ \t]*#{1,6}[ \t]*(?:response|input|output|answer)\b", re.I)
_AI = r"(?:ai|llms?|language models?|(?:ai )?assistants?|chat ?bots?|bots?|gpts?)"
_ADDRESSED = re.compile(r"\b(?:note|message|instructions?|reminder|hint|warning|attention|important|"
                        r"directive|task)\s+(?:to|for)\s+(?:the\s+|all\s+|any\s+)?" + _AI + r"\b", re.I)
# A short label naming the AI or assistant, in English or the commonest European languages ("Note for the AI:",
# "Hinweis für den Assistenten:", "Instrucción para la IA:", "Consigne pour l'IA :").
_AI_WORD = (r"(?:ai|ia|ki|llms?|gpts?|chat ?bots?|(?:language|sprach|lenguaje|langage|linguagem|linguaggio) ?"
            r"models?|sprachmodells?|assistant[es]?|assistent(?:en|in)?|asistentes?|assistentes?)")
_AI_LABEL = re.compile(r"(?:^|(?<=[.!?] ))(?:>[ \t]*)*[*_#]*[ \t]*(?:[^\W\d_]+[ \t'’]+){0,5}?" + _AI_WORD +
                       r"\b[^\n:：]{0,20}[:：]", re.I | re.M)
# "Ignore / forget ... instructions": English, and German, French, Spanish, Italian, Portuguese verbs and nouns.
_OVERRIDE = re.compile(
    r"\b(?:ignore|disregard|forget|override|bypass|ignorier\w*|ignora\w*|ignorez|vergiss\w*|vergessen|olvid\w*|"
    r"oubli\w*|dimentic\w*|esque[cç]\w*)\s+(?:"
    r"(?:\S+\s+){0,3}?(?:instructions?|prompts?|directions|directives|guidelines|anweisung\w*|instrucci\w*|"
    r"istruzion\w*|instru[cç]\w*|consignes?|regeln|reglas|r[eè]gles|regole|regras)\b"
    r"|(?:(?:all|any|every|of|the|your|my|these|those|its|their|previous|prior|above|earlier|preceding|original|"
    r"former|initial|system|other|given|safety|ethical|content|security)\s+){1,4}"
    r"(?:rules|question|context|conversations?|messages?|constraints|policies|protocols)\b"
    r"|everything(?:\s+(?:above|before|else)\b|\s*[,.;:!]|\s*$)|the\s+above\b|ethics\b)", re.I)
_PERSONA = re.compile(
    r"\byou are now\s+(?:an?|the|my)\s|\bfrom now on,?\s+you\s+(?:are|will|must|have|should)\b"
    r"|\bpretend (?:that )?you are\b|\b(?:act|role-?play) as (?:an?\s+)?(?:\w+\s+)?(?:ai|assistant|chatbot|dan)\b"
    r"|\b(?:new|your) system prompt\b|\bsystem override\b|\bdeveloper mode\b", re.I)
_ORDER = re.compile(
    r"\b(?:reply|respond|answer)(?:[ \t]+(?:to|only|always))?[ \t]+(?:every|all|any|each)[ \t]+"
    r"(?:questions?|messages?|prompts?|requests?|queries)\b"
    r"|\b(?:reply|respond|answer)(?:[ \t]+only)?[ \t]+(?:with[ \t]+)?(?:only|exactly|just|solely|always)\b"
    r"|\byour\s+(?:whole\s+|entire\s+|only\s+|next\s+)?(?:reply|answer|response|output)\s+"
    r"(?:must|should|shall|has to|will)\s+be\b"
    r"|\bthe\s+only\s+(?:allowed|permitted|valid|acceptable)\s+(?:answer|reply|response)\b", re.I)
_TAG = re.compile(r"<(/?\s*sources?\b)", re.I)
_TEMPLATE_MARK = re.compile(r"<(\|)")
_PARAGRAPHS = re.compile(r"(\n[ \t]*\n)")


def _sentence_start(text: str, at: int) -> int:
    """Where the sentence (or clause after a colon) holding position `at` starts: after the last '.', '!', '?',
    ';' or ':' followed by a space, or the last line break, before it."""
    cut = max([text.rfind("\n", 0, at)] + [m.end() - 1 for m in re.finditer(r"[.!?;:][ \t]", text[:at])])
    return cut + 1 if cut >= 0 else 0


def turn_start(paragraph: str) -> Optional[int]:
    """Where, in one paragraph, text starts acting as a conversation turn or an order to the assistant (None:
    nowhere). Structural marks quarantine from the mark (a role line from its start); orders from the start of
    their sentence."""
    found = []
    for rx in (_MARKUP, _ROLE_LINE, _ROLE_MID, _AI_LABEL):
        m = rx.search(paragraph)
        if m:
            found.append(m.start())
    m = _JSON_ROLE.search(paragraph)
    if m:
        found.append(paragraph.rfind("\n", 0, m.start()) + 1)
    for rx in (_ADDRESSED, _OVERRIDE, _PERSONA, _ORDER):
        m = rx.search(paragraph)
        if m:
            found.append(_sentence_start(paragraph, m.start()))
    return min(found) if found else None


def _only_header(text: str) -> bool:
    """Nothing but turn markup and role names (a turn header whose content is the next paragraph)."""
    rest = _ROLE_LINE.sub(" ", _MARKUP.sub(" ", text))
    return not re.sub(r"[\W_]+|\b(?:system|assistant|user|human|model|ai|bot)\b", "", rest, flags=re.I)


def quarantine(text: str) -> str:
    """The text with every conversation turn or order to the assistant replaced by QUARANTINED (see the module
    docstring); text without any is returned unchanged (HTML comments aside)."""
    text = _HIDDEN.sub("", text)
    parts = _PARAGRAPHS.split(text)  # paragraph, separator, paragraph, ...
    out, seen, take_next = [], False, False
    for i in range(0, len(parts), 2):
        para = parts[i]
        sep = parts[i + 1] if i + 1 < len(parts) else ""
        at = 0 if take_next or (seen and _AFTER_TURN.match(para)) else turn_start(para)
        take_next = False
        if at is None:
            out += [para, sep]
            continue
        head = para[:at].rstrip()
        take_next = _only_header(para[at:])
        if seen and not head and out and out[-2].endswith(QUARANTINED):
            continue  # one mark for consecutive quarantined paragraphs
        seen = True
        out += [head + ("\n" if head else "") + QUARANTINED, sep]
    return "".join(out).rstrip() if seen else text


def defuse(text: str) -> str:
    """A retrieved chunk as the prompt shows it: quarantined, then tag look-alikes and `<|` defused."""
    return _TEMPLATE_MARK.sub(r"‹\1", _TAG.sub(r"‹\1", quarantine(text)))
