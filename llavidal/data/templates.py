"""Conversation templates and label masking.

Four templates:

* ``v1``: Vicuna v1.1, the upstream training template (exact strings)::

      {system} USER: {q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>

  and the generation prompt ends with ``"ASSISTANT:"``.
* ``llavidal_v1``: the same format with a system prompt that introduces a vision-language assistant
  answering from the provided video (what upstream uses at inference).
* ``chat``: the tokenizer's own chat template (``tokenizer.apply_chat_template``), for instruct models
  such as SmolLM2, Qwen2 or Llama 3.
* ``chat_bare``: the same with an empty system message, so that the template adds no default system prompt
  of its own (SmolLM2's writes "You are a helpful AI assistant named SmolLM, trained by Hugging Face" before
  every conversation that has none: 16 of the quickstart's 107 text tokens per sample).

:func:`tokenize_conversation` returns ``(input_ids, labels)`` where only the assistant answers and
their end token (``</s>`` for ``v1``, the end-of-turn token of a chat template) are supervised; every
other label is :data:`~llavidal.constants.IGNORE_INDEX`.

For ``v1`` the upstream rule is implemented (tokenise the whole prompt, split it into rounds at ``</s>``,
mask each round's instruction by the token lengths of the round and of its instruction) and then
*verified*: the masked length must equal the tokenised length and, with a fast tokenizer, the supervised
tokens must be exactly those whose characters lie in the answers. A disagreement raises
:class:`ConversationMismatchError`; the dataset drops that sample with a warning (upstream silently
zeroes its labels).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from llavidal.constants import IGNORE_INDEX

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAVIDAL_SYSTEM = (
    "You are LLAVIDAL, a large vision-language assistant. You are able to understand the video content "
    "that the user provides, and assist the user with a variety of tasks using natural language. "
    "Follow the instructions carefully and explain your answers in detail based on the provided video."
)

HUMAN_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant", "model")


class ConversationMismatchError(ValueError):
    """The label mask of a conversation disagrees with its tokenisation (the sample must be dropped)."""


@dataclass(frozen=True)
class ConversationTemplate:
    """How a conversation is rendered as text.

    ``style="two_sep"`` is LLaVA's ``SeparatorStyle.TWO`` (Vicuna v1.1): ``system + sep`` then, for each
    message, ``role + ": " + text`` followed by ``sep`` after user turns and ``sep2`` after assistant
    turns. ``style="chat"`` defers to the tokenizer's chat template.
    """

    name: str
    system: str | None
    """System prompt (``None``: none for ``chat``, where the tokenizer's template may add its own; ``""`` for
    ``chat_bare``: an empty system message, which keeps the template's own out)."""
    style: str = "two_sep"
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    sep: str = " "
    sep2: str = "</s>"


TEMPLATES: dict[str, ConversationTemplate] = {
    "v1": ConversationTemplate(name="v1", system=VICUNA_SYSTEM),
    "llavidal_v1": ConversationTemplate(name="llavidal_v1", system=LLAVIDAL_SYSTEM),
    "chat": ConversationTemplate(name="chat", system=None, style="chat"),
    "chat_bare": ConversationTemplate(name="chat_bare", system="", style="chat"),
}
# Names used by upstream forks for the same formats.
TEMPLATE_ALIASES = {"vicuna_v1_1": "v1", "video-chatgpt_v1": "llavidal_v1", "vicuna_v1": "v1"}


def get_template(name: str) -> ConversationTemplate:
    """The template called ``name`` (``v1``, ``llavidal_v1``, ``chat``, ``chat_bare`` or an upstream alias)."""
    key = TEMPLATE_ALIASES.get(name, name)
    if key not in TEMPLATES:
        raise ValueError(f"unknown conversation template {name!r}; choose one of {sorted(TEMPLATES)} (--version)")
    return TEMPLATES[key]


def inference_template(template: str) -> str:
    """The template answers are generated with for weights trained with ``template``: upstream trains with ``v1``
    and answers with ``llavidal_v1``'s system prompt; every other template answers as it trained."""
    return "llavidal_v1" if TEMPLATE_ALIASES.get(template, template) == "v1" else template


def normalize_conversation(conversations: Sequence[Any], sample_id: str = "") -> list[tuple[str, str]]:
    """Upstream ``[{"from": "human"|"gpt", "value": ...}]`` (or ``(role, text)`` pairs) -> [(role, text)].

    Roles become ``user`` / ``assistant``. A leading assistant turn is skipped (as upstream does); after
    that, turns must alternate user, assistant, ... and end with an assistant turn.
    """
    where = f"sample {sample_id}: " if sample_id else ""
    turns: list[tuple[str, str]] = []
    for index, message in enumerate(conversations):
        if isinstance(message, dict):
            role = message.get("from", message.get("role"))
            text = message.get("value", message.get("content"))
        else:
            role, text = message
        if not isinstance(text, str):
            raise ValueError(f"{where}turn {index} has no text (expected a 'value' string)")
        role = str(role).lower()
        if role in HUMAN_ROLES:
            turns.append(("user", text))
        elif role in ASSISTANT_ROLES:
            turns.append(("assistant", text))
        else:
            raise ValueError(f"{where}turn {index} has unknown role {role!r}; use 'human' or 'gpt'")
    while turns and turns[0][0] == "assistant":
        turns = turns[1:]
    if not turns:
        raise ValueError(f"{where}the conversation has no user turn")
    for index, (role, _) in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(f"{where}turn {index} is from {role!r} but {expected!r} was expected (turns must alternate)")
    if turns[-1][0] != "assistant":
        raise ValueError(f"{where}the conversation ends with a user turn; nothing to supervise")
    return turns


def render_v1(template: ConversationTemplate, turns: Sequence[tuple[str, str | None]], system: str | None = None) -> str:
    """Render turns in the Vicuna v1.1 format. A final assistant turn of ``None`` ends with ``"ASSISTANT:"``."""
    system = template.system if system is None else system
    seps = (template.sep, template.sep2)
    text = (system or "") + seps[0]
    for index, (role, message) in enumerate(turns):
        name = template.roles[0] if role == "user" else template.roles[1]
        if message is None:
            text += name + ":"
        else:
            text += name + ": " + message + seps[index % 2]
    return text


def _chat_messages(turns: Sequence[tuple[str, str]], system: str | None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.extend({"role": role, "content": text} for role, text in turns)
    return messages


def _require_chat_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "template 'chat' needs a tokenizer with a chat template (tokenizer.chat_template is empty); "
            "use --version v1 for base models"
        )


def render_generation_prompt(template_name: str, tokenizer: Any, history: list[tuple[str, str]], question: str) -> str:
    """The prompt for the next answer: earlier (question, answer) pairs, then ``question``.

    Used by the inference engine. ``v1`` / ``llavidal_v1`` end with ``"ASSISTANT:"``; ``chat`` ends with
    the chat template's generation prompt. The text does not include a BOS token: tokenising it with
    ``add_special_tokens=True`` adds one where the tokenizer does (``chat`` templates that write their
    own BOS are tokenised without special tokens by the engine).
    """
    template = get_template(template_name)
    turns: list[tuple[str, str | None]] = []
    for user_text, answer in history:
        turns += [("user", user_text), ("assistant", answer)]
    turns.append(("user", question))
    if template.style == "chat":
        _require_chat_template(tokenizer)
        return tokenizer.apply_chat_template(
            _chat_messages(turns, template.system), tokenize=False, add_generation_prompt=True
        )
    turns.append(("assistant", None))
    return render_v1(template, turns)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _encode_many(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Tokenise several texts in one call (a fast tokenizer batches them natively)."""
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


_SPECIALS_CACHE: "weakref.WeakKeyDictionary[Any, tuple]" = weakref.WeakKeyDictionary()


def _added_specials(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Token ids the tokenizer adds before and after a text (``[BOS]``, ``[]`` for LLaMA)."""
    try:
        cached = _SPECIALS_CACHE.get(tokenizer)
    except TypeError:  # not weak-referenceable
        cached = None
    if cached is not None and cached[0] == len(tokenizer):
        return cached[1], cached[2]
    probe = "a b"
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    body = _encode(tokenizer, probe)
    for start in range(len(full) - len(body) + 1):
        if full[start : start + len(body)] == body:
            prefix, suffix = full[:start], full[start + len(body) :]
            break
    else:
        raise ConversationMismatchError("the tokenizer changes a text's tokens when adding special tokens")
    try:
        _SPECIALS_CACHE[tokenizer] = (len(tokenizer), prefix, suffix)
    except TypeError:
        pass
    return prefix, suffix


def _labels_from_char_spans(offsets: Sequence[tuple[int, int]], spans: Iterable[tuple[int, int]], sample: str) -> list[bool]:
    """Which tokens lie inside the answer character spans; raise if a token straddles a span border."""
    spans = list(spans)
    inside = [False] * len(offsets)
    for index, (start, end) in enumerate(offsets):
        if end <= start:  # zero-width (added BOS/EOS): never supervised unless inside by position
            continue
        for span_start, span_end in spans:
            if start >= span_start and end <= span_end:
                inside[index] = True
                break
            if start < span_end and end > span_start:
                raise ConversationMismatchError(
                    f"{sample}token {index} (characters {start}-{end}) straddles the answer border "
                    f"{span_start}-{span_end}"
                )
    return inside


def _tokenize_v1(template: ConversationTemplate, turns: list[tuple[str, str]], tokenizer: Any, system: str | None, sample: str) -> tuple[list[int], list[int]]:
    text = render_v1(template, turns, system)
    prefix, suffix = _added_specials(tokenizer)
    fast = bool(getattr(tokenizer, "is_fast", False))
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=fast)
    body = list(encoding["input_ids"])
    input_ids = prefix + body + suffix
    total_len = len(input_ids)
    labels = list(input_ids)

    # The upstream rule (LLaVA / Video-ChatGPT ``preprocess_v1``), with the BOS count and the
    # instruction's trailing-space token read from the tokenizer instead of hard-coded as 1 and 2, so
    # that tokenizers without BOS follow the same rule.
    answer_sep = template.sep + template.roles[1] + ": "  # " ASSISTANT: "
    rounds = []
    for round_index, round_text in enumerate(text.split(template.sep2)):
        if round_text == "":
            break
        parts = round_text.split(answer_sep)
        if len(parts) != 2:
            raise ConversationMismatchError(
                f"{sample}round {round_index} does not split into one instruction and one answer at "
                f"{answer_sep!r} (the text contains the separator or {template.sep2!r} itself)"
            )
        # "... ASSISTANT:" without the trailing space: in context the space belongs to the answer's first token
        rounds += [round_text, parts[0] + answer_sep.rstrip(" ")]
    lengths = [len(ids) for ids in _encode_many(tokenizer, rounds + [template.sep2])]
    sep2_len = lengths.pop()
    cur_len = len(prefix)
    labels[:cur_len] = [IGNORE_INDEX] * cur_len
    for round_len, instruction_len in zip(lengths[0::2], lengths[1::2]):
        labels[cur_len : cur_len + instruction_len] = [IGNORE_INDEX] * instruction_len
        cur_len += round_len + sep2_len
    labels[cur_len:] = [IGNORE_INDEX] * (len(labels) - cur_len)
    if cur_len + len(suffix) != total_len:
        raise ConversationMismatchError(
            f"{sample}tokenization mismatch: the rounds add up to {cur_len + len(suffix)} tokens but the "
            f"conversation has {total_len} (the tokenizer merges text across the '{template.sep2}' borders, "
            "e.g. a LLaMA tokenizer loaded with legacy=False; load it with legacy=True or use --version chat)"
        )

    # Independent check with character offsets: supervised tokens must be exactly the answers + </s>.
    if fast:
        spans = []
        position = len((system if system is not None else template.system) or "") + len(template.sep)
        for index, (role, message) in enumerate(turns):
            name = template.roles[0] if role == "user" else template.roles[1]
            head = name + ":"
            end = position + len(head) + 1 + len(message) + len((template.sep, template.sep2)[index % 2])
            if role == "assistant":
                # the answer's span starts at the space after "ASSISTANT:" (it is part of the first token)
                spans.append((position + len(head), end))
            position = end
        inside = _labels_from_char_spans(encoding["offset_mapping"], spans, sample)
        expected = [IGNORE_INDEX] * len(prefix) + [
            token if keep else IGNORE_INDEX for token, keep in zip(body, inside)
        ] + [IGNORE_INDEX] * len(suffix)
        if expected != labels:
            differ = next(i for i, (a, b) in enumerate(zip(expected, labels)) if a != b)
            raise ConversationMismatchError(
                f"{sample}tokenization mismatch: the round-length mask disagrees with the answers' "
                f"characters at token {differ} of {total_len}"
            )
    return input_ids, labels


def _end_of_turn(tokenizer: Any, remainder: str) -> int:
    """Characters of ``remainder`` (text after an answer) that belong to its end-of-turn token."""
    candidates = [t for t in getattr(tokenizer, "all_special_tokens", []) if t]
    candidates += [t for t in getattr(tokenizer, "get_added_vocab", dict)() if t]
    best = None
    for token in set(candidates):
        position = remainder.find(token)
        if position != -1 and remainder[:position].strip() == "" and (best is None or position < best[0]):
            best = (position, position + len(token))
    return best[1] if best else len(remainder)


def _tokenize_chat(template: ConversationTemplate, turns: list[tuple[str, str]], tokenizer: Any, system: str | None, sample: str) -> tuple[list[int], list[int]]:
    _require_chat_template(tokenizer)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("template 'chat' needs a fast tokenizer (character offsets); load it with use_fast=True")
    system = template.system if system is None else system
    messages = _chat_messages(turns, system)
    offset = len(messages) - len(turns)
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for index, (role, message) in enumerate(turns):
        if role != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[: offset + index], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: offset + index + 1], tokenize=False)
        if not (text.startswith(before) and text.startswith(through) and through.startswith(before)):
            raise ConversationMismatchError(
                f"{sample}the chat template does not render the conversation incrementally; cannot mask answers"
            )
        segment = through[len(before) :]
        start = segment.find(message.strip())
        if start == -1:
            raise ConversationMismatchError(f"{sample}answer {index // 2} is not found in the rendered template")
        answer_end = start + len(message.strip())
        end = answer_end + _end_of_turn(tokenizer, segment[answer_end:])
        spans.append((len(before) + start, len(before) + end))
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoding["input_ids"])
    inside = _labels_from_char_spans(encoding["offset_mapping"], spans, sample)
    labels = [token if keep else IGNORE_INDEX for token, keep in zip(input_ids, inside)]
    if not any(keep for keep in inside):
        raise ConversationMismatchError(f"{sample}no answer token survived tokenisation")
    return input_ids, labels


def tokenize_conversation(
    conversations: Sequence[Any],
    tokenizer: Any,
    template_name: str = "v1",
    *,
    system: str | None = None,
    sample_id: str = "",
) -> tuple[list[int], list[int]]:
    """Tokenise a conversation and build its labels.

    ``conversations`` is upstream's list of ``{"from": "human"|"gpt", "value": text}`` (or
    ``(role, text)`` pairs) with modality placeholders already expanded. Returns ``(input_ids, labels)``
    as lists of ints of equal length; labels are ``IGNORE_INDEX`` except on assistant answers and their
    end token. ``system`` overrides the template's system prompt. Raises
    :class:`ConversationMismatchError` when the mask cannot be made consistent with the tokenisation
    and ``ValueError`` for malformed conversations (both name ``sample_id``).
    """
    template = get_template(template_name)
    turns = normalize_conversation(conversations, sample_id)
    sample = f"sample {sample_id}: " if sample_id else ""
    if template.style == "chat":
        return _tokenize_chat(template, turns, tokenizer, system, sample)
    return _tokenize_v1(template, turns, tokenizer, system, sample)
