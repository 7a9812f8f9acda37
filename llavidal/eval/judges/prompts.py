"""Judge prompts, versioned. ``PROMPT_VERSION`` is part of every cache key and every result.

The structure follows the Video-ChatGPT judge that users know (a system message naming the criterion
being evaluated for video-based question-answer pairs; a user message with the question, the correct
answer and the predicted answer; a reply that is only a Python-dict string with an integer ``score``
0-5; consistency shows two paraphrased questions and both predictions; zero-shot QA asks for
``{'pred': 'yes'|'no', 'score': n}``). The wording is ours. Change ``PROMPT_VERSION`` whenever any text
here changes, so that cached judgements of old prompts are never reused.
"""

from __future__ import annotations

from llavidal.eval.judges.base import JudgeItem

PROMPT_VERSION = "llavidal-judge-v1"

_SYSTEM_OPENING = (
    "You are an intelligent chatbot designed for evaluating the {label} of generative outputs for "
    "video-based question-answer pairs. "
)

CRITERIA: dict[str, dict[str, str]] = {
    "correctness": {
        "label": "factual accuracy",
        "instructions": (
            "Compare the predicted answer with the correct answer and decide how factually accurate the "
            "prediction is with respect to the video content described by the correct answer.\n"
            "- The prediction must not contradict the correct answer or contain false details.\n"
            "- Synonyms and paraphrases are acceptable; judge the meaning, not the wording.\n"
            "- Missing key facts or adding wrong ones lowers the score."
        ),
    },
    "detail": {
        "label": "detail orientation",
        "instructions": (
            "Compare the predicted answer with the correct answer and decide how complete and specific "
            "the prediction is.\n"
            "- Completeness: does the prediction cover all the important points of the correct answer?\n"
            "- Specificity: does it give specific details rather than generic statements?\n"
            "- Judge consistency with the video content as described by the correct answer."
        ),
    },
    "context": {
        "label": "contextual understanding",
        "instructions": (
            "Compare the predicted answer with the correct answer and decide whether the prediction "
            "fits the overall context of the video content.\n"
            "- The prediction should be relevant to the question and in line with the context and "
            "themes of the correct answer.\n"
            "- Answers that are off-topic or miss the situation shown in the video score low."
        ),
    },
    "temporal": {
        "label": "temporal understanding",
        "instructions": (
            "Compare the predicted answer with the correct answer and decide whether the prediction "
            "gets the order and timing of events right.\n"
            "- Events must appear in the same sequence as in the correct answer.\n"
            "- Wrong order, missing steps or invented steps lower the score."
        ),
    },
    "consistency": {
        "label": "consistency",
        "instructions": (
            "You are given two differently worded questions that ask for the same information, the "
            "correct answer, and the model's predicted answers to both questions.\n"
            "- Decide whether the two predictions agree with each other and with the correct answer.\n"
            "- Contradictions between the two predictions, or with the correct answer, lower the score."
        ),
    },
    "zeroshot": {
        "label": "correctness",
        "instructions": (
            "Compare the predicted answer with the correct answer and decide whether the prediction "
            "matches it.\n"
            "- Focus on meaningful matches; synonyms and paraphrases count as matches.\n"
            "- Answer 'yes' when the prediction is correct and 'no' when it is not, and give a score "
            "for how well it matches."
        ),
    },
}

_SCORE_REQUEST = (
    "Provide your evaluation only as a Python dictionary string with the key 'score', an integer from 0 "
    "to 5, where 5 is the best. Do not write any other text. For example: {'score': 4}."
)
_ZEROSHOT_REQUEST = (
    "Provide your evaluation only as a Python dictionary string with the keys 'pred' ('yes' or 'no') and "
    "'score' (an integer from 0 to 5, where 5 means the best match). Do not write any other text. For "
    "example: {'pred': 'yes', 'score': 4}."
)


def render_messages(item: JudgeItem) -> list[dict[str, str]]:
    """The chat messages sent to the judge for one item."""
    if item.criterion == "mcq":
        options = "\n".join(f"({letter}) {text}" for letter, text in item.choices)
        system = (
            "You are a careful grader of multiple-choice answers. Decide which single option a model's "
            "free-text answer chose. If it chose none, or several, say 'none'."
        )
        user = (
            f"Question: {item.question}\nOptions:\n{options}\nModel answer: {item.prediction}\n\n"
            "Reply only with a Python dictionary string with the key 'choice', the letter of the chosen "
            "option or 'none'. For example: {'choice': 'B'}."
        )
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]
    if item.criterion not in CRITERIA:
        raise ValueError(f"no judge prompt for criterion {item.criterion!r}; known: {sorted(CRITERIA)} and 'mcq'")
    spec = CRITERIA[item.criterion]
    system = _SYSTEM_OPENING.format(label=spec["label"]) + "\n##INSTRUCTIONS:\n" + spec["instructions"]
    if item.criterion == "consistency":
        user = (
            "Please evaluate the following video-based question-answer pair:\n\n"
            f"Question 1: {item.question}\nQuestion 2: {item.question2}\nCorrect Answer: {item.answer}\n"
            f"Predicted Answer to Question 1: {item.prediction}\n"
            f"Predicted Answer to Question 2: {item.prediction2}\n\n" + _SCORE_REQUEST
        )
    else:
        request = _ZEROSHOT_REQUEST if item.criterion == "zeroshot" else _SCORE_REQUEST
        user = (
            "Please evaluate the following video-based question-answer pair:\n\n"
            f"Question: {item.question}\nCorrect Answer: {item.answer}\nPredicted Answer: {item.prediction}\n\n"
            + request
        )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]
